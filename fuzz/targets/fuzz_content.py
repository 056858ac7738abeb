"""Fuzz target: the application content parser; an accepted input must encode back to itself."""

from __future__ import annotations

from kluis.client.content import decode, encode
from kluis.protocol.errors import DecodeError, UnsupportedVersion

EXPECTED = (DecodeError, UnsupportedVersion)


def target(data: bytes) -> None:
    content = decode(data)
    if encode(content) != data:
        raise AssertionError("decode accepted bytes that do not encode back to themselves")
