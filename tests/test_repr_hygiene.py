"""Every key- or secret-holding type prints ``..`` instead of its secrets (STYLE.md §7, secret hygiene).

The test builds one of each, gathers every secret byte string they hold, and checks that no repr
or str shows any 8-byte window of one, as hex or as a bytes literal.
"""

from __future__ import annotations

from typing import Any

from kluis.protocol.envelope import EnvelopeKeyRing
from kluis.protocol.handshake import accept, initiate
from kluis.protocol.peer import PeerSessions
from kluis.protocol.rng import DeterministicRng
from kluis.protocol.session import Session, SessionPayload
from tests.support import make_party

NOW = 1_800_000_000


def windows(secret: bytes) -> list[str]:
    out = []
    for i in range(0, max(1, len(secret) - 7), 4):
        chunk = secret[i : i + 8]
        out += [chunk.hex(), repr(chunk)[2:-1]]
    return out


def test_no_repr_shows_a_secret() -> None:
    alice, bob = make_party(b"repr/alice"), make_party(b"repr/bob")
    ring = EnvelopeKeyRing.create(bob.identity, bob.rng, NOW)
    message, secret = initiate(alice.identity, bob.bundle().verify(), alice.rng)
    received, _ = accept(bob.identity, bob.prekeys, message)
    session = Session.initiate(alice.identity, bob.bundle().verify(), alice.rng)
    payload = SessionPayload.from_bytes(session.encrypt(b"secret text", alice.rng))
    bob_session, _ = Session.accept(bob.identity, bob.prekeys, payload)
    peers = PeerSessions([session])

    secrets = [
        alice.identity.private_bytes(),
        bob.identity.private_bytes(),
        secret.shared_secret,
        received.ratchet_key,
        b"secret text",
        session.serialize(),
        bob_session.serialize(),
        ring.serialize(),
        *ring.current.seeds(),
        *(p.private_bytes() for p in bob.prekeys.one_time.values()),
        *(p.private_bytes() for p, _ in bob.prekeys.signed.values()),
        *(k.seed_bytes() for k, _ in bob.prekeys.kem.values()),
    ]
    objects: list[Any] = [
        alice.identity,
        secret,
        received,
        message,
        bob.prekeys,
        *bob.prekeys.one_time.values(),
        *(p for p, _ in bob.prekeys.signed.values()),
        *(k for k, _ in bob.prekeys.kem.values()),
        ring,
        ring.current,
        session,
        session.ratchet,
        bob_session,
        peers,
        payload,
        DeterministicRng(b"seed"),
    ]
    forbidden = [w for s in secrets for w in windows(s)]
    for obj in objects:
        for text in (repr(obj), str(obj)):
            assert ".." in text, type(obj).__name__
            leaked = [w for w in forbidden if w in text]
            assert not leaked, f"{type(obj).__name__} shows secret bytes"
