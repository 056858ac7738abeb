"""Fuzz target: session payloads, session and peer-session snapshots, and decryption of payloads."""

from __future__ import annotations

from kluis.protocol.errors import (
    BadSignature,
    DecodeError,
    DecryptionError,
    DuplicateMessage,
    IdentityMismatch,
    PreKeyNotFound,
    TooManySkipped,
    UnsupportedVersion,
)
from kluis.protocol.peer import PeerSessions
from kluis.protocol.session import Session, SessionPayload
from tests.support import make_party

EXPECTED = (
    DecodeError,
    UnsupportedVersion,
    BadSignature,
    PreKeyNotFound,
    DecryptionError,
    DuplicateMessage,
    IdentityMismatch,
    TooManySkipped,
)
ALICE, BOB = make_party(b"fuzz/alice"), make_party(b"fuzz/bob")
SESSION = Session.initiate(ALICE.identity, BOB.bundle().verify(), ALICE.rng)
FIRST = SESSION.encrypt(b"seed", ALICE.rng)


def target(data: bytes) -> None:
    selector, body = data[:1], data[1:]
    if selector == b"S":
        Session.deserialize(body)
    elif selector == b"P":
        PeerSessions.deserialize(body)
    else:
        # Bob has no session with Alice yet: any prekey payload goes through accept().
        PeerSessions().decrypt(
            BOB.identity, BOB.prekeys, SessionPayload.from_bytes(data), ALICE.identity.public
        )
