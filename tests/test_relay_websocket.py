"""The server's WebSocket framing (kluis.relay.websocket) against RFC 6455 section 5.

Client frames are built here byte by byte (a loop XOR for the mask), independently of the code under
test; the end-to-end tests drive the same reader with aiohttp's client.
"""

from __future__ import annotations

import os
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kluis.relay.websocket import (
    CloseCode,
    FrameReader,
    HandshakeError,
    Opcode,
    WebSocketError,
    accept_handshake,
    close_payload,
    frame_header,
    unmask,
    unmask_int,
)
from tests.websocket_support import client_frame


def fragments(opcode: int, payload: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(payload) + 1) for c in cuts})
    pieces = [payload[a:b] for a, b in zip([0, *points], [*points, len(payload)], strict=True)]
    frames = []
    for i, piece in enumerate(pieces):
        frames.append(
            client_frame(opcode if i == 0 else Opcode.CONTINUATION, piece, fin=i == len(pieces) - 1)
        )
    return frames


def feed_in_reads(reader: FrameReader, stream: bytes, splits: list[int]) -> list[tuple[Opcode, bytes]]:
    points = sorted({s % (len(stream) + 1) for s in splits})
    out: list[tuple[Opcode, bytes]] = []
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        out += reader.feed(stream[a:b])
    return out


messages: st.SearchStrategy[tuple[Opcode, bytes, list[int]]] = st.one_of(
    st.tuples(
        st.sampled_from([Opcode.BINARY, Opcode.TEXT]),
        st.binary(max_size=70_000),
        st.lists(st.integers(0, 70_000), max_size=4),
    ),
    st.tuples(st.sampled_from([Opcode.PING, Opcode.PONG]), st.binary(max_size=125), st.just([])),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(messages, max_size=6), st.lists(st.integers(min_value=0), max_size=12))
def test_messages_come_out_whole_and_in_order_however_framed_and_read(
    sent: list[tuple[Opcode, bytes, list[int]]], splits: list[int]
) -> None:
    stream = b"".join(b"".join(fragments(op, payload, cuts)) for op, payload, cuts in sent)
    received = feed_in_reads(FrameReader(1 << 20), stream, splits)
    assert received == [(op, payload) for op, payload, _ in sent]


def test_a_control_frame_between_fragments_comes_out_before_the_message() -> None:
    stream = client_frame(Opcode.BINARY, b"abc", fin=False) + client_frame(Opcode.PING, b"?")
    stream += client_frame(Opcode.CONTINUATION, b"def")
    assert FrameReader(100).feed(stream) == [(Opcode.PING, b"?"), (Opcode.BINARY, b"abcdef")]


@given(st.binary(min_size=4, max_size=4), st.binary(max_size=3000))
def test_unmask_is_the_repeated_xor(mask: bytes, payload: bytes) -> None:
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert unmask(mask, payload) == expected
    assert unmask_int(mask, payload) == expected  # the fallback


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_server_frame_header_encodes_the_length_as_the_rfc_says(length: int) -> None:
    head = frame_header(Opcode.BINARY, length)
    assert head[0] == 0x82  # FIN, binary, no RSV bits
    assert not head[1] & 0x80  # a server's frames are not masked
    if length < 126:
        assert head[1:] == bytes([length])
    elif length < 0x10000:
        assert head[1] == 126
        assert struct.unpack(">H", head[2:]) == (length,)
    else:
        assert head[1] == 127
        assert struct.unpack(">Q", head[2:]) == (length,)


def test_close_payload_is_code_then_reason() -> None:
    assert close_payload(CloseCode.MESSAGE_TOO_BIG, "too big") == b"\x03\xf1too big"
    assert len(close_payload(CloseCode.NORMAL, "x" * 300)) == 125


def _error(stream: bytes, max_message: int = 1000) -> WebSocketError:
    with pytest.raises(WebSocketError) as info:
        FrameReader(max_message).feed(stream)
    return info.value


BROKEN_FRAMES = [
    (bytes([0x82, 0x03]) + b"abc", "client frame not masked"),
    (bytes([0xC2]) + client_frame(Opcode.BINARY, b"abc")[1:], "reserved bits set"),
    (bytes([0x83]) + client_frame(Opcode.BINARY, b"abc")[1:], "unknown opcode"),
    (bytes([0x8B]) + client_frame(Opcode.BINARY, b"abc")[1:], "unknown opcode"),
    (client_frame(Opcode.PING, b"p" * 126), "control frame fragmented or too long"),
    (client_frame(Opcode.PING, b"p", fin=False), "control frame fragmented or too long"),
    (client_frame(Opcode.CONTINUATION, b"abc"), "continuation without a message"),
    (
        client_frame(Opcode.BINARY, b"abc", fin=False) + client_frame(Opcode.BINARY, b"def"),
        "new message inside a fragmented one",
    ),
    (bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big") + b"mask", "payload length out of range"),
]


@pytest.mark.parametrize(("stream", "why"), BROKEN_FRAMES, ids=[why for _, why in BROKEN_FRAMES])
def test_frames_that_break_the_rules_are_protocol_errors(stream: bytes, why: str) -> None:
    error = _error(stream)
    assert error.code is CloseCode.PROTOCOL_ERROR
    assert error.reason == why


def test_an_oversized_message_is_refused_from_its_header_alone() -> None:
    header = client_frame(Opcode.BINARY, b"x" * 1001)[:8]  # 2 + 2 length bytes + 4 mask bytes
    assert _error(header).code is CloseCode.MESSAGE_TOO_BIG
    # Fragments count together.
    first = client_frame(Opcode.BINARY, b"x" * 600, fin=False)
    second = client_frame(Opcode.CONTINUATION, b"x" * 600)[:8]
    assert _error(first + second).code is CloseCode.MESSAGE_TOO_BIG
    assert FrameReader(1000).feed(client_frame(Opcode.BINARY, b"x" * 1000)) == [(Opcode.BINARY, b"x" * 1000)]


def test_a_large_frame_read_in_small_pieces_is_joined_once() -> None:
    payload = os.urandom(300_000)
    stream = client_frame(Opcode.BINARY, payload)
    reader = FrameReader(1 << 20)
    out = []
    for i in range(0, len(stream), 1000):
        out += reader.feed(stream[i : i + 1000])
    assert out == [(Opcode.BINARY, payload)]


def test_the_handshake_answer_is_the_rfcs_own_example() -> None:
    """RFC 6455 section 1.3: key "dGhlIHNhbXBsZSBub25jZQ==" gives "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    assert accept_handshake(headers) == {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    }


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"Upgrade": "h2c"}, "not a WebSocket upgrade"),
        ({"Connection": "keep-alive"}, "Connection does not say Upgrade"),
        ({"Sec-WebSocket-Version": "8"}, "unsupported WebSocket version (13 is)"),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, "Sec-WebSocket-Key is not 16 bytes"),
        ({"Sec-WebSocket-Key": "not base64!"}, "Sec-WebSocket-Key is not base64"),
    ],
)
def test_a_handshake_that_is_not_a_websocket_upgrade_is_refused(change: dict[str, str], why: str) -> None:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    with pytest.raises(HandshakeError, match=re.escape(why)):
        accept_handshake(headers | change)
