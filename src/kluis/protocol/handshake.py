"""PQXDH key agreement, as specified by Signal: "The PQXDH Key Agreement Protocol", revision 3
(Kret, Schmidt), https://signal.org/docs/specifications/pqxdh/.

Parameters (§2.1): curve = curve25519, hash = SHA-256, pqkem = ML-KEM-768 (FIPS 203),
info = ``INFO`` below. EncodeEC/EncodeKEM are in :mod:`kluis.protocol.keys`.

Deviation, stated: identities are an Ed25519 signing key plus an X25519 key bound by its signature
(keys.py) instead of one XEdDSA key. DH1 and DH2 use the X25519 identity key, exactly where the spec
uses IK; signatures are made with the Ed25519 key. The associated data carries the full encoded
identities (both keys and the binding), so it binds both of each party's keys.

The handshake is separate from the ratchet (libsignal's ``handshake.rs`` shape):
:func:`initiate` returns ``(InitialMessage, SessionSecret)``; the message goes to the wire, the secret
to :class:`kluis.protocol.ratchet` for initialisation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.bundle import VerifiedBundle
from kluis.protocol.errors import (
    DecodeError,
    DecodeReason,
    PreKeyNotFound,
)
from kluis.protocol.keys import (
    MLKEM768_CIPHERTEXT_LEN,
    X25519_LEN,
    IdentityKeyPair,
    IdentityPublicKey,
    KemKeyPair,
    X25519KeyPair,
)
from kluis.protocol.prekeys import PreKeyStore, UsedPreKeys
from kluis.protocol.rng import Rng

INITIAL_MESSAGE_VERSION = 1

# §2.1: "An ASCII string identifying the application with a minimum length of 8 bytes"; Signal's
# own value names the curve, hash and KEM, and so does ours.
INFO = b"Kluis_CURVE25519_SHA-256_ML-KEM-768"

# §2.2 KDF: "F || KM, where F is ... 32 0xFF bytes if curve is X25519", salt "a zero-filled byte
# sequence with length equal to the hash output length".
_F = b"\xff" * 32
_SALT = b"\x00" * 32
SECRET_LEN = 32


def _kdf(key_material: bytes) -> bytes:
    return HKDF(hashes.SHA256(), SECRET_LEN, _SALT, INFO).derive(_F + key_material)


@dataclass(frozen=True, slots=True)
class InitialMessage:
    """§3.3 "Alice then sends Bob an initial message containing: Alice's identity key IKA; Alice's
    ephemeral key EKA; the pqkem ciphertext CT; identifiers stating which of Bob's prekeys Alice used".

    Wire form: u8 version=1 | identity (129) | EK_A (32) | u32 SPK id | u32 KEM prekey id |
    u8 has one-time | [u32 one-time id] | CT (1088).
    """

    identity: IdentityPublicKey
    ephemeral: bytes
    signed_prekey_id: int
    kem_prekey_id: int
    one_time_prekey_id: int | None
    kem_ciphertext: bytes

    def write(self, w: Writer) -> None:
        w.u8(INITIAL_MESSAGE_VERSION).raw(self.identity.to_bytes()).raw(self.ephemeral)
        w.u32(self.signed_prekey_id).u32(self.kem_prekey_id)
        if self.one_time_prekey_id is None:
            w.u8(0)
        else:
            w.u8(1).u32(self.one_time_prekey_id)
        w.raw(self.kem_ciphertext)

    def to_bytes(self) -> bytes:
        w = Writer()
        self.write(w)
        return w.getvalue()

    @classmethod
    def read(cls, r: Reader) -> InitialMessage:
        """Raises DecodeError, UnsupportedVersion, or BadSignature (identity binding)."""
        r.expect_version(INITIAL_MESSAGE_VERSION)
        identity = IdentityPublicKey.from_bytes(r.raw(IdentityPublicKey.ENCODED_LEN))
        ephemeral = r.raw(X25519_LEN)
        spk_id, kem_id, flag = r.u32(), r.u32(), r.u8()
        if flag > 1:
            raise DecodeError(r.what, DecodeReason.BAD_VALUE)
        otk_id = r.u32() if flag else None
        return cls(identity, ephemeral, spk_id, kem_id, otk_id, r.raw(MLKEM768_CIPHERTEXT_LEN))

    @classmethod
    def from_bytes(cls, data: bytes) -> InitialMessage:
        r = Reader(data, "initial message")
        message = cls.read(r)
        r.done()
        return message

    def __repr__(self) -> str:
        return f"InitialMessage(spk={self.signed_prekey_id}, kem={self.kem_prekey_id}, ..)"


@dataclass(frozen=True, slots=True)
class SessionSecret:
    """What the handshake hands the ratchet. Secret.

    ``ratchet_key`` is, for the initiator, Bob's signed prekey public (the first DHr, Double Ratchet
    §3.3 "Alice ... Bob's signed prekey"); for the responder, that prekey's private bytes (his first DHs).
    """

    shared_secret: bytes
    associated_data: bytes
    ratchet_key: bytes

    def __repr__(self) -> str:
        return "SessionSecret(..)"


def associated_data(initiator: IdentityPublicKey, responder: IdentityPublicKey) -> bytes:
    """§3.3 "AD = EncodeEC(IKA) || EncodeEC(IKB)", with our two-key identity encoding."""
    return initiator.to_bytes() + responder.to_bytes()


def initiate(
    identity: IdentityKeyPair, bundle: VerifiedBundle, rng: Rng
) -> tuple[InitialMessage, SessionSecret]:
    """§3.3 Sending the initial message. ``bundle`` is verified by construction (§3.3 first step).

    The ML-KEM encapsulation randomness is drawn by pyca (FIPS 203 ML-KEM.Encaps), not from ``rng``.
    """
    published = bundle.bundle
    ek = x25519.X25519PrivateKey.from_private_bytes(rng(X25519_LEN))
    ss, ct = bundle.kem_prekey.encapsulate()  # pyca returns (shared secret, ciphertext)
    remote_ik = x25519.X25519PublicKey.from_public_bytes(published.identity.dh)
    km = b"".join(
        (
            identity.dh(bundle.signed_prekey),  # DH1 = DH(IKA, SPKB)
            ek.exchange(remote_ik),  # DH2 = DH(EKA, IKB)
            ek.exchange(bundle.signed_prekey),  # DH3 = DH(EKA, SPKB)
            b"" if bundle.one_time_prekey is None else ek.exchange(bundle.one_time_prekey),  # DH4
            ss,
        )
    )
    message = InitialMessage(
        identity=identity.public,
        ephemeral=ek.public_key().public_bytes_raw(),
        signed_prekey_id=published.signed_prekey.key_id,
        kem_prekey_id=published.kem_prekey.key_id,
        one_time_prekey_id=None if published.one_time_prekey is None else published.one_time_prekey.key_id,
        kem_ciphertext=ct,
    )
    secret = SessionSecret(
        _kdf(km), associated_data(identity.public, published.identity), published.signed_prekey.public
    )
    return message, secret


def accept(
    identity: IdentityKeyPair, store: PreKeyStore, message: InitialMessage
) -> tuple[SessionSecret, UsedPreKeys]:
    """§3.4 Receiving the initial message. Reads, but does not consume, the named prekeys.

    The caller decrypts the first ratchet message with the secret and only then calls
    ``store.consume(used)`` (§3.4: "Bob then deletes any one-time prekey ... that was used").
    Raises PreKeyNotFound when a named prekey is unknown or already consumed (a replay), and
    DecodeError for an invalid ephemeral key.
    """
    spk = store.signed_prekey(message.signed_prekey_id)
    if spk is None:
        raise PreKeyNotFound("signed", message.signed_prekey_id)
    kem: KemKeyPair | None = store.kem_prekey(message.kem_prekey_id)
    if kem is None:
        raise PreKeyNotFound("kem", message.kem_prekey_id)
    otk: X25519KeyPair | None = None
    if message.one_time_prekey_id is not None:
        otk = store.one_time_prekey(message.one_time_prekey_id)
        if otk is None:
            raise PreKeyNotFound("one-time", message.one_time_prekey_id)
    marker = None
    if otk is None and kem.last_resort:
        # §4.3 Replay: only last-resort keys were used, so remember this message to refuse a replay.
        marker = hashlib.sha256(message.ephemeral + message.kem_ciphertext).digest()
        if store.seen_last_resort(marker):
            raise PreKeyNotFound("last-resort (replayed message)", message.kem_prekey_id)
    try:
        ek = x25519.X25519PublicKey.from_public_bytes(message.ephemeral)
        remote_ik = x25519.X25519PublicKey.from_public_bytes(message.identity.dh)
        dh1 = spk.private.exchange(remote_ik)
        dh2 = identity.dh(ek)
        dh3 = spk.private.exchange(ek)
        dh4 = b"" if otk is None else otk.private.exchange(ek)
    except ValueError:
        # pyca refuses an all-zero shared secret (a low-order point): the peer sent a bad key.
        raise DecodeError("initial message", DecodeReason.BAD_KEY) from None
    try:
        ss = kem.private.decapsulate(message.kem_ciphertext)
    except ValueError:
        raise DecodeError("initial message", DecodeReason.BAD_VALUE) from None
    secret = SessionSecret(
        _kdf(dh1 + dh2 + dh3 + dh4 + ss),
        associated_data(message.identity, identity.public),
        spk.private_bytes(),
    )
    used = UsedPreKeys(spk.key_id, kem.key_id, message.one_time_prekey_id, marker)
    return secret, used


__all__ = [
    "INFO",
    "InitialMessage",
    "SessionSecret",
    "accept",
    "associated_data",
    "initiate",
]
