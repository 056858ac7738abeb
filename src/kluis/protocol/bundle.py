"""Prekey bundles: what a directory hands out so a contact can start a session (PQXDH §3.2).

A bundle holds the owner's identity, signed X25519 prekey, one signed ML-KEM-768 prekey (one-time, or
the last-resort key when the one-time stock is empty), optionally a one-time X25519 prekey, and the
current signed envelope key. :meth:`PreKeyBundle.verify` checks every signature and returns a
:class:`VerifiedBundle`, the only type the handshake accepts, so an unverified key cannot be used.

Wire form (all integers big-endian)::

    u8  version = 1
    identity          IdentityPublicKey (129 bytes)
    signed prekey     SignedPublicKey(kind=1)
    kem prekey        SignedPublicKey(kind=2 or 3)
    envelope key      SignedPublicKey(kind=4)
    u8  has_one_time  0 or 1
    [u32 one-time id, 32 bytes one-time X25519 public]
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.errors import DecodeError, DecodeReason
from kluis.protocol.keys import (
    X25519_LEN,
    IdentityPublicKey,
    KeyKind,
    SignedPublicKey,
    load_mlkem_public,
)

BUNDLE_VERSION = 1


@dataclass(frozen=True, slots=True)
class OneTimePreKeyPublic:
    key_id: int
    public: bytes


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """A bundle as received: nothing in it is trusted until :meth:`verify`."""

    identity: IdentityPublicKey
    signed_prekey: SignedPublicKey
    kem_prekey: SignedPublicKey
    envelope_key: SignedPublicKey
    one_time_prekey: OneTimePreKeyPublic | None

    def to_bytes(self) -> bytes:
        w = Writer().u8(BUNDLE_VERSION).raw(self.identity.to_bytes())
        self.signed_prekey.write(w)
        self.kem_prekey.write(w)
        self.envelope_key.write(w)
        if self.one_time_prekey is None:
            w.u8(0)
        else:
            w.u8(1).u32(self.one_time_prekey.key_id).raw(self.one_time_prekey.public)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PreKeyBundle:
        """Parses the wire form (signatures of prekeys are checked later, by :meth:`verify`).

        Raises DecodeError, UnsupportedVersion, or BadSignature (identity binding).
        """
        r = Reader(data, "prekey bundle")
        r.expect_version(BUNDLE_VERSION)
        identity = IdentityPublicKey.from_bytes(r.raw(IdentityPublicKey.ENCODED_LEN))
        spk = SignedPublicKey.read(r)
        kem = SignedPublicKey.read(r)
        env = SignedPublicKey.read(r)
        flag = r.u8()
        if flag > 1:
            raise DecodeError("prekey bundle", DecodeReason.BAD_VALUE)
        otk = OneTimePreKeyPublic(r.u32(), r.raw(X25519_LEN)) if flag else None
        r.done()
        kinds_ok = (
            spk.kind is KeyKind.SIGNED_PREKEY
            and kem.kind in (KeyKind.KEM_ONE_TIME, KeyKind.KEM_LAST_RESORT)
            and env.kind is KeyKind.ENVELOPE
        )
        if not kinds_ok:
            raise DecodeError("prekey bundle", DecodeReason.BAD_TAG)
        return cls(identity, spk, kem, env, otk)

    def verify(self) -> VerifiedBundle:
        """PQXDH §3.3: "Alice verifies the prekey signatures and aborts the protocol if verification
        fails." Raises BadSignature or DecodeError (a key that is not a valid point/encoding)."""
        for signed in (self.signed_prekey, self.kem_prekey, self.envelope_key):
            signed.verify(self.identity)
        try:
            spk = x25519.X25519PublicKey.from_public_bytes(self.signed_prekey.public)
            otk = (
                None
                if self.one_time_prekey is None
                else x25519.X25519PublicKey.from_public_bytes(self.one_time_prekey.public)
            )
        except ValueError:
            raise DecodeError("prekey bundle", DecodeReason.BAD_KEY) from None
        kem = load_mlkem_public(self.kem_prekey.public, "prekey bundle")
        return VerifiedBundle(self, spk, kem, otk)

    def __repr__(self) -> str:
        return "PreKeyBundle(..)"


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose signatures all verified, with its keys loaded for the handshake."""

    bundle: PreKeyBundle
    signed_prekey: x25519.X25519PublicKey
    kem_prekey: mlkem.MLKEM768PublicKey
    one_time_prekey: x25519.X25519PublicKey | None

    def __repr__(self) -> str:
        return "VerifiedBundle(..)"


__all__ = ["BUNDLE_VERSION", "OneTimePreKeyPublic", "PreKeyBundle", "VerifiedBundle"]
