"""The ratchet message on the wire (spec §3.1 HEADER, without header encryption).

Byte layout (all integers big-endian)::

    offset  size  field
    0       1     version (MESSAGE_VERSION = 1)
    1       32    dh: the sender's current ratchet public key (X25519, raw)
    33      4     pn: number of messages in the sender's previous sending chain
    37      4     n:  number of this message in the current sending chain
    41      ...   AEAD ciphertext (at least MIN_CIPHERTEXT_LEN bytes, includes the tag)

The first 41 bytes are the "header" that the AEAD authenticates (through the AD layout).
"""

from __future__ import annotations

import struct
from typing import Final

from kluis.protocol.errors import DecodeError, DecodeReason, UnsupportedVersion
from kluis.protocol.ratchet.constants import (
    HEADER_LEN,
    MAX_MESSAGE_LEN,
    MESSAGE_VERSION,
    MIN_CIPHERTEXT_LEN,
)

HEADER: Final = struct.Struct(">B32sII")
assert HEADER.size == HEADER_LEN

_WHAT = "ratchet message"


class RatchetMessage:
    """A parsed ratchet message. Holds no secrets (the ratchet public key and ciphertext are public)."""

    __slots__ = ("ciphertext", "dh", "header", "n", "pn")

    def __init__(self, dh: bytes, pn: int, n: int, ciphertext: bytes, header: bytes) -> None:
        self.dh = dh
        self.pn = pn
        self.n = n
        self.ciphertext = ciphertext
        self.header = header
        """The 41 authenticated header bytes, exactly as received."""

    def to_bytes(self) -> bytes:
        return self.header + self.ciphertext

    def __repr__(self) -> str:
        return f"RatchetMessage(pn={self.pn}, n={self.n}, ciphertext=<{len(self.ciphertext)} bytes>, ..)"


def split_message(data: bytes) -> tuple[bytes, int, int, bytes]:
    """Hot-path parser: returns (dh, pn, n, ciphertext) or raises DecodeError/UnsupportedVersion."""
    size = len(data)
    if size < HEADER_LEN + MIN_CIPHERTEXT_LEN:
        if size and data[0] != MESSAGE_VERSION:
            raise UnsupportedVersion(_WHAT, data[0])
        raise DecodeError(_WHAT, DecodeReason.TRUNCATED)
    if size > MAX_MESSAGE_LEN:
        raise DecodeError(_WHAT, DecodeReason.TOO_LONG)
    version, dh, pn, n = HEADER.unpack_from(data)
    if version != MESSAGE_VERSION:
        raise UnsupportedVersion(_WHAT, version)
    return dh, pn, n, data[HEADER_LEN:]


def parse_message(data: bytes) -> RatchetMessage:
    """Parses the wire form of a ratchet message.

    Raises:
        UnsupportedVersion: the version byte is not MESSAGE_VERSION.
        DecodeError: shorter than a header plus a minimal ciphertext (TRUNCATED), or longer than
            MAX_MESSAGE_LEN (TOO_LONG).
    """
    data = bytes(data)
    dh, pn, n, ciphertext = split_message(data)
    return RatchetMessage(dh, pn, n, ciphertext, data[:HEADER_LEN])


def encode_header(dh: bytes, pn: int, n: int) -> bytes:
    return HEADER.pack(MESSAGE_VERSION, dh, pn, n)


__all__ = ["HEADER", "RatchetMessage", "encode_header", "parse_message", "split_message"]
