"""safety.py: Signal-style numeric fingerprints (60 digits) and their QR payload."""

from __future__ import annotations

import hashlib

import pytest

from kluis.protocol.errors import DecodeError, LocalProtocolError, UnsupportedVersion
from kluis.protocol.keys import IdentityKeyPair
from kluis.protocol.rng import DeterministicRng
from kluis.protocol.safety import ITERATIONS, QR_PAYLOAD_LEN, fingerprint, safety_number

ALICE = IdentityKeyPair.generate(DeterministicRng(b"alice"))
BOB = IdentityKeyPair.generate(DeterministicRng(b"bob"))
MALLORY = IdentityKeyPair.generate(DeterministicRng(b"mallory"))
A_ACC = b"A" * 16
B_ACC = b"B" * 16

AB = safety_number(ALICE.public, A_ACC, BOB.public, B_ACC)
BA = safety_number(BOB.public, B_ACC, ALICE.public, A_ACC)


class TestNumber:
    def test_same_on_both_sides(self) -> None:
        assert AB == BA
        assert AB.digits == BA.digits
        assert AB.qr_payload() == BA.qr_payload()

    def test_format(self) -> None:
        assert len(AB.digits) == 60
        assert AB.digits.isdigit()
        groups = AB.display().split(" ")
        assert len(groups) == 12
        assert all(len(g) == 5 for g in groups)
        assert repr(AB) == f"SafetyNumber({AB.display()})"

    def test_halves_are_sorted_party_digits(self) -> None:
        halves = sorted([AB.digits[:30], AB.digits[30:]])
        assert AB.digits == halves[0] + halves[1]

    def test_substituted_key_changes_it(self) -> None:
        mitm = safety_number(ALICE.public, A_ACC, MALLORY.public, B_ACC)
        assert mitm.digits != AB.digits
        # Only one half changes: the one for the substituted party.
        assert len({AB.digits[:30], AB.digits[30:]} & {mitm.digits[:30], mitm.digits[30:]}) == 1
        assert not AB.matches_qr(mitm.qr_payload())

    def test_account_changes_it(self) -> None:
        assert safety_number(ALICE.public, A_ACC, BOB.public, b"C" * 16).digits != AB.digits

    def test_algorithm(self) -> None:
        """Step 1 by hand, with a small iteration count."""
        key = ALICE.public.to_bytes()
        h = hashlib.sha512(b"\x00\x01" + key + A_ACC).digest()
        for _ in range(3):
            h = hashlib.sha512(h + key).digest()
        assert fingerprint(ALICE.public, A_ACC, 3) == h
        assert ITERATIONS == 5200

    @pytest.mark.parametrize("account", [b"", b"a" * 15, b"a" * 33])
    def test_account_bounds(self, account: bytes) -> None:
        with pytest.raises(LocalProtocolError):
            safety_number(ALICE.public, account, BOB.public, B_ACC, iterations=1)


class TestQr:
    def test_payload(self) -> None:
        payload = AB.qr_payload()
        assert len(payload) == QR_PAYLOAD_LEN == 65
        assert payload[0] == 1
        assert AB.matches_qr(BA.qr_payload())
        assert BA.matches_qr(payload)

    def test_flipped_byte(self) -> None:
        payload = bytearray(AB.qr_payload())
        payload[40] ^= 1
        assert not AB.matches_qr(bytes(payload))

    def test_version(self) -> None:
        with pytest.raises(UnsupportedVersion):
            AB.matches_qr(b"\x02" + AB.qr_payload()[1:])

    @pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01" + bytes(63), b"\x01" + bytes(65)])
    def test_length(self, payload: bytes) -> None:
        with pytest.raises(DecodeError):
            AB.matches_qr(payload)
