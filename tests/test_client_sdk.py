"""The client SDK against a real relay on loopback: invites, messages both ways, receipts, timers,
offline queueing, redelivery, revocation, identity change."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from kluis.client.client import Client
from kluis.client.errors import ContactRevoked, IdentityChanged, InviteRefused, ServerRefused
from kluis.client.keyslots import Argon2Params
from kluis.client.profile import Wiped
from tests.server_support import add_codes, running_server

CHEAP = Argon2Params(memory_kib=8, iterations=1, lanes=1)


class Clock:
    def __init__(self) -> None:
        import time

        self.offset = 0.0
        self._time = time.time

    def __call__(self) -> float:
        return self._time() + self.offset


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


async def make(tmp: Path, name: str, url: str, code: str, clock: Callable[[], float] | None = None) -> Client:
    kwargs = {"clock": clock} if clock is not None else {}
    return await Client.create(tmp / name, "pw-" + name, url, code, None, argon2=CHEAP, **kwargs)  # type: ignore[arg-type]


async def connect(
    alice: Client, bob: Client, bob_calls_alice: str = "alice", alice_calls_bob: str = "bob"
) -> None:
    invite = alice.invite(alice_calls_bob)
    await bob.accept(invite, bob_calls_alice)
    await alice.sync()


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_invite_accept_and_talk_both_ways(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path / "server", 2)
        async with running_server(tmp_path / "server") as server:
            alice = await make(tmp_path, "alice", server.url, codes[0])
            bob = await make(tmp_path, "bob", server.url, codes[1])
            await connect(alice, bob)
            assert [c.name for c in alice.contacts()] == ["bob"]
            assert [c.name for c in bob.contacts()] == ["alice"]
            # Safety numbers agree on both sides.
            assert alice.safety_number("bob").digits == bob.safety_number("alice").digits

            out = await bob.send("alice", "hello alice")
            assert out.state == "sent"
            await alice.sync()
            (shown,) = alice.take_new()
            assert (shown.contact, shown.text, shown.id) == ("bob", "hello alice", out.id)
            assert shown.expires_at is not None  # the 30 s default started at display
            assert alice.take_new() == []  # exactly once
            reply = await alice.send("bob", "hi bob")
            await bob.sync()
            assert [m.text for m in bob.take_new()] == ["hi bob"]
            # Delivery receipts came back: both messages are "delivered" on the sender's side.
            await alice.sync()
            await bob.sync()
            assert [m.state for m in bob.history("alice") if m.direction == "out"] == ["delivered"]
            assert [m.state for m in alice.history("bob") if m.id == reply.id] == ["delivered"]
            for client in (alice, bob):
                await client.close()

    run(scenario())


def test_timers_expire_on_both_sides(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path / "server", 2)
        clock = Clock()
        async with running_server(tmp_path / "server") as server:
            alice = await make(tmp_path, "alice", server.url, codes[0], clock)
            bob = await make(tmp_path, "bob", server.url, codes[1], clock)
            await connect(alice, bob)
            await alice.set_timer("bob", 5)
            await bob.sync()
            assert [c.timer for c in bob.contacts()] == [5]
            (announced,) = bob.take_new()
            assert announced.kind == "timer"
            await alice.send("bob", "self-destructing")
            await bob.sync()
            (message,) = bob.take_new()
            assert message.timer == 5
            clock.offset += 6
            alice.expire()
            bob.expire()
            assert [m for m in alice.history("bob") if m.kind == "text"] == []
            assert [m for m in bob.history("alice") if m.kind == "text"] == []
            for client in (alice, bob):
                rows = client.store.read(lambda c: c.execute("SELECT count(*) FROM messages").fetchone()[0])
                assert rows == 0
                await client.close()

    run(scenario())


def test_offline_queue_then_flush(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path / "server", 2)
        async with running_server(tmp_path / "server") as server:
            alice = await make(tmp_path, "alice", server.url, codes[0])
            bob = await make(tmp_path, "bob", server.url, codes[1])
            await connect(alice, bob)
        # The server is gone: sending queues.
        outcome = await alice.send("bob", "while offline")
        assert outcome.state == "queued"
        assert len(alice.store.outbox()) == 1
        async with running_server(tmp_path / "server") as server:
            alice.me.server_url = bob.me.server_url = server.url  # port 0: a new port
            if alice._link is not None:
                await alice._link.close()
                alice._link = None
            if bob._link is not None:
                await bob._link.close()
                bob._link = None
            await alice.sync()
            assert alice.store.outbox() == []
            await bob.sync()
            assert [m.text for m in bob.take_new()] == ["while offline"]
        for client in (alice, bob):
            await client.close()

    run(scenario())


def test_revoked_contact_cannot_be_reached(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path / "server", 3)
        async with running_server(tmp_path / "server") as server:
            alice = await make(tmp_path, "alice", server.url, codes[0])
            bob = await make(tmp_path, "bob", server.url, codes[1])
            await connect(alice, bob)
            await bob.revoke()
            with pytest.raises(ContactRevoked):
                await alice.send("bob", "are you there?")
            assert [m.state for m in alice.history("bob")] == ["failed"]
            assert [c.revoked for c in alice.contacts()] == [True]
            with pytest.raises(ContactRevoked):
                await alice.send("bob", "again")
            with pytest.raises(ServerRefused):
                await bob.sync()
            # Accepting a revoked account's invite fails with that reason.
            carol = await make(tmp_path, "carol", server.url, codes[2])
            invite = bob.invite("carol")
            with pytest.raises(ContactRevoked):
                await carol.accept(invite, "bob")
            for client in (alice, bob, carol):
                await client.close()

    run(scenario())


def test_identity_change_blocks_sending_until_verified(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path / "server", 3)
        async with running_server(tmp_path / "server") as server:
            alice = await make(tmp_path, "alice", server.url, codes[0])
            bob = await make(tmp_path, "bob", server.url, codes[1])
            await connect(alice, bob)
            alice.mark_verified("bob")
            # Bob re-installs: a new account and identity, a new invite under the same name.
            bob2 = await make(tmp_path, "bob2", server.url, codes[2])
            await alice.accept(bob2.invite("alice"), "bob")
            (info,) = alice.contacts()
            assert info.identity_changed
            assert not info.verified
            with pytest.raises(IdentityChanged):
                await alice.send("bob", "who are you?")
            alice.mark_verified("bob")
            assert (await alice.send("bob", "welcome back")).state == "sent"
            await bob2.sync()
            assert [m.text for m in bob2.take_new()] == ["welcome back"]
            with pytest.raises(InviteRefused):
                await alice.accept(alice.invite("me"), "me")
            for client in (alice, bob, bob2):
                await client.close()

    run(scenario())


def test_invite_is_single_use_and_wrong_passphrase(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path / "server", 3)
        async with running_server(tmp_path / "server") as server:
            alice = await make(tmp_path, "alice", server.url, codes[0])
            bob = await make(tmp_path, "bob", server.url, codes[1])
            mallory = await make(tmp_path, "mallory", server.url, codes[2])
            invite = alice.invite("bob")
            await bob.accept(invite, "alice")
            await alice.sync()
            await mallory.accept(invite, "alice")  # the same invite again
            await alice.sync()
            assert [c.name for c in alice.contacts()] == ["bob"]
            for client in (alice, bob, mallory):
                await client.close()
        from kluis.client.errors import WrongPassphrase

        with pytest.raises(WrongPassphrase):
            Client.open(tmp_path / "alice", "nope")
        again = Client.open(tmp_path / "alice", "pw-alice")
        assert not isinstance(again, Wiped)
        assert [c.name for c in again.contacts()] == ["bob"]
        await again.close()

    run(scenario())


def test_keys_rotate_and_replenish_while_talking(tmp_path: Path) -> None:
    async def scenario() -> None:
        import kluis.client.client as client_module

        codes = await add_codes(tmp_path / "server", 3)
        clock = Clock()
        async with running_server(tmp_path / "server") as server:
            alice = await make(tmp_path, "alice", server.url, codes[0], clock)
            bob = await make(tmp_path, "bob", server.url, codes[1], clock)
            await connect(alice, bob)
            first_key = alice.me.ring.current.key_id
            first_signed = alice.me.prekeys.current_signed_prekey().key_id
            # Eight days on: Alice's next connection rotates her envelope key and signed prekey,
            # publishes them, and tells Bob inside the ratchet (KEYS).
            clock.offset += 8 * 86400
            await alice.sync()
            assert alice.me.ring.current.key_id == first_key + 1
            assert alice.me.prekeys.current_signed_prekey().key_id != first_signed
            await bob.sync()
            await bob.send("alice", "after the rotation")
            await alice.sync()
            assert [m.text for m in alice.take_new()] == ["after the rotation"]
            # Past the grace period the old key is erased; Bob seals to the new one anyway.
            clock.offset += 3 * 86400
            await alice.sync()
            assert alice.me.ring.key_ids() == [first_key + 1]
            await bob.send("alice", "still readable")
            await alice.sync()
            assert [m.text for m in alice.take_new()] == ["still readable"]
            # The directory runs low on one-time keys (8 left, under the server's watermark of 10):
            # the server pushes KEY_STOCK on the open connection and Alice uploads a new batch.
            for _ in range(client_module.ONE_TIME_BATCH - 8):
                await server.http.bundle(alice.me.account, alice.me.token)
            await until(lambda: min(alice.last_stock or (0, 0)) > client_module.ONE_TIME_BATCH)
            await asyncio.sleep(0.3)
            stock = alice.last_stock
            assert stock is not None
            assert stock[0] == stock[1] < 10 + client_module.ONE_TIME_BATCH  # one batch, not one per push
            await alice.close()
            # Everything survives a restart: the new keys were stored before they were uploaded.
            again = Client.open(tmp_path / "alice", "pw-alice", clock=clock)
            assert isinstance(again, Client)
            await again.sync()
            # (Fetches above the watermark are not reported: the count may be lower by those.)
            assert again.last_stock is not None
            assert client_module.ONE_TIME_BATCH < again.last_stock[0] <= stock[0]
            for client in (again, bob):
                await client.close()

    run(scenario())
