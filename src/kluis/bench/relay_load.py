"""The load generator of ``kluis bench relay``: runs in its own process(es), on uvloop.

A worker registers its own accounts over HTTP, opens its streams with the client transport
(kluis.client.transport), then drives the hot loop on the aiohttp WebSockets directly with
hand-packed frames (checked against kluis.relay.frames at start), so the generator costs little.
It talks to the orchestrator (relay.py) through a pipe: ``("ready",)`` -> the shared start time,
``("mark", name, info)`` -> an acknowledgement once the orchestrator sampled the server, and finally
``("result", dict)`` or ``("error", text)``.

Payloads are 256 opaque bytes (a send timestamp, then filler), not sealed envelopes: the relay never
opens an envelope, so its cost does not depend on what the bytes are.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import struct
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import aiohttp

from kluis.client.transport import MailboxStream, RelayClientError, RelayHttp, SendStream
from kluis.protocol.errors import DecodeError
from kluis.protocol.keys import IdentityKeyPair
from kluis.relay import frames as f

PAYLOAD_BYTES = 256
IN_FLIGHT = f.MAX_BATCH
"""Envelopes a W1 sender has sent but not seen acknowledged (issue 3: at most 32)."""
REGISTER_CONCURRENCY = 64
CONNECT_CONCURRENCY = 200
IO_TIMEOUT = 30.0
SETTLE_S = 10.0
"""After the measured window: how long in-flight sends and deliveries may take to finish."""

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_STAMP = struct.Struct(">d")
_SEND_HEAD = bytes((f.FRAME_VERSION, f.FrameType.SEND))
_RECEIPT_HEAD = bytes((f.FRAME_VERSION, f.FrameType.RECEIPT))
_FILL = bytes(range(PAYLOAD_BYTES - _STAMP.size))
_T = TypeVar("_T")


def cpu_seconds() -> float:
    """This process's CPU time (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_nofile() -> int:
    """Raises the soft open-file limit to the hard one (W4 holds thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- hand-packed frames (the same bytes as frames.serialize; see self_check) --------------------


def send_frame(items: list[bytes]) -> bytes:
    """A SEND frame of ``items``, each ``envelope_id + recipient + token + u32 len + payload``."""
    return b"".join((_SEND_HEAD, bytes((len(items),)), *items))


def envelope_item(envelope_id: bytes, route: bytes, stamp: float) -> bytes:
    """``route`` = recipient + token + u32 length, precomputed per sender."""
    return b"".join((envelope_id, route, _STAMP.pack(stamp), _FILL))


def route_of(recipient: bytes, token: bytes) -> bytes:
    return recipient + token + _U32.pack(PAYLOAD_BYTES)


def send_results(data: bytes) -> tuple[int, int]:
    """(OK, not OK) counts of a SEND_RESULT frame; (0, 0) for any other frame."""
    if data[1] != f.FrameType.SEND_RESULT:
        return 0, 0
    n = data[2]
    ok = sum(1 for k in range(n) if data[3 + 16 + 17 * k] == f.SendStatus.OK)
    return ok, n - ok


def ok_ids(data: bytes) -> list[bytes]:
    """The envelope ids a SEND_RESULT acknowledged as stored."""
    if data[1] != f.FrameType.SEND_RESULT:
        return []
    return [data[3 + 17 * k : 19 + 17 * k] for k in range(data[2]) if data[19 + 17 * k] == f.SendStatus.OK]


def deliveries(data: bytes) -> list[tuple[int, bytes, float]]:
    """(seq, envelope id, send timestamp) of each delivery in a DELIVER frame; [] otherwise."""
    if data[1] != f.FrameType.DELIVER:
        return []
    out = []
    pos = 3
    for _ in range(data[2]):
        seq = _U64.unpack_from(data, pos)[0]
        envelope_id = data[pos + 8 : pos + 24]
        size = _U32.unpack_from(data, pos + 24)[0]
        out.append((seq, envelope_id, _STAMP.unpack_from(data, pos + 28)[0]))
        pos += 28 + size
    return out


def receipt_frame(seqs: list[int]) -> bytes:
    return b"".join((_RECEIPT_HEAD, struct.pack(f">H{len(seqs)}Q", len(seqs), *seqs)))


def self_check() -> None:
    """The hand-packed frames must be exactly what the relay's schema module produces and parses."""
    ids = [os.urandom(16), os.urandom(16)]
    recipient, token = os.urandom(16), os.urandom(32)
    items = [envelope_item(i, route_of(recipient, token), 1.5) for i in ids]
    payload = _STAMP.pack(1.5) + _FILL
    expected = f.Send(tuple(f.OutgoingEnvelope(i, recipient, token, payload) for i in ids))
    assert f.serialize(expected) == send_frame(items)
    assert f.parse(receipt_frame([1, 2**40])) == f.Receipt((1, 2**40))
    deliver = f.serialize(f.Deliver((f.Delivery(7, ids[0], payload), f.Delivery(9, ids[1], payload))))
    assert deliveries(deliver) == [(7, ids[0], 1.5), (9, ids[1], 1.5)]
    result = f.serialize(f.SendResult(((ids[0], f.SendStatus.OK), (ids[1], f.SendStatus.REJECTED))))
    assert send_results(result) == (1, 1)
    assert ok_ids(result) == [ids[0]]


# -- accounts and streams -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    identity: IdentityKeyPair
    account: bytes
    token: bytes


async def bounded(items: list[_T], limit: int, fn: Callable[[_T], Awaitable[Any]]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(item: _T) -> Any:
        async with gate:
            return await fn(item)

    return await asyncio.gather(*(one(i) for i in items))


async def register(http: RelayHttp, codes: list[str]) -> list[Account]:
    """One account per code, registered concurrently over the HTTP API."""

    async def one(code: str) -> Account:
        identity = IdentityKeyPair.generate(os.urandom)
        token = os.urandom(32)
        reg = await http.register(code, identity.public.to_bytes(), hashlib.sha256(token).digest())
        return Account(identity, reg.account, token)

    result: list[Account] = await bounded(codes, REGISTER_CONCURRENCY, one)
    return result


async def mailbox(session: aiohttp.ClientSession, url: str, account: Account) -> MailboxStream:
    return await MailboxStream.connect(session, url, account.identity, account.account, False)


async def sender_stream(session: aiohttp.ClientSession, url: str, account: Account) -> SendStream:
    """The sender's own mailbox stream fetches the day's pass, then closes; the send stream is anonymous."""
    own = await mailbox(session, url, account)
    try:
        send_pass = await own.send_pass()
    finally:
        await own.close()
    return await SendStream.connect(session, url, send_pass, False)


async def receiver(
    session: aiohttp.ClientSession, url: str, account: Account
) -> aiohttp.ClientWebSocketResponse:
    """An authenticated mailbox stream that has drained (deliveries from now on are live pushes)."""
    stream = await mailbox(session, url, account)
    await stream.expect(f.Drained, timeout=IO_TIMEOUT)
    return stream.ws


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


class Control:
    """The worker's end of the orchestrator's pipe."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def ask(self, *message: Any) -> Any:
        self.conn.send(message)

        def wait() -> Any:
            return self.conn.recv() if self.conn.poll(900) else None

        return await asyncio.get_running_loop().run_in_executor(None, wait)


# -- W1 and W2: online pairs --------------------------------------------------------------------


@dataclass
class PairStats:
    t0: float = 0.0
    t1: float = 0.0
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    received: int = 0
    in_window: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))


async def _receive_loop(ws: aiohttp.ClientWebSocketResponse, st: PairStats) -> None:
    monotonic, latencies = time.monotonic, st.latencies
    while True:
        msg = await ws.receive()
        if msg.type is not aiohttp.WSMsgType.BINARY:
            return
        items = deliveries(msg.data)
        if not items:
            continue
        now = monotonic()
        await ws.send_bytes(receipt_frame([seq for seq, _, _ in items]))
        st.received += len(items)
        if st.t0 <= now < st.t1:
            st.in_window += len(items)
            latencies.extend(now - stamp for _, _, stamp in items)


async def _saturate(ws: aiohttp.ClientWebSocketResponse, route: bytes, batched: bool, st: PairStats) -> None:
    """Sends as fast as acknowledged, IN_FLIGHT at most; one envelope per frame unless ``batched``."""
    prefix, counter, in_flight = os.urandom(8), 0, 0
    monotonic = time.monotonic
    while True:
        now = monotonic()
        room = IN_FLIGHT - in_flight if now < st.t1 else 0
        if room:
            items = [envelope_item(prefix + _U64.pack(counter + k), route, now) for k in range(room)]
            counter += room
            if batched:
                await ws.send_bytes(send_frame(items))
            else:
                for item in items:
                    await ws.send_bytes(send_frame([item]))
            in_flight += room
            st.sent += room
        elif in_flight == 0:
            return
        msg = await ws.receive(timeout=IO_TIMEOUT)
        if msg.type is not aiohttp.WSMsgType.BINARY:
            raise RuntimeError(f"send stream closed: {msg.type!r}")
        ok, bad = send_results(msg.data)
        in_flight -= ok + bad
        st.acked += ok
        st.rejected += bad


async def _paced(
    ws: aiohttp.ClientWebSocketResponse, route: bytes, rate: float, start: float, st: PairStats
) -> None:
    """Sends one envelope per frame at ``rate`` per second on a fixed schedule from ``start``."""
    prefix, sent, answered = os.urandom(8), 0, 0

    async def results() -> None:
        nonlocal answered
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.BINARY:
                return
            ok, bad = send_results(msg.data)
            answered += ok + bad
            st.acked += ok
            st.rejected += bad

    reader = asyncio.create_task(results())
    try:
        while (due := start + sent / rate) < st.t1:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            item = envelope_item(prefix + _U64.pack(sent), route, time.monotonic())
            await ws.send_bytes(send_frame([item]))
            sent += 1
            st.sent += 1
        deadline = time.monotonic() + SETTLE_S
        while answered < sent and not reader.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        reader.cancel()


def _node(spec: dict[str, Any], k: int) -> str:
    """The URL of the node that stream ``k`` uses: streams are spread over the nodes in turn."""
    urls: list[str] = spec.get("urls") or [spec["url"]]
    return urls[k % len(urls)]


async def run_pairs(ctl: Control, spec: dict[str, Any]) -> dict[str, Any]:
    url, codes, mode = spec["url"], spec["codes"], spec["mode"]
    pairs = len(codes) // 2
    st = PairStats()
    async with new_session() as session:
        accounts = await register(RelayHttp(session, url, False), codes)
        senders, targets = accounts[:pairs], accounts[pairs:]
        # With several nodes, a pair's sender and receiver sit on different nodes (fan-out between them).
        rx = await bounded(
            list(enumerate(targets)),
            CONNECT_CONCURRENCY,
            lambda p: receiver(session, _node(spec, p[0]), p[1]),
        )
        tx = await bounded(
            list(enumerate(senders)),
            CONNECT_CONCURRENCY,
            lambda p: sender_stream(session, _node(spec, p[0] + 1), p[1]),
        )
        start = float(await ctl.ask("ready"))
        st.t0 = start + spec["warmup"]
        st.t1 = st.t0 + spec["seconds"]
        readers = [asyncio.create_task(_receive_loop(ws, st)) for ws in rx]
        cpu: list[float] = []

        async def sample(at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            cpu.append(cpu_seconds())

        samplers = [asyncio.create_task(sample(st.t0)), asyncio.create_task(sample(st.t1))]
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        if mode == "paced":
            rate = spec["rate"] / pairs
            jobs = [
                _paced(s.ws, route_of(t.account, t.token), rate, start + i / spec["rate"], st)
                for i, (s, t) in enumerate(zip(tx, targets, strict=True))
            ]
        else:
            batched = mode == "batched"
            jobs = [
                _saturate(s.ws, route_of(t.account, t.token), batched, st)
                for s, t in zip(tx, targets, strict=True)
            ]
        await asyncio.gather(*jobs)
        await asyncio.gather(*samplers)
        deadline = time.monotonic() + SETTLE_S
        while st.received < st.acked and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in [*rx, *(s.ws for s in tx)]), return_exceptions=True)
    return {
        "sent": st.sent,
        "acked": st.acked,
        "rejected": st.rejected,
        "received": st.received,
        "in_window": st.in_window,
        "latencies": st.latencies.tobytes(),
        "cpu_s": cpu[1] - cpu[0],
    }


# -- W3: store and forward ----------------------------------------------------------------------


async def _store(
    ws: aiohttp.ClientWebSocketResponse, work: list[tuple[bytes, bytes]], acked: set[bytes]
) -> None:
    """Sends ``work`` (envelope id, route) in full frames, a few frames in flight."""
    window = 4 * f.MAX_BATCH
    pending = 0
    now = time.monotonic()
    i = 0
    while i < len(work) or pending:
        while i < len(work) and pending + f.MAX_BATCH <= window:
            chunk = work[i : i + f.MAX_BATCH]
            await ws.send_bytes(send_frame([envelope_item(e, r, now) for e, r in chunk]))
            pending += len(chunk)
            i += len(chunk)
        msg = await ws.receive(timeout=IO_TIMEOUT)
        if msg.type is not aiohttp.WSMsgType.BINARY:
            raise RuntimeError(f"send stream closed: {msg.type!r}")
        ok, bad = send_results(msg.data)
        pending -= ok + bad
        acked.update(ok_ids(msg.data))


async def _drain(
    session: aiohttp.ClientSession, url: str, account: Account, expected: int, got: list[bytes]
) -> None:
    stream = await mailbox(session, url, account)
    ws = stream.ws
    drained = False
    count = 0
    try:
        while not (drained and count >= expected):
            msg = await ws.receive(timeout=IO_TIMEOUT)
            if msg.type is not aiohttp.WSMsgType.BINARY:
                raise RuntimeError(f"mailbox stream closed: {msg.type!r}")
            items = deliveries(msg.data)
            if items:
                await ws.send_bytes(receipt_frame([seq for seq, _, _ in items]))
                got.extend(e for _, e, _ in items)
                count += len(items)
            elif msg.data[1] == f.FrameType.DRAINED:
                drained = True
    finally:
        await ws.close()


async def run_store(ctl: Control, spec: dict[str, Any]) -> dict[str, Any]:
    url, codes, total, streams = spec["url"], spec["codes"], spec["envelopes"], spec["streams"]
    async with new_session() as session:
        accounts = await register(RelayHttp(session, url, False), codes)
        sender, recipients = accounts[0], accounts[1:]
        own = await mailbox(session, url, sender)
        send_pass = await own.send_pass()
        await own.close()
        tx = [await SendStream.connect(session, _node(spec, j), send_pass, False) for j in range(streams)]
        routes = [route_of(r.account, r.token) for r in recipients]
        work = [(os.urandom(16), routes[k % len(routes)]) for k in range(total)]
        expected = [0] * len(recipients)
        await ctl.ask("ready")
        acked: set[bytes] = set()
        started = time.monotonic()
        await asyncio.gather(*(_store(s.ws, work[j::streams], acked) for j, s in enumerate(tx)))
        store_s = time.monotonic() - started
        await asyncio.gather(*(s.close() for s in tx), return_exceptions=True)
        for k, (envelope_id, _) in enumerate(work):
            if envelope_id in acked:
                expected[k % len(recipients)] += 1
        got: list[bytes] = []
        started = time.monotonic()
        await asyncio.gather(
            *(
                _drain(session, _node(spec, k + 1), r, n, got)
                for k, (r, n) in enumerate(zip(recipients, expected, strict=True))
            )
        )
        drain_s = time.monotonic() - started
    received = set(got)
    return {
        "acked": len(acked),
        "received": len(received),
        "duplicates": len(got) - len(received),
        "lost": len(acked - received),
        "store_s": store_s,
        "drain_s": drain_s,
    }


# -- W4: idle connections -----------------------------------------------------------------------


async def _hold(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Reads until the stream closes; aiohttp answers the server's heartbeat pings while reading."""
    while True:
        msg = await ws.receive()
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return


async def run_idle(ctl: Control, spec: dict[str, Any]) -> dict[str, Any]:
    url, codes = spec["url"], spec["codes"]
    async with new_session() as session:
        started = time.monotonic()
        accounts = await register(RelayHttp(session, url, False), codes)
        register_s = time.monotonic() - started
        await ctl.ask("mark", "before")

        async def connect(item: tuple[int, Account]) -> MailboxStream | None:
            try:
                return await mailbox(session, _node(spec, item[0]), item[1])
            except (aiohttp.ClientError, OSError, TimeoutError, DecodeError, RelayClientError):
                return None

        started = time.monotonic()
        streams = await bounded(list(enumerate(accounts)), CONNECT_CONCURRENCY, connect)
        opened = [s for s in streams if s is not None]
        connect_s = time.monotonic() - started
        holders = [asyncio.create_task(_hold(s.ws)) for s in opened]
        await asyncio.sleep(spec["seconds"])
        held = sum(1 for s, h in zip(opened, holders, strict=True) if not h.done() and not s.ws.closed)
        await ctl.ask("mark", "after", held)
        for h in holders:
            h.cancel()
        await asyncio.wait_for(
            bounded(opened, 1000, lambda s: s.close()),
            timeout=60,
        )
    return {"opened": len(opened), "held": held, "register_s": register_s, "connect_s": connect_s}


RUNNERS = {"pairs": run_pairs, "store": run_store, "idle": run_idle}


def worker_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Entry point of a generator process."""
    raise_nofile()
    self_check()
    import uvloop

    async def main() -> dict[str, Any]:
        return await RUNNERS[spec["kind"]](Control(conn), spec)

    try:
        result = uvloop.run(main())
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    conn.send(("result", result))
