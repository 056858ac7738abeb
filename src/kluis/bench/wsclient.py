"""A lean client side of RFC 6455 on ``asyncio.Protocol``, for load generators that hold thousands of
streams in one process (``kluis bench skyecc``).

aiohttp's client costs a task switch and a coroutine per received message and per send; with
thousands of mailbox streams, each receiving one DELIVER frame and answering one RECEIPT frame per
envelope, that made the generator, not the relay, the bottleneck. Here a received frame is handled
inside ``data_received`` (no task), and a send is one ``transport.write``.

What it implements: the opening handshake (``Sec-WebSocket-Accept`` checked), unfragmented binary
messages both ways, masked client frames (a fresh random key per frame, masked by aiohttp's C helper,
as aiohttp's own client does), answering pings, and the closing handshake. No extensions are offered
(the relay would not compress opaque envelopes anyway), so the server never sends compressed frames.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import struct
from typing import cast

from aiohttp._websocket.helpers import websocket_mask

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
MAX_MESSAGE = 16 * 1024 * 1024
"""A server frame larger than this is a protocol error (the relay's largest is a DELIVER frame of 32
envelopes of at most 256 KiB, 8 MiB)."""

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class WsProtocolError(Exception):
    """The server broke the WebSocket protocol (or refused the upgrade)."""


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + _U16.pack(n)
    else:
        head = bytes((0x80 | opcode, 0xFF)) + _U64.pack(n)
    mask = random.getrandbits(32).to_bytes(4, "big")
    data = bytearray(payload)
    websocket_mask(mask, data)
    return b"".join((head, mask, data))


def _frame_at(buf: bytes, pos: int, n: int) -> tuple[int, int] | None:
    """(payload start, payload end) of the server frame at ``pos``, None until all of it arrived.

    Raises:
        WsProtocolError: a masked or oversized frame.
    """
    length = buf[pos + 1]
    if length & 0x80:
        raise WsProtocolError("the server masked a frame")
    if length < 126:
        start = pos + 2
    elif length == 126:
        if n - pos < 4:
            return None
        length = _U16.unpack_from(buf, pos + 2)[0]
        start = pos + 4
    else:
        if n - pos < 10:
            return None
        length = _U64.unpack_from(buf, pos + 2)[0]
        start = pos + 10
        if length > MAX_MESSAGE:
            raise WsProtocolError("frame too large")
    end = start + length
    return (start, end) if end <= n else None


class WsClient(asyncio.Protocol):
    """One client WebSocket. Subclasses implement :meth:`on_message` (one binary message) and may
    override :meth:`on_open` and :meth:`on_closed`."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self._host = f"{host}:{port}"
        self._path = path
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._upgraded = False
        self._accept = b""
        self.closed = False
        self.close_reason = ""

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        key = base64.b64encode(os.urandom(16))
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - RFC 6455
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self._path.encode(), self._host.encode(), key)
        )

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            self._check_upgrade(buf[:end])
            buf = buf[end + 4 :]
        pos, n = 0, len(buf)
        try:
            while not self.closed and n - pos >= 2:
                found = _frame_at(buf, pos, n)
                if found is None:
                    break
                start, end = found
                head = buf[pos]
                pos = end
                self._dispatch(head, buf[start:end])
        except WsProtocolError as exc:
            self._fail(str(exc))
        self._buf = buf[pos:] if pos < n else b""

    def _dispatch(self, head: int, payload: bytes) -> None:
        opcode = head & 0x0F
        if opcode == OP_BINARY and head & 0x80:
            self.on_message(payload)
        elif opcode == OP_PING:
            self._write(client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.close_reason = "closed by the server"
            self.close()
        elif opcode != OP_PONG:
            self._fail(f"unexpected frame (opcode {opcode}, fin {head >> 7})")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = self.close_reason or f"connection lost ({exc or 'eof'})"
        self.on_closed()

    # -- API ------------------------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """One binary message (dropped when the connection is closed)."""
        self._write(client_frame(OP_BINARY, payload))

    def close(self) -> None:
        """Sends a close frame (1000) and closes the socket after it."""
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            if self._upgraded:
                self.transport.write(client_frame(OP_CLOSE, b"\x03\xe8"))
            self.transport.close()

    def on_open(self) -> None:
        """The upgrade succeeded."""

    def on_message(self, data: bytes) -> None:
        raise NotImplementedError

    def on_closed(self) -> None:
        """The socket is gone (``close_reason`` says why)."""

    # -- internals ------------------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(frame)

    def _check_upgrade(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 101"):
            self._fail(f"upgrade refused: {lines[0][:80].decode(errors='replace')}")
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"sec-websocket-accept") != self._accept:
            self._fail("bad Sec-WebSocket-Accept")
            return
        if headers.get(b"sec-websocket-extensions"):
            self._fail("the server chose an extension that was not offered")
            return
        self._upgraded = True
        self.on_open()

    def _fail(self, why: str) -> None:
        self.close_reason = f"protocol error: {why}"
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


async def connect(client: WsClient, host: str, port: int) -> None:
    """Opens the TCP connection of ``client`` (the upgrade then runs in its callbacks)."""
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: client, host, port)


__all__ = ["WsClient", "WsProtocolError", "client_frame", "connect"]
