"""Fuzz target: SafetyNumber.matches_qr on scanned bytes (a QR code is attacker-chosen input)."""

from __future__ import annotations

from kluis.protocol.errors import DecodeError, UnsupportedVersion
from kluis.protocol.keys import IdentityKeyPair
from kluis.protocol.rng import DeterministicRng
from kluis.protocol.safety import safety_number

EXPECTED = (DecodeError, UnsupportedVersion)
NUMBER = safety_number(
    IdentityKeyPair.generate(DeterministicRng(b"fuzz/safety local")).public,
    b"L" * 16,
    IdentityKeyPair.generate(DeterministicRng(b"fuzz/safety remote")).public,
    b"R" * 16,
)


def target(data: bytes) -> None:
    if NUMBER.matches_qr(data) and data != NUMBER.qr_payload():
        raise AssertionError("matches_qr accepted another payload")
