"""Differential test against the independent ``doubleratchet`` package (tests/ratchet_compat.py).

Four parties run in lockstep from the same seeds: our Alice and theirs, our Bob and theirs. Every send
must produce byte-identical messages on both implementations; every delivery hands our receiver the
message THEIR sender made and their receiver the one OURS made, so each decrypts the other's output.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kluis.protocol.ratchet import RatchetSession
from kluis.protocol.rng import DeterministicRng
from tests.ratchet_compat import COMPAT_AEAD, TheirParty


class Lockstep:
    def __init__(self, seed: bytes) -> None:
        setup = DeterministicRng(seed + b"/setup")
        shared_secret, spk, ad = setup(32), setup(32), setup(64)
        spk_pub = X25519PrivateKey.from_private_bytes(spk).public_key().public_bytes_raw()
        self.rng = {"A": DeterministicRng(seed + b"/A"), "B": DeterministicRng(seed + b"/B")}
        self.ours = {
            "A": RatchetSession.initiator(shared_secret, spk_pub, ad, self.rng["A"], aead=COMPAT_AEAD),
            "B": RatchetSession.responder(shared_secret, spk, ad, aead=COMPAT_AEAD),
        }
        self.theirs = {
            "A": TheirParty(shared_secret, spk_pub, ad, DeterministicRng(seed + b"/A"), initiator=True),
            "B": TheirParty(shared_secret, spk, ad, DeterministicRng(seed + b"/B"), initiator=False),
        }
        self.sent: list[tuple[str, bytes, bytes, bytes]] = []  # (receiver, plaintext, ours, theirs)
        self.delivered: set[int] = set()
        self.b_received = False

    def send(self, sender: str, plaintext: bytes) -> int:
        ours = self.ours[sender].encrypt(plaintext, self.rng[sender])
        theirs = self.theirs[sender].encrypt(plaintext)
        assert ours == theirs, f"message {len(self.sent)} differs"
        self.sent.append(("B" if sender == "A" else "A", plaintext, ours, theirs))
        return len(self.sent) - 1

    def deliver(self, index: int) -> None:
        receiver, plaintext, ours, theirs = self.sent[index]
        assert self.ours[receiver].decrypt(theirs) == plaintext  # theirs -> ours
        assert self.theirs[receiver].decrypt(ours) == plaintext  # ours -> theirs
        self.delivered.add(index)
        self.b_received |= receiver == "B"


def run(seed: bytes, script: list[tuple[str, object]]) -> Lockstep:
    ls = Lockstep(seed)
    for op, arg in script:
        if op == "send":
            assert isinstance(arg, str)
            ls.send(arg, f"{arg} says {len(ls.sent)}".encode())
        else:
            assert isinstance(arg, int)
            ls.deliver(arg)
    return ls


class TestDoubleRatchetAgainstDoubleratchetPackage:
    """§3 Double Ratchet: identical bytes and mutual decryption."""

    def test_alternating(self) -> None:
        script: list[tuple[str, object]] = []
        for i in range(8):
            script += [("send", "A"), ("deliver", 2 * i), ("send", "B"), ("deliver", 2 * i + 1)]
        run(b"alternating", script)

    def test_burst(self) -> None:
        script: list[tuple[str, object]] = [("send", "A")] * 10 + [("deliver", i) for i in range(10)]
        script += [("send", "B")] * 10 + [("deliver", i) for i in range(10, 20)]
        script += [("send", "A")] * 3 + [("deliver", i) for i in range(20, 23)]
        run(b"burst", script)

    def test_reordered(self) -> None:
        script: list[tuple[str, object]] = [("send", "A")] * 5 + [("deliver", i) for i in (3, 0, 4, 2, 1)]
        script += [("send", "B")] * 4 + [("deliver", i) for i in (8, 6, 5, 7)]
        script += [("send", "A")] * 3 + [("deliver", i) for i in (11, 9, 10)]
        run(b"reordered", script)

    def test_skipped_across_ratchet_steps(self) -> None:
        # Alice's first chain loses 1-3 until after Bob ratcheted twice; Bob's first chain loses 7.
        script: list[tuple[str, object]] = [("send", "A")] * 5 + [("deliver", 0), ("deliver", 4)]
        script += [("send", "B")] * 3 + [("deliver", 5), ("deliver", 7)]  # 6 skipped
        script += [("send", "A")] * 2 + [("deliver", 9)]  # new chain, PN=5; 8 skipped
        script += [("send", "B"), ("deliver", 10)]
        script += [("deliver", i) for i in (2, 8, 1, 6, 3)]
        run(b"skipped", script)


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[str, object]]:
    """Random conversations: B speaks only after it received; deliveries in any order."""
    script: list[tuple[str, object]] = [("send", "A")]
    pending = [0]
    senders = ["A"]
    b_can_send = False
    for _ in range(draw(st.integers(1, 25))):
        deliver: bool = draw(st.booleans())
        if pending and deliver:
            index = pending.pop(draw(st.integers(0, len(pending) - 1)))
            b_can_send |= senders[index] == "A"
            script.append(("deliver", index))
        else:
            sender = draw(st.sampled_from(["A", "B"] if b_can_send else ["A"]))
            pending.append(len(senders))
            senders.append(sender)
            script.append(("send", sender))
    script += [("deliver", i) for i in pending]
    return script


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts(), seed=st.binary(min_size=1, max_size=8))
def test_random_conversations_match(script: list[tuple[str, object]], seed: bytes) -> None:
    ls = run(seed, script)
    assert len(ls.delivered) == len(ls.sent)
