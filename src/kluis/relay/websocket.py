"""The server side of WebSocket (RFC 6455), sans I/O: the opening handshake's answer (section 4) and
the framing (section 5), bytes in, messages out.

The relay's stream (server/stream.py) uses this instead of aiohttp's WebSocket object (aiohttp still
parses the HTTP request and writes the 101 answer), because a queue, a future and a task switch per
message were a measurable share of a busy relay's CPU and about 2 KiB of every idle connection
(docs/OPERATING.md, "Benchmarks"). No extension is negotiated (the handshake offers none), so every
RSV bit must be clear.

Client frames must be masked (section 5.3); server frames are not. A message larger than
``max_message`` is refused from its header, before its payload is read (close code 1009).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import struct
from collections.abc import Callable, Mapping

_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_HEAD16 = struct.Struct(">BBH")
_HEAD64 = struct.Struct(">BBQ")
MAX_CONTROL_PAYLOAD = 125
"""Section 5.5: control frames carry at most 125 bytes and are never fragmented."""


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Section 7.4.1."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


_OPCODES = frozenset(int(o) for o in Opcode)


class WebSocketError(Exception):
    """The peer broke the framing rules; the connection is closed with ``code``."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""Section 1.3: appended to the client's key before hashing."""


class HandshakeError(Exception):
    """A client's opening handshake is not a valid WebSocket upgrade (answered with 400)."""


def accept_handshake(headers: Mapping[str, str]) -> dict[str, str]:
    """Checks a client's opening handshake (section 4.2.1; ``headers`` looked up case-insensitively,
    as aiohttp's are) and returns the headers of the server's 101 answer (section 4.2.2). No
    subprotocol and no extension is offered, so none is accepted."""
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        raise HandshakeError("not a WebSocket upgrade")
    if "upgrade" not in {token.strip().lower() for token in headers.get("Connection", "").split(",")}:
        raise HandshakeError("Connection does not say Upgrade")
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise HandshakeError("unsupported WebSocket version (13 is)")
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise HandshakeError("Sec-WebSocket-Key is not 16 bytes")
    except binascii.Error:
        raise HandshakeError("Sec-WebSocket-Key is not base64") from None
    # SHA-1 because section 4.2.2 says so; it proves only that the server read the handshake.
    accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID, usedforsecurity=False).digest())
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept.decode()}


def unmask_int(mask: bytes, payload: bytes) -> bytes:
    """XORs ``payload`` with the 4-byte ``mask`` repeated (section 5.3), as one integer operation
    (CPython does it in C, tens of times faster than a loop over bytes)."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _unmask_with(mask_in_place: Callable[[bytes, bytearray], None]) -> Callable[[bytes, bytes], bytes]:
    def unmask(mask: bytes, payload: bytes) -> bytes:
        data = bytearray(payload)
        mask_in_place(mask, data)
        return bytes(data)

    return unmask


unmask: Callable[[bytes, bytes], bytes]
try:
    # aiohttp's compiled masking (it does the handshake for us, so it is installed): 5-40x faster
    # than unmask_int, 4 us instead of 200 us for a 140 KB envelope. An internal module, hence the
    # fallback; tests check both give the same bytes.
    from aiohttp._websocket.helpers import websocket_mask as _aiohttp_mask
except ImportError:  # pragma: no cover - an aiohttp that moved it
    unmask = unmask_int
else:
    unmask = _unmask_with(_aiohttp_mask)


def frame_header(opcode: Opcode, length: int) -> bytes:
    """The header of one unfragmented, unmasked frame (a server's) with a ``length``-byte payload."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 0x10000:
        return _HEAD16.pack(first, 126, length)
    return _HEAD64.pack(first, 127, length)


def close_payload(code: CloseCode, reason: str = "") -> bytes:
    return _U16.pack(code) + reason.encode()[: MAX_CONTROL_PAYLOAD - 2]


class FrameReader:
    """Turns the bytes a client sends into whole messages: ``(opcode, payload)`` for each complete
    data message (fragments joined; its opcode is the first fragment's) and for each control frame
    (which may arrive between fragments), in order. Raises :class:`WebSocketError` on the first
    frame that breaks the rules; after that the reader must not be fed again."""

    __slots__ = (
        "_buffer",
        "_fragmented",
        "_fragments",
        "_fragments_size",
        "_need",
        "_waiting",
        "max_message",
    )

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = b""
        self._waiting: list[bytes] = []
        """Chunks received while fewer than ``_need`` bytes are there: a large frame arriving in many
        reads is joined once, not copied again with every read."""
        self._need = 0
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._fragmented: Opcode | None = None

    def feed(self, data: bytes) -> list[tuple[Opcode, bytes]]:
        if self._need:
            self._waiting.append(data)
            self._need -= len(data)
            if self._need > 0:
                return []
            self._need = 0
            data = b"".join(self._waiting)
            self._waiting = []
        buffer = self._buffer + data if self._buffer else data
        messages: list[tuple[Opcode, bytes]] = []
        pos = 0
        end = len(buffer)
        binary = Opcode.BINARY
        while end - pos >= 2:
            # The common frame first: a whole binary message (FIN, no RSV), masked, its length in
            # 7 or 16 bits, outside a fragmented message. The rules are the same as _header's.
            second = buffer[pos + 1]
            if buffer[pos] == 0x82 and 0x80 <= second < 0xFF and self._fragmented is None:
                length = second & 0x7F
                head = pos + 2
                if length == 126:
                    if end - head < 2:
                        break
                    length = (buffer[head] << 8) | buffer[head + 1]
                    head += 2
                if length > self.max_message:
                    raise WebSocketError(CloseCode.MESSAGE_TOO_BIG, "message too big")
                body = head + 4
                stop = body + length
                if stop > end:
                    self._need = stop - end
                    break
                messages.append((binary, unmask(buffer[head:body], buffer[body:stop])))
                pos = stop
                continue
            header = self._header(buffer, pos, end)
            if header is None:
                break
            opcode, fin, head, length = header
            body = head + 4
            stop = body + length
            if stop > end:
                self._need = stop - end
                break
            payload = unmask(buffer[head:body], buffer[body:stop])
            pos = stop
            message = self._complete(opcode, fin, payload)
            if message is not None:
                messages.append(message)
        self._buffer = buffer[pos:] if pos < end else b""
        return messages

    def _header(self, buffer: bytes, pos: int, end: int) -> tuple[Opcode, bool, int, int] | None:
        """(opcode, fin, where the mask starts, payload length) of the frame at ``pos``, checked; None
        if its header is not all there yet."""
        if end - pos < 2:
            return None
        first, second = buffer[pos], buffer[pos + 1]
        if first & 0x70:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        if not second & 0x80:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "client frame not masked")
        if first & 0x0F not in _OPCODES:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "unknown opcode")
        opcode = Opcode(first & 0x0F)
        fin = bool(first & 0x80)
        length = second & 0x7F
        head = pos + 2
        if length == 126:
            if end - head < 2:
                return None
            (length,) = _U16.unpack_from(buffer, head)
            head += 2
        elif length == 127:
            if end - head < 8:
                return None
            (length,) = _U64.unpack_from(buffer, head)
            head += 8
            if length >> 63:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "payload length out of range")
        self._check(opcode, fin, length)
        return opcode, fin, head, length

    def _check(self, opcode: Opcode, fin: bool, length: int) -> None:
        """The rules a frame's header must keep, checked before its payload is waited for."""
        if opcode >= Opcode.CLOSE:
            if not fin or length > MAX_CONTROL_PAYLOAD:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "control frame fragmented or too long")
            return
        if opcode is Opcode.CONTINUATION:
            if self._fragmented is None:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "continuation without a message")
        elif self._fragmented is not None:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        if self._fragments_size + length > self.max_message:
            raise WebSocketError(CloseCode.MESSAGE_TOO_BIG, "message too big")

    def _complete(self, opcode: Opcode, fin: bool, payload: bytes) -> tuple[Opcode, bytes] | None:
        if opcode >= Opcode.CLOSE:
            return opcode, payload
        if fin and opcode is not Opcode.CONTINUATION:
            return opcode, payload
        if opcode is not Opcode.CONTINUATION:
            self._fragmented = opcode
        self._fragments.append(payload)
        self._fragments_size += len(payload)
        if not fin:
            return None
        kind = self._fragmented
        assert kind is not None
        whole = b"".join(self._fragments)
        self._fragments, self._fragments_size, self._fragmented = [], 0, None
        return kind, whole


__all__ = [
    "CloseCode",
    "FrameReader",
    "HandshakeError",
    "Opcode",
    "WebSocketError",
    "accept_handshake",
    "close_payload",
    "frame_header",
    "unmask",
    "unmask_int",
]
