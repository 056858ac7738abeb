"""Fuzz target: the server's WebSocket frame reader (kluis.relay.websocket.FrameReader)."""

from __future__ import annotations

from kluis.relay.websocket import MAX_CONTROL_PAYLOAD, FrameReader, Opcode, WebSocketError

EXPECTED = (WebSocketError,)
MAX_MESSAGE = 1 << 16


def target(data: bytes) -> None:
    # Fed in two reads split in the middle: the same rules must hold across a read boundary.
    reader = FrameReader(MAX_MESSAGE)
    middle = len(data) // 2
    for message_opcode, payload in reader.feed(data[:middle]) + reader.feed(data[middle:]):
        if message_opcode >= Opcode.CLOSE and len(payload) > MAX_CONTROL_PAYLOAD:
            raise AssertionError("control frame over 125 bytes accepted")
        if len(payload) > MAX_MESSAGE:
            raise AssertionError("message over the limit accepted")
        if message_opcode is Opcode.CONTINUATION:
            raise AssertionError("a continuation frame surfaced as a message")
