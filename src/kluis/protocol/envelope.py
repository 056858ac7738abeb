"""Sealed sender: the ratchet message and the sender's identity travel inside an HPKE envelope.

DESIGN.md "Sealed sender": the server routes on the recipient's mailbox alone and never learns who
wrote an envelope. The sender encrypts, to the recipient's current *envelope key*, an inner plaintext
that names the sender (account id and identity key) and carries the ratchet message; the outer
envelope shows only a version, the envelope key id and the HPKE ciphertext, whose length is a bucket.

HPKE (RFC 9180) base mode, suite ``MLKEM768-X25519 / HKDF-SHA256 / AES-256-GCM``:

* KEM: the hybrid ML-KEM-768 + X25519 KEM (X-Wing style), so an adversary who records envelopes today
  and has a quantum computer later still cannot learn who sent them (DESIGN.md, "recorded and decrypted
  later"). Base mode because HPKE's Auth mode has no post-quantum KEM; the envelope therefore does
  *not* authenticate the sender: the claimed identity is proven only when the ratchet message
  decrypts in a session with that identity (enforced by peer.PeerSessions.decrypt; docs/PROTOCOL.md §7.2.5).
* AEAD: AES-256-GCM. Each HPKE context seals exactly one message under a fresh key, so GCM's nonce
  limits never apply; AES has hardware support on every platform we ship to, and 256-bit keys keep a
  margin against Grover. ChaCha20-Poly1305 would be as good; we only need one.
* ``info`` (RFC 9180 §5.1 "application-supplied information") binds ``INFO_LABEL || version ||
  key id || recipient identity signing key``, so an envelope cannot be replayed under another key id
  or version, nor opened as one addressed to another identity that signed the same key. pyca's
  public single-shot API has no ``aad``; everything we bind goes through ``info`` (which is also
  bound into the key schedule, so a mismatch fails authentication just as a wrong aad would).

pyca draws HPKE's encapsulation randomness internally, so envelopes are not reproducible from ``rng``;
the vectors record them.

The recipient keeps an :class:`EnvelopeKeyRing`: a new key every ``rotation_period`` (7 days), and the
private part of a replaced key is erased ``grace_period`` (2 days) after it was replaced. A device
seized later cannot reveal who sent envelopes recorded before the erasure (docs/SECURITY.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.errors import (
    DecodeError,
    DecodeReason,
    DecryptionError,
    EnvelopeKeyUnknown,
    KeyExhausted,
    LocalProtocolError,
    UnsupportedVersion,
)
from kluis.protocol.keys import (
    ENVELOPE_PUBLIC_LEN,
    MLKEM768_PUBLIC_LEN,
    MLKEM_SEED_LEN,
    SIGNATURE_LEN,
    X25519_LEN,
    IdentityKeyPair,
    IdentityPublicKey,
    KeyKind,
    SignedPublicKey,
    load_mlkem_public,
)
from kluis.protocol.padding import BUCKETS, ENVELOPE_MAX_BUCKET, PlaintextTooLarge, pad, unpad
from kluis.protocol.rng import Rng

ENVELOPE_VERSION = 1
INNER_VERSION = 1
RING_VERSION = 1

SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
INFO_LABEL = b"Kluis sealed envelope v1\x00"
ENC_LEN = hpke.KEM.MLKEM768_X25519.enc_length()  # 1088-byte ML-KEM ciphertext + 32-byte X25519 share
TAG_LEN = 16  # AES-256-GCM
HEADER_LEN = 1 + 4  # version, key id
MIN_ENVELOPE_LEN = HEADER_LEN + ENC_LEN + BUCKETS[0] + TAG_LEN
_ENVELOPE_LENGTHS = frozenset(HEADER_LEN + ENC_LEN + b + TAG_LEN for b in BUCKETS if b <= ENVELOPE_MAX_BUCKET)

# Account ids are opaque server-assigned bytes (random, 16 bytes today; up to 32 for a future format).
MIN_ACCOUNT_LEN = 16
MAX_ACCOUNT_LEN = 32
# The largest ratchet message an envelope carries: the largest padded chat plaintext (64 KiB) plus
# room for the ratchet header, AEAD tag and a PQXDH initial message (well under 4 KiB), so it fits
# the 128 KiB envelope bucket with the inner header.
MAX_RATCHET_MESSAGE = 64 * 1024 + 4 * 1024

# Rotation (Signal rotates its signed prekey on a similar weekly cadence). A week bounds how far back a
# seized device reveals senders (plus the grace), while keeping the directory churn tiny.
ROTATION_PERIOD = 7 * 24 * 3600
# A replaced key still opens envelopes for this long: contacts that fetched the old key just before
# the rotation, and envelopes that waited in the mailbox while the device was offline (the server's
# retention is shorter than this), still open. After it, the private key is erased.
GRACE_PERIOD = 2 * 24 * 3600
# Periods outside [1 hour, 1 year] are configuration mistakes.
MIN_PERIOD = 3600
MAX_PERIOD = 365 * 24 * 3600
# Bounds the ring (and what deserialize allocates). With the defaults it holds at most 2 keys; if a
# configuration would keep more, rotate() erases the oldest early rather than grow.
MAX_RING_KEYS = 32

_X25519_PUBLIC_OFFSET = MLKEM768_PUBLIC_LEN


def hpke_info(version: int, key_id: int, recipient_signing_key: bytes) -> bytes:
    """The HPKE ``info``: label, envelope version, key id and the recipient's Ed25519 identity key."""
    return Writer().raw(INFO_LABEL).u8(version).u32(key_id).raw(recipient_signing_key).getvalue()


# ---------------------------------------------------------------------------------------------------
# Wire structures


@dataclass(frozen=True, slots=True)
class OuterEnvelope:
    """What the server sees: ``version (1) || key_id (u32) || enc (1120) || ct``. Public data."""

    version: int
    key_id: int
    hpke_ciphertext: bytes

    def to_bytes(self) -> bytes:
        return Writer().u8(self.version).u32(self.key_id).raw(self.hpke_ciphertext).getvalue()

    def __repr__(self) -> str:
        return f"OuterEnvelope(v{self.version}, key_id={self.key_id}, {len(self.hpke_ciphertext)} bytes)"


def parse_envelope(data: bytes) -> OuterEnvelope:
    """Parses the outer envelope.

    Raises:
        UnsupportedVersion: the first byte is not ``ENVELOPE_VERSION``.
        DecodeError: ``TRUNCATED`` if shorter than the smallest envelope, ``BAD_PADDING`` if the length
            is not one of the bucket lengths.
    """
    if not data:
        raise DecodeError("envelope", DecodeReason.TRUNCATED)
    if data[0] != ENVELOPE_VERSION:
        raise UnsupportedVersion("envelope", data[0])
    if len(data) < MIN_ENVELOPE_LEN:
        raise DecodeError("envelope", DecodeReason.TRUNCATED)
    if len(data) not in _ENVELOPE_LENGTHS:
        raise DecodeError("envelope", DecodeReason.BAD_PADDING)
    r = Reader(data, "envelope")
    version = r.u8()
    key_id = r.u32()
    return OuterEnvelope(version, key_id, r.rest())


@dataclass(frozen=True, slots=True)
class SealedContent:
    """The opened envelope. ``sender_identity`` is only a claim until the ratchet message decrypts."""

    sender_account: bytes
    sender_identity: IdentityPublicKey
    ratchet_message: bytes

    def __repr__(self) -> str:
        return f"SealedContent(sender_account=.., ratchet_message=<{len(self.ratchet_message)} bytes>)"


def _check_account(account: bytes) -> None:
    if not MIN_ACCOUNT_LEN <= len(account) <= MAX_ACCOUNT_LEN:
        raise LocalProtocolError(f"account id must be {MIN_ACCOUNT_LEN}..{MAX_ACCOUNT_LEN} bytes")


def encode_inner(sender_account: bytes, sender_identity: IdentityPublicKey, ratchet_message: bytes) -> bytes:
    """The padded inner plaintext: ``version || u8 len || account || identity (129) || u32 len || msg``.

    Raises:
        LocalProtocolError: the account id is not 16..32 bytes or the ratchet message is empty.
        PlaintextTooLarge: the ratchet message is over ``MAX_RATCHET_MESSAGE``.
    """
    _check_account(sender_account)
    if not ratchet_message:
        raise LocalProtocolError("empty ratchet message")
    if len(ratchet_message) > MAX_RATCHET_MESSAGE:
        raise PlaintextTooLarge("ratchet message", len(ratchet_message), MAX_RATCHET_MESSAGE)
    body = (
        Writer()
        .u8(INNER_VERSION)
        .u8(len(sender_account))
        .raw(sender_account)
        .raw(sender_identity.to_bytes())
        .var32(ratchet_message)
        .getvalue()
    )
    return pad(body, max_bucket=ENVELOPE_MAX_BUCKET)


def parse_inner(padded: bytes) -> SealedContent:
    """Parses a decrypted inner plaintext (still padded).

    Raises:
        DecodeError: bad padding, bad lengths, trailing bytes, or an invalid identity key.
        UnsupportedVersion: inner or identity version.
        BadSignature: the sender identity's binding signature does not verify.
    """
    r = Reader(unpad(padded, max_bucket=ENVELOPE_MAX_BUCKET), "sealed content")
    r.expect_version(INNER_VERSION)
    account_len = r.u8()
    if not MIN_ACCOUNT_LEN <= account_len <= MAX_ACCOUNT_LEN:
        raise DecodeError("sealed content", DecodeReason.BAD_VALUE)
    account = r.raw(account_len)
    identity = IdentityPublicKey.from_bytes(r.raw(IdentityPublicKey.ENCODED_LEN))
    message = r.var32(MAX_RATCHET_MESSAGE)
    if not message:
        raise DecodeError("sealed content", DecodeReason.BAD_VALUE)
    r.done()
    return SealedContent(account, identity, message)


# ---------------------------------------------------------------------------------------------------
# Sealing


def _load_envelope_public(public: bytes) -> hpke.MLKEM768X25519PublicKey:
    if len(public) != ENVELOPE_PUBLIC_LEN:
        raise DecodeError("envelope key", DecodeReason.BAD_KEY)
    mlkem_public = load_mlkem_public(public[:_X25519_PUBLIC_OFFSET], "envelope key")
    x_public = x25519.X25519PublicKey.from_public_bytes(public[_X25519_PUBLIC_OFFSET:])
    return hpke.MLKEM768X25519PublicKey(mlkem_public, x_public)


def seal(
    recipient_key: SignedPublicKey,
    recipient_identity: IdentityPublicKey,
    sender_account: bytes,
    sender_identity: IdentityPublicKey,
    ratchet_message: bytes,
) -> bytes:
    """Seals ``ratchet_message`` and the sender's identity to the recipient's envelope key.

    The key's signature by ``recipient_identity`` is verified first: the server hands out envelope
    keys, and an unverified one would let it read every sender.

    Raises:
        BadSignature: ``recipient_key`` is not signed by ``recipient_identity`` as an ENVELOPE key.
        DecodeError: ``recipient_key`` is not an envelope key or not a valid public key.
        LocalProtocolError, PlaintextTooLarge: see :func:`encode_inner`.
    """
    if recipient_key.kind is not KeyKind.ENVELOPE:
        raise DecodeError("envelope key", DecodeReason.BAD_KEY)
    recipient_key.verify(recipient_identity)
    public = _load_envelope_public(recipient_key.public)
    inner = encode_inner(sender_account, sender_identity, ratchet_message)
    info = hpke_info(ENVELOPE_VERSION, recipient_key.key_id, recipient_identity.signing)
    try:
        ciphertext = SUITE.encrypt(inner, public, info=info)
    except ValueError:  # e.g. a low-order X25519 point: the shared secret would be all zeros
        raise DecodeError("envelope key", DecodeReason.BAD_KEY) from None
    return OuterEnvelope(ENVELOPE_VERSION, recipient_key.key_id, ciphertext).to_bytes()


# ---------------------------------------------------------------------------------------------------
# The recipient's keys


class EnvelopeKeyPair:
    """One envelope key: hybrid HPKE private key, its signed public key, and its lifetime. Secret."""

    __slots__ = ("_mlkem_seed", "_private", "_x25519", "created", "replaced", "signed")

    def __init__(
        self,
        signed: SignedPublicKey,
        mlkem_seed: bytes,
        x25519_private: bytes,
        created: int,
        replaced: int | None,
    ) -> None:
        mlkem_private = mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed)
        x_private = x25519.X25519PrivateKey.from_private_bytes(x25519_private)
        self._mlkem_seed = mlkem_seed
        self._x25519 = x25519_private
        self._private = hpke.MLKEM768X25519PrivateKey(mlkem_private, x_private)
        self.signed = signed
        self.created = created
        self.replaced = replaced  # when a newer key became current; None while this one is current

    @staticmethod
    def public_bytes(mlkem_seed: bytes, x25519_private: bytes) -> bytes:
        """ML-KEM-768 encapsulation key (1184) || X25519 public key (32): ``ENVELOPE_PUBLIC_LEN``."""
        m = mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed).public_key().public_bytes_raw()
        x = x25519.X25519PrivateKey.from_private_bytes(x25519_private).public_key().public_bytes_raw()
        return m + x

    @classmethod
    def generate(cls, identity: IdentityKeyPair, key_id: int, rng: Rng, now: int) -> EnvelopeKeyPair:
        mlkem_seed = rng(MLKEM_SEED_LEN)  # FIPS 203 d || z
        x_private = rng(X25519_LEN)
        signed = identity.sign_public_key(KeyKind.ENVELOPE, key_id, cls.public_bytes(mlkem_seed, x_private))
        return cls(signed, mlkem_seed, x_private, now, None)

    @property
    def key_id(self) -> int:
        return self.signed.key_id

    def seeds(self) -> tuple[bytes, bytes]:
        """Secret: the ML-KEM-768 seed (64) and the X25519 private key (32)."""
        return self._mlkem_seed, self._x25519

    def decrypt(self, ciphertext: bytes, info: bytes) -> bytes:
        try:
            return SUITE.decrypt(ciphertext, self._private, info=info)
        except InvalidTag:
            raise DecryptionError("envelope") from None

    def __repr__(self) -> str:
        return f"EnvelopeKeyPair(id={self.key_id}, created={self.created}, private=..)"


class EnvelopeKeyRing:
    """The recipient's envelope keys, newest (current) last, with rotation and erasure.

    Timings, for a key K with ``created`` and ``replaced`` (when the next key became current):

    * ``rotate(now)`` makes a new current key when ``now - current.created >= rotation_period``;
    * K opens envelopes while it is current, and while ``now - K.replaced < grace_period``;
    * ``rotate(now)`` erases (drops, with its private bytes) every K with
      ``now - K.replaced >= grace_period``; :meth:`open` already refuses such a K even if
      ``rotate`` has not run yet.

    Grace counts from the replacement, not from creation: a device that was off for a month and
    rotates on waking still opens what waited in its mailbox under the old key. With on-time rotation
    that is ``rotation_period + grace_period`` (9 days) after creation at most.
    """

    __slots__ = ("_grace_period", "_identity", "_keys", "_rotation_period")

    def __init__(
        self,
        identity: IdentityPublicKey,
        keys: list[EnvelopeKeyPair],
        rotation_period: int,
        grace_period: int,
    ) -> None:
        for period in (rotation_period, grace_period):
            if not MIN_PERIOD <= period <= MAX_PERIOD:
                raise LocalProtocolError(f"period {period} s outside {MIN_PERIOD}..{MAX_PERIOD} s")
        self._identity = identity
        self._keys = keys
        self._rotation_period = rotation_period
        self._grace_period = grace_period

    @classmethod
    def create(
        cls,
        identity: IdentityKeyPair,
        rng: Rng,
        now: int,
        *,
        rotation_period: int = ROTATION_PERIOD,
        grace_period: int = GRACE_PERIOD,
    ) -> EnvelopeKeyRing:
        # A random first id (31 bits, so 2**31 rotations fit in a u32) keeps the key id from telling
        # the server how many weeks old the ring is; ids then increase by one per rotation.
        first_id = int.from_bytes(rng(4), "big") >> 1
        key = EnvelopeKeyPair.generate(identity, first_id, rng, now)
        return cls(identity.public, [key], rotation_period, grace_period)

    @property
    def rotation_period(self) -> int:
        return self._rotation_period

    @property
    def grace_period(self) -> int:
        return self._grace_period

    @property
    def identity(self) -> IdentityPublicKey:
        return self._identity

    @property
    def current(self) -> EnvelopeKeyPair:
        return self._keys[-1]

    def key_ids(self) -> list[int]:
        """Ids of the keys still held (not erased), oldest first."""
        return [k.key_id for k in self._keys]

    def current_public(self) -> SignedPublicKey:
        return self.current.signed

    def published(self) -> list[SignedPublicKey]:
        """The keys still held, newest (current) first. Senders should seal to the first."""
        return [k.signed for k in reversed(self._keys)]

    def _expired(self, key: EnvelopeKeyPair, now: int) -> bool:
        return key.replaced is not None and now - key.replaced >= self._grace_period

    def rotate(self, identity: IdentityKeyPair, rng: Rng, now: int) -> bool:
        """Makes a new current key if the current one is due, then erases expired keys.

        Returns whether a new key was made (then publish :meth:`current_public`).

        Raises:
            LocalProtocolError: ``identity`` is not this ring's identity.
            KeyExhausted: the u32 key id space is used up (2**31 rotations).
        """
        if identity.public != self._identity:
            raise LocalProtocolError("rotate with another identity than the ring's")
        rotated = False
        current = self.current
        if now - current.created >= self._rotation_period:
            if current.key_id >= 0xFFFFFFFF:
                raise KeyExhausted("envelope key ids exhausted")
            new = EnvelopeKeyPair.generate(identity, current.key_id + 1, rng, now)
            current.replaced = now
            self._keys.append(new)
            rotated = True
        self._keys = [k for k in self._keys if not self._expired(k, now)]
        del self._keys[: max(0, len(self._keys) - MAX_RING_KEYS)]
        return rotated

    def _find(self, key_id: int, now: int) -> EnvelopeKeyPair:
        for key in self._keys:
            if key.key_id == key_id:
                if self._expired(key, now):
                    break
                return key
        raise EnvelopeKeyUnknown(key_id)

    def open(self, data: bytes, now: int) -> SealedContent:
        """Opens a sealed envelope. The ring is not changed.

        Raises:
            DecodeError, UnsupportedVersion: malformed outer envelope (or, from a malicious sender,
                malformed inner content; BadSignature if its identity binding does not verify).
            EnvelopeKeyUnknown: sealed to a key id we do not hold, or one past its grace at ``now``.
            DecryptionError: HPKE authentication failed.
        """
        outer = parse_envelope(data)
        key = self._find(outer.key_id, now)
        info = hpke_info(outer.version, outer.key_id, self._identity.signing)
        return parse_inner(key.decrypt(outer.hpke_ciphertext, info))

    # Serialization: version, periods, identity, then each key oldest first. Secret (private keys).

    def serialize(self) -> bytes:
        w = Writer().u8(RING_VERSION).u32(self._rotation_period).u32(self._grace_period)
        w.raw(self._identity.to_bytes()).u8(len(self._keys))
        for key in self._keys:
            mlkem_seed, x_private = key.seeds()
            w.u32(key.key_id).u64(key.created).u64(0 if key.replaced is None else key.replaced)
            w.raw(key.signed.signature).raw(mlkem_seed).raw(x_private)
        return w.getvalue()

    @classmethod
    def deserialize(cls, data: bytes) -> EnvelopeKeyRing:
        """Inverse of :meth:`serialize`; re-derives public keys and re-verifies their signatures.

        Raises:
            DecodeError, UnsupportedVersion, BadSignature.
        """
        r = Reader(data, "envelope key ring")
        r.expect_version(RING_VERSION)
        rotation_period = r.u32()
        grace_period = r.u32()
        for period in (rotation_period, grace_period):
            if not MIN_PERIOD <= period <= MAX_PERIOD:
                raise DecodeError("envelope key ring", DecodeReason.BAD_VALUE)
        identity = IdentityPublicKey.from_bytes(r.raw(IdentityPublicKey.ENCODED_LEN))
        count = r.u8()
        if not 1 <= count <= MAX_RING_KEYS:
            raise DecodeError("envelope key ring", DecodeReason.BAD_VALUE)
        if r.remaining() < count * _SERIALIZED_KEY_LEN:
            raise DecodeError("envelope key ring", DecodeReason.TRUNCATED)
        if r.remaining() > count * _SERIALIZED_KEY_LEN:
            raise DecodeError("envelope key ring", DecodeReason.TRAILING_BYTES)
        keys: list[EnvelopeKeyPair] = []
        for i in range(count):
            key_id = r.u32()
            created = r.u64()
            replaced_raw = r.u64()
            signature = r.raw(SIGNATURE_LEN)
            mlkem_seed = r.raw(MLKEM_SEED_LEN)
            x_private = r.raw(X25519_LEN)
            last = i == count - 1
            # Invariants: ids strictly increase; only the last key is current (replaced == 0);
            # a key is replaced no earlier than it was created.
            if (keys and key_id <= keys[-1].key_id) or (replaced_raw == 0) != last:
                raise DecodeError("envelope key ring", DecodeReason.BAD_VALUE)
            if not last and replaced_raw < created:
                raise DecodeError("envelope key ring", DecodeReason.BAD_VALUE)
            public = EnvelopeKeyPair.public_bytes(mlkem_seed, x_private)
            signed = SignedPublicKey(KeyKind.ENVELOPE, key_id, public, signature)
            signed.verify(identity)
            keys.append(EnvelopeKeyPair(signed, mlkem_seed, x_private, created, replaced_raw or None))
        r.done()
        return cls(identity, keys, rotation_period, grace_period)

    def __repr__(self) -> str:
        return f"EnvelopeKeyRing(key_ids={self.key_ids()}, private=..)"


_SERIALIZED_KEY_LEN = 4 + 8 + 8 + SIGNATURE_LEN + MLKEM_SEED_LEN + X25519_LEN


def open_envelope(ring: EnvelopeKeyRing, data: bytes, now: int) -> SealedContent:
    """Same as ``ring.open(data, now)``."""
    return ring.open(data, now)


__all__ = [
    "ENC_LEN",
    "ENVELOPE_VERSION",
    "GRACE_PERIOD",
    "INFO_LABEL",
    "INNER_VERSION",
    "MAX_ACCOUNT_LEN",
    "MAX_RATCHET_MESSAGE",
    "MAX_RING_KEYS",
    "MIN_ACCOUNT_LEN",
    "RING_VERSION",
    "ROTATION_PERIOD",
    "SUITE",
    "EnvelopeKeyPair",
    "EnvelopeKeyRing",
    "OuterEnvelope",
    "SealedContent",
    "encode_inner",
    "hpke_info",
    "open_envelope",
    "parse_envelope",
    "parse_inner",
    "seal",
]
