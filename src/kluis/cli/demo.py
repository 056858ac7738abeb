"""``kluis demo``: Alice and Bob talk through the full protocol in memory.

Everything a relay server would hold or forward is printed as it would see it: the recipient's
published keys, and envelopes that are an envelope-key id and ciphertext in a size bucket. The
client issue turns this into the real chat demo over a loopback server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from kluis.protocol.bundle import PreKeyBundle
from kluis.protocol.envelope import EnvelopeKeyRing, parse_envelope, seal
from kluis.protocol.keys import IdentityKeyPair
from kluis.protocol.prekeys import LocalPreKeys
from kluis.protocol.safety import safety_number
from kluis.protocol.session import Session, SessionPayload


class _Device:
    def __init__(self, name: str, now: int) -> None:
        self.name = name
        self.account = os.urandom(16)
        self.identity = IdentityKeyPair.generate(os.urandom)
        self.prekeys = LocalPreKeys.create(self.identity, os.urandom, one_time=5, kem_one_time=5)
        self.ring = EnvelopeKeyRing.create(self.identity, os.urandom, now)

    def published_bundle(self) -> PreKeyBundle:
        return self.prekeys.bundle(self.identity.public, self.ring.current_public())


def run_demo(echo: Callable[[str], None]) -> None:
    now = int(time.time())
    alice, bob = _Device("Alice", now), _Device("Bob", now)
    echo("Kluis protocol demo (in memory; the relay server comes with the next issue)\n")
    echo("1. Bob's device made its keys; the directory holds only public ones:")
    bundle = PreKeyBundle.from_bytes(bob.published_bundle().to_bytes())
    echo(f"   prekey bundle: {len(bundle.to_bytes())} bytes, every key signed by Bob's identity\n")

    echo("2. Alice verifies the bundle and runs PQXDH (X25519 + ML-KEM-768):")
    session = Session.initiate(alice.identity, bundle.verify(), os.urandom)
    mailbox: list[bytes] = []
    for text in ("Hello Bob, this is Alice.", "Are you free at ten?"):
        envelope = seal(
            bundle.envelope_key,
            bundle.identity,
            alice.account,
            alice.identity.public,
            session.encrypt(text.encode(), os.urandom),
        )
        mailbox.append(envelope)
        outer = parse_envelope(envelope)
        echo(
            f"   -> server stores envelope: key id {outer.key_id}, {len(envelope)} bytes of ciphertext,"
            " no sender"
        )

    echo("\n3. Bob opens his mailbox:")
    bob_session: Session | None = None
    for envelope in mailbox:
        content = bob.ring.open(envelope, now)
        payload = SessionPayload.from_bytes(content.ratchet_message)
        if bob_session is None:
            bob_session, text_bytes = Session.accept(bob.identity, bob.prekeys, payload)
        else:
            text_bytes = bob_session.decrypt(payload)
        echo(f"   Bob reads: {text_bytes.decode()!r}")
    assert bob_session is not None

    echo("\n4. Bob replies (a new Diffie-Hellman ratchet step):")
    reply = seal(
        alice.ring.current_public(),
        alice.identity.public,
        bob.account,
        bob.identity.public,
        bob_session.encrypt(b"Yes, ten works.", os.urandom),
    )
    echo(f"   -> server stores envelope of {len(reply)} bytes")
    content = alice.ring.open(reply, now)
    echo(f"   Alice reads: {session.decrypt(SessionPayload.from_bytes(content.ratchet_message)).decode()!r}")

    echo("\n5. Both compare safety numbers in person:")
    mine = safety_number(alice.identity.public, alice.account, bob.identity.public, bob.account)
    theirs = safety_number(bob.identity.public, bob.account, alice.identity.public, alice.account)
    echo(f"   Alice sees {mine.display()}")
    echo(f"   Bob sees   {theirs.display()}")
    echo(f"   match: {mine.digits == theirs.digits}")
