"""All sessions with one peer, and which one sends: the part of Signal's Sesame that a
single-device account needs (Sesame §3, "session records": one active session, older ones kept).

Two parties may start sessions with each other at the same time; each then holds the session it
initiated and, after the other's first message arrives, the one it accepted. Messages in flight
may belong to either, so both are kept and tried. The session that last decrypted a message
becomes the active one, and both sides converge on it once they have heard from each other.
"""

from __future__ import annotations

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.bundle import VerifiedBundle
from kluis.protocol.errors import (
    DecodeError,
    DecodeReason,
    IdentityMismatch,
    LocalProtocolError,
    RemoteProtocolError,
)
from kluis.protocol.keys import IdentityKeyPair, IdentityPublicKey
from kluis.protocol.prekeys import PreKeyStore
from kluis.protocol.rng import Rng
from kluis.protocol.session import MAX_SNAPSHOT, Session, SessionPayload

PEER_VERSION = 1

MAX_SESSIONS = 5
"""Sessions kept per peer, active included. libsignal keeps 40 archived states for multi-device
accounts; Kluis accounts have one device, so more than a couple exist only after repeated
simultaneous starts or re-installs. The least recently used is dropped first."""


class PeerSessions:
    """The sessions with one peer, most recently used first. Secret; mutable."""

    __slots__ = ("_sessions",)

    def __init__(self, sessions: list[Session] | None = None) -> None:
        self._sessions: list[Session] = sessions or []

    @property
    def active(self) -> Session | None:
        return self._sessions[0] if self._sessions else None

    @property
    def remote_identity(self) -> IdentityPublicKey | None:
        return self._sessions[0].remote_identity if self._sessions else None

    def __len__(self) -> int:
        return len(self._sessions)

    def _promote(self, session: Session) -> None:
        if session in self._sessions:
            self._sessions.remove(session)
        self._sessions.insert(0, session)
        del self._sessions[MAX_SESSIONS:]

    def encrypt(
        self, identity: IdentityKeyPair, bundle: VerifiedBundle | None, plaintext: bytes, rng: Rng
    ) -> bytes:
        """Encrypts with the active session, starting one from ``bundle`` if there is none.

        Raises LocalProtocolError when there is no session and no bundle.
        """
        session = self.active
        if session is None:
            if bundle is None:
                raise LocalProtocolError("no session with this peer and no prekey bundle to start one")
            session = Session.initiate(identity, bundle, rng)
            self._promote(session)
        return session.encrypt(plaintext, rng)

    def decrypt(
        self,
        identity: IdentityKeyPair,
        store: PreKeyStore,
        payload: SessionPayload,
        sender_identity: IdentityPublicKey,
        *,
        allow_new_identity: bool = False,
    ) -> bytes:
        """Decrypts with whichever session the message belongs to, or accepts a new one.

        ``sender_identity`` is the identity the sealed envelope claims. The envelope does not prove
        it; the session does: only sessions with that remote identity are tried, and a new session is
        accepted only from an initial message carrying it. All sessions in one ``PeerSessions`` share
        one remote identity: a new session under a *different* identity raises IdentityMismatch,
        unless ``allow_new_identity`` (the user accepted the peer's new key, e.g. after a
        re-install), which replaces the sessions of the old identity.

        Raises the first session's error if no session, old or new, can read the message; then
        nothing changed (each attempt is transactional, and prekeys are consumed only on success).
        """
        first_error: RemoteProtocolError | None = None
        for session in self._sessions:
            if session.remote_identity != sender_identity:
                continue
            try:
                plaintext = session.decrypt(payload)
            except RemoteProtocolError as error:
                first_error = first_error or error
                continue
            self._promote(session)
            return plaintext
        current = self.remote_identity
        new_identity = current is not None and current != sender_identity
        if payload.initial is None or payload.initial.identity != sender_identity:
            raise first_error or IdentityMismatch()
        if new_identity and not allow_new_identity:
            raise IdentityMismatch()
        try:
            session, plaintext = Session.accept(identity, store, payload)
        except RemoteProtocolError:
            if first_error is not None:
                raise first_error from None
            raise
        if new_identity:
            self._sessions.clear()
        self._promote(session)
        return plaintext

    def serialize(self) -> bytes:
        w = Writer().u8(PEER_VERSION).u8(len(self._sessions))
        for session in self._sessions:
            w.var32(session.serialize())
        return w.getvalue()

    @classmethod
    def deserialize(cls, data: bytes) -> PeerSessions:
        """Raises DecodeError, UnsupportedVersion, BadSignature."""
        r = Reader(data, "peer sessions")
        r.expect_version(PEER_VERSION)
        count = r.u8()
        if count > MAX_SESSIONS:
            raise DecodeError("peer sessions", DecodeReason.TOO_LONG)
        sessions = [Session.deserialize(r.var32(MAX_SNAPSHOT)) for _ in range(count)]
        r.done()
        return cls(sessions)

    def __repr__(self) -> str:
        return f"PeerSessions({len(self._sessions)} sessions, ..)"


__all__ = ["MAX_SESSIONS", "PeerSessions"]
