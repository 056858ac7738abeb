"""The conversation layer end to end: PQXDH + Double Ratchet + padding + sealed envelopes.

The stateful test drives three parties through random interleavings of send, deliver, drop,
duplicate, reorder, tamper (any byte of the sealed envelope) and restart from snapshots, and checks
that every genuine message is read exactly once, and every tampered or replayed one is refused
with a typed error and changes no state.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from kluis.protocol.envelope import EnvelopeKeyRing, seal
from kluis.protocol.errors import (
    DecodeError,
    IdentityMismatch,
    LocalProtocolError,
    PreKeyNotFound,
    RemoteProtocolError,
    UnsupportedVersion,
)
from kluis.protocol.keys import IdentityPublicKey
from kluis.protocol.peer import MAX_SESSIONS, PeerSessions
from kluis.protocol.prekeys import LocalPreKeys
from kluis.protocol.ratchet.constants import MAX_SKIPPED_KEYS
from kluis.protocol.session import Session, SessionPayload
from tests.support import make_party

NOW = 1_800_000_000


class Device:
    """A party plus the state a client keeps: envelope ring and one session per peer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.account = name.encode().ljust(16, b".")
        party = make_party(f"session/{name}".encode(), one_time=4, kem_one_time=4)
        self.party = party
        self.ring = EnvelopeKeyRing.create(party.identity, party.rng, NOW)
        party.envelope_key = self.ring.current_public()
        self.sessions: dict[bytes, PeerSessions] = {}

    def snapshot(self) -> tuple[bytes, bytes, dict[bytes, bytes]]:
        return (
            self.party.prekeys.serialize(),
            self.ring.serialize(),
            {peer: s.serialize() for peer, s in self.sessions.items()},
        )

    def restart(self) -> None:
        prekeys, ring, sessions = self.snapshot()
        self.party.prekeys = LocalPreKeys.deserialize(prekeys)
        self.ring = EnvelopeKeyRing.deserialize(ring)
        self.sessions = {peer: PeerSessions.deserialize(s) for peer, s in sessions.items()}

    def send(self, peer: Device, text: bytes) -> bytes:
        sessions = self.sessions.setdefault(peer.account, PeerSessions())
        bundle = None if sessions.active else peer.party.bundle(directory=True).verify()
        payload = sessions.encrypt(self.party.identity, bundle, text, self.party.rng)
        return seal(
            peer.ring.current_public(),
            peer.party.identity.public,
            self.account,
            self.party.identity.public,
            payload,
        )

    def receive(self, envelope: bytes) -> tuple[bytes, bytes]:
        """Returns (sender account, text). State changes only on success."""
        content = self.ring.open(envelope, NOW)
        payload = SessionPayload.from_bytes(content.ratchet_message)
        sessions = self.sessions.get(content.sender_account) or PeerSessions()
        text = sessions.decrypt(self.party.identity, self.party.prekeys, payload, content.sender_identity)
        self.sessions[content.sender_account] = sessions
        return content.sender_account, text


def test_two_parties_talk_both_ways() -> None:
    alice, bob = Device("alice"), Device("bob")
    assert bob.receive(alice.send(bob, b"hi bob")) == (alice.account, b"hi bob")
    session = alice.sessions[bob.account].active
    assert session is not None
    before_reply = session.awaiting_reply
    assert alice.receive(bob.send(alice, b"hi alice")) == (bob.account, b"hi alice")
    assert (before_reply, session.awaiting_reply) == (True, False)
    for i in range(5):
        assert bob.receive(alice.send(bob, b"m%d" % i))[1] == b"m%d" % i


def test_first_messages_all_carry_the_handshake_and_any_can_arrive_first() -> None:
    alice, bob = Device("alice"), Device("bob")
    envelopes = [alice.send(bob, b"one"), alice.send(bob, b"two"), alice.send(bob, b"three")]
    assert bob.receive(envelopes[2])[1] == b"three"
    assert bob.receive(envelopes[0])[1] == b"one"
    assert bob.receive(envelopes[1])[1] == b"two"


def test_replayed_first_message_is_refused_without_change() -> None:
    alice, bob = Device("alice"), Device("bob")
    envelope = alice.send(bob, b"hello")
    bob.receive(envelope)
    before = bob.snapshot()
    with pytest.raises(RemoteProtocolError):
        bob.receive(envelope)
    assert bob.snapshot() == before
    # A fresh device without the session (e.g. restored) also refuses it: the prekeys are spent.
    bob.sessions.clear()
    with pytest.raises(PreKeyNotFound):
        bob.receive(envelope)


def test_forged_first_message_burns_no_prekey() -> None:
    alice, bob = Device("alice"), Device("bob")
    content = bob.ring.open(alice.send(bob, b"hello"), NOW)
    forged = bytearray(content.ratchet_message)
    forged[-1] ^= 1
    before = bob.party.prekeys.serialize()
    with pytest.raises(RemoteProtocolError):
        Session.accept(bob.party.identity, bob.party.prekeys, SessionPayload.from_bytes(bytes(forged)))
    assert bob.party.prekeys.serialize() == before


def test_payload_parse_errors() -> None:
    with pytest.raises(UnsupportedVersion):
        SessionPayload.from_bytes(b"\x09\x02abc")
    with pytest.raises(DecodeError):
        SessionPayload.from_bytes(b"\x01\x07abc")
    with pytest.raises(DecodeError):
        SessionPayload.from_bytes(b"\x01")
    alice = Device("alice")
    with pytest.raises(LocalProtocolError):
        Session.accept(alice.party.identity, alice.party.prekeys, SessionPayload.from_bytes(b"\x01\x02abc"))


def test_snapshot_round_trip_and_malformed() -> None:
    alice, bob = Device("alice"), Device("bob")
    bob.receive(alice.send(bob, b"x"))
    session = alice.sessions[bob.account].active
    assert session is not None
    data = session.serialize()
    assert Session.deserialize(data).serialize() == data
    for bad in (data[:-1], data + b"\x00", b"\x02" + data[1:]):
        with pytest.raises((DecodeError, UnsupportedVersion)):
            Session.deserialize(bad)
    assert ".." in repr(session)
    assert ".." in repr(alice.sessions[bob.account])


NAMES = ("alice", "bob", "carol")


class Conversation(RuleBasedStateMachine):
    """Three parties, random network behaviour; invariants of DESIGN.md's delivery semantics."""

    in_flight = Bundle("in_flight")

    def __init__(self) -> None:
        super().__init__()
        self.devices = {name: Device(name) for name in NAMES}
        self.counter = itertools.count()
        self.read: set[bytes] = set()
        self.sent: dict[bytes, tuple[str, str]] = {}

    @rule(target=in_flight, pair=st.permutations(NAMES).map(lambda p: (p[0], p[1])))
    def send(self, pair: tuple[str, str]) -> tuple[str, bytes, bytes]:
        sender, recipient = pair
        text = b"%s->%s #%d" % (sender.encode(), recipient.encode(), next(self.counter))
        envelope = self.devices[sender].send(self.devices[recipient], text)
        self.sent[text] = (sender, recipient)
        return recipient, envelope, text

    @rule(item=consumes(in_flight))
    def deliver(self, item: tuple[str, bytes, bytes]) -> None:
        self._deliver(item)

    @rule(item=in_flight)
    def deliver_keep_copy(self, item: tuple[str, bytes, bytes]) -> None:
        """Delivers but leaves the envelope in flight: a later delivery is a duplicate."""
        self._deliver(item)

    @rule(item=consumes(in_flight))
    def drop(self, item: tuple[str, bytes, bytes]) -> None:
        pass

    @rule(item=in_flight, data=st.data())
    def tamper(self, item: tuple[str, bytes, bytes], data: st.DataObject) -> None:
        recipient, envelope, _ = item
        index = data.draw(st.integers(0, len(envelope) - 1))
        flip = data.draw(st.integers(1, 255))
        forged = bytearray(envelope)
        forged[index] ^= flip
        device = self.devices[recipient]
        before = device.snapshot()
        with pytest.raises(RemoteProtocolError):
            device.receive(bytes(forged))
        assert device.snapshot() == before

    @rule(name=st.sampled_from(NAMES))
    def restart(self, name: str) -> None:
        self.devices[name].restart()

    def _deliver(self, item: tuple[str, bytes, bytes]) -> None:
        recipient, envelope, text = item
        device = self.devices[recipient]
        before = device.snapshot()
        if text in self.read:
            # Only a duplicate may fail, and it must fail and change nothing.
            with pytest.raises(RemoteProtocolError):
                device.receive(envelope)
            assert device.snapshot() == before
            return
        sender, received = device.receive(envelope)
        assert received == text
        assert sender == self.devices[self.sent[text][0]].account
        self.read.add(text)

    @invariant()
    def bounds_hold(self) -> None:
        for device in self.devices.values():
            for sessions in device.sessions.values():
                assert len(sessions) <= MAX_SESSIONS
                for session in sessions._sessions:
                    assert session.ratchet.skipped_key_count <= MAX_SKIPPED_KEYS


Conversation.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestConversation = Conversation.TestCase


def test_identity_in_envelope_is_the_senders() -> None:
    alice, bob = Device("alice"), Device("bob")
    content = bob.ring.open(alice.send(bob, b"x"), NOW)
    assert content.sender_identity == alice.party.identity.public
    assert IdentityPublicKey.from_bytes(content.sender_identity.to_bytes()) == alice.party.identity.public


def test_nobody_can_speak_under_a_contacts_account() -> None:
    """The envelope does not authenticate its sender; the session does (IdentityMismatch)."""
    alice, bob, mallory = Device("alice"), Device("bob"), Device("mallory")
    bob.receive(alice.send(bob, b"hi"))
    mallory.account = alice.account  # Mallory claims Alice's account id in her envelopes
    before = bob.snapshot()
    with pytest.raises(IdentityMismatch):
        bob.receive(mallory.send(bob, b"this is alice, honest"))
    assert bob.snapshot() == before
    # Claiming Alice's identity too does not help: the session or handshake will not authenticate.
    content = bob.ring.open(mallory.send(bob, b"still not alice"), NOW)
    with pytest.raises(RemoteProtocolError):
        bob.sessions[alice.account].decrypt(
            bob.party.identity,
            bob.party.prekeys,
            SessionPayload.from_bytes(content.ratchet_message),
            alice.party.identity.public,
        )
    assert bob.snapshot() == before


def test_a_new_identity_is_accepted_only_when_allowed() -> None:
    alice, bob = Device("alice"), Device("bob")
    bob.receive(alice.send(bob, b"hi"))
    reinstalled = Device("alice-reinstalled")
    reinstalled.account = alice.account
    content = bob.ring.open(reinstalled.send(bob, b"new phone"), NOW)
    payload = SessionPayload.from_bytes(content.ratchet_message)
    sessions = bob.sessions[alice.account]
    args = (bob.party.identity, bob.party.prekeys, payload, content.sender_identity)
    with pytest.raises(IdentityMismatch):
        sessions.decrypt(*args)
    assert sessions.decrypt(*args, allow_new_identity=True) == b"new phone"
    assert sessions.remote_identity == reinstalled.party.identity.public
    assert len(sessions) == 1


def test_simultaneous_start_converges_on_one_session() -> None:
    """Sesame §3: both start a session at once; each keeps both, and they settle on one."""
    alice, bob = Device("alice"), Device("bob")
    to_bob, to_alice = alice.send(bob, b"hi from alice"), bob.send(alice, b"hi from bob")
    assert bob.receive(to_bob)[1] == b"hi from alice"
    assert alice.receive(to_alice)[1] == b"hi from bob"
    assert len(alice.sessions[bob.account]) == 2
    for i in range(3):
        assert bob.receive(alice.send(bob, b"a%d" % i))[1] == b"a%d" % i
        assert alice.receive(bob.send(alice, b"b%d" % i))[1] == b"b%d" % i
    alice_active, bob_active = alice.sessions[bob.account].active, bob.sessions[alice.account].active
    assert alice_active is not None
    assert bob_active is not None
    # The same session on both sides: the same associated data (initiator's identity first).
    assert alice_active.ratchet._ad == bob_active.ratchet._ad
    assert not alice_active.awaiting_reply
