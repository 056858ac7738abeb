"""The load generator of ``kluis bench skyecc``: one process on uvloop, holding every connected
mailbox and the send streams with the lean WebSocket client (wsclient.py).

It re-derives the accounts the orchestrator provisioned (skyecc.py: ``derive_account``), builds the
day's schedule, connects the accounts online at the start of the day, then reports ``ready`` and
replays the day as fast as the relay acknowledges:

- sends: ``streams`` anonymous send streams (opened with the day's send pass, which every subscriber
  shares), each with up to ``frames_in_flight`` SEND frames of up to 32 envelopes unacknowledged;
  a RATE_LIMITED or UNAVAILABLE envelope is sent again with the same id;
- deliveries: each connected account's own authenticated mailbox stream; every DELIVER frame is
  answered with one RECEIPT frame of its seqs;
- rotation: when the sends reach the next hour, the accounts whose online time ends leave (each
  closes once everything sent to it has been delivered) and as many offline accounts connect,
  authenticate and drain what was stored for them while they were offline.

Envelope ids are ``8 random bytes of the run || u64 message index``, so every acknowledgement and
every delivery is checked by id: delivered once to the recipient it was addressed to, or counted as
lost / misrouted / redelivered. Payloads are ``envelope_bytes`` opaque bytes (a send timestamp, then
random filler): the relay never opens them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import sys
import time
from array import array
from collections import deque
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

from kluis.bench.relay_load import Control, cpu_seconds, raise_nofile, receipt_frame, self_check, send_frame
from kluis.bench.wsclient import WsClient, connect
from kluis.protocol.keys import IdentityKeyPair
from kluis.relay import frames as f

CONNECT_CONCURRENCY = 100
"""Handshakes in progress at once (the initial connections, and each hour's joiners)."""
SEND_TIMEOUT_S = 10.0
"""An envelope unanswered this long is sent again with the same id, as a client does (the relay
stores it once)."""
SETTLE_S = 30.0
"""How long the generator waits without any progress before it stops and counts what is missing."""
PROGRESS_EVERY_S = 10.0
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_STAMP = struct.Struct(">d")
_DELIVERY = struct.Struct(">Q8sQId")
"""seq, id prefix, message index, envelope length, send timestamp (the envelope's first 8 bytes)."""
_OK = f.SendStatus.OK
_RETRY = frozenset((f.SendStatus.RATE_LIMITED, f.SendStatus.UNAVAILABLE))
_DELIVER, _SEND_RESULT = f.FrameType.DELIVER, f.FrameType.SEND_RESULT


def derive_account(secret: bytes, index: int) -> tuple[bytes, IdentityKeyPair, bytes]:
    """(account id, identity key pair, delivery token) of account ``index`` of a run.

    Derived from the run's random secret, so the orchestrator (which writes the accounts into
    storage) and the generator (which authenticates as them) need not pass 171,000 keys around.
    """
    from kluis.bench.skyecc import derive

    identity = IdentityKeyPair(derive(secret, index, b"sign", 32), derive(secret, index, b"dh", 32))
    return derive(secret, index, b"id", 16), identity, derive(secret, index, b"token", 32)


def _percentiles(values: array[float]) -> dict[str, float]:
    from kluis.bench.relay import percentile_ms

    ordered = sorted(values)
    return {
        "p50_ms": percentile_ms(ordered, 50),
        "p99_ms": percentile_ms(ordered, 99),
        "p999_ms": percentile_ms(ordered, 99.9),
        "max_ms": percentile_ms(ordered, 100),
    }


class Failed(Exception):
    """A stream closed before it was open (the relay refused the handshake or authentication)."""


class Day:
    """The schedule and the bookkeeping of one replayed day."""

    def __init__(self, spec: dict[str, Any]) -> None:  # noqa: PLR0915 - one day's state and counters
        self.spec = spec
        self.urls = [urlsplit(u) for u in spec["urls"]]
        self.messages: int = spec["messages"]
        self.connected: int = spec["connected"]
        self.rotate: int = spec["rotate"]
        self.hours: int = spec["hours"]
        self.frames_in_flight: int = spec["frames_in_flight"]
        self.active: list[int] = spec["active"]
        self.secret: bytes = spec["secret"]
        self.prefix = os.urandom(8)
        self.filler = os.urandom(spec["envelope_bytes"] - _STAMP.size)
        n_active = len(self.active)
        self.account_ids: list[bytes] = []
        self.identities: list[IdentityKeyPair] = []
        self.routes: list[bytes] = []
        self.recips = array("I")
        self.hour_ends: list[int] = []
        self.owed = array("i", bytes(4 * n_active))
        """Per active account: envelopes sent to it and not yet delivered (or refused)."""
        self.leaving = bytearray(n_active)
        self.mailboxes: list[Mailbox | None] = [None] * n_active
        self.acked = bytearray(self.messages)
        self.delivered = bytearray(self.messages)
        self.cursor = 0
        self.hour = 0
        self.retry: deque[int] = deque()
        self.senders: list[Sender] = []
        self.send_pass: f.SendPass | None = None
        self.pass_ready: asyncio.Future[None] | None = None
        self.done: asyncio.Future[None] | None = None
        self.errors: list[str] = []
        self.joins: set[asyncio.Task[None]] = set()
        self.pending_joins = [0] * (self.hours + 1)
        """Per hour: its joiners still connecting (the hour's sends wait for them)."""
        self.stalled_at: float | None = None
        self.stalled_s = 0.0
        self.gate: asyncio.Semaphore | None = None
        self.timed = False
        # counters
        self.acked_count = 0
        self.delivered_count = 0
        self.live = 0
        self.stored = 0
        self.retried = 0
        self.timed_out = 0
        self.refused = 0
        self.redelivered = 0
        self.misrouted = 0
        self.joined = 0
        self.left = 0
        self.deliver_frames = 0
        self.send_frames = 0
        self.live_latency = array("d")
        self.ack_latency = array("d")
        self.join_latency = array("d")

    # -- set-up ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Derives the active accounts' keys and draws the schedule (before the clock starts)."""
        size = self.spec["envelope_bytes"]
        for index in self.active:
            account_id, identity, token = derive_account(self.secret, index)
            self.account_ids.append(account_id)
            self.identities.append(identity)
            self.routes.append(account_id + token + _U32.pack(size))
        rng = random.Random(self.spec["seed"])  # noqa: S311 - a reproducible schedule, not a secret
        c, r, hours, n_active = self.connected, self.rotate, self.hours, len(self.active)
        share = self.spec["offline_share"]
        recips = self.recips
        for hour in range(hours):
            count = self.messages * (hour + 1) // hours - self.messages * hour // hours
            online = hour * r
            future = online + r + c  # offline now: they begin to connect after the next hour began
            n_future = n_active - future
            rand, randrange = rng.random, rng.randrange
            for _ in range(count):
                if n_future > 0 and rand() < share:
                    recips.append(future + randrange(n_future))
                else:
                    recips.append(online + randrange(c))
            self.hour_ends.append(len(recips))

    def url_of(self, k: int) -> tuple[str, int]:
        u = self.urls[k % len(self.urls)]
        assert u.hostname is not None
        assert u.port is not None
        return u.hostname, u.port

    # -- sending --------------------------------------------------------------------------------

    def take(self, k: int) -> list[int]:
        """Up to ``k`` message indexes to send next: resends first, then the schedule."""
        out: list[int] = []
        retry = self.retry
        while retry and len(out) < k:
            out.append(retry.popleft())
        owed, recips = self.owed, self.recips
        while len(out) < k and self.cursor < self.messages and self.stalled_at is None:
            end = min(self.cursor + k - len(out), self.hour_ends[self.hour])
            for idx in range(self.cursor, end):
                owed[recips[idx]] += 1
                out.append(idx)
            self.cursor = end
            if end == self.hour_ends[self.hour] and self.hour + 1 < self.hours:
                self.hour += 1
                self.begin_hour(self.hour)
        return out

    def frame(self, idxs: list[int]) -> bytes:
        prefix, routes, recips, filler, pack = self.prefix, self.routes, self.recips, self.filler, _U64.pack
        stamp = _STAMP.pack(time.monotonic())
        return send_frame([b"".join((prefix, pack(i), routes[recips[i]], stamp, filler)) for i in idxs])

    def pump(self, sender: Sender) -> None:
        """Fills ``sender``'s window: SEND frames of up to 32 envelopes, ``frames_in_flight`` x 32
        envelopes unanswered at most."""
        unanswered = sender.unanswered
        limit = self.frames_in_flight * f.MAX_BATCH
        while not sender.closed:
            room = min(f.MAX_BATCH, limit - len(unanswered))
            if room <= 0:
                return
            idxs = self.take(room)
            if not idxs:
                return
            sender.send(self.frame(idxs))
            now = time.monotonic()
            for idx in idxs:
                unanswered[idx] = now
            self.send_frames += 1

    def resend_unanswered(self) -> None:
        """Envelopes unanswered for SEND_TIMEOUT_S are queued to be sent again (same ids)."""
        cutoff = time.monotonic() - SEND_TIMEOUT_S
        for sender in self.senders:
            late = []
            for idx, sent in sender.unanswered.items():
                if sent > cutoff:
                    break
                late.append(idx)
            for idx in late:
                del sender.unanswered[idx]
                self.retry.append(idx)
            self.timed_out += len(late)
        if self.retry:
            for sender in self.senders:
                self.pump(sender)

    def on_results(self, data: bytes, unanswered: dict[int, float]) -> None:
        acked, owed, recips, latency = self.acked, self.owed, self.recips, self.ack_latency
        now = time.monotonic()
        for k in range(data[2]):
            off = 3 + 17 * k
            status = data[off + 16]
            idx = _U64.unpack_from(data, off + 8)[0]
            sent = unanswered.pop(idx, None)
            if sent is not None:
                latency.append(now - sent)
            if status == _OK:
                if not acked[idx]:
                    acked[idx] = 1
                    self.acked_count += 1
            elif status in _RETRY:
                self.retry.append(idx)
                self.retried += 1
            else:
                self.refused += 1
                owed[recips[idx]] -= 1
                self.error(f"envelope refused: {f.SendStatus(status).name}")

    # -- rotation -------------------------------------------------------------------------------

    def begin_hour(self, hour: int) -> None:
        """Hour ``hour`` begins: its leavers leave, the next hour's joiners begin to connect, and if
        this hour's joiners are not all connected yet, sending waits for them."""
        r, c = self.rotate, self.connected
        if hour > 0:
            for pos in range((hour - 1) * r, hour * r):
                self.leaving[pos] = 1
                self.leave_if_done(pos)
        if hour + 1 < self.hours:
            joiners = range(hour * r + c, (hour + 1) * r + c)
            self.pending_joins[hour + 1] = len(joiners)
            for pos in joiners:
                task = asyncio.ensure_future(self.join(pos, hour + 1))
                self.joins.add(task)
                task.add_done_callback(self.joins.discard)
        if self.pending_joins[hour]:
            self.stalled_at = time.monotonic()

    def joined_one(self, hour: int) -> None:
        self.pending_joins[hour] -= 1
        if self.pending_joins[hour] == 0 and self.stalled_at is not None and hour == self.hour:
            self.stalled_s += time.monotonic() - self.stalled_at
            self.stalled_at = None
            for sender in self.senders:
                self.pump(sender)

    def leave_if_done(self, pos: int) -> None:
        mailbox = self.mailboxes[pos]
        if self.owed[pos] == 0 and mailbox is not None and mailbox.ready and not mailbox.closed:
            mailbox.close()
            self.left += 1

    async def join(self, pos: int, hour: int = 0, *, fetch_pass: bool = False) -> None:
        """Connects account ``pos``: authenticates, drains, then receives live."""
        assert self.gate is not None
        async with self.gate:
            started = time.monotonic()
            mailbox = Mailbox(self, pos, fetch_pass)
            self.mailboxes[pos] = mailbox
            host, port = self.url_of(pos)
            await connect(mailbox, host, port)
            await mailbox.ready_future
        if self.timed:
            self.joined += 1
            self.join_latency.append(time.monotonic() - started)
            self.joined_one(hour)

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)

    def running(self) -> bool:
        """Whether the timed day is under way (closes before and after it are expected)."""
        return self.timed and self.done is not None and not self.done.done()

    def check_done(self) -> None:
        # Answered as well as delivered: a held envelope's OK follows its recipient's receipt, so
        # the last deliveries come before the last acknowledgements.
        if (
            self.done is not None
            and not self.done.done()
            and self.cursor == self.messages
            and not self.retry
            and self.delivered_count + self.refused >= self.messages
            and self.acked_count + self.refused >= self.messages
        ):
            self.done.set_result(None)


class Mailbox(WsClient):
    """One account's authenticated mailbox stream."""

    def __init__(self, day: Day, pos: int, fetch_pass: bool) -> None:
        host, port = day.url_of(pos)
        super().__init__(host, port, "/v1/stream")
        self.day = day
        self.pos = pos
        self.fetch_pass = fetch_pass
        self.ready = False
        self.live_since = float("inf")
        self.ready_future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(self, data: bytes) -> None:
        if data[1] != _DELIVER:
            self._other(data)
            return
        day = self.day
        recips, delivered, pos, prefix = day.recips, day.delivered, self.pos, day.prefix
        now = time.monotonic()
        live = self.live_since
        unpack = _DELIVERY.unpack_from
        seqs = []
        off = 3
        good = 0
        for _ in range(data[2]):
            seq, run, idx, size, stamp = unpack(data, off)
            off += 28 + size
            seqs.append(seq)
            if run != prefix or idx >= day.messages or recips[idx] != pos:
                day.misrouted += 1
            elif delivered[idx]:
                day.redelivered += 1
            else:
                delivered[idx] = 1
                good += 1
                if stamp >= live:
                    day.live_latency.append(now - stamp)
                    day.live += 1
                else:
                    day.stored += 1
        self.send(receipt_frame(seqs))
        day.deliver_frames += 1
        if good:
            day.delivered_count += good
            day.owed[pos] -= good
            if day.leaving[pos]:
                day.leave_if_done(pos)
            day.check_done()

    def _other(self, data: bytes) -> None:
        frame = f.parse(data)
        day = self.day
        if isinstance(frame, f.Challenge):
            account = day.account_ids[self.pos]
            signature = day.identities[self.pos].sign(f.auth_message(frame.nonce, account))
            self.send(f.serialize(f.Auth(account, signature)))
        elif isinstance(frame, f.AuthOk):
            if self.fetch_pass:
                self.send(f.serialize(f.GetSendPass()))
        elif isinstance(frame, f.SendPass):
            day.send_pass = frame
            if day.pass_ready is not None and not day.pass_ready.done():
                day.pass_ready.set_result(None)
        elif isinstance(frame, f.Drained):
            if not self.ready:
                self.ready = True
                self.live_since = time.monotonic()
                if not self.ready_future.done():
                    self.ready_future.set_result(None)
                if day.leaving[self.pos]:
                    day.leave_if_done(self.pos)
        elif isinstance(frame, f.Error):
            day.error(f"mailbox stream: {frame.code.name}: {frame.text}")

    def on_closed(self) -> None:
        if not self.ready_future.done():
            self.ready_future.set_exception(Failed(f"mailbox stream closed: {self.close_reason}"))
        elif self.day.running() and self.day.owed[self.pos] and not self.day.leaving[self.pos]:
            self.day.error(f"a connected mailbox closed with envelopes owed: {self.close_reason}")


class Sender(WsClient):
    """An anonymous send stream."""

    def __init__(self, day: Day, k: int) -> None:
        host, port = day.url_of(k)
        super().__init__(host, port, "/v1/stream")
        self.day = day
        self.unanswered: dict[int, float] = {}
        """Message index -> when it was (last) sent, for each envelope not yet answered."""
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(self, data: bytes) -> None:
        day = self.day
        if data[1] == _SEND_RESULT:
            day.on_results(data, self.unanswered)
            day.pump(self)
            day.check_done()
            return
        frame = f.parse(data)
        if isinstance(frame, f.Challenge):
            assert day.send_pass is not None
            self.send(f.serialize(f.OpenSend(day.send_pass.day, day.send_pass.send_pass)))
            if not self.opened.done():
                self.opened.set_result(None)
        elif isinstance(frame, f.Error):
            day.error(f"send stream: {frame.code.name}: {frame.text}")

    def on_closed(self) -> None:
        if not self.opened.done():
            self.opened.set_exception(Failed(f"send stream closed: {self.close_reason}"))
        elif self.day.running():
            self.day.error(f"a send stream closed: {self.close_reason}")


async def _progress(day: Day, started: float) -> None:
    last_count, last_at, last_change = 0, started, started
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        day.resend_unanswered()
        count = day.delivered_count + day.acked_count
        if count != last_count:
            last_change = now
        if now - last_change > SETTLE_S:
            in_flight = sum(len(s.unanswered) for s in day.senders)
            closed = sum(1 for s in day.senders if s.closed)
            day.error(
                f"no progress for {SETTLE_S:.0f} s: {day.messages - day.cursor} not yet sent, "
                f"{len(day.retry)} to resend, {in_flight} unanswered, {closed} send "
                f"streams closed, hour {day.hour + 1} waiting for {day.pending_joins[day.hour]} joins"
            )
            assert day.done is not None
            if not day.done.done():
                day.done.set_result(None)
            return
        if now - last_at >= PROGRESS_EVERY_S:
            rate = (day.delivered_count - last_count) / (now - last_at) if last_at > started else 0.0
            print(
                f"kluis bench skyecc: {now - started:5.0f} s: hour {day.hour + 1}/{day.hours}, "
                f"{day.acked_count:,} acknowledged, {day.delivered_count:,} delivered",
                file=sys.stderr,
                flush=True,
            )
            del rate
            last_at = now
        last_count = count


async def run_day(ctl: Control, spec: dict[str, Any]) -> dict[str, Any]:
    day = Day(spec)
    loop = asyncio.get_running_loop()
    day.gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    started = time.monotonic()
    day.prepare()
    prepare_s = time.monotonic() - started
    # The accounts online when the day begins (connected "since yesterday": not timed).
    started = time.monotonic()
    day.pass_ready = loop.create_future()
    await day.join(0, fetch_pass=True)
    await asyncio.wait_for(day.pass_ready, 30)
    await asyncio.gather(*(day.join(pos) for pos in range(1, day.connected)))
    for k in range(spec["streams"]):
        sender = Sender(day, k)
        day.senders.append(sender)
        host, port = day.url_of(k)
        await connect(sender, host, port)
    await asyncio.gather(*(s.opened for s in day.senders))
    connect_s = time.monotonic() - started
    await ctl.ask("ready")
    await ctl.ask("mark", "start")
    day.done = loop.create_future()
    day.timed = True
    cpu0 = cpu_seconds()
    t0 = time.monotonic()
    progress = asyncio.ensure_future(_progress(day, t0))
    day.begin_hour(0)
    for sender in day.senders:
        day.pump(sender)
    await day.done
    t1 = time.monotonic()
    cpu1 = cpu_seconds()
    await ctl.ask("mark", "end")
    progress.cancel()
    day.timed = False
    for task in list(day.joins):
        task.cancel()
    for client in [*day.senders, *(m for m in day.mailboxes if m is not None)]:
        client.close()
    await asyncio.sleep(0.2)
    lost_ids = [i for i in range(day.messages) if day.acked[i] and not day.delivered[i]]
    lost_recipients = sorted({day.account_ids[day.recips[i]] for i in lost_ids[:10_000]})
    unacked_delivered = sum(1 for i in range(day.messages) if day.delivered[i] and not day.acked[i])
    return {
        "seconds": t1 - t0,
        "cpu_s": cpu1 - cpu0,
        "prepare_s": prepare_s,
        "connect_s": connect_s,
        "sent_frames": day.send_frames,
        "deliver_frames": day.deliver_frames,
        "acked": day.acked_count,
        "delivered": day.delivered_count,
        "lost": len(lost_ids),
        "lost_recipients": lost_recipients,
        "delivered_before_ack": unacked_delivered,
        "live": day.live,
        "stored": day.stored,
        "resent": day.retried,
        "resent_unanswered": day.timed_out,
        "refused": day.refused,
        "redelivered": day.redelivered,
        "misrouted": day.misrouted,
        "joined": day.joined,
        "left": day.left,
        "stalled_s": day.stalled_s,
        "errors": day.errors,
        "latency": _percentiles(day.live_latency),
        "ack_latency": _percentiles(day.ack_latency),
        "join_latency": _percentiles(day.join_latency),
    }


def worker_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Entry point of the generator process."""
    raise_nofile()
    self_check()
    import uvloop

    async def main() -> dict[str, Any]:
        return await run_day(Control(conn), spec)

    try:
        result = uvloop.run(main())
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    with contextlib.suppress(BrokenPipeError):
        conn.send(("result", result))
