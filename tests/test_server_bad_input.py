"""Bad input against the real server process: every kind of malformed, disallowed, oversized, too fast,
too slow or silent client, over the WebSocket and over HTTP.

After each case: the server still serves a fresh client normally (a live send and delivery), nothing
was stored for the invalid input (row counts of the database, read while the server runs), and the
server's resident memory did not grow out of bounds. The limits are set small through the
environment (``KLUIS_SERVER_*``), as an operator would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from kluis.client.transport import MailboxStream, RelayClientError, SendStream
from kluis.relay import frames as f
from kluis.server.relay import PASS_LABEL
from kluis.server.storage._sqlite_mailbox import DISCARD_WAIT_S
from kluis.server.storage.base import epoch_day
from tests.server_process import ServerProcess, admin_codes
from tests.server_support import Remote, User, new_user
from tests.websocket_support import RawWebSocket, client_frame

MAX_FRAME = 200_000
TIMEOUT_S = 0.6
LIMITS = {
    "KLUIS_SERVER_MAX_FRAME_BYTES": str(MAX_FRAME),
    "KLUIS_SERVER_HANDSHAKE_TIMEOUT_S": str(TIMEOUT_S),
    "KLUIS_SERVER_IDLE_TIMEOUT_S": str(TIMEOUT_S),
    "KLUIS_SERVER_SEND_RATE_PER_S": "20",
    "KLUIS_SERVER_SEND_BURST": "64",
    "KLUIS_SERVER_HEARTBEAT_S": "3",
    "KLUIS_SERVER_WRITE_TIMEOUT_S": "2",
    # SQLite's own default: the memory tests measure what the relay holds, not its page cache.
    "KLUIS_SERVER_SQLITE_CACHE_MIB": "2",
    # What the senders' frames may hold before they are durable, server-wide (the memory test).
    "KLUIS_SERVER_MAX_UNSTORED_MIB": "4",
}
SLOW_SENDERS = 6
RSS_SLACK = 150 * 1024 * 1024
"""Coarse: the server may keep what it allocated (Python's allocator), but not grow without bound."""
TABLES = ("accounts", "activation_codes", "signed_prekeys", "one_time_prekeys", "envelope_keys", "mailbox")


@dataclass
class Relay:
    server: ServerProcess
    users: list[User]
    send_pass: f.SendPass
    secret: bytes
    baseline_rss: int

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def http_url(self) -> str:
        return self.server.url.replace("ws://", "http://")

    def rss(self) -> int:
        status = Path(f"/proc/{self.server.pid}/status").read_text()
        (line,) = [x for x in status.splitlines() if x.startswith("VmRSS:")]
        return int(line.split()[1]) * 1024

    def counts(self) -> dict[str, int]:
        conn = sqlite3.connect(f"file:{self.server.data_dir / 'kluis.db'}?mode=ro", uri=True)
        try:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        finally:
            conn.close()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[aiohttp.ClientSession]:
        async with aiohttp.ClientSession() as session:
            remote = Remote(self.url, session)
            for user in self.users:
                user.server = remote
                user.mailbox = None
            yield session


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    data_dir = tmp_path_factory.mktemp("bad-input") / "data"
    codes = admin_codes(data_dir, 3)
    server = ServerProcess(data_dir, env=LIMITS)
    server.start()

    async def setup() -> tuple[list[User], f.SendPass]:
        async with aiohttp.ClientSession() as session:
            remote = Remote(server.url, session)
            users = [await new_user(remote, code) for code in codes]
            for user in users:
                await user.connect()
                await user.upload()
            send_pass = await users[0].sender()
            assert users[0].mailbox is not None
            pass_frame = await users[0].mailbox.send_pass()
            await send_pass.close()
            for user in users:
                assert user.mailbox is not None
                await user.mailbox.close()
            return users, pass_frame

    try:
        users, send_pass = asyncio.run(setup())
        secret = (data_dir / "send-pass.key").read_bytes()
        relay = Relay(server, users, send_pass, secret, 0)
        relay.baseline_rss = relay.rss()
        yield relay
    finally:
        assert server.stop() == 0, server.lines[-20:]


def run(
    relay: Relay,
    case: Callable[[aiohttp.ClientSession], Awaitable[None]],
    *,
    stored: int | Callable[[], int] = 0,
) -> None:
    """Runs ``case``, then checks that nothing was stored for it (``stored``: envelopes the case
    itself got acknowledged with OK and left undelivered) and that the server is healthy."""
    time.sleep(2 * DISCARD_WAIT_S)  # receipts' deletes of the case before are committed
    before = relay.counts()

    async def main() -> None:
        async with relay.session() as session:
            await asyncio.wait_for(case(session), 30)
            left = stored if isinstance(stored, int) else stored()
            await asyncio.sleep(2 * DISCARD_WAIT_S)
            after = relay.counts()
            assert after == {**before, "mailbox": before["mailbox"] + left}, (before, after)
            await assert_healthy(relay, session)

    asyncio.run(main())
    assert relay.rss() < relay.baseline_rss + RSS_SLACK, (relay.rss(), relay.baseline_rss)


async def assert_healthy(relay: Relay, session: aiohttp.ClientSession) -> None:
    """A fresh client: a live send from an anonymous stream to a connected mailbox, and its receipt."""
    carol = relay.users[2]
    mailbox = await carol.connect()
    try:
        # Drain what a case left for Carol first.
        while not isinstance(frame := await mailbox.receive(timeout=10), f.Drained):
            if isinstance(frame, f.Deliver):
                await mailbox.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))
        sender = await SendStream.connect(session, relay.url, relay.send_pass, False)
        envelope_id = os.urandom(16)
        statuses = await sender.send_envelopes(
            [f.OutgoingEnvelope(envelope_id, carol.account, carol.token, b"healthy" * 40)]
        )
        assert statuses == {envelope_id: f.SendStatus.OK}
        await sender.close()
        frame = await mailbox.expect(f.Deliver, timeout=10)
        assert [d.envelope_id for d in frame.deliveries] == [envelope_id]
        await mailbox.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))
        await asyncio.sleep(0.05)
    finally:
        await mailbox.close()


async def raw_stream(session: aiohttp.ClientSession, relay: Relay) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(relay.url + "/v1/stream", max_msg_size=0, autoping=True)
    msg = await ws.receive(timeout=5)
    assert isinstance(f.parse(msg.data), f.Challenge)
    return ws


async def closed_with(ws: aiohttp.ClientWebSocketResponse, code: f.ErrorCode | None) -> None:
    """The server answers with ERROR ``code`` (None: no ERROR frame required) and closes."""
    seen: list[f.Frame] = []
    for _ in range(10):
        msg = await ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.BINARY:
            break
        seen.append(f.parse(msg.data))
    else:
        raise AssertionError("the server did not close")
    errors = [frame for frame in seen if isinstance(frame, f.Error)]
    if code is not None:
        assert [e.code for e in errors] == [code], seen
    assert ws.closed or msg.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.CLOSING,
    )
    await ws.close()


# -- WebSocket --------------------------------------------------------------------------------------


def one_send(relay: Relay, envelope: bytes = b"x" * 100) -> f.Send:
    carol = relay.users[2]
    return f.Send((f.OutgoingEnvelope(os.urandom(16), carol.account, carol.token, envelope),))


@pytest.mark.parametrize(
    ("name", "frame", "code"),
    [
        ("garbage", b"\x8f\x13\x00garbage" + bytes(range(200)), f.ErrorCode.UNSUPPORTED_VERSION),
        ("empty", b"", f.ErrorCode.MALFORMED),
        ("unknown version", b"\x02\x01" + bytes(80), f.ErrorCode.UNSUPPORTED_VERSION),
        ("unknown type", b"\x01\x7f" + bytes(16), f.ErrorCode.MALFORMED),
        ("server frame type", f.serialize(f.Challenge(bytes(32), 1)), f.ErrorCode.NOT_ALLOWED),
        ("receipt before hello", f.serialize(f.Receipt((1, 2))), f.ErrorCode.NOT_ALLOWED),
        ("zero receipts", b"\x01\x04\x00\x00", f.ErrorCode.MALFORMED),
        ("trailing bytes", f.serialize(f.GetSendPass()) + b"\x00", f.ErrorCode.MALFORMED),
    ],
)
def test_malformed_or_disallowed_frame_before_hello(
    relay: Relay, name: str, frame: bytes, code: f.ErrorCode
) -> None:
    async def case(session: aiohttp.ClientSession) -> None:
        ws = await raw_stream(session, relay)
        await ws.send_bytes(frame)
        await closed_with(ws, code)

    run(relay, case)


def test_truncated_frames_on_a_sending_stream(relay: Relay) -> None:
    whole = f.serialize(one_send(relay))

    async def case(session: aiohttp.ClientSession) -> None:
        for cut in (1, 3, 20, len(whole) // 2, len(whole) - 1):
            ws = await raw_stream(session, relay)
            await ws.send_bytes(f.serialize(f.OpenSend(relay.send_pass.day, relay.send_pass.send_pass)))
            await ws.send_bytes(whole[:cut])
            await closed_with(ws, f.ErrorCode.MALFORMED)

    run(relay, case)


def test_frames_the_state_does_not_allow(relay: Relay) -> None:
    alice = relay.users[0]

    async def case(session: aiohttp.ClientSession) -> None:
        # A send on the authenticated stream (sends are anonymous).
        mailbox = await alice.connect()
        await mailbox.send(one_send(relay))
        with pytest.raises(RelayClientError) as err:
            await mailbox.expect(f.SendResult, timeout=10)
        assert err.value.code == "not_allowed"
        await mailbox.close()
        # AUTH, RECEIPT, UPLOAD_KEYS and GET_SEND_PASS on a sending stream; a second OPEN_SEND.
        pass_frame = f.OpenSend(relay.send_pass.day, relay.send_pass.send_pass)
        for frame in (
            f.Auth(alice.account, bytes(64)),
            f.Receipt((1,)),
            f.GetSendPass(),
            f.UploadKeys(None, None, (), (), ()),
            pass_frame,
        ):
            ws = await raw_stream(session, relay)
            await ws.send_bytes(f.serialize(pass_frame))
            await ws.send_bytes(f.serialize(frame))
            await closed_with(ws, f.ErrorCode.NOT_ALLOWED)

    run(relay, case)


def test_text_message_is_refused(relay: Relay) -> None:
    async def case(session: aiohttp.ClientSession) -> None:
        ws = await raw_stream(session, relay)
        await ws.send_str('{"type": "AUTH"}')
        await closed_with(ws, f.ErrorCode.MALFORMED)

    run(relay, case)


def test_auth_with_a_wrong_signature_or_unknown_account(relay: Relay) -> None:
    alice, bob = relay.users[:2]

    async def case(session: aiohttp.ClientSession) -> None:
        for identity, account in ((bob.identity, alice.account), (alice.identity, os.urandom(16))):
            with pytest.raises(RelayClientError) as err:
                await MailboxStream.connect(session, relay.url, identity, account, False)
            assert err.value.code == "auth_failed"
        # A signature over another challenge (a replayed AUTH) fails too.
        ws = await raw_stream(session, relay)
        signature = alice.identity.sign(f.auth_message(bytes(32), alice.account))
        await ws.send_bytes(f.serialize(f.Auth(alice.account, signature)))
        await closed_with(ws, f.ErrorCode.AUTH_FAILED)

    run(relay, case)


def test_send_pass_of_the_day_before_yesterday_is_refused(relay: Relay) -> None:
    today = epoch_day(time.time())

    def day_pass(day: int) -> bytes:
        return hmac.digest(relay.secret, PASS_LABEL + day.to_bytes(4, "big"), "sha256")

    async def case(session: aiohttp.ClientSession) -> None:
        # Yesterday's pass is still good (fetched just before midnight); older ones are not.
        stream = await SendStream.connect(
            session, relay.url, f.SendPass(today - 1, day_pass(today - 1)), False
        )
        envelope = one_send(relay).envelopes[0]
        assert await stream.send_envelopes([envelope]) == {envelope.envelope_id: f.SendStatus.OK}
        await stream.close()
        for day, send_pass in (
            (today - 2, day_pass(today - 2)),
            (today + 1, day_pass(today + 1)),
            (today, day_pass(today - 1)),
            (today, bytes(32)),
        ):
            ws = await raw_stream(session, relay)
            await ws.send_bytes(f.serialize(f.OpenSend(day, send_pass)))
            await closed_with(ws, f.ErrorCode.SUBSCRIPTION_EXPIRED)

    run(relay, case, stored=1)


def test_send_flood_is_rate_limited(relay: Relay) -> None:
    carol = relay.users[2]
    accepted: list[int] = []

    async def case(session: aiohttp.ClientSession) -> None:
        stream = await SendStream.connect(session, relay.url, relay.send_pass, False)
        envelopes = [
            f.OutgoingEnvelope(os.urandom(16), carol.account, carol.token, b"flood" * 20) for _ in range(320)
        ]
        statuses = await stream.send_envelopes(envelopes)  # ten full frames at once; burst is 64
        counts = {s: list(statuses.values()).count(s) for s in set(statuses.values())}
        assert set(counts) == {f.SendStatus.OK, f.SendStatus.RATE_LIMITED}, counts
        assert 64 <= counts[f.SendStatus.OK] <= 96, counts  # the burst, and what refilled meanwhile
        accepted.append(counts[f.SendStatus.OK])
        await stream.close()

    run(relay, case, stored=lambda: accepted[0])  # only what was acknowledged OK is stored


def test_oversized_frame_is_closed_before_it_is_read(relay: Relay) -> None:
    async def case(session: aiohttp.ClientSession) -> None:
        # A real frame over max_frame_bytes: aiohttp refuses it (close code 1009 MESSAGE_TOO_BIG).
        ws = await raw_stream(session, relay)
        await ws.send_bytes(f.serialize(f.OpenSend(relay.send_pass.day, relay.send_pass.send_pass)))
        await ws.send_bytes(f.serialize(one_send(relay, os.urandom(MAX_FRAME + 1000))))
        await closed_with(ws, None)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        # A header announcing 1 GiB (and 4 EiB) that never comes: closed at once, nothing allocated.
        for length in (1 << 30, 1 << 62):
            await asyncio.to_thread(huge_header, relay.url, length)

    run(relay, case)


def huge_header(url: str, length: int) -> None:
    """A hand-written WebSocket upgrade, then a binary frame header claiming ``length`` bytes."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            (
                f"GET /v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            assert chunk, "closed during the upgrade"
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 101"), reply[:40]
        started = time.monotonic()
        sock.sendall(b"\x82\xff" + length.to_bytes(8, "big") + os.urandom(4) + b"\x01\x02" * 100)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        assert time.monotonic() - started < 5, "the server waited for the announced bytes"
        # The server's last word is a close frame (0x88, a short length) with 1009, after the
        # CHALLENGE, maybe with a reason.
        assert re.search(rb"\x88[\x02-\x7d]\x03\xf1", received), received[-32:]


def test_a_client_that_never_hellos_is_timed_out(relay: Relay) -> None:
    async def case(session: aiohttp.ClientSession) -> None:
        started = time.monotonic()
        ws = await raw_stream(session, relay)
        await closed_with(ws, f.ErrorCode.TIMEOUT)
        assert TIMEOUT_S * 0.8 < time.monotonic() - started < TIMEOUT_S + 3

    run(relay, case)


def test_a_mailbox_that_answers_nothing_is_cut_off_and_one_that_answers_pings_stays(relay: Relay) -> None:
    """The heartbeat (every 3 s here): a mailbox silent for a beat is pinged. Alice's client keeps
    reading, so aiohttp answers the pings, and she stays connected through several beats with
    nothing else to say; Bob's reads nothing after authenticating, answers no ping, and is cut off
    within two beats of the first check (which comes within the handshake timeout)."""
    alice, bob = relay.users[:2]
    beat = float(LIMITS["KLUIS_SERVER_HEARTBEAT_S"])

    async def case(session: aiohttp.ClientSession) -> None:
        reader, silent = await alice.connect(), await bob.connect()
        await reader.expect(f.Drained)
        await silent.expect(f.Drained)
        started = time.monotonic()
        reading = asyncio.ensure_future(reader.receive(timeout=None))  # answers pings meanwhile
        while await connections(session, relay, "authenticated") > 1:
            assert time.monotonic() - started < TIMEOUT_S + 3 * beat + 2, "the silent mailbox stayed"
            await asyncio.sleep(0.2)
        assert time.monotonic() - started > beat, "cut before it was even pinged"
        await asyncio.sleep(max(0.0, started + 3.5 * beat - time.monotonic()))
        assert not reading.done(), "the reading mailbox was closed"
        assert await connections(session, relay, "authenticated") == 1
        reading.cancel()
        await reader.close()
        with contextlib.suppress(Exception):
            await silent.close()

    run(relay, case)


def test_a_client_ping_is_answered_and_changes_nothing(relay: Relay) -> None:
    """The server answers a client's WebSocket PING with a PONG carrying the same bytes (it pings
    mailboxes itself, so it handles pings and pongs rather than leaving them to aiohttp)."""

    async def case(session: aiohttp.ClientSession) -> None:
        ws = await session.ws_connect(relay.url + "/v1/stream", autoping=False)  # pongs reach us
        assert isinstance(f.parse((await ws.receive(timeout=5)).data), f.Challenge)
        await ws.ping(b"kluis?")
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.PONG
        assert msg.data == b"kluis?"
        await ws.close()

    run(relay, case)


def test_an_idle_sending_stream_is_timed_out(relay: Relay) -> None:
    async def case(session: aiohttp.ClientSession) -> None:
        stream = await SendStream.connect(session, relay.url, relay.send_pass, False)
        envelope = one_send(relay).envelopes[0]
        assert await stream.send_envelopes([envelope]) == {envelope.envelope_id: f.SendStatus.OK}
        started = time.monotonic()
        with pytest.raises(RelayClientError) as err:
            await stream.receive(timeout=10)
        assert err.value.code == "timeout"
        assert time.monotonic() - started < TIMEOUT_S + 3

    run(relay, case, stored=1)


def test_a_mailbox_that_never_reads_is_cut_off_and_others_are_not(relay: Relay) -> None:
    """Bob's client stops reading while ~46 MB of envelopes arrive for him: the server keeps at most
    its delivery window (8 MiB) of them in memory, not all, and the write timeout (when the socket
    buffers fill) or the heartbeat (when they absorb the window) cuts him off; Alice is
    served meanwhile, and a reading Bob later gets every envelope from storage."""
    alice, bob = relay.users[:2]
    body = os.urandom(120_000)
    pushed = SLOW_SENDERS * 64
    grew: list[int] = []

    async def push(session: aiohttp.ClientSession) -> None:
        # The rate limit is per sending stream (burst 64): several streams push at once.
        sender = await SendStream.connect(session, relay.url, relay.send_pass, False)
        envelopes = [f.OutgoingEnvelope(os.urandom(16), bob.account, bob.token, body) for _ in range(64)]
        for envelope in envelopes:  # one 120 KB envelope per frame (max_frame_bytes is 200 KB)
            await sender.send(f.Send((envelope,)))
        statuses: dict[bytes, f.SendStatus] = {}
        while len(statuses) < len(envelopes):
            statuses.update((await sender.expect(f.SendResult, timeout=10)).results)
        assert set(statuses.values()) == {f.SendStatus.OK}
        await sender.close()

    async def case(session: aiohttp.ClientSession) -> None:
        before = relay.rss()
        slow = await bob.connect()  # never reads from here on
        await asyncio.gather(*(push(session) for _ in range(SLOW_SENDERS)))
        assert await connections(session, relay, "authenticated") == 1, "cut before the pile-up"
        grew.append(relay.rss() - before)
        # Alice, meanwhile, is served normally.
        mailbox = await alice.connect()
        assert isinstance(await mailbox.receive(timeout=5), f.Drained)
        await mailbox.close()
        for _ in range(100):
            if await connections(session, relay, "authenticated") == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("a mailbox that never reads was not cut off")
        await slow.close()
        # Bob's envelopes waited in storage; a reading Bob gets them all.
        mailbox = await bob.connect()
        got = 0
        while not isinstance(frame := await mailbox.receive(timeout=10), f.Drained):
            if isinstance(frame, f.Deliver):
                got += len(frame.deliveries)
                await mailbox.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))
        assert got == pushed
        await mailbox.close()
        await asyncio.sleep(0.1)

    run(relay, case)
    # 46 MB were pushed at a mailbox that reads nothing. The server may hold its delivery window
    # (8 MiB), the senders' unstored frames (4 MiB here) and each sender's inbox (1 MiB): 18 MiB,
    # plus what the allocator keeps. Unbounded, it grew by up to 39 MB on a busy machine.
    assert grew[0] < 24 * 1024 * 1024, f"server RSS grew by {grew[0] >> 20} MB"


# -- several frames in one read -----------------------------------------------------------------------


async def sending_socket(relay: Relay) -> RawWebSocket:
    """A sending stream on a raw socket, past OPEN_SEND: frames written to it in one write arrive in
    one read (the server stores a read's SEND frames together)."""
    ws = await RawWebSocket.connect(relay.url + "/v1/stream")
    assert isinstance(f.parse((await ws.message())[1]), f.Challenge)
    await ws.write(client_frame(2, f.serialize(f.OpenSend(relay.send_pass.day, relay.send_pass.send_pass))))
    return ws


async def statuses_until(ws: RawWebSocket, count: int) -> tuple[dict[bytes, f.SendStatus], list[f.Frame]]:
    statuses: dict[bytes, f.SendStatus] = {}
    others: list[f.Frame] = []
    while len(statuses) < count:
        opcode, payload = await ws.message()
        assert opcode == 2, (opcode, payload)
        frame = f.parse(payload)
        if isinstance(frame, f.SendResult):
            statuses.update(frame.results)
        else:
            others.append(frame)
    return statuses, others


async def drained_ids(user: User) -> list[bytes]:
    """The envelope ids in the user's mailbox, in seq order (receipted, so the mailbox is empty after)."""
    mailbox = await user.connect()
    ids: list[bytes] = []
    while not isinstance(frame := await mailbox.receive(timeout=10), f.Drained):
        if isinstance(frame, f.Deliver):
            ids += [d.envelope_id for d in frame.deliveries]
            await mailbox.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))
    await mailbox.close()
    return ids


def test_send_frames_in_one_read_are_each_answered_and_keep_their_order(relay: Relay) -> None:
    """Seven SEND frames in one TCP write, the middle one also to an account the server has not
    cached (that frame must wait for the database): each envelope gets its own status, and the
    recipient's mailbox holds them in the order they were sent, the waiting frame's included."""
    carol = relay.users[2]

    async def case(session: aiohttp.ClientSession) -> None:
        ws = await sending_socket(relay)
        to_carol = [
            f.OutgoingEnvelope(os.urandom(16), carol.account, carol.token, b"p" * 64) for _ in range(7)
        ]
        unknown = f.OutgoingEnvelope(os.urandom(16), os.urandom(16), os.urandom(32), b"q" * 64)
        frames = [f.Send((e,)) for e in to_carol]
        frames[3] = f.Send((to_carol[3], unknown))
        await ws.write(b"".join(client_frame(2, f.serialize(frame)) for frame in frames))
        statuses, others = await statuses_until(ws, len(to_carol) + 1)
        assert others == []
        assert statuses == {
            **{e.envelope_id: f.SendStatus.OK for e in to_carol},
            unknown.envelope_id: f.SendStatus.REJECTED,
        }
        await ws.close()
        assert await drained_ids(carol) == [e.envelope_id for e in to_carol]

    run(relay, case)


def test_send_frames_before_a_malformed_one_in_the_same_read_are_stored_and_answered(relay: Relay) -> None:
    """The frames a read held before the bad one were accepted: they are stored and answered before
    the ERROR, and nothing after the bad frame is."""
    carol = relay.users[2]

    async def case(session: aiohttp.ClientSession) -> None:
        ws = await sending_socket(relay)
        good = [f.OutgoingEnvelope(os.urandom(16), carol.account, carol.token, b"g" * 64) for _ in range(3)]
        after = f.OutgoingEnvelope(os.urandom(16), carol.account, carol.token, b"a" * 64)
        stream = b"".join(client_frame(2, f.serialize(f.Send((e,)))) for e in good)
        stream += client_frame(2, b"\x01\x04\x00\x00")  # a RECEIPT of no seqs: malformed
        stream += client_frame(2, f.serialize(f.Send((after,))))
        await ws.write(stream)
        statuses, others = await statuses_until(ws, len(good))
        assert statuses == {e.envelope_id: f.SendStatus.OK for e in good}
        if not others:
            _, payload = await ws.message()
            others.append(f.parse(payload))
        assert [type(x) for x in others] == [f.Error]
        assert isinstance(others[0], f.Error)
        assert others[0].code is f.ErrorCode.MALFORMED
        await ws.close()
        assert await drained_ids(carol) == [e.envelope_id for e in good]

    run(relay, case)


async def connections(session: aiohttp.ClientSession, relay: Relay, kind: str) -> int:
    async with session.get(relay.http_url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(f'kluis_connections{{kind="{kind}"}}'):
            return int(float(line.split()[-1]))
    raise AssertionError("no connections gauge")


# -- HTTP -------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def http_cases(relay: Relay) -> list[tuple[str, str, bytes, int, str]]:
    alice = relay.users[0]
    account, token = b64(alice.account), b64(alice.token)
    identity = b64(alice.identity.public.to_bytes())
    good_hash = b64(hashlib.sha256(b"t").digest())
    j = json.dumps
    cases = [
        ("/v1/bundle", "malformed JSON", b'{"account": ', 400, "bad_request"),
        ("/v1/bundle", "not UTF-8", b"\xff\xfe\x00{}", 400, "bad_request"),
        ("/v1/bundle", "a list", b"[]", 400, "bad_request"),
        ("/v1/bundle", "missing field", j({"account": account}).encode(), 400, "bad_request"),
        (
            "/v1/bundle",
            "extra field",
            j({"account": account, "token": token, "x": 1}).encode(),
            400,
            "bad_request",
        ),
        ("/v1/bundle", "number", j({"account": 7, "token": token}).encode(), 400, "bad_request"),
        ("/v1/bundle", "bad base64", j({"account": "!!!!", "token": token}).encode(), 400, "bad_request"),
        (
            "/v1/bundle",
            "base64url",
            j({"account": base64.urlsafe_b64encode(b"\xfb\xff" * 8).decode(), "token": token}).encode(),
            400,
            "bad_request",
        ),
        (
            "/v1/bundle",
            "short account",
            j({"account": b64(alice.account[:15]), "token": token}).encode(),
            400,
            "bad_request",
        ),
        (
            "/v1/bundle",
            "long token",
            j({"account": account, "token": b64(alice.token + b"x")}).encode(),
            400,
            "bad_request",
        ),
        (
            "/v1/bundle",
            "wrong token",
            j({"account": account, "token": b64(os.urandom(32))}).encode(),
            403,
            "rejected",
        ),
        (
            "/v1/accounts",
            "bad identity",
            j({"code": "KLUIS-X", "identity": b64(bytes(129)), "token_hash": good_hash}).encode(),
            400,
            "bad_request",
        ),
        (
            "/v1/accounts",
            "short hash",
            j({"code": "KLUIS-X", "identity": identity, "token_hash": b64(b"x")}).encode(),
            400,
            "bad_request",
        ),
        (
            "/v1/accounts",
            "unknown code",
            j({"code": "KLUIS-X", "identity": identity, "token_hash": good_hash}).encode(),
            403,
            "code_invalid",
        ),
        (
            "/v1/accounts",
            "empty code",
            j({"code": "", "identity": identity, "token_hash": good_hash}).encode(),
            400,
            "bad_request",
        ),
        (
            "/v1/accounts",
            "long code",
            j({"code": "K" * 65, "identity": identity, "token_hash": good_hash}).encode(),
            400,
            "bad_request",
        ),
        (
            "/v1/accounts/extend",
            "unknown account",
            j({"account": b64(os.urandom(16)), "code": "KLUIS-X"}).encode(),
            403,
            "rejected",
        ),
        (
            "/v1/accounts/extend",
            "unknown code",
            j({"account": account, "code": "KLUIS-X"}).encode(),
            403,
            "code_invalid",
        ),
        (
            "/v1/revoke",
            "not a statement",
            j({"statement": b64(b"\x01" + bytes(10))}).encode(),
            400,
            "bad_request",
        ),
        (
            "/v1/revoke",
            "forged",
            j({"statement": b64(b"\x01" + alice.account + bytes(64))}).encode(),
            401,
            "auth_failed",
        ),
        (
            "/v1/revoke",
            "unknown account",
            j({"statement": b64(b"\x01" + os.urandom(16) + bytes(64))}).encode(),
            403,
            "rejected",
        ),
        ("/v1/revoke", "oversized", j({"statement": "A" * 40_000}).encode(), 413, "too_large"),
        ("/v1/bundle", "oversized", b"{" + b" " * 20_000 + b"}", 413, "too_large"),
    ]
    return [(path, name, body, status, code) for path, name, body, status, code in cases]


def test_http_bad_requests_are_typed_json_errors(relay: Relay) -> None:
    async def case(session: aiohttp.ClientSession) -> None:
        for path, name, body, status, code in http_cases(relay):
            async with session.post(relay.http_url + path, data=body) as response:
                payload = await response.json(content_type=None)
                assert (response.status, payload.get("code")) == (status, code), (path, name, payload)
                assert response.content_type == "application/json", (path, name)
                assert isinstance(payload["error"], str)

        # A chunked body without a length, over the limit.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 4096

        async with session.post(relay.http_url + "/v1/bundle", data=chunks()) as response:
            assert response.status == 413
            assert (await response.json(content_type=None))["code"] == "too_large"
        # A chunked body that arrives in pieces is read whole (not just its first piece).
        text = json.dumps({"account": b64(relay.users[0].account), "code": "KLUIS-X"}).encode()

        async def pieces() -> AsyncIterator[bytes]:
            for i in range(0, len(text), 7):
                yield text[i : i + 7]
                await asyncio.sleep(0.01)

        async with session.post(relay.http_url + "/v1/accounts/extend", data=pieces()) as response:
            assert (await response.json(content_type=None))["code"] == "code_invalid"
        # Unknown routes and methods: typed JSON errors too.
        for method, path, status in (
            ("GET", "/v1/bundle", 405),
            ("POST", "/v1/nothing", 404),
            ("GET", "/", 404),
        ):
            async with session.request(method, relay.http_url + path) as response:
                assert response.status == status, (method, path)
                payload = await response.json(content_type=None)
                assert isinstance(payload["error"], str)
                assert isinstance(payload["code"], str)
        # The stream's route refuses what is not a WebSocket upgrade (RFC 6455 section 4.2.1) the
        # same way, and the connection stays an HTTP one.
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": b64(os.urandom(16))}
        for headers in ({}, upgrade | {"Sec-WebSocket-Version": "8"}, upgrade | {"Sec-WebSocket-Key": "x"}):
            async with session.get(relay.http_url + "/v1/stream", headers=headers) as response:
                assert response.status == 400, headers
                assert (await response.json(content_type=None))["code"] == "bad_request"

    run(relay, case)
