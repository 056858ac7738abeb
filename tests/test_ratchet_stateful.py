"""Stateful property tests: parties exchange ratchet messages over a hostile network.

The network may deliver in any order, drop, duplicate and tamper with messages, and a party may restart
from its serialized state at any time. Invariants (spec §3.5, STYLE.md §7):

- every genuine message decrypts to what was sent, exactly once, unless its receiving chain has aged out
  of MAX_OLD_CHAINS (then it fails as DecryptionError);
- every replayed or tampered message raises a typed error and leaves the session byte-identical;
- the skipped-key bounds hold for every session after every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kluis.protocol.errors import (
    DecodeError,
    DecryptionError,
    DuplicateMessage,
    TooManySkipped,
    UnsupportedVersion,
)
from kluis.protocol.ratchet import RatchetSession, parse_message
from kluis.protocol.ratchet.constants import MAX_OLD_CHAINS, MAX_SKIPPED_KEYS
from kluis.protocol.ratchet.serialize import decode_state
from kluis.protocol.rng import DeterministicRng
from tests.ratchet_helpers import make_pair

REJECTIONS = (DecodeError, UnsupportedVersion, DecryptionError, DuplicateMessage, TooManySkipped)


@dataclass
class Sent:
    sender: int
    receiver: int
    plaintext: bytes
    wire: bytes
    delivered: bool = False
    dropped: bool = False


def remembers_chain(session: RatchetSession, wire: bytes) -> bool:
    state = decode_state(session.serialize())
    dh = parse_message(wire).dh
    return dh == state.dhr or dh in state.skipped


class Conversation(RuleBasedStateMachine):
    PARTIES = 2

    def __init__(self) -> None:
        super().__init__()
        # sessions[(me, peer)]; for each pair the lower number is the initiator.
        self.sessions: dict[tuple[int, int], RatchetSession] = {}
        self.rngs = {p: DeterministicRng(b"party %d" % p) for p in range(self.PARTIES)}
        self.can_send: set[tuple[int, int]] = set()
        for low, high in combinations(range(self.PARTIES), 2):
            pair = make_pair(b"%d-%d" % (low, high))
            self.sessions[(low, high)] = pair.alice
            self.sessions[(high, low)] = pair.bob
            self.can_send.add((low, high))
        self.network: list[Sent] = []

    def directions(self) -> list[tuple[int, int]]:
        return sorted(self.can_send)

    def pending(self) -> list[Sent]:
        return [m for m in self.network if not m.delivered and not m.dropped]

    def delivered(self) -> list[Sent]:
        return [m for m in self.network if m.delivered]

    @rule(data=st.data(), size=st.integers(0, 64))
    def send(self, data: st.DataObject, size: int) -> None:
        sender, receiver = data.draw(st.sampled_from(self.directions()))
        plaintext = (b"%d>%d #%d " % (sender, receiver, len(self.network))).ljust(size, b".")
        wire = self.sessions[(sender, receiver)].encrypt(plaintext, self.rngs[sender])
        self.network.append(Sent(sender, receiver, plaintext, wire))

    @precondition(lambda self: self.pending())
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        message = data.draw(st.sampled_from(self.pending()))
        session = self.sessions[(message.receiver, message.sender)]
        before = session.serialize()
        try:
            plaintext = session.decrypt(message.wire)
        except DecryptionError:
            # Only a message from a receiving chain that aged out of MAX_OLD_CHAINS may be refused.
            assert not remembers_chain(session, message.wire)
            assert session.serialize() == before
            message.dropped = True
            return
        assert plaintext == message.plaintext
        message.delivered = True
        self.can_send.add((message.receiver, message.sender))

    @precondition(lambda self: self.pending())
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        data.draw(st.sampled_from(self.pending())).dropped = True

    @precondition(lambda self: self.delivered())
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        message = data.draw(st.sampled_from(self.delivered()))
        self.rejected(message.receiver, message.sender, message.wire)

    @precondition(lambda self: self.network)
    @rule(data=st.data(), flip=st.integers(1, 255))
    def tamper(self, data: st.DataObject, flip: int) -> None:
        message = data.draw(st.sampled_from(self.network))
        position = data.draw(st.integers(0, len(message.wire) - 1))
        tampered = bytearray(message.wire)
        tampered[position] ^= flip
        self.rejected(message.receiver, message.sender, bytes(tampered))

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        party = data.draw(st.integers(0, self.PARTIES - 1))
        for key, session in self.sessions.items():
            if key[0] == party:
                restored = RatchetSession.deserialize(session.serialize())
                assert restored.serialize() == session.serialize()
                self.sessions[key] = restored

    def rejected(self, me: int, peer: int, wire: bytes) -> None:
        session = self.sessions[(me, peer)]
        before = session.serialize()
        try:
            session.decrypt(wire)
        except REJECTIONS:
            pass
        else:
            raise AssertionError("a replayed or tampered message was accepted")
        assert session.serialize() == before

    @invariant()
    def bounds_hold(self) -> None:
        for session in self.sessions.values():
            assert session.skipped_key_count <= MAX_SKIPPED_KEYS
            assert session.receiving_chain_count <= MAX_OLD_CHAINS + 1


class ThreeParties(Conversation):
    PARTIES = 3


SETTINGS = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestTwoParties = Conversation.TestCase
TestTwoParties.settings = SETTINGS
TestThreeParties = ThreeParties.TestCase
TestThreeParties.settings = SETTINGS
