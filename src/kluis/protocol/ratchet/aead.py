"""The message AEAD, pluggable (a differential test swaps in the CBC+HMAC AEAD of another library).

Production: AES-256-GCM keyed directly with the 32-byte message key and a FIXED all-zero 96-bit nonce.

Why a fixed nonce is safe here (spec §5.2, ENCRYPT: "Since a message key is only used once, the AEAD nonce
may be handled in several ways: fixed to a constant; derived from mk alongside an independent AEAD
encryption key; ..."): each message key comes out of KDF_CK once and encrypts exactly one message; the
session advances its sending chain before returning the ciphertext, so (key, nonce) never repeats. Deriving
a separate key and nonce by HKDF would add a full HKDF (two HMAC chains, ~2-3 us) per message for no gain in
this model, and the per-message cost is benchmarked. The one way to repeat a (key, nonce) pair is to
restore an OLD serialized state and encrypt again; that breaks every deterministic nonce scheme alike, so
callers must never roll session state back (docs/PROTOCOL.md §6, "State").
"""

from __future__ import annotations

from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kluis.protocol.errors import DecryptionError

_ZERO_NONCE = bytes(12)


class RatchetAead(Protocol):
    """What the session needs from an AEAD: spec §3.1 ENCRYPT/DECRYPT plus the AD layout.

    ``decrypt`` must raise :class:`DecryptionError` (and nothing else) when authentication fails.
    ``ad_layout(associated_data, header)`` combines the session's AD with the 41 header bytes into the
    bytes the AEAD authenticates (spec §3.1 CONCAT); it must be injective.
    """

    def encrypt(self, mk: bytes, plaintext: bytes, ad: bytes) -> bytes: ...

    def decrypt(self, mk: bytes, ciphertext: bytes, ad: bytes) -> bytes: ...

    def ad_layout(self, associated_data: bytes, header: bytes) -> bytes: ...


def concat_ad_layout(associated_data: bytes, header: bytes) -> bytes:
    """Spec §3.1 CONCAT(AD, header): ``AD || header``.

    Unambiguous because the header has a fixed length (HEADER_LEN) and comes last, and the AD is fixed for
    the life of a session.
    """
    return associated_data + header


class AesGcmAead:
    """AES-256-GCM with the message key as key and a fixed zero nonce (see the module docstring)."""

    __slots__ = ()

    def encrypt(self, mk: bytes, plaintext: bytes, ad: bytes) -> bytes:
        return AESGCM(mk).encrypt(_ZERO_NONCE, plaintext, ad)

    def decrypt(self, mk: bytes, ciphertext: bytes, ad: bytes) -> bytes:
        try:
            return AESGCM(mk).decrypt(_ZERO_NONCE, ciphertext, ad)
        except InvalidTag:
            raise DecryptionError("ratchet message") from None

    def ad_layout(self, associated_data: bytes, header: bytes) -> bytes:
        return associated_data + header

    def __repr__(self) -> str:
        return "AesGcmAead()"


DEFAULT_AEAD: RatchetAead = AesGcmAead()
"""The production AEAD: AES-256-GCM, fixed nonce, AD layout ``AD || header``."""

__all__ = ["DEFAULT_AEAD", "AesGcmAead", "RatchetAead", "concat_ad_layout"]
