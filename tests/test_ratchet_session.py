"""Unit tests of the Double Ratchet session: bounds, replays, forgeries, state format, repr hygiene."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from kluis.protocol.errors import (
    DecodeError,
    DecodeReason,
    DecryptionError,
    DuplicateMessage,
    LocalProtocolError,
    TooManySkipped,
    UnsupportedVersion,
)
from kluis.protocol.ratchet import RatchetSession, parse_message
from kluis.protocol.ratchet.constants import (
    HEADER_LEN,
    MAX_OLD_CHAINS,
    MAX_SKIP,
    MAX_SKIPPED_KEYS,
    MIN_CIPHERTEXT_LEN,
)
from kluis.protocol.ratchet.header import encode_header
from kluis.protocol.ratchet.serialize import decode_state
from kluis.protocol.rng import DeterministicRng
from tests.ratchet_helpers import Pair, make_pair


def rejects_unchanged(session: RatchetSession, message: bytes, error: type[Exception]) -> Exception:
    before = session.serialize()
    with pytest.raises(error) as info:
        session.decrypt(message)
    assert session.serialize() == before
    return info.value


def round_trip(pair: Pair, rounds: int) -> None:
    """``rounds`` reply-and-answer exchanges: each gives Bob one new receiving chain."""
    for _ in range(rounds):
        assert pair.alice.decrypt(pair.bob.encrypt(b"ping", pair.bob_rng)) == b"ping"
        assert pair.bob.decrypt(pair.alice.encrypt(b"pong", pair.alice_rng)) == b"pong"


class TestInitialization:
    """3.3 Initialization."""

    def test_first_exchange(self) -> None:
        pair = make_pair()
        assert pair.bob.decrypt(pair.alice.encrypt(b"hello", pair.alice_rng)) == b"hello"
        assert pair.alice.decrypt(pair.bob.encrypt(b"hi", pair.bob_rng)) == b"hi"

    def test_responder_cannot_send_first(self) -> None:
        pair = make_pair()
        with pytest.raises(LocalProtocolError):
            pair.bob.encrypt(b"too early", pair.bob_rng)

    def test_bad_inputs(self) -> None:
        rng = DeterministicRng(b"x")
        with pytest.raises(LocalProtocolError):
            RatchetSession.initiator(b"short", bytes(32), b"", rng)
        with pytest.raises(LocalProtocolError):
            RatchetSession.responder(bytes(32), b"short", b"")
        with pytest.raises(LocalProtocolError):
            RatchetSession.responder(bytes(32), bytes(32), bytes(2000))
        with pytest.raises(DecodeError) as info:
            RatchetSession.initiator(bytes(32), bytes(31), b"", rng)
        assert info.value.reason is DecodeReason.BAD_KEY
        with pytest.raises(DecodeError):  # low-order point: all-zero DH output
            RatchetSession.initiator(bytes(32), bytes(32), b"", rng)

    def test_plaintext_bound(self) -> None:
        pair = make_pair()
        with pytest.raises(LocalProtocolError):
            pair.alice.encrypt(bytes(1 << 20), pair.alice_rng)


@pytest.fixture(scope="module")
def burst() -> tuple[Pair, list[bytes]]:
    pair = make_pair(b"burst")
    return pair, [pair.alice.encrypt(b"%d" % i, pair.alice_rng) for i in range(MAX_SKIP + 3)]


class TestSkippedMessageKeys:
    """3.5 Decrypting messages: MAX_SKIP and the stored-key bounds."""

    def test_exactly_max_skip_on_new_chain(self, burst: tuple[Pair, list[bytes]]) -> None:
        pair, messages = burst
        bob = RatchetSession.deserialize(pair.bob.serialize())
        error = rejects_unchanged(bob, messages[MAX_SKIP + 1], TooManySkipped)
        assert isinstance(error, TooManySkipped)
        assert (error.requested, error.bound) == (MAX_SKIP + 1, MAX_SKIP)
        assert bob.decrypt(messages[MAX_SKIP]) == b"%d" % MAX_SKIP
        assert bob.skipped_key_count == MAX_SKIP

    def test_exactly_max_skip_on_current_chain(self, burst: tuple[Pair, list[bytes]]) -> None:
        pair, messages = burst
        bob = RatchetSession.deserialize(pair.bob.serialize())
        assert bob.decrypt(messages[0]) == b"0"
        rejects_unchanged(bob, messages[MAX_SKIP + 2], TooManySkipped)
        assert bob.decrypt(messages[MAX_SKIP + 1]) == b"%d" % (MAX_SKIP + 1)
        assert bob.decrypt(messages[5]) == b"5"  # a skipped key, used once
        rejects_unchanged(bob, messages[5], DuplicateMessage)

    def test_previous_chain_length_bound(self, burst: tuple[Pair, list[bytes]]) -> None:
        pair, messages = burst
        alice = RatchetSession.deserialize(pair.alice.serialize())
        bob = RatchetSession.deserialize(pair.bob.serialize())
        assert bob.decrypt(messages[0]) == b"0"
        assert alice.decrypt(bob.encrypt(b"reply", pair.bob_rng)) == b"reply"
        # Alice's next chain says PN = MAX_SKIP + 3 while Bob is at Nr = 1: MAX_SKIP + 2 to skip.
        rejects_unchanged(bob, alice.encrypt(b"new chain", pair.alice_rng), TooManySkipped)

    def test_total_bound_evicts_oldest(self) -> None:
        pair = make_pair(b"evict")
        first = [pair.alice.encrypt(b"a", pair.alice_rng) for _ in range(MAX_SKIP)]
        pair.bob.decrypt(first[-1])  # stores MAX_SKIP - 1 keys
        round_trip(pair, 1)
        second = [pair.alice.encrypt(b"b", pair.alice_rng) for _ in range(10)]
        pair.bob.decrypt(second[-1])  # 9 more: the 8 oldest of the first chain go
        assert pair.bob.skipped_key_count == MAX_SKIPPED_KEYS
        for message in first[:8]:
            rejects_unchanged(pair.bob, message, DuplicateMessage)
        assert pair.bob.decrypt(first[8]) == b"a"
        assert pair.bob.decrypt(second[0]) == b"b"

    @pytest.mark.parametrize(("rounds", "kept"), [(MAX_OLD_CHAINS, True), (MAX_OLD_CHAINS + 1, False)])
    def test_old_chains_bound(self, rounds: int, kept: bool) -> None:
        pair = make_pair(b"chains")
        late = [pair.alice.encrypt(b"late", pair.alice_rng) for _ in range(2)]
        pair.bob.decrypt(late[1])
        round_trip(pair, rounds)
        assert pair.bob.receiving_chain_count <= MAX_OLD_CHAINS + 1
        if kept:
            assert pair.bob.decrypt(late[0]) == b"late"
        else:
            # The chain is forgotten: its key looks new, and the message fails authentication.
            rejects_unchanged(pair.bob, late[0], DecryptionError)


class TestReplayAndForgery:
    """3.5: a message that fails leaves the state unchanged; forged DH keys do not move the root chain."""

    def test_replay_current_chain(self) -> None:
        pair = make_pair()
        m0 = pair.alice.encrypt(b"once", pair.alice_rng)
        m1 = pair.alice.encrypt(b"twice", pair.alice_rng)
        pair.bob.decrypt(m0)
        pair.bob.decrypt(m1)
        rejects_unchanged(pair.bob, m0, DuplicateMessage)
        rejects_unchanged(pair.bob, m1, DuplicateMessage)

    def test_replay_previous_chain(self) -> None:
        pair = make_pair()
        m0 = pair.alice.encrypt(b"old", pair.alice_rng)
        pair.bob.decrypt(m0)
        round_trip(pair, 2)
        error = rejects_unchanged(pair.bob, m0, DuplicateMessage)
        assert isinstance(error, DuplicateMessage)
        assert error.counter == 0

    def test_forged_header_dh_key(self) -> None:
        pair = make_pair()
        pair.bob.decrypt(pair.alice.encrypt(b"x", pair.alice_rng))
        genuine = pair.alice.encrypt(b"y", pair.alice_rng)
        parsed = parse_message(genuine)
        other = X25519PrivateKey.from_private_bytes(bytes(range(32))).public_key().public_bytes_raw()
        for dh in (other, bytes(32)):
            forged = encode_header(dh, parsed.pn, parsed.n) + parsed.ciphertext
            rejects_unchanged(pair.bob, forged, DecryptionError)
        assert pair.bob.decrypt(genuine) == b"y"

    def test_forged_before_any_reply(self) -> None:
        pair = make_pair()
        m = pair.alice.encrypt(b"x", pair.alice_rng)
        # Alice has no receiving chain on Bob's prekey: a message naming it cannot be genuine.
        spk_message = encode_header(parse_message(m).dh, 0, 0) + bytes(16)
        pair.bob.decrypt(m)
        alice_dhr = decode_state(pair.alice.serialize()).dhr
        assert alice_dhr is not None
        rejects_unchanged(pair.alice, encode_header(alice_dhr, 0, 0) + bytes(16), DecryptionError)
        rejects_unchanged(pair.bob, spk_message, DuplicateMessage)

    def test_every_byte_flip(self) -> None:
        pair = make_pair()
        pair.bob.decrypt(pair.alice.encrypt(b"x", pair.alice_rng))
        genuine = pair.alice.encrypt(b"payload", pair.alice_rng)
        for i in range(len(genuine)):
            tampered = bytearray(genuine)
            tampered[i] ^= 0x01
            before = pair.bob.serialize()
            with pytest.raises((DecryptionError, TooManySkipped, UnsupportedVersion, DuplicateMessage)):
                pair.bob.decrypt(bytes(tampered))
            assert pair.bob.serialize() == before
        assert pair.bob.decrypt(genuine) == b"payload"


class TestWireFormat:
    """3.1 HEADER, as laid out in header.py."""

    def test_parse(self) -> None:
        pair = make_pair()
        wire = pair.alice.encrypt(b"abc", pair.alice_rng)
        parsed = parse_message(wire)
        assert (parsed.pn, parsed.n, len(parsed.dh), len(parsed.header)) == (0, 0, 32, HEADER_LEN)
        assert parsed.to_bytes() == wire

    def test_malformed(self) -> None:
        with pytest.raises(DecodeError) as info:
            parse_message(b"\x01" + bytes(HEADER_LEN + MIN_CIPHERTEXT_LEN - 2))
        assert info.value.reason is DecodeReason.TRUNCATED
        with pytest.raises(DecodeError):
            parse_message(b"")
        with pytest.raises(UnsupportedVersion):
            parse_message(b"\x02" + bytes(HEADER_LEN + MIN_CIPHERTEXT_LEN))
        with pytest.raises(UnsupportedVersion):
            parse_message(b"\x00")
        with pytest.raises(DecodeError) as info:
            parse_message(b"\x01" + bytes(1 << 20))
        assert info.value.reason is DecodeReason.TOO_LONG


class TestStateSerialization:
    """The versioned state format of serialize.py."""

    def state(self) -> bytes:
        pair = make_pair()
        messages = [pair.alice.encrypt(b"m", pair.alice_rng) for _ in range(3)]
        pair.bob.decrypt(messages[2])
        return pair.bob.serialize()

    def test_round_trip(self) -> None:
        data = self.state()
        assert RatchetSession.deserialize(data).serialize() == data
        fresh = make_pair()
        assert RatchetSession.deserialize(fresh.bob.serialize()).serialize() == fresh.bob.serialize()

    def test_every_truncation(self) -> None:
        data = self.state()
        for cut in range(len(data)):
            with pytest.raises(DecodeError) as info:
                RatchetSession.deserialize(data[:cut])
            assert info.value.reason in (DecodeReason.TRUNCATED, DecodeReason.BAD_VALUE)

    def test_trailing(self) -> None:
        with pytest.raises(DecodeError) as info:
            RatchetSession.deserialize(self.state() + b"\x00")
        assert info.value.reason is DecodeReason.TRAILING_BYTES

    def test_unknown_version(self) -> None:
        with pytest.raises(UnsupportedVersion) as info:
            RatchetSession.deserialize(b"\x02" + self.state()[1:])
        assert info.value.version == 2

    def test_unknown_flags(self) -> None:
        data = bytearray(self.state())
        flags_at = 1 + 2 + 64 + 64  # version, AD length, AD, root key, private key
        data[flags_at] |= 0x80
        with pytest.raises(DecodeError) as info:
            RatchetSession.deserialize(bytes(data))
        assert info.value.reason is DecodeReason.BAD_VALUE


class TestReprHygiene:
    """No repr shows key bytes (STYLE.md §7, secret hygiene)."""

    def test_reprs(self) -> None:
        pair = make_pair()
        wire = pair.alice.encrypt(b"secret text", pair.alice_rng)
        pair.bob.decrypt(wire)
        state = decode_state(pair.bob.serialize())
        secrets = [state.rk, state.dhs_private, state.ckr, state.ad]
        for obj in (pair.alice, pair.bob, state, parse_message(wire), pair.alice_rng):
            text = repr(obj)
            assert ".." in text
            for secret in secrets:
                assert secret is not None
                assert secret.hex() not in text
                assert repr(secret) not in text
        assert repr(pair.alice) == "RatchetSession(..)"
