"""Fuzz target: the key-slot file parser; an accepted input must serialize back to itself."""

from __future__ import annotations

from kluis.client.errors import KeySlotFormatError
from kluis.client.keyslots import KeySlotFile

EXPECTED = (KeySlotFormatError,)


def target(data: bytes) -> None:
    file = KeySlotFile.parse(data)
    if file.serialize() != data:
        raise AssertionError("parse accepted a file that does not serialize back to itself")
