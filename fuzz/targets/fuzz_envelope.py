"""Fuzz target: outer envelope and inner content parsers, ring.open on a fixed ring, ring deserialize.

The first byte picks the entry point: ``E`` parse_envelope, ``I`` parse_inner, ``R``
EnvelopeKeyRing.deserialize; anything else is opened with a fixed ring (whole input).
"""

from __future__ import annotations

from kluis.protocol.envelope import EnvelopeKeyRing, parse_envelope, parse_inner
from kluis.protocol.errors import (
    BadSignature,
    DecodeError,
    DecryptionError,
    EnvelopeKeyUnknown,
    UnsupportedVersion,
)
from kluis.protocol.keys import IdentityKeyPair
from kluis.protocol.rng import DeterministicRng

EXPECTED = (DecodeError, UnsupportedVersion, BadSignature, EnvelopeKeyUnknown, DecryptionError)
NOW = 1_700_000_000
IDENTITY = IdentityKeyPair.generate(DeterministicRng(b"fuzz/envelope identity"))
RING = EnvelopeKeyRing.create(IDENTITY, DeterministicRng(b"fuzz/envelope ring"), NOW)


def target(data: bytes) -> None:
    tag, rest = data[:1], data[1:]
    if tag == b"E":
        parse_envelope(rest)
    elif tag == b"I":
        parse_inner(rest)
    elif tag == b"R":
        EnvelopeKeyRing.deserialize(rest)
    else:
        RING.open(data, NOW)
