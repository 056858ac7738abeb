"""Fuzz target: the relay frame parser (kluis.relay.frames.parse)."""

from __future__ import annotations

from kluis.protocol.errors import DecodeError, UnsupportedVersion
from kluis.relay.frames import parse, serialize

EXPECTED = (DecodeError, UnsupportedVersion)


def target(data: bytes) -> None:
    frame = parse(data)
    # Whatever parses re-encodes to the same bytes (the encoding is canonical).
    if serialize(frame) != data:
        raise AssertionError("frame encoding is not canonical")
