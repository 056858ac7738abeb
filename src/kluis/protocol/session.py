"""A conversation with one peer: PQXDH to start, the Double Ratchet after, plaintexts padded.

This is the layer the client drives. It produces and consumes the *session payload* that travels
inside a sealed envelope (envelope.py)::

    u8 version = 1
    u8 kind    = 1 (prekey: an initial message precedes the ratchet message) | 2 (ratchet message)
    [InitialMessage]                     only for kind 1 (handshake.py)
    ratchet message                      the rest (ratchet/header.py); its plaintext is padding.pad(text)

Like Signal's PreKeySignalMessage, every message the initiator sends carries the initial message
until the first reply from the peer arrives: any of them may be the first to be delivered, and the
responder needs the initial message to build the session.
"""

from __future__ import annotations

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.bundle import VerifiedBundle
from kluis.protocol.errors import DecodeError, DecodeReason, LocalProtocolError
from kluis.protocol.handshake import InitialMessage, accept, initiate
from kluis.protocol.keys import IdentityKeyPair, IdentityPublicKey
from kluis.protocol.padding import pad, unpad
from kluis.protocol.prekeys import PreKeyStore
from kluis.protocol.ratchet.session import RatchetSession
from kluis.protocol.rng import Rng

PAYLOAD_VERSION = 1
KIND_PREKEY = 1
KIND_RATCHET = 2
SNAPSHOT_VERSION = 1
MAX_SNAPSHOT = 4 * 1024 * 1024
"""A session snapshot is at most this big (bounded skipped keys dominate it); parsing refuses more."""


class SessionPayload:
    """A parsed session payload. ``initial`` is set for prekey payloads."""

    __slots__ = ("initial", "ratchet_message")

    def __init__(self, initial: InitialMessage | None, ratchet_message: bytes) -> None:
        self.initial = initial
        self.ratchet_message = ratchet_message

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionPayload:
        """Raises DecodeError, UnsupportedVersion, BadSignature (an initial message's identity)."""
        r = Reader(data, "session payload")
        r.expect_version(PAYLOAD_VERSION)
        kind = r.u8()
        if kind == KIND_RATCHET:
            return cls(None, r.rest())
        if kind == KIND_PREKEY:
            initial = InitialMessage.read(r)
            return cls(initial, r.rest())
        raise DecodeError("session payload", DecodeReason.BAD_TAG)

    def __repr__(self) -> str:
        return f"SessionPayload(prekey={self.initial is not None}, ..)"


class Session:
    """The cryptographic state of one conversation with one peer. Secret; mutable."""

    __slots__ = ("_pending", "ratchet", "remote_identity")

    def __init__(
        self, ratchet: RatchetSession, remote_identity: IdentityPublicKey, pending: InitialMessage | None
    ) -> None:
        self.ratchet = ratchet
        self.remote_identity = remote_identity
        self._pending = pending

    @classmethod
    def initiate(cls, identity: IdentityKeyPair, bundle: VerifiedBundle, rng: Rng) -> Session:
        """Starts a session from a verified bundle (PQXDH §3.3, then Double Ratchet §3.3 for Alice)."""
        message, secret = initiate(identity, bundle, rng)
        ratchet = RatchetSession.initiator(
            secret.shared_secret, secret.ratchet_key, secret.associated_data, rng
        )
        return cls(ratchet, bundle.bundle.identity, message)

    @classmethod
    def accept(
        cls, identity: IdentityKeyPair, store: PreKeyStore, payload: SessionPayload
    ) -> tuple[Session, bytes]:
        """Builds the responder's session from a prekey payload and decrypts its message.

        The prekeys it used are consumed only after that message authenticated, so a forged payload
        changes nothing. Raises LocalProtocolError for a non-prekey payload, otherwise the errors of
        handshake.accept, RatchetSession.decrypt and padding.unpad.
        """
        if payload.initial is None:
            raise LocalProtocolError("accept() needs a prekey payload")
        secret, used = accept(identity, store, payload.initial)
        ratchet = RatchetSession.responder(secret.shared_secret, secret.ratchet_key, secret.associated_data)
        plaintext = unpad(ratchet.decrypt(payload.ratchet_message))
        store.consume(used)
        return cls(ratchet, payload.initial.identity, None), plaintext

    @property
    def awaiting_reply(self) -> bool:
        """True while our messages still carry the initial message (no reply received yet)."""
        return self._pending is not None

    def encrypt(self, plaintext: bytes, rng: Rng) -> bytes:
        """Pads, encrypts and frames one message. Raises PlaintextTooLarge (a LocalProtocolError)."""
        message = self.ratchet.encrypt(pad(plaintext), rng)
        w = Writer().u8(PAYLOAD_VERSION)
        if self._pending is None:
            w.u8(KIND_RATCHET)
        else:
            w.u8(KIND_PREKEY)
            self._pending.write(w)
        return w.raw(message).getvalue()

    def decrypt(self, payload: SessionPayload) -> bytes:
        """Decrypts a payload from the peer in an existing session; the state changes only on success.

        A prekey payload is accepted too (a duplicate of the first message, or one of several sent
        before our reply): its ratchet message decides. Raises the errors of RatchetSession.decrypt
        (DecryptionError, DuplicateMessage, TooManySkipped, DecodeError) and DecodeError for bad
        padding — which only the peer could produce, so that message is spent.
        """
        padded = self.ratchet.decrypt(payload.ratchet_message)
        # Double Ratchet §3.3: once Bob has replied, Alice's messages need no initial message.
        self._pending = None
        return unpad(padded)

    def serialize(self) -> bytes:
        """Secret snapshot (versioned); the client keeps it only inside the encrypted profile."""
        w = Writer().u8(SNAPSHOT_VERSION).raw(self.remote_identity.to_bytes())
        if self._pending is None:
            w.u8(0)
        else:
            w.u8(1).var32(self._pending.to_bytes())
        return w.var32(self.ratchet.serialize()).getvalue()

    @classmethod
    def deserialize(cls, data: bytes) -> Session:
        """Raises DecodeError, UnsupportedVersion, BadSignature."""
        r = Reader(data, "session snapshot")
        r.expect_version(SNAPSHOT_VERSION)
        remote = IdentityPublicKey.from_bytes(r.raw(IdentityPublicKey.ENCODED_LEN))
        flag = r.u8()
        if flag > 1:
            raise DecodeError("session snapshot", DecodeReason.BAD_VALUE)
        pending = InitialMessage.from_bytes(r.var32(MAX_SNAPSHOT)) if flag else None
        ratchet = RatchetSession.deserialize(r.var32(MAX_SNAPSHOT))
        r.done()
        return cls(ratchet, remote, pending)

    def __repr__(self) -> str:
        return f"Session(awaiting_reply={self.awaiting_reply}, ..)"


__all__ = ["KIND_PREKEY", "KIND_RATCHET", "Session", "SessionPayload"]
