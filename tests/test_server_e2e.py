"""The relay server end to end, on loopback: register, upload keys, fetch bundles, send sealed
envelopes on an anonymous stream, receive them on the mailbox stream, acknowledge, revoke."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kluis.client.transport import RelayClientError
from kluis.protocol.bundle import PreKeyBundle
from kluis.protocol.envelope import seal
from kluis.protocol.peer import PeerSessions
from kluis.protocol.revocation import RevocationStatement
from kluis.protocol.session import SessionPayload
from kluis.relay import frames as f
from tests.server_support import NOW, add_codes, new_user, running_server


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_two_users_exchange_sealed_messages(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path, 2)
        async with running_server(tmp_path) as server:
            alice, bob = await new_user(server, codes[0]), await new_user(server, codes[1])
            for user in (alice, bob):
                await user.connect()
                stock = await user.upload()
                assert (stock.one_time_left, stock.kem_left) == (5, 5)

            # Alice fetches Bob's bundle with his delivery token (from his invite).
            bundle = PreKeyBundle.from_bytes(await server.http.bundle(bob.account, bob.token))
            sessions = PeerSessions()
            payload = sessions.encrypt(alice.identity, bundle.verify(), b"hello bob", os.urandom)
            envelope = seal(
                bundle.envelope_key, bundle.identity, alice.account, alice.identity.public, payload
            )
            sender = await alice.sender()
            envelope_id = os.urandom(16)
            statuses = await sender.send_envelopes(
                [f.OutgoingEnvelope(envelope_id, bob.account, bob.token, envelope)]
            )
            assert statuses == {envelope_id: f.SendStatus.OK}

            # Bob is connected: the envelope is pushed to him.
            assert bob.mailbox is not None
            (delivery,) = (await bob.mailbox.expect(f.Deliver)).deliveries
            assert delivery.envelope_id == envelope_id
            content = bob.ring.open(delivery.envelope, NOW)
            text = PeerSessions().decrypt(
                bob.identity,
                bob.prekeys,
                SessionPayload.from_bytes(content.ratchet_message),
                content.sender_identity,
            )
            assert text == b"hello bob"
            await bob.mailbox.send(f.Receipt((delivery.seq,)))
            await asyncio.sleep(0.05)

            # A resend of the same envelope id after a lost acknowledgement is accepted, stored once.
            again = await sender.send_envelopes(
                [f.OutgoingEnvelope(envelope_id, bob.account, bob.token, envelope)]
            )
            assert again == {envelope_id: f.SendStatus.OK}
            # A wrong token is rejected without saying whether the account exists.
            bad = os.urandom(16)
            wrong = await sender.send_envelopes(
                [f.OutgoingEnvelope(bad, bob.account, os.urandom(32), envelope)]
            )
            assert wrong == {bad: f.SendStatus.REJECTED}
            # Each envelope of a frame is checked, also beside one that passed to the same account
            # (the relay checks a repeated recipient and token once).
            ids = [os.urandom(16) for _ in range(4)]
            tokens = [bob.token, os.urandom(32), bob.token, bob.token[:-1] + bytes([bob.token[-1] ^ 1])]
            mixed = await sender.send_envelopes(
                [f.OutgoingEnvelope(i, bob.account, t, envelope) for i, t in zip(ids, tokens, strict=True)]
            )
            assert mixed == dict(zip(ids, [f.SendStatus.OK, f.SendStatus.REJECTED] * 2, strict=True))

    run(scenario())


def test_offline_mailbox_drains_in_order_after_connect(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path, 2)
        async with running_server(tmp_path) as server:
            alice, bob = await new_user(server, codes[0]), await new_user(server, codes[1])
            await alice.connect()
            sender = await alice.sender()
            ids = [os.urandom(16) for _ in range(100)]
            statuses = await sender.send_envelopes(
                [
                    f.OutgoingEnvelope(i, bob.account, bob.token, b"ciphertext %d" % n)
                    for n, i in enumerate(ids)
                ]
            )
            assert set(statuses.values()) == {f.SendStatus.OK}
            mailbox = await bob.connect()
            received: list[bytes] = []
            while True:
                frame = await mailbox.receive()
                if isinstance(frame, f.Deliver):
                    received += [d.envelope_id for d in frame.deliveries]
                    await mailbox.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))
                elif isinstance(frame, f.Drained):
                    break
            assert received == ids
            await mailbox.close()
            # All receipted: a new connection gets nothing but DRAINED.
            mailbox = await bob.connect()
            frame = await mailbox.receive()
            assert isinstance(frame, f.Drained)

    run(scenario())


def test_revocation_deletes_and_bundle_returns_statement(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path, 2)
        async with running_server(tmp_path) as server:
            alice, bob = await new_user(server, codes[0]), await new_user(server, codes[1])
            await bob.connect()
            await bob.upload()
            statement = RevocationStatement.sign(bob.identity, bob.account)
            # A statement signed by someone else is refused.
            forged = RevocationStatement.sign(alice.identity, bob.account)
            with pytest.raises(RelayClientError) as err:
                await server.http.revoke(forged.to_bytes())
            assert err.value.code == "auth_failed"
            await server.http.revoke(statement.to_bytes())
            with pytest.raises(RelayClientError) as err:
                await server.http.bundle(bob.account, bob.token)
            assert err.value.code == "revoked"
            await alice.connect()
            sender = await alice.sender()
            envelope_id = os.urandom(16)
            statuses = await sender.send_envelopes(
                [f.OutgoingEnvelope(envelope_id, bob.account, bob.token, b"x")]
            )
            assert statuses == {envelope_id: f.SendStatus.REVOKED}
            with pytest.raises(RelayClientError) as err:
                await bob.connect()
            assert err.value.code == "revoked"

    run(scenario())


def test_codes_are_single_use_and_extend(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path, 3, days=10)
        async with running_server(tmp_path) as server:
            alice = await new_user(server, codes[0])
            with pytest.raises(RelayClientError) as err:
                await new_user(server, codes[0])
            assert err.value.code == "code_invalid"
            first = (await alice.connect()).auth.expires_day
            extended = await server.http.extend(alice.account, codes[1])
            assert extended == first + 10

    run(scenario())


def test_unauthenticated_and_malformed_streams_are_cut(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path, 1)
        async with running_server(tmp_path) as server:
            user = await new_user(server, codes[0])
            ws = await server.session.ws_connect(server.url + "/v1/stream")
            await ws.receive()  # CHALLENGE
            await ws.send_bytes(b"\x01\x03\x00")  # a SEND before any hello, and malformed
            msg = await ws.receive(timeout=5)
            frame = f.parse(msg.data)
            assert isinstance(frame, f.Error)
            assert frame.code is f.ErrorCode.MALFORMED
            await ws.close()
            # A send on the authenticated stream is not allowed (sends are anonymous).
            mailbox = await user.connect()
            await mailbox.send(f.Send((f.OutgoingEnvelope(os.urandom(16), user.account, user.token, b"x"),)))
            with pytest.raises(RelayClientError) as err:
                await mailbox.expect(f.SendResult)
            assert err.value.code == "not_allowed"
            # A wrong send pass closes the stream.
            ws = await server.session.ws_connect(server.url + "/v1/stream")
            await ws.receive()
            await ws.send_bytes(f.serialize(f.OpenSend(1, os.urandom(32))))
            frame = f.parse((await ws.receive(timeout=5)).data)
            assert isinstance(frame, f.Error)
            assert frame.code is f.ErrorCode.SUBSCRIPTION_EXPIRED
            await ws.close()

    run(scenario())


def test_expired_account_receives_but_cannot_send(tmp_path: Path) -> None:
    """Issue 3 item 1: an expired subscription can still receive, but gets no send pass."""

    async def scenario() -> None:
        (valid,) = await add_codes(tmp_path, 1, days=30)
        (lapsed,) = await add_codes(tmp_path, 1, days=-1)  # an account that expired yesterday
        async with running_server(tmp_path) as server:
            alice, bob = await new_user(server, valid), await new_user(server, lapsed)
            mailbox = await bob.connect()
            with pytest.raises(RelayClientError) as err:
                await mailbox.send_pass()
            assert err.value.code == "subscription_expired"
            assert "cannot send" in str(err.value) or "not send" in str(err.value)
            # The connection stays open and Bob still receives.
            await alice.connect()
            sender = await alice.sender()
            envelope_id = os.urandom(16)
            statuses = await sender.send_envelopes(
                [f.OutgoingEnvelope(envelope_id, bob.account, bob.token, b"x")]
            )
            assert statuses == {envelope_id: f.SendStatus.OK}
            (delivery,) = (await mailbox.expect(f.Deliver)).deliveries
            assert delivery.envelope_id == envelope_id

    run(scenario())


def test_owner_is_told_when_its_prekey_stock_runs_low(tmp_path: Path) -> None:
    """Issue 3 item 3: a bundle fetch that takes the stock below the watermark notifies the owner."""

    async def scenario() -> None:
        codes = await add_codes(tmp_path, 2)
        async with running_server(tmp_path, prekey_low_watermark=3) as server:
            alice, bob = (
                await new_user(server, codes[0]),
                await new_user(server, codes[1], one_time=4, kem_one_time=4),
            )
            await bob.connect()
            assert (await bob.upload()).one_time_left == 4
            await server.http.bundle(bob.account, bob.token)  # 3 left: not below the watermark
            await server.http.bundle(bob.account, bob.token)  # 2 left: below
            assert bob.mailbox is not None
            stock = await bob.mailbox.expect(f.KeyStock, timeout=5)
            assert (stock.one_time_left, stock.kem_left) == (2, 2)
            del alice

    run(scenario())


def test_a_second_mailbox_connection_replaces_the_first(tmp_path: Path) -> None:
    """One mailbox stream per account: the older one is told and closed at once."""

    async def scenario() -> None:
        (code,) = await add_codes(tmp_path, 1)
        async with running_server(tmp_path) as server:
            user = await new_user(server, code)
            first = await user.connect()
            await user.connect()
            with pytest.raises(RelayClientError) as err:
                await first.expect(f.SendResult, timeout=5)
            assert err.value.code == "auth_failed"

    run(scenario())


def test_an_envelope_receipted_while_held_never_reaches_the_servers_disk(tmp_path: Path) -> None:
    """Bob is connected and caught up: Alice's envelope is pushed to him before it is written, and
    the server holds it (receipt_wait_s) for his receipt. He receipts: Alice's OK follows at once,
    and the envelope's bytes were never in the database or its WAL. A second one, which Bob does not
    receipt, is written when the wait ends (OK then) and reaches his next connection."""
    kept = os.urandom(700)
    elided = os.urandom(700)

    async def scenario() -> None:
        codes = await add_codes(tmp_path, 2)
        async with running_server(tmp_path, receipt_wait_s=1.5) as server:
            alice, bob = await new_user(server, codes[0]), await new_user(server, codes[1])
            await alice.connect()
            mailbox = await bob.connect()
            assert isinstance(await mailbox.receive(), f.Drained)
            sender = await alice.sender()

            first = os.urandom(16)
            await sender.send(f.Send((f.OutgoingEnvelope(first, bob.account, bob.token, elided),)))
            (delivery,) = (await mailbox.expect(f.Deliver, timeout=5)).deliveries
            assert (delivery.envelope_id, delivery.envelope) == (first, elided)
            with pytest.raises(TimeoutError):  # held: neither written nor receipted yet
                await sender.receive(timeout=0.5)
            started = asyncio.get_running_loop().time()
            await mailbox.send(f.Receipt((delivery.seq,)))
            assert (await sender.expect(f.SendResult, timeout=5)).results == ((first, f.SendStatus.OK),)
            assert asyncio.get_running_loop().time() - started < 1.0  # the receipt, not the wait

            second = os.urandom(16)
            await sender.send(f.Send((f.OutgoingEnvelope(second, bob.account, bob.token, kept),)))
            (delivery,) = (await mailbox.expect(f.Deliver, timeout=5)).deliveries
            assert delivery.envelope_id == second
            assert (await sender.expect(f.SendResult, timeout=5)).results == ((second, f.SendStatus.OK),)
            await mailbox.close()
            again = await bob.connect()  # not receipted: delivered again from storage
            (delivery,) = (await again.expect(f.Deliver, timeout=5)).deliveries
            assert (delivery.envelope_id, delivery.envelope) == (second, kept)

    run(scenario())
    disk = b"".join(p.read_bytes() for p in tmp_path.glob("kluis.db*"))
    assert elided not in disk
