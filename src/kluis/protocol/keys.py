"""Long-term and prekey material: identity, signed prekeys, one-time prekeys, ML-KEM prekeys.

An identity is an Ed25519 signing key plus an X25519 Diffie-Hellman key that the signing key signs
(the "binding"). Signal uses one XEdDSA key for both roles (PQXDH §2.4); pyca has no XEdDSA, so
Kluis publishes two keys and binds them, which keeps every primitive a standard one.

Every published public key other than a one-time X25519 prekey is a :class:`SignedPublicKey`: a kind,
a 32-bit id, the key bytes, and an Ed25519 signature by the identity over all three with a domain
label, so a signature for one kind or id can never be replayed as another.

Private material lives only in classes whose ``repr`` shows ``..`` (tests assert this).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.errors import BadSignature, DecodeError, DecodeReason, UnsupportedVersion
from kluis.protocol.rng import Rng

X25519_LEN = 32
ED25519_LEN = 32
SIGNATURE_LEN = 64
MLKEM768_PUBLIC_LEN = 1184
MLKEM768_CIPHERTEXT_LEN = 1088
MLKEM_SEED_LEN = 64
# The hybrid HPKE public key is the ML-KEM-768 key followed by the X25519 key (envelope.py).
ENVELOPE_PUBLIC_LEN = MLKEM768_PUBLIC_LEN + X25519_LEN

IDENTITY_VERSION = 1
_BINDING_LABEL = b"Kluis identity binding v1\x00"
_SIGNED_KEY_LABEL = b"Kluis signed public key v1\x00"

# PQXDH §2.1: "The ranges of all encoding functions must be pairwise disjoint." The first byte of
# EncodeEC / EncodeKEM names the key type, as the spec recommends.
EC_TAG_X25519 = 0x05
KEM_TAG_MLKEM768 = 0x08


def encode_ec(public: bytes) -> bytes:
    """PQXDH §2.1 EncodeEC: one byte for the curve, then the 32-byte little-endian u-coordinate."""
    return bytes((EC_TAG_X25519,)) + public


def encode_kem(public: bytes) -> bytes:
    """PQXDH §2.1 EncodeKEM: one byte for the KEM, then the FIPS 203 encapsulation key."""
    return bytes((KEM_TAG_MLKEM768,)) + public


class KeyKind(enum.IntEnum):
    """What a :class:`SignedPublicKey` is; part of what is signed."""

    SIGNED_PREKEY = 1  # X25519, medium-term (PQXDH SPK)
    KEM_ONE_TIME = 2  # ML-KEM-768, used once (PQXDH PQOPK)
    KEM_LAST_RESORT = 3  # ML-KEM-768, reused while no one-time key is left (PQXDH PQSPK)
    ENVELOPE = 4  # hybrid ML-KEM-768 + X25519 HPKE key for sealed envelopes

    @property
    def public_len(self) -> int:
        if self is KeyKind.SIGNED_PREKEY:
            return X25519_LEN
        if self is KeyKind.ENVELOPE:
            return ENVELOPE_PUBLIC_LEN
        return MLKEM768_PUBLIC_LEN


def _load_x25519_public(data: bytes, what: str) -> x25519.X25519PublicKey:
    if len(data) != X25519_LEN:
        raise DecodeError(what, DecodeReason.BAD_KEY)
    return x25519.X25519PublicKey.from_public_bytes(data)


def _load_ed25519_public(data: bytes, what: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(data)
    except ValueError:
        raise DecodeError(what, DecodeReason.BAD_KEY) from None


def load_mlkem_public(data: bytes, what: str) -> mlkem.MLKEM768PublicKey:
    try:
        return mlkem.MLKEM768PublicKey.from_public_bytes(data)
    except ValueError:
        raise DecodeError(what, DecodeReason.BAD_KEY) from None


@dataclass(frozen=True, slots=True)
class IdentityPublicKey:
    """A published identity: Ed25519 key, X25519 key, and the Ed25519 signature binding them.

    Construct through :meth:`from_bytes` (which verifies the binding) or from an
    :class:`IdentityKeyPair`; the fields are public data.
    """

    signing: bytes
    dh: bytes
    binding: bytes
    _verifier: Ed25519PublicKey = field(repr=False, compare=False)

    ENCODED_LEN = 1 + ED25519_LEN + X25519_LEN + SIGNATURE_LEN

    def to_bytes(self) -> bytes:
        return bytes((IDENTITY_VERSION,)) + self.signing + self.dh + self.binding

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityPublicKey:
        """Parses and verifies the binding. Raises DecodeError, UnsupportedVersion, BadSignature."""
        key = cls.from_stored_bytes(data)
        try:
            key._verifier.verify(key.binding, _BINDING_LABEL + key.dh)
        except InvalidSignature:
            raise BadSignature("identity key binding") from None
        return key

    @classmethod
    def from_stored_bytes(cls, data: bytes) -> IdentityPublicKey:
        """Parses an identity whose binding was verified by :meth:`from_bytes` when it was accepted
        (the relay's own account table): the encoding and both keys are checked, the binding's
        signature is not checked again (one Ed25519 verification per authentication that protects
        against nothing, since whoever can rewrite that table can store any identity). Raises
        DecodeError, UnsupportedVersion."""
        if len(data) != cls.ENCODED_LEN:
            reason = DecodeReason.TRUNCATED if len(data) < cls.ENCODED_LEN else DecodeReason.TRAILING_BYTES
            if len(data) and data[0] != IDENTITY_VERSION:
                raise UnsupportedVersion("identity key", data[0])
            raise DecodeError("identity key", reason)
        if data[0] != IDENTITY_VERSION:
            raise UnsupportedVersion("identity key", data[0])
        signing = data[1:33]
        dh = data[33:65]
        verifier = _load_ed25519_public(signing, "identity key")
        _load_x25519_public(dh, "identity key")
        return cls(signing, dh, data[65:], verifier)

    def verify(self, signature: bytes, message: bytes, what: str) -> None:
        """Raises BadSignature unless ``signature`` is this identity's over ``message``."""
        try:
            self._verifier.verify(signature, message)
        except InvalidSignature:
            raise BadSignature(what) from None

    def __repr__(self) -> str:
        return "IdentityPublicKey(..)"


class IdentityKeyPair:
    """The device's long-term identity. Its private parts never leave the device."""

    __slots__ = ("_dh", "_signing", "public")

    def __init__(self, signing_seed: bytes, dh_private: bytes) -> None:
        self._signing = Ed25519PrivateKey.from_private_bytes(signing_seed)
        self._dh = x25519.X25519PrivateKey.from_private_bytes(dh_private)
        signing_pub = self._signing.public_key()
        dh_pub = self._dh.public_key().public_bytes_raw()
        self.public = IdentityPublicKey(
            signing_pub.public_bytes_raw(),
            dh_pub,
            self._signing.sign(_BINDING_LABEL + dh_pub),
            signing_pub,
        )

    @classmethod
    def generate(cls, rng: Rng) -> IdentityKeyPair:
        return cls(rng(ED25519_LEN), rng(X25519_LEN))

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)

    def dh(self, peer: x25519.X25519PublicKey) -> bytes:
        return self._dh.exchange(peer)

    def private_bytes(self) -> bytes:
        """Secret: the 64 bytes from which :meth:`from_private_bytes` rebuilds this identity."""
        return self._signing.private_bytes_raw() + self._dh.private_bytes_raw()

    @classmethod
    def from_private_bytes(cls, data: bytes) -> IdentityKeyPair:
        if len(data) != ED25519_LEN + X25519_LEN:
            raise DecodeError("identity private key", DecodeReason.BAD_KEY)
        return cls(data[:ED25519_LEN], data[ED25519_LEN:])

    def sign_public_key(self, kind: KeyKind, key_id: int, public: bytes) -> SignedPublicKey:
        signature = self.sign(SignedPublicKey.signed_message(kind, key_id, public))
        return SignedPublicKey(kind, key_id, public, signature)

    def __repr__(self) -> str:
        return f"IdentityKeyPair(public={self.public!r}, private=..)"


@dataclass(frozen=True, slots=True)
class SignedPublicKey:
    """A published key of some :class:`KeyKind`, signed by the identity. Public data."""

    kind: KeyKind
    key_id: int
    public: bytes
    signature: bytes

    @staticmethod
    def signed_message(kind: KeyKind, key_id: int, public: bytes) -> bytes:
        return Writer().raw(_SIGNED_KEY_LABEL).u8(kind).u32(key_id).raw(public).getvalue()

    def verify(self, identity: IdentityPublicKey) -> None:
        """Raises BadSignature unless ``identity`` signed this key with this kind and id."""
        identity.verify(
            self.signature, self.signed_message(self.kind, self.key_id, self.public), self.kind.name
        )

    def write(self, w: Writer) -> None:
        w.u8(self.kind).u32(self.key_id).raw(self.public).raw(self.signature)

    @classmethod
    def read(cls, r: Reader) -> SignedPublicKey:
        tag = r.u8()
        try:
            kind = KeyKind(tag)
        except ValueError:
            raise DecodeError(r.what, DecodeReason.BAD_TAG) from None
        key_id = r.u32()
        return cls(kind, key_id, r.raw(kind.public_len), r.raw(SIGNATURE_LEN))

    def __repr__(self) -> str:
        return f"SignedPublicKey({self.kind.name}, id={self.key_id})"


class X25519KeyPair:
    """An X25519 prekey (signed or one-time) with its id. Secret."""

    __slots__ = ("key_id", "private", "public", "public_bytes")

    def __init__(self, key_id: int, private_bytes: bytes) -> None:
        self.key_id = key_id
        self.private = x25519.X25519PrivateKey.from_private_bytes(private_bytes)
        self.public = self.private.public_key()
        self.public_bytes = self.public.public_bytes_raw()

    @classmethod
    def generate(cls, key_id: int, rng: Rng) -> X25519KeyPair:
        return cls(key_id, rng(X25519_LEN))

    def private_bytes(self) -> bytes:
        return self.private.private_bytes_raw()

    def __repr__(self) -> str:
        return f"X25519KeyPair(id={self.key_id}, private=..)"


class KemKeyPair:
    """An ML-KEM-768 prekey (one-time or last-resort) with its id. Secret."""

    __slots__ = ("key_id", "last_resort", "private", "public_bytes")

    def __init__(self, key_id: int, seed: bytes, *, last_resort: bool) -> None:
        self.key_id = key_id
        self.last_resort = last_resort
        self.private = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        self.public_bytes = self.private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, key_id: int, rng: Rng, *, last_resort: bool) -> KemKeyPair:
        # FIPS 203 §6.1 ML-KEM.KeyGen_internal(d, z): the 64-byte seed is d || z.
        return cls(key_id, rng(MLKEM_SEED_LEN), last_resort=last_resort)

    @property
    def kind(self) -> KeyKind:
        return KeyKind.KEM_LAST_RESORT if self.last_resort else KeyKind.KEM_ONE_TIME

    def seed_bytes(self) -> bytes:
        return self.private.private_bytes_raw()

    def __repr__(self) -> str:
        return f"KemKeyPair(id={self.key_id}, last_resort={self.last_resort}, private=..)"


__all__ = [
    "ENVELOPE_PUBLIC_LEN",
    "MLKEM768_CIPHERTEXT_LEN",
    "MLKEM768_PUBLIC_LEN",
    "SIGNATURE_LEN",
    "X25519_LEN",
    "IdentityKeyPair",
    "IdentityPublicKey",
    "KemKeyPair",
    "KeyKind",
    "SignedPublicKey",
    "X25519KeyPair",
    "encode_ec",
    "encode_kem",
    "load_mlkem_public",
]
