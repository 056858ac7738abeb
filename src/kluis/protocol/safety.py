"""Safety numbers: a 60-digit number two users compare (or scan) to detect a substituted identity key.

Signal's NumericFingerprintGenerator (libsignal ``fingerprint/``), adapted to Kluis identities:

1. For each party, ``h = SHA-512(u16 SAFETY_VERSION || identity || account)`` where ``identity`` is
   ``IdentityPublicKey.to_bytes()`` (129 bytes, fixed, so the variable-length account id at the end is
   unambiguous), then ``ITERATIONS`` times ``h = SHA-512(h || identity)``.
2. The party's *fingerprint* is ``h[:32]``; its 30 digits are ``h[0:30]`` cut into six 5-byte
   big-endian chunks, each ``mod 100000`` written as 5 digits.
3. The two 30-digit strings are concatenated in ascending (string) order (ties broken by ``h``), so
   both sides show the same 60 digits. The QR payload is ``QR_VERSION || fingerprint || fingerprint``
   in that same order.

The iteration count makes a second-preimage search (finding a key whose number matches a victim's)
5,200 times dearer per guess; it costs about 3 ms per party here, paid once per contact view.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from kluis.protocol.errors import DecodeError, DecodeReason, LocalProtocolError, UnsupportedVersion
from kluis.protocol.keys import IdentityPublicKey

SAFETY_VERSION = 1  # u16 prefix of the hashed input (Signal's FINGERPRINT_VERSION is 0)
QR_VERSION = 1
ITERATIONS = 5200  # as Signal
FINGERPRINT_LEN = 32
DIGITS_PER_PARTY = 30
QR_PAYLOAD_LEN = 1 + 2 * FINGERPRINT_LEN
MIN_ACCOUNT_LEN = 16
MAX_ACCOUNT_LEN = 32


def fingerprint(identity: IdentityPublicKey, account: bytes, iterations: int = ITERATIONS) -> bytes:
    """One party's 64-byte iterated hash (step 1)."""
    if not MIN_ACCOUNT_LEN <= len(account) <= MAX_ACCOUNT_LEN:
        raise LocalProtocolError(f"account id must be {MIN_ACCOUNT_LEN}..{MAX_ACCOUNT_LEN} bytes")
    key = identity.to_bytes()
    h = hashlib.sha512(SAFETY_VERSION.to_bytes(2, "big") + key + account).digest()
    for _ in range(iterations):
        h = hashlib.sha512(h + key).digest()
    return h


def _digits(h: bytes) -> str:
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


@dataclass(frozen=True, slots=True)
class SafetyNumber:
    """The number both sides of a conversation see. Public data."""

    digits: str
    _first: bytes
    _second: bytes

    def display(self) -> str:
        """Twelve groups of five digits separated by spaces."""
        return " ".join(self.digits[i : i + 5] for i in range(0, len(self.digits), 5))

    def qr_payload(self) -> bytes:
        return bytes((QR_VERSION,)) + self._first + self._second

    def matches_qr(self, payload: bytes) -> bool:
        """Whether a scanned payload is this number (constant-time comparison).

        Raises:
            DecodeError: empty or not ``QR_PAYLOAD_LEN`` bytes.
            UnsupportedVersion: the first byte is not ``QR_VERSION``.
        """
        if not payload:
            raise DecodeError("safety number QR", DecodeReason.TRUNCATED)
        if payload[0] != QR_VERSION:
            raise UnsupportedVersion("safety number QR", payload[0])
        if len(payload) != QR_PAYLOAD_LEN:
            reason = DecodeReason.TRUNCATED if len(payload) < QR_PAYLOAD_LEN else DecodeReason.TRAILING_BYTES
            raise DecodeError("safety number QR", reason)
        return hmac.compare_digest(payload, self.qr_payload())

    def __repr__(self) -> str:
        return f"SafetyNumber({self.display()})"


def safety_number(
    local_identity: IdentityPublicKey,
    local_account: bytes,
    remote_identity: IdentityPublicKey,
    remote_account: bytes,
    *,
    iterations: int = ITERATIONS,
) -> SafetyNumber:
    """The safety number of a conversation; the same on both sides (arguments swapped).

    Raises:
        LocalProtocolError: an account id is not 16..32 bytes.
    """
    local = fingerprint(local_identity, local_account, iterations)
    remote = fingerprint(remote_identity, remote_account, iterations)
    local_digits, remote_digits = _digits(local), _digits(remote)
    # Ties on the digits (a 100-bit collision) fall back to the fingerprints, so the order is total.
    if (local_digits, local) <= (remote_digits, remote):
        return SafetyNumber(local_digits + remote_digits, local[:FINGERPRINT_LEN], remote[:FINGERPRINT_LEN])
    return SafetyNumber(remote_digits + local_digits, remote[:FINGERPRINT_LEN], local[:FINGERPRINT_LEN])


__all__ = [
    "ITERATIONS",
    "QR_PAYLOAD_LEN",
    "QR_VERSION",
    "SAFETY_VERSION",
    "SafetyNumber",
    "fingerprint",
    "safety_number",
]
