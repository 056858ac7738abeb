"""The relay stream: one connection's life, from CHALLENGE to close (relay/connection.py).

The WebSocket itself (framing, order of handling, back-pressure, closing) is server/stream.py's.
Outgoing frames are coalesced: acknowledgements and deliveries produced during one event-loop pass
leave in as few frames as possible (up to MAX_BATCH items each) and in one write, because per-frame
cost decides a Python relay's throughput (PERFORMANCE.md). A client that does not read (no room made
within ``write_timeout``, or a queue over ``MAX_QUEUED_FRAMES``) is cut off rather than buffered
forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine

from kluis.protocol.errors import DecodeError, UnsupportedVersion
from kluis.relay import frames as f
from kluis.relay.connection import FrameNotAllowed, State, next_state
from kluis.relay.websocket import CloseCode
from kluis.server.budget import UnstoredBudget
from kluis.server.clock import reached
from kluis.server.errors import AuthFailed, RelayError, Revoked, SubscriptionExpired, Unavailable
from kluis.server.metrics import ConnectionKind
from kluis.server.relay import Relay, Screened
from kluis.server.storage.base import AccountId, MailboxItem, StorageError
from kluis.server.stream import Pending, Stream

log = logging.getLogger("kluis.server.ws")

MAX_QUEUED_FRAMES = 4096
"""Frames waiting for a slow reader before the connection is cut (a few MB at most)."""
DELIVERY_WINDOW = 512
"""Deliveries sent but not yet receipted per mailbox; more wait in storage (flow control)."""
DELIVERY_WINDOW_BYTES = 8 * 1024 * 1024
"""Bytes of envelopes sent but not yet receipted per mailbox. With the count alone, a mailbox that
stops reading pinned 512 envelopes of up to 140 KB (about 70 MB) in server memory; now a few MB."""
FETCH_BATCH = 256
FETCH_RETRY_S = 1.0
"""A mailbox fetch that failed (database unreachable) is tried again after this long."""


_FRAME_TYPES = {t.value: t for t in f.FrameType}


class SharedCursor:
    """A mailbox cursor for relay nodes that share one database (``FanOut.shared``).

    One node numbers a recipient's envelopes above the highest seq stored and the highest it handed
    out itself (storage/postgres.py), so once the envelopes at the top of a mailbox are delivered and
    deleted, another node can number a new envelope *below* seqs this connection already sent. A
    plain "highest seq sent" cursor would skip it, and a receipt for a reused seq would delete it.
    So here:

    - the client sees this connection's own numbers (``wire`` seqs: 1, 2, 3 ...), increasing as the
      protocol promises whatever the storage seqs do; each maps to (storage seq, envelope id);
    - the fetch cursor is the highest storage seq among the envelopes this connection sent and has not
      yet seen deleted (``present``), 0 when there are none. A new envelope is always numbered above
      every envelope stored at that moment, so it lies above that cursor;
    - deletions name the envelope id too, so a stale receipt never takes a newer envelope.

    If someone else deletes one of ``present`` (an older connection of the account acknowledging the
    same envelope), the cursor can sit too high until this connection's own delete finds that row
    gone; then it fetches again (Connection._receipt_loop). And between the commit of this
    connection's own delete and the moment it learns of it, the cursor is also too high: another node
    may number a new envelope below it, and a fetch run in that window misses it; so a fetch that ran
    then is run again once the cursor has dropped.
    """

    __slots__ = ("_top", "last_wire", "present", "rows")

    def __init__(self) -> None:
        self.present: dict[int, bytes] = {}
        """storage seq -> envelope id of every envelope sent and not known to be deleted."""
        self.rows: dict[int, tuple[int, bytes]] = {}
        """wire seq -> (storage seq, envelope id) of every delivery not yet receipted."""
        self.last_wire = 0
        self._top = 0
        """max(present), or 0: kept up to date rather than computed for every envelope."""

    def after(self) -> int:
        return self._top

    def sent(self, item: MailboxItem) -> int:
        """Records a delivery; returns the seq the client sees."""
        self.present[item.seq] = item.envelope_id
        self._top = max(self._top, item.seq)
        self.last_wire += 1
        self.rows[self.last_wire] = (item.seq, item.envelope_id)
        return self.last_wire

    def deleted(self, seqs: list[int]) -> None:
        """These envelopes are gone from the mailbox (this connection's receipts were committed)."""
        present = self.present
        for seq in seqs:
            present.pop(seq, None)
        if self._top not in present:
            self._top = max(present, default=0)


class Closing(Exception):
    """Ends the connection with an ERROR frame; never carries identifying details."""

    def __init__(self, code: f.ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class RateLimiter:
    """Token bucket over envelopes per second, per sending connection."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = now

    def take(self, n: int, now: float) -> bool:
        """``now`` on a monotonic clock: the connection passes the loop time of the read that brought
        the frame (one clock read per read, not per frame)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


class Connection(Stream):
    """One client connection. Implements MailboxSink once authenticated."""

    __slots__ = (
        "_closing",
        "_deliveries",
        "_drain_task",
        "_drained",
        "_error_sent",
        "_fetch_again",
        "_fetches",
        "_flush_scheduled",
        "_gathered",
        "_gathered_frames",
        "_in_flight",
        "_in_flight_bytes",
        "_kind",
        "_limiter",
        "_nonce",
        "_pinged_at",
        "_receipt_ids",
        "_receipt_task",
        "_receipts",
        "_results",
        "_room",
        "_sent_seq",
        "_shared",
        "_store_task",
        "_stored_all",
        "_storing",
        "_tasks",
        "_to_store",
        "_typical_size",
        "_unanswered",
        "_watchdog",
        "account",
        "relay",
        "settings",
        "state",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        relay: Relay,
        settings: StreamSettings,
        *,
        max_message: int,
        http_protocol: asyncio.BaseProtocol | None = None,
    ) -> None:
        super().__init__(
            transport,
            max_message=max_message,
            write_timeout=settings.write_timeout,
            http_protocol=http_protocol,
        )
        self.relay = relay
        self.settings = settings
        self.state = State.AWAIT_HELLO
        self.account: AccountId | None = None
        self._results: list[tuple[bytes, f.SendStatus]] = []
        self._deliveries: list[bytes] = []
        """Deliveries owed, each packed as its DELIVER frame will carry it (f.packed_delivery)."""
        self._flush_scheduled = False
        self._closing: Closing | None = None
        # Mailbox cursor: highest seq sent; deliveries above it come from storage (drain) until
        # caught up, then live. Order per mailbox is kept because storage seqs increase.
        self._sent_seq = 0
        self._shared = SharedCursor() if relay.fanout.shared else None
        """Set when other relay nodes share the mailboxes: then _sent_seq, _in_flight and receipts
        count in the connection's own wire seqs (SharedCursor)."""
        self._in_flight: dict[int, int] = {}
        """seq -> size of each delivery sent and not yet receipted (a receipt of any other seq
        cannot reopen the window)."""
        self._in_flight_bytes = 0
        self._typical_size = 64 * 1024
        """A running estimate of envelope sizes in this mailbox, for sizing fetches."""
        self._drained = False
        self._fetch_again = False
        self._fetches = 0
        """Mailbox fetches started so far (with _shared: did one run while a delete was unknown?)."""
        self._drain_task: asyncio.Future[None] | None = None
        self._limiter = RateLimiter(settings.send_rate, settings.send_burst, self.loop.time())
        self._tasks: list[asyncio.Task[None]] = []
        self._nonce = os.urandom(f.NONCE_LEN)
        # Futures are made only when someone waits (an idle connection should cost little memory:
        # issue 3's W4 holds 10,000 of them).
        self._to_store: list[Screened] = []
        """Frames waiting for the store loop (storage that numbers envelopes only as it writes them)."""
        self._storing = 0
        """Stores handed to Relay.store_soon and not yet answered."""
        self._unanswered = 0
        """Frames queued for storage and not yet answered (max_in_flight bounds them)."""
        self._gathered: list[f.OutgoingEnvelope] = []
        self._gathered_frames = 0
        """SEND frames of the read being handled, all to one recipient, stored together once it is
        (on_read_done)."""
        self._stored_all: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._store_task: asyncio.Future[None] | None = None
        self._receipts: list[int] = []
        self._receipt_ids: list[bytes] = []
        """With _shared: the envelope id of each seq in _receipts (storage seqs then)."""
        self._receipt_task: asyncio.Future[None] | None = None
        self._pinged_at = 0.0
        """When the outstanding heartbeat ping was sent (0: none is)."""
        self._watchdog: asyncio.TimerHandle | None = None
        self._error_sent = False
        self._kind: ConnectionKind | None = None

    # -- outgoing -------------------------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.settings.flushes.add(self)

    def flush(self) -> None:
        """Writes what is owed (Flushes calls it at the end of the loop pass that queued it)."""
        self._flush_scheduled = False
        self._pack()
        if len(self._frames) > MAX_QUEUED_FRAMES:
            self._cut("client does not read its frames")
            return
        self._emit()

    def _emit(self) -> None:
        written = self.emit()
        if written:
            self.relay.metrics.frames_sent(written)

    def resumed(self) -> None:
        self._emit()

    def stalled(self) -> None:
        self._cut("client does not read")

    def _pack(self) -> None:
        """Turns pending acknowledgements and deliveries into frames, in the order they arose."""
        results = self._results
        if results:
            self._results = []
            for i in range(0, len(results), f.MAX_BATCH):
                self._frames.append(f.serialize(f.SendResult(tuple(results[i : i + f.MAX_BATCH]))))
        deliveries = self._deliveries
        if deliveries:
            self._deliveries = []
            self.relay.metrics.envelopes("delivered", len(deliveries))
            for i in range(0, len(deliveries), f.MAX_BATCH):
                self._frames.append(f.deliver_frame(deliveries[i : i + f.MAX_BATCH]))

    def send_frame(self, frame: f.Frame) -> None:
        self._pack()  # what was queued before this frame leaves before it (DRAINED after DELIVERs)
        self._frames.append(f.serialize(frame))
        self._schedule()

    def _close_soon(self, code: f.ErrorCode, text: str) -> None:
        """Ends the connection with an ERROR frame (replaced, revoked, timed out, refused frame)."""
        self._fail(Closing(code, text))

    def _fail(self, closing: Closing) -> None:
        if self._closing is None and not self.lost:
            self._closing = closing
            self.stop()
            self._detach()
            self._tasks.append(self.loop.create_task(self._finish()))

    def _detach(self) -> None:
        """Leaves the fan-out as soon as the connection is ending, not when its close handshake is
        over: envelopes and notices for the account go to its next connection meanwhile."""
        if self.account is not None:
            self.relay.fanout.detach(self.account, self)

    async def _finish(self) -> None:
        """Acknowledges what is being committed (up to 2 s), then ERROR and the close."""
        await self._acknowledged(2)
        self._send_error_and_close()

    async def _acknowledged(self, timeout: float) -> None:
        """Waits (up to ``timeout``) until every envelope received so far has its status."""
        waits: list[asyncio.Future[None]] = []
        if self._store_task is not None and not self._store_task.done():
            waits.append(self._store_task)
        if self._storing:
            if self._stored_all is None:
                self._stored_all = self.loop.create_future()
            waits.append(self._stored_all)
        if waits:
            await asyncio.wait(waits, timeout=timeout)

    def _send_error_and_close(self) -> None:
        if self._error_sent:
            return
        self._error_sent = True
        self._pack()
        error = None if self._closing is None else f.Error(self._closing.code, self._closing.text)
        self.close_now(CloseCode.NORMAL, last=None if error is None else f.serialize(error))

    def _cut(self, why: str, *, dead: bool = False) -> None:
        """Drops a client that does not read (or, ``dead``, answers nothing at all): its socket is
        aborted at once."""
        self.relay.metrics.connection_refused("idle" if dead else "flood")
        self._closing = Closing(f.ErrorCode.TIMEOUT if dead else f.ErrorCode.RATE_LIMITED, why)
        self._error_sent = True  # nothing more can be written to it
        self._detach()
        self.abort()

    # -- Stream ---------------------------------------------------------------------------------

    def on_text(self) -> None:
        self._fail(Closing(f.ErrorCode.MALFORMED, "only binary frames are accepted"))

    def on_failure(self, error: Exception) -> None:
        if isinstance(error, Closing):
            self._fail(error)
        elif isinstance(error, Unavailable):
            self._fail(Closing(f.ErrorCode.INTERNAL, "storage unavailable"))
        else:  # a bug must not kill the server; no details (they may be sensitive)
            log.error("connection handler failed", exc_info=error)
            self._fail(Closing(f.ErrorCode.INTERNAL, "internal error"))

    def on_lost(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._kind is not None:
            self.relay.metrics.connection_closed(self._kind)
        self._detach()
        for task in self._tasks:
            task.cancel()
        if self._drain_task is not None:
            self._drain_task.cancel()

    # -- MailboxSink ----------------------------------------------------------------------------

    def _deliver(self, item: MailboxItem) -> None:
        seq = item.seq if self._shared is None else self._shared.sent(item)
        ciphertext = item.ciphertext
        size = len(ciphertext)
        self._deliveries.append(f.packed_delivery(seq, item.envelope_id, ciphertext))
        self._sent_seq = seq
        self._in_flight[seq] = size
        self._in_flight_bytes += size
        self._typical_size = max(1024, (3 * self._typical_size + size) // 4)

    def _window_full(self, size: int) -> bool:
        """Whether one more delivery of ``size`` bytes must wait (one always fits an empty window)."""
        return bool(self._in_flight) and (
            len(self._in_flight) >= DELIVERY_WINDOW or self._in_flight_bytes + size > DELIVERY_WINDOW_BYTES
        )

    def _fetch_room(self) -> int:
        """How many stored envelopes to read next: what the count window allows, and about what the
        byte window allows at the sizes seen so far (reading 256 large envelopes only to drop most
        of them would cost ~35 MB of transient memory per fetch)."""
        by_count = DELIVERY_WINDOW - len(self._in_flight)
        by_bytes = (DELIVERY_WINDOW_BYTES - self._in_flight_bytes) // self._typical_size
        return min(FETCH_BATCH, by_count, max(1, by_bytes))

    def _fits(self, items: list[MailboxItem]) -> bool:
        """Whether the delivery window (count and bytes) has room for all of ``items``."""
        return len(self._in_flight) + len(items) <= DELIVERY_WINDOW and not self._window_full(
            sum(len(item.ciphertext) for item in items)
        )

    def offer(self, items: list[MailboxItem]) -> None:
        if not self._drained or not self._fits(items):
            self._drained = False
            self._request_fetch()
            return
        if self._shared is not None:
            self._offer_shared(items)
            return
        for item in items:
            if item.seq > self._sent_seq:
                self._deliver(item)
        self._schedule()

    def offer_early(self, items: list[MailboxItem]) -> bool:
        # Only a caught-up mailbox whose last delivery is the seq just before these: then nothing
        # stored or still being stored lies between (seqs are numbered without gaps per recipient),
        # and order holds. Otherwise they come through offer() once written.
        if (
            self._shared is not None
            or not self._drained
            or items[0].seq != self._sent_seq + 1
            or not self._fits(items)
        ):
            return False
        for item in items:
            self._deliver(item)
        self._schedule()
        return True

    def _offer_shared(self, items: list[MailboxItem]) -> None:
        """Envelopes this node stored go out at once only when nothing can lie between them and the
        cursor (their seqs follow it without a gap) and no fetch is running; otherwise another node
        may have stored some in between, and the fetch delivers all of them in seq order."""
        shared = self._shared
        assert shared is not None
        expected = shared.after() + 1
        busy = self._drain_task is not None and not self._drain_task.done()
        if busy or any(item.seq != expected + i for i, item in enumerate(items)):
            self._request_fetch()
            return
        for item in items:
            self._deliver(item)
        self._schedule()

    def notice(self) -> None:
        self._request_fetch()

    def key_stock(self, one_time_left: int, kem_left: int) -> None:
        self.send_frame(f.KeyStock(one_time_left, kem_left))

    def replaced(self) -> None:
        self._close_soon(f.ErrorCode.AUTH_FAILED, "another connection took over this account")

    def _request_fetch(self) -> None:
        """Runs the drain (a task only while there is something to fetch: an idle mailbox holds no
        task, which matters with 10,000 connections)."""
        self._fetch_again = True
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self._drain_loop()
        finally:
            # Not kept once finished: a done task held ~600 bytes per idle mailbox (tracemalloc,
            # 1,000 connections; issue 3's W4 holds 10,000). Nothing replaces it while it runs.
            self._drain_task = None

    async def _drain_loop(self) -> None:
        """Sends stored envelopes in seq order within the window, then switches to live pushes."""
        assert self.account is not None
        while self._fetch_again:
            self._fetch_again = False
            while len(self._in_flight) < DELIVERY_WINDOW and self._in_flight_bytes < DELIVERY_WINDOW_BYTES:
                room = self._fetch_room()
                shared = self._shared
                after = self._sent_seq if shared is None else shared.after()
                self._fetches += 1
                try:
                    items = await self.relay.fetch(self.account, after, room)
                except StorageError:
                    # The database is unreachable or restarting: try again rather than forget that
                    # there is something to fetch (a notice is not repeated).
                    log.warning("fetching a mailbox failed; trying again in %.0f s", FETCH_RETRY_S)
                    await asyncio.sleep(FETCH_RETRY_S)
                    self._fetch_again = True
                    break
                taken = 0
                for item in items:
                    if self._window_full(len(item.ciphertext)):
                        break
                    if shared is None or item.seq not in shared.present:
                        self._deliver(item)
                    taken += 1
                if taken:
                    self._schedule()
                if taken < len(items):
                    break  # the byte window is full: receipts reopen it (the rest is fetched again)
                if len(items) < room:
                    if not self._drained:
                        self._drained = True
                        self.send_frame(f.Drained(self._sent_seq))
                    break

    # -- incoming -------------------------------------------------------------------------------

    def on_binary(self, data: bytes) -> Pending | None:
        """Handles one frame; returns what is left to await, or None when it was handled at once.

        The frames of every envelope are handled here without a coroutine: a RECEIPT always, and a
        SEND when nothing has to wait (its recipients are cached and the store queue has room). Two
        or three coroutines per frame were a fifth of a busy relay's throughput (issue 3's W1).
        """
        try:
            frame = f.parse(data)
        except UnsupportedVersion:
            raise Closing(f.ErrorCode.UNSUPPORTED_VERSION, "unsupported frame version") from None
        except DecodeError as error:
            raise Closing(f.ErrorCode.MALFORMED, str(error)) from None
        kind = _FRAME_TYPES[data[1]]
        self.relay.metrics.frame_received(kind, len(data))
        try:
            new_state = next_state(self.state, kind)
        except FrameNotAllowed as error:
            raise Closing(f.ErrorCode.NOT_ALLOWED, str(error)) from None
        if kind is f.FrameType.SEND:
            if self._send_now(frame):  # type: ignore[arg-type]
                self.state = new_state
                return None
            return self._then(self._on_send(frame), new_state)  # type: ignore[arg-type]
        if kind is f.FrameType.RECEIPT:  # the other frame of every delivery: nothing to await
            self._on_receipt(frame)  # type: ignore[arg-type]
            self.state = new_state
            return None
        return self._then(self._dispatch(frame), new_state)

    async def _then(self, work: Coroutine[None, None, None], new_state: State) -> None:
        await work
        self.state = new_state

    async def _dispatch(self, frame: f.Frame) -> None:
        """Every frame but SEND and RECEIPT, which _handle dispatches itself (the hot path)."""
        if isinstance(frame, f.Auth):
            await self._authenticate(frame)
        elif isinstance(frame, f.OpenSend):
            if not self.relay.check_pass(frame.day, frame.send_pass):
                raise Closing(f.ErrorCode.SUBSCRIPTION_EXPIRED, "send pass invalid or expired")
            self.relay.metrics.connection_opened("sending")
            self._kind = "sending"
        elif isinstance(frame, f.UploadKeys):
            await self._on_upload(frame)
        elif isinstance(frame, f.GetSendPass):
            await self._on_get_pass()

    def _send_now(self, frame: f.Send) -> bool:
        """Takes a SEND frame's envelopes for storage if that needs no waiting; False if it does
        (then :meth:`_on_send` handles the frame).

        Consecutive frames of one read to one recipient are gathered, not stored yet, and stored
        together when the read is handled (:meth:`on_read_done`) or a frame to someone else comes.
        A busy client's frames come in bursts (each SEND_RESULT frees room for a burst of new
        frames, which arrive in one read), and what costs is per store, not per envelope: one
        staging, one push, one hold, one receipt, one answer for the burst instead of one per frame.
        Only frames to one recipient: the answer to a store waits for its slowest envelope, and a
        recipient's envelopes are pushed, receipted or written together anyway; mixing recipients
        would hold every frame's answer up to the slowest of them.
        """
        relay = self.relay
        settings = self.settings
        if (
            self._queued() >= settings.max_in_flight
            or settings.unstored.full
            or not relay.all_cached(frame.envelopes)
        ):
            return False
        envelopes = frame.envelopes
        if not self._limiter.take(len(envelopes), self.last_frame):
            self._refuse_rate(frame)
            return True
        to = envelopes[0].recipient
        one_recipient = len(envelopes) == 1 or all(e.recipient == to for e in envelopes)
        if self._gathered_frames and (to != self._gathered[0].recipient or not one_recipient):
            self.on_read_done()
        if one_recipient:
            self._gathered += envelopes
            self._gathered_frames += 1
        else:
            self._queue(relay.screen_cached(envelopes))
        return True

    def on_read_done(self) -> None:
        """Stores the SEND frames gathered while handling a read (or before a frame that must wait:
        the order of frames is kept)."""
        if self._gathered_frames:
            envelopes, self._gathered = self._gathered, []
            screened = self.relay.screen_cached(envelopes)
            screened.frames, self._gathered_frames = self._gathered_frames, 0
            self._queue(screened)

    def _queued(self) -> int:
        """Frames received and not yet answered."""
        return self._unanswered + self._gathered_frames

    def _queue(self, screened: Screened) -> None:
        """Stores screened envelopes (of ``screened.frames`` SEND frames): at once where the storage
        numbers them before writing (SQLite), else through the store loop (started if it is not
        running)."""
        self.settings.unstored.take(screened.size)
        self._unanswered += screened.frames
        self._storing += 1  # first: _stored may be called before store_soon returns
        if self.relay.store_soon(screened, self._stored):
            return
        self._storing -= 1
        self._to_store.append(screened)
        if self._store_task is None or self._store_task.done():
            self._store_task = self.loop.create_task(self._store_loop())

    def _answered(self, screened: Screened) -> None:
        """Frames are answered: their statuses go out with the next flush, and their room and bytes
        come back."""
        self._results += screened.results
        self._unanswered -= screened.frames
        self.settings.unstored.give(screened.size)
        self._schedule()
        if self._room is not None and self._queued() < self.settings.max_in_flight and not self._room.done():
            self._room.set_result(None)

    def _stored(self, screened: Screened) -> None:
        """Envelopes are durable (Relay.store_soon). Frames are answered as they become durable, not
        in the order they came (clients match statuses by envelope id): one held for its
        recipient's receipt holds up no other."""
        self._storing -= 1
        self._answered(screened)
        if not self._storing and self._stored_all is not None:
            if not self._stored_all.done():
                self._stored_all.set_result(None)
            self._stored_all = None

    def _refuse_rate(self, frame: f.Send) -> None:
        self._results.extend((e.envelope_id, f.SendStatus.RATE_LIMITED) for e in frame.envelopes)
        self.relay.metrics.send_rejected("rate_limited", len(frame.envelopes))
        self._schedule()

    async def _on_send(self, frame: f.Send) -> None:
        if not self._limiter.take(len(frame.envelopes), self.last_frame):
            self._refuse_rate(frame)
            return
        # Pipelined: the next frame is read while earlier ones are being committed; frames that
        # arrive meanwhile are stored together in one append. At most max_in_flight frames wait to
        # be stored, and while the server-wide budget of unstored bytes is spent none is taken (then
        # this connection stops reading and TCP pushes back on the client).
        settings = self.settings
        while self._queued() >= settings.max_in_flight or settings.unstored.full:
            room = self._room = self.loop.create_future()
            if settings.unstored.full:
                settings.unstored.wait(room)
            await room
        # Appended after the await (the store loop may swap the list meanwhile).
        self._queue(await self.relay.screen(frame.envelopes))

    async def _store_loop(self) -> None:
        """Stores screened frames in arrival order, batching what queued up during each commit."""
        while self._to_store:
            batch, self._to_store = self._to_store, []
            screened = Screened.merge(batch)
            started = time.perf_counter()
            try:
                results = await self.relay.store(screened)
            except Exception:  # never leave a sender without an answer; details may be sensitive
                log.exception("storing failed")
                results = [(envelope_id, f.SendStatus.UNAVAILABLE) for envelope_id, _ in screened.results]
            screened.results = results
            self._answered(screened)
            self.relay.metrics.send_acknowledged(time.perf_counter() - started)

    def _on_receipt(self, frame: f.Receipt) -> None:
        # The window first: the delete below may complete sends whose other envelopes are then
        # offered to this very mailbox (Relay.store_soon).
        for seq in frame.seqs:
            self._in_flight_bytes -= self._in_flight.pop(seq, 0)
        # The delete is not awaited here: nothing is acknowledged to the client, and an envelope
        # whose delete is lost (crash) is delivered again and de-duplicated by the client.
        shared = self._shared
        if shared is None:
            # Joins the next group commit; no task and no future per receipt (MailboxStore.discard).
            assert self.account is not None
            self.relay.discard(self.account, list(frame.seqs))
        else:  # wire seqs -> the stored envelopes they stand for (unknown ones are ignored)
            for seq in frame.seqs:
                row = shared.rows.pop(seq, None)
                if row is not None:
                    self._receipts.append(row[0])
                    self._receipt_ids.append(row[1])
            if self._receipt_task is None or self._receipt_task.done():
                self._receipt_task = self.loop.create_task(self._receipt_loop())
        self.relay.metrics.envelopes("acknowledged", len(frame.seqs))
        if not self._drained:  # a backlog waits in storage for room in the window
            self._request_fetch()

    async def _receipt_loop(self) -> None:
        """With _shared only: deletes by seq and envelope id, and learns what is gone."""
        assert self.account is not None
        shared = self._shared
        assert shared is not None
        while self._receipts:
            seqs, self._receipts = self._receipts, []
            ids, self._receipt_ids = self._receipt_ids, []
            fetches = self._fetches
            try:
                deleted = await self.relay.receipt(self.account, seqs, ids)
            except RelayError:  # storage failed: these envelopes are simply delivered again later
                log.warning("deleting receipted envelopes failed")
                continue
            cursor = shared.after()
            shared.deleted(seqs)
            # A fetch that ran while the delete was committed but not yet known here asked for seqs
            # above the old cursor; another node, seeing the mailbox emptier, may have numbered a new
            # envelope below it meanwhile (SharedCursor). Likewise when someone else deleted some of
            # these: the cursor may have sat too high.
            if deleted < len(seqs) or (fetches != self._fetches and shared.after() < cursor):
                self._request_fetch()

    async def _on_upload(self, frame: f.UploadKeys) -> None:
        assert self.account is not None
        try:
            one_time, kem = await self.relay.upload_keys(self.account, frame)
        except RelayError as error:
            raise Closing(f.ErrorCode.BAD_KEYS, str(error)) from None
        self.send_frame(f.KeyStock(one_time, kem))

    async def _on_get_pass(self) -> None:
        assert self.account is not None
        try:
            day, send_pass = await self.relay.send_pass_for(self.account)
        except SubscriptionExpired as error:
            # Not fatal: an expired account keeps receiving on this connection.
            self.send_frame(f.Error(f.ErrorCode.SUBSCRIPTION_EXPIRED, str(error)[:200]))
            return
        self.send_frame(f.SendPass(day, send_pass))

    async def _authenticate(self, frame: f.Auth) -> None:
        try:
            account = await self.relay.authenticate(self._nonce, frame)
        except Revoked:
            raise Closing(f.ErrorCode.REVOKED, "account revoked") from None
        except AuthFailed:
            raise Closing(f.ErrorCode.AUTH_FAILED, "authentication failed") from None
        self.account = account.account_id
        self.relay.metrics.connection_opened("authenticated")
        self._kind = "authenticated"
        one_time, kem = await self.relay.counts(account.account_id)
        self.send_frame(f.AuthOk(account.expires_day, one_time, kem))
        self.relay.fanout.attach(account.account_id, self)
        self._request_fetch()

    async def shutdown(self, grace: float) -> None:
        """Server shutdown: let the frame being handled finish (its envelopes are committed and
        acknowledged), flush every frame owed, then close with SHUTTING_DOWN."""
        busy = self.busy()
        if busy is not None:
            await asyncio.wait([busy], timeout=grace)
        await self._acknowledged(grace)  # envelopes being stored are acknowledged before the close
        if self._closing is None:
            self._closing = Closing(f.ErrorCode.SHUTTING_DOWN, "server shutting down")
        self.stop()
        self._detach()
        self._send_error_and_close()
        await self.wait_closed(grace)

    async def run(self) -> None:
        """Says CHALLENGE, then lives until the transport is gone (the stream handles the frames)."""
        self.send_frame(f.Challenge(self._nonce, self.relay.today()))
        self._watchdog = self.loop.call_later(self.settings.handshake_timeout, self._check_idle)
        try:
            await self._done  # not asyncio.wait: that takes a set, a future and callbacks per connection
        except asyncio.CancelledError:
            self.abort()
            raise

    def _check_idle(self) -> None:
        """One timer per connection instead of a timeout per receive (that cost 8% of the CPU of a
        busy relay): a hello must come within handshake_timeout, and a sending stream must not be
        silent for idle_timeout. Mailboxes may idle for hours; heartbeats keep them honest."""
        if self._closing is not None or self.lost:
            return
        loop = self.loop
        if self.state is State.MAILBOX:
            self._check_alive(loop)
            return
        limit = (
            self.settings.handshake_timeout if self.state is State.AWAIT_HELLO else self.settings.idle_timeout
        )
        now = loop.time()
        deadline = self.last_frame + limit
        if not reached(deadline, now) and self.state is not State.AWAIT_HELLO:
            self._watchdog = loop.call_later(deadline - now, self._check_idle)
            return
        if not reached(deadline, now):  # the hello arrived and the state moved on meanwhile: now idle rules
            self._watchdog = loop.call_later(self.settings.idle_timeout, self._check_idle)
            return
        self.relay.metrics.connection_refused(
            "handshake_timeout" if self.state is State.AWAIT_HELLO else "idle"
        )
        self._close_soon(f.ErrorCode.TIMEOUT, "timed out")

    def _check_alive(self, loop: asyncio.AbstractEventLoop) -> None:
        """The heartbeat of a mailbox, every ``heartbeat`` seconds on the connection's one timer: a
        mailbox that sent nothing since the last beat is pinged, and one that answered neither that
        ping nor anything else by the next beat is cut off, so a peer that vanished without closing
        is noticed within twice ``heartbeat``. aiohttp's own heartbeat took a timer, a callback per
        read and a task per ping for every connection (about 1.2 KiB each with 10,000 of them)."""
        now = loop.time()
        if self._pinged_at and self.last_frame < self._pinged_at:
            self._cut("no answer to the heartbeat", dead=True)
            return
        self._pinged_at = 0.0
        if now - self.last_frame >= self.settings.heartbeat:
            # Also behind a full buffer: a client that stopped reading never answers, and when no
            # frame is waiting for room (the delivery window is full) no write timeout would run.
            self.ping()
            self._pinged_at = now
        self._watchdog = loop.call_later(self.settings.heartbeat, self._check_idle)


class Flushes:
    """Connections owing frames, written at the end of the loop pass in one callback for all of them.
    A callback per connection was one per delivery with 10,000 mailboxes each sent an envelope at a
    time (Sky ECC's day)."""

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due: list[Connection] = []

    def add(self, connection: Connection) -> None:
        if not self._due:
            connection.loop.call_soon(self._run)
        self._due.append(connection)

    def _run(self) -> None:
        due, self._due = self._due, []  # one flushing may make another owe frames: the next pass
        for connection in due:
            try:
                connection.flush()
            except Exception as error:  # one connection's bug must not leave the others unwritten
                log.error("writing a connection's frames failed", exc_info=error)


class StreamSettings:
    __slots__ = (
        "flushes",
        "handshake_timeout",
        "heartbeat",
        "idle_timeout",
        "max_in_flight",
        "send_burst",
        "send_rate",
        "unstored",
        "write_timeout",
    )

    def __init__(
        self,
        *,
        handshake_timeout: float,
        idle_timeout: float,
        send_rate: float,
        send_burst: float,
        max_in_flight: int = 1024,
        write_timeout: float = 30.0,
        heartbeat: float = 30.0,
        max_unstored_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.heartbeat = heartbeat
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.send_rate = send_rate
        self.send_burst = send_burst
        self.max_in_flight = max_in_flight
        self.write_timeout = write_timeout
        self.unstored = UnstoredBudget(max_unstored_bytes)
        """Shared by every connection of the server (one StreamSettings per server)."""
        self.flushes = Flushes()
        """Shared as well: one flush callback per loop pass for the whole server."""


__all__ = ["Connection", "Flushes", "StreamSettings"]
