"""Fuzz target: unpad (message bound); an accepted input must re-pad to itself."""

from __future__ import annotations

from kluis.protocol.errors import DecodeError
from kluis.protocol.padding import ENVELOPE_MAX_BUCKET, pad, unpad

EXPECTED = (DecodeError,)


def target(data: bytes) -> None:
    max_bucket = ENVELOPE_MAX_BUCKET if data[:1] == b"\xff" else 64 * 1024
    out = unpad(data, max_bucket=max_bucket)
    if pad(out, max_bucket=max_bucket) != data:
        raise AssertionError("unpad accepted a non-canonical padding")
