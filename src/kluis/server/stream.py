"""A WebSocket connection on the transport itself, once aiohttp has done the opening handshake.

aiohttp answers the upgrade request of ``GET /v1/stream`` (RFC 6455 section 4: the key, the version,
the 101 response); then the stream takes the transport over (``transport.set_protocol``) and reads
and writes frames with kluis.relay.websocket. Per message that saves aiohttp's queue, a future and a
task switch, and per idle connection its reader, queue and pending receive (about 2 KiB): issue 3's
W1 and W4 (docs/OPERATING.md, "Benchmarks").

What the stream does for its subclass (server/ws.py's Connection):

- messages are handled in arrival order. A handler that returns a coroutine (it has to wait, say for
  the database) is awaited before the next message, and messages arriving meanwhile wait in an inbox;
  when more than MAX_INBOX, or more than MAX_INBOX_BYTES, wait, the transport stops reading (TCP
  pushes back on the client);
- writes go straight to the transport, all frames of one flush in one write. When the transport's
  buffer passes WRITE_BUFFER_LIMIT (the client does not read), frames wait, and a client that does not
  make room within ``write_timeout`` is cut off;
- PING is answered with PONG; CLOSE ends the connection (echoed, then the transport closes); a frame
  that breaks RFC 6455 closes it with the RFC's code (1002, or 1009 for a message over the limit,
  refused from its header before its payload is read);
- when the transport is lost, aiohttp's own protocol is told too, so its connection bookkeeping and
  the request handler end as they would have.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Coroutine
from typing import Any

from kluis.relay.websocket import CloseCode, FrameReader, Opcode, WebSocketError, close_payload, frame_header

WRITE_BUFFER_LIMIT = 256 * 1024
"""Bytes waiting in the transport's buffer above which frames wait for the client to read."""
MAX_INBOX = 64
"""Messages waiting behind one being awaited before the transport stops reading."""
MAX_INBOX_BYTES = 1024 * 1024
"""Their bytes: 64 messages could be 64 of the largest frames (several MB each)."""
CLOSE_TIMEOUT_S = 2.0
"""How long the closing handshake waits for the client's CLOSE before the transport is aborted; a
client that stopped reading must not hold a shutdown for long."""

Pending = Coroutine[Any, Any, None]


def _binary_frames(messages: list[bytes]) -> bytes:
    """Binary messages as the bytes of one write, each an unfragmented frame."""
    if len(messages) == 1:  # the common case, without a list and a join
        return frame_header(Opcode.BINARY, len(messages[0])) + messages[0]
    parts: list[bytes] = []
    for message in messages:
        parts += (frame_header(Opcode.BINARY, len(message)), message)
    return b"".join(parts)


class Stream(asyncio.Protocol):
    """The transport side of one WebSocket connection. Subclasses handle messages (:meth:`on_binary`)
    and are told about failures (:meth:`on_failure`) and the end (:meth:`on_lost`)."""

    __slots__ = (
        "_close_sent",
        "_close_timer",
        "_done",
        "_frames",
        "_http",
        "_inbox",
        "_inbox_bytes",
        "_lost",
        "_reader",
        "_reading_paused",
        "_slow_task",
        "_stall_timer",
        "_stopped",
        "_transport",
        "_write_paused",
        "_write_timeout",
        "last_frame",
        "loop",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        max_message: int,
        write_timeout: float,
        http_protocol: asyncio.BaseProtocol | None = None,
    ) -> None:
        # Kept: on Python 3.11 each asyncio.get_running_loop() (also inside ensure_future) is a
        # getpid() system call, several per envelope; that was 7% of a busy relay's CPU.
        self.loop = asyncio.get_running_loop()
        self._transport = transport
        self._http = http_protocol
        self._reader = FrameReader(max_message)
        self._write_timeout = write_timeout
        self._frames: list[bytes] = []
        """Binary messages owed to the client, written by :meth:`emit`."""
        self._inbox: collections.deque[tuple[Opcode, bytes]] | None = None
        """Messages waiting while one is awaited (None: none is, handle them as they come)."""
        self._inbox_bytes = 0
        self._slow_task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._write_paused = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._close_sent = False
        self._stopped = False
        self._lost = False
        self._done: asyncio.Future[None] = self.loop.create_future()
        self.last_frame = self.loop.time()
        transport.set_write_buffer_limits(high=WRITE_BUFFER_LIMIT)

    # -- to override ----------------------------------------------------------------------------

    def on_binary(self, payload: bytes) -> Pending | None:
        """Handles one binary message; returns what is left to await, or None. May raise; the
        exception goes to :meth:`on_failure`."""
        raise NotImplementedError

    def on_text(self) -> None:
        """A text message arrived."""
        raise NotImplementedError

    def on_failure(self, error: Exception) -> None:
        """A handler raised ``error``; the subclass decides how the connection ends."""
        raise NotImplementedError

    def on_lost(self) -> None:
        """The transport is gone (after the close, or the client vanished)."""

    def on_read_done(self) -> None:
        """The binary messages handled since the last call are all there is for now: the read is
        handled, or the next message waits for them (a subclass that gathers work does it now).
        May raise, like :meth:`on_binary`."""

    def _read_done(self) -> None:
        try:
            self.on_read_done()
        except Exception as error:
            self.on_failure(error)

    # -- state ----------------------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        return self._lost

    @property
    def closing(self) -> bool:
        """:meth:`stop` was called, the close handshake has begun or the transport is gone: no more
        messages are handled (a client's CLOSE still closes the transport)."""
        return self._ending()

    def _ending(self) -> bool:
        return self._stopped or self._close_sent or self._lost

    def stop(self) -> None:
        """Handles no more messages (the connection is ending; what it owes is still written)."""
        self._stopped = True

    def busy(self) -> asyncio.Task[None] | None:
        """The task awaiting a message's handler, if any."""
        return self._slow_task

    async def wait_closed(self, timeout: float | None = None) -> None:
        await asyncio.wait([self._done], timeout=timeout)

    # -- incoming -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            self._after_close(data)
            return
        try:
            messages = self._reader.feed(data)
        except WebSocketError as error:
            self.close_now(error.code, error.reason)
            return
        self.last_frame = self.loop.time()
        for opcode, payload in messages:
            if self._ending():  # a message before this one ended the connection
                break
            if self._inbox is not None:
                self._inbox.append((opcode, payload))
                self._inbox_bytes += len(payload)
                if (
                    len(self._inbox) > MAX_INBOX or self._inbox_bytes > MAX_INBOX_BYTES
                ) and not self._reading_paused:
                    self._reading_paused = True
                    self._transport.pause_reading()
                continue
            pending = self._on_message(opcode, payload)
            if pending is not None:
                self._inbox = collections.deque()
                self._slow_task = self.loop.create_task(self._handle_in_order(pending))
        self._read_done()

    def _after_close(self, data: bytes) -> None:
        """Once the connection is ending, only the client's CLOSE matters; anything else is dropped."""
        if self._lost:
            return
        try:
            messages = self._reader.feed(data)
        except WebSocketError:
            self._transport.abort()
            return
        if any(opcode is Opcode.CLOSE for opcode, _ in messages):
            self._transport.close()

    def _on_message(self, opcode: Opcode, payload: bytes) -> Pending | None:
        if opcode is Opcode.BINARY:
            try:
                pending = self.on_binary(payload)
            except Exception as error:
                self.on_failure(error)
                return None
            if pending is not None:  # it waits: what the messages before it left to do comes first
                self._read_done()
            return pending
        self._read_done()  # what the messages before this one left to do comes first
        if opcode is Opcode.PING:
            self._transport.write(frame_header(Opcode.PONG, len(payload)) + payload)
        elif opcode is Opcode.CLOSE:  # echoed (section 5.5.1), then the transport closes
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CloseCode.NORMAL
            if not 1000 <= code < 5000:
                code = CloseCode.PROTOCOL_ERROR
            self._transport.write(frame_header(Opcode.CLOSE, 2) + code.to_bytes(2, "big"))
            self._close_sent = True
            self._transport.close()
        elif opcode is Opcode.TEXT:
            self.on_text()
        # PONG: an answer to the heartbeat; last_frame is already updated.
        return None

    async def _handle_in_order(self, pending: Pending) -> None:
        """Awaits one handler, then handles the messages that arrived meanwhile, in order."""
        inbox = self._inbox
        assert inbox is not None
        try:
            while True:
                try:
                    await pending
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    self.on_failure(error)
                    return
                next_pending = None
                while inbox and next_pending is None and not self.closing:
                    opcode, payload = inbox.popleft()
                    self._inbox_bytes -= len(payload)
                    next_pending = self._on_message(opcode, payload)
                self._read_done()
                if next_pending is None:
                    return
                pending = next_pending
                if (
                    self._reading_paused
                    and len(inbox) <= MAX_INBOX // 2
                    and self._inbox_bytes <= MAX_INBOX_BYTES // 2
                ):
                    self._reading_paused = False
                    self._transport.resume_reading()
        finally:
            self._inbox = None
            self._inbox_bytes = 0
            self._slow_task = None
            if self._reading_paused and not self._lost:
                self._reading_paused = False
                self._transport.resume_reading()

    # -- outgoing -------------------------------------------------------------------------------

    def emit(self) -> list[bytes]:
        """Writes every queued binary message in one transport write; returns what was written
        (nothing while the client is not reading, or once the transport is closing)."""
        frames = self._frames
        if not frames or self._write_paused or self._lost or self._transport.is_closing():
            return []
        self._frames = []
        self._transport.write(_binary_frames(frames))
        return frames

    def ping(self) -> None:
        """A heartbeat PING; written even behind a full buffer (a client that stopped reading never
        answers it, and that is how it is found out)."""
        if not self._lost and not self._transport.is_closing():
            self._transport.write(frame_header(Opcode.PING, 0))

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self._write_timeout, self.stalled)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self.resumed()

    def stalled(self) -> None:
        """The client has not made room for ``write_timeout``."""
        self.abort()

    def resumed(self) -> None:
        """The client reads again: the subclass writes what waited."""
        self.emit()

    # -- closing --------------------------------------------------------------------------------

    def close_now(self, code: CloseCode, reason: str = "", last: bytes | None = None) -> None:
        """Writes the queued messages, then ``last`` (a final binary message, if any), then CLOSE, and
        waits up to CLOSE_TIMEOUT_S for the client's CLOSE before dropping the transport."""
        if self._close_sent or self._lost:
            return
        self._close_sent = True
        self._stopped = True
        if self._transport.is_closing():
            return
        frames, self._frames = self._frames, []
        if last is not None:
            frames.append(last)
        payload = close_payload(code, reason)
        self._transport.write(_binary_frames(frames) + frame_header(Opcode.CLOSE, len(payload)) + payload)
        self._close_timer = self.loop.call_later(CLOSE_TIMEOUT_S, self._transport.abort)

    def abort(self) -> None:
        """Drops the connection at once (a client that does not read or answer)."""
        self._close_sent = True
        self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._close_sent = True
        for timer in (self._stall_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        if self._slow_task is not None:
            self._slow_task.cancel()
        try:
            self.on_lost()
        finally:
            if self._http is not None:
                self._http.connection_lost(exc)
                self._http = None
            if not self._done.done():
                self._done.set_result(None)


__all__ = ["CLOSE_TIMEOUT_S", "MAX_INBOX", "WRITE_BUFFER_LIMIT", "Pending", "Stream"]
