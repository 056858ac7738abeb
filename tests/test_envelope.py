"""envelope.py: sealed sender over HPKE (RFC 9180) with a rotating, erasing envelope key ring."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kluis.protocol.envelope import (
    ENC_LEN,
    GRACE_PERIOD,
    MAX_RATCHET_MESSAGE,
    MAX_RING_KEYS,
    ROTATION_PERIOD,
    EnvelopeKeyRing,
    OuterEnvelope,
    encode_inner,
    open_envelope,
    parse_envelope,
    parse_inner,
    seal,
)
from kluis.protocol.errors import (
    BadSignature,
    DecodeError,
    DecodeReason,
    DecryptionError,
    EnvelopeKeyUnknown,
    KeyExhausted,
    LocalProtocolError,
    UnsupportedVersion,
)
from kluis.protocol.keys import IdentityKeyPair, KeyKind, SignedPublicKey
from kluis.protocol.padding import BUCKETS, PlaintextTooLarge, pad
from kluis.protocol.rng import DeterministicRng

T0 = 1_700_000_000
DAY = 24 * 3600
ACCOUNT = bytes(range(16))

ALICE = IdentityKeyPair.generate(DeterministicRng(b"alice"))
BOB = IdentityKeyPair.generate(DeterministicRng(b"bob"))
MALLORY = IdentityKeyPair.generate(DeterministicRng(b"mallory"))


def make_ring(seed: bytes = b"bob ring", **kw: int) -> EnvelopeKeyRing:
    return EnvelopeKeyRing.create(BOB, DeterministicRng(seed), T0, **kw)


RING = make_ring()


def seal_to(
    ring: EnvelopeKeyRing, message: bytes = b"ratchet message", key: SignedPublicKey | None = None
) -> bytes:
    return seal(key or ring.current_public(), BOB.public, ACCOUNT, ALICE.public, message)


class TestRoundTrip:
    def test_open(self) -> None:
        data = seal_to(RING)
        content = open_envelope(RING, data, T0)
        assert content.sender_account == ACCOUNT
        assert content.sender_identity == ALICE.public
        assert content.ratchet_message == b"ratchet message"

    @settings(max_examples=25, deadline=None)
    @given(
        message=st.binary(min_size=1, max_size=3000),
        account=st.binary(min_size=16, max_size=32),
    )
    def test_any_message(self, message: bytes, account: bytes) -> None:
        data = seal(RING.current_public(), BOB.public, account, ALICE.public, message)
        content = RING.open(data, T0)
        assert (content.sender_account, content.ratchet_message) == (account, message)

    def test_largest_message(self) -> None:
        message = b"m" * MAX_RATCHET_MESSAGE
        data = seal_to(RING, message)
        assert len(data) == 1 + 4 + ENC_LEN + BUCKETS[-1] + 16
        assert RING.open(data, T0).ratchet_message == message


class TestSizes:
    def test_outer_size_is_only_the_bucket(self) -> None:
        sizes = {n: len(seal_to(RING, b"x" * n)) for n in (1, 40, 104, 105, 300, 360, 361, 5000)}
        # 151 bytes of inner header with a 16-byte account, 1 marker byte: 1..104 bytes of message share
        # the 256 bucket, 105..360 the 512 one.
        assert sizes[1] == sizes[40] == sizes[104] == 1 + 4 + ENC_LEN + 256 + 16
        assert sizes[105] == sizes[300] == sizes[360] == 1 + 4 + ENC_LEN + 512 + 16
        assert sizes[361] == 1 + 4 + ENC_LEN + 1024 + 16
        for size in sizes.values():
            assert size - (1 + 4 + ENC_LEN + 16) in BUCKETS

    def test_outer_fields(self) -> None:
        data = seal_to(RING)
        outer = parse_envelope(data)
        assert outer.version == 1
        assert outer.key_id == RING.current_public().key_id
        assert len(outer.hpke_ciphertext) == ENC_LEN + 256 + 16
        assert repr(outer) == f"OuterEnvelope(v1, key_id={outer.key_id}, {ENC_LEN + 272} bytes)"
        assert outer.to_bytes() == data


class TestTampering:
    def test_every_byte(self) -> None:
        data = seal_to(RING)
        for i in range(len(data)):
            bad = bytearray(data)
            bad[i] ^= 0x01
            with pytest.raises(
                (DecryptionError, DecodeError, UnsupportedVersion, EnvelopeKeyUnknown)
            ) as info:
                RING.open(bytes(bad), T0)
            if i == 0:
                assert isinstance(info.value, UnsupportedVersion)
            elif i < 5:
                assert isinstance(info.value, EnvelopeKeyUnknown)  # the ring holds no such id
            else:
                assert isinstance(info.value, DecryptionError)
                assert str(info.value) == "cannot decrypt envelope"

    @pytest.mark.parametrize("cut", [0, 1, 5, 100, 1125, -1])
    def test_truncated(self, cut: int) -> None:
        with pytest.raises(DecodeError) as info:
            RING.open(seal_to(RING)[:cut], T0)
        assert info.value.reason in {DecodeReason.TRUNCATED, DecodeReason.BAD_PADDING}

    def test_extended(self) -> None:
        with pytest.raises(DecodeError) as info:
            parse_envelope(seal_to(RING) + b"\x00")
        assert info.value.reason is DecodeReason.BAD_PADDING

    def test_unknown_key_id(self) -> None:
        outer = parse_envelope(seal_to(RING))
        moved = OuterEnvelope(outer.version, outer.key_id + 7, outer.hpke_ciphertext).to_bytes()
        with pytest.raises(EnvelopeKeyUnknown) as info:
            RING.open(moved, T0)
        assert info.value.key_id == outer.key_id + 7

    def test_key_id_is_bound_by_info(self) -> None:
        """An envelope relabelled with another key id the ring holds fails authentication."""
        ring = make_ring(b"two keys")
        old_id = ring.current_public().key_id
        ring.rotate(BOB, DeterministicRng(b"r"), T0 + ROTATION_PERIOD)
        outer = parse_envelope(seal_to(ring))
        relabelled = OuterEnvelope(outer.version, old_id, outer.hpke_ciphertext).to_bytes()
        with pytest.raises(DecryptionError):
            ring.open(relabelled, T0 + ROTATION_PERIOD)

    def test_recipient_identity_is_bound_by_info(self) -> None:
        """Mallory signs Bob's envelope key as her own: Bob cannot open what was sealed to Mallory."""
        bobs = RING.current_public()
        stolen = MALLORY.sign_public_key(KeyKind.ENVELOPE, bobs.key_id, bobs.public)
        data = seal(stolen, MALLORY.public, ACCOUNT, ALICE.public, b"for mallory")
        with pytest.raises(DecryptionError):
            RING.open(data, T0)

    def test_other_ring(self) -> None:
        other = make_ring(b"other ring")
        outer = parse_envelope(seal_to(RING))
        moved = OuterEnvelope(1, other.current_public().key_id, outer.hpke_ciphertext).to_bytes()
        with pytest.raises(DecryptionError):
            other.open(moved, T0)


class TestSealChecks:
    def test_signature_by_other_identity(self) -> None:
        key = RING.current_public()
        forged = MALLORY.sign_public_key(KeyKind.ENVELOPE, key.key_id, key.public)
        with pytest.raises(BadSignature):
            seal(forged, BOB.public, ACCOUNT, ALICE.public, b"m")

    def test_substituted_public_key(self) -> None:
        key = RING.current_public()
        other = make_ring(b"server's own").current_public()
        swapped = SignedPublicKey(KeyKind.ENVELOPE, key.key_id, other.public, key.signature)
        with pytest.raises(BadSignature):
            seal(swapped, BOB.public, ACCOUNT, ALICE.public, b"m")

    def test_changed_key_id(self) -> None:
        key = RING.current_public()
        moved = SignedPublicKey(KeyKind.ENVELOPE, key.key_id + 1, key.public, key.signature)
        with pytest.raises(BadSignature):
            seal(moved, BOB.public, ACCOUNT, ALICE.public, b"m")

    def test_wrong_kind(self) -> None:
        key = RING.current_public()
        wrong = BOB.sign_public_key(KeyKind.KEM_ONE_TIME, key.key_id, key.public[:1184])
        with pytest.raises(DecodeError) as info:
            seal(wrong, BOB.public, ACCOUNT, ALICE.public, b"m")
        assert info.value.reason is DecodeReason.BAD_KEY

    def test_bad_length_public(self) -> None:
        short = BOB.sign_public_key(KeyKind.ENVELOPE, 1, b"\x00" * 100)
        with pytest.raises(DecodeError):
            seal(short, BOB.public, ACCOUNT, ALICE.public, b"m")

    @pytest.mark.parametrize("account", [b"", b"a" * 15, b"a" * 33])
    def test_account_bounds(self, account: bytes) -> None:
        with pytest.raises(LocalProtocolError):
            seal(RING.current_public(), BOB.public, account, ALICE.public, b"m")

    def test_message_bounds(self) -> None:
        with pytest.raises(LocalProtocolError):
            seal_to(RING, b"")
        with pytest.raises(PlaintextTooLarge):
            seal_to(RING, b"m" * (MAX_RATCHET_MESSAGE + 1))


class TestInner:
    def test_round_trip(self) -> None:
        content = parse_inner(encode_inner(ACCOUNT, ALICE.public, b"msg"))
        assert content.sender_identity == ALICE.public
        assert "sender_account=.." in repr(content)
        assert ACCOUNT.hex() not in repr(content)

    def body(self, version: int = 1, account: bytes = ACCOUNT, message: bytes = b"msg") -> bytes:
        ident = ALICE.public.to_bytes()
        return bytes((version, len(account))) + account + ident + len(message).to_bytes(4, "big") + message

    def test_version(self) -> None:
        with pytest.raises(UnsupportedVersion):
            parse_inner(pad(self.body(version=2)))

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"\x01",
            b"\x01\x0f" + b"a" * 15,
            b"\x01\x21" + b"a" * 33,
        ],
    )
    def test_malformed(self, body: bytes) -> None:
        with pytest.raises(DecodeError):
            parse_inner(pad(body))

    def test_empty_message_and_trailing(self) -> None:
        with pytest.raises(DecodeError) as info:
            parse_inner(pad(self.body(message=b"")))
        assert info.value.reason is DecodeReason.BAD_VALUE
        with pytest.raises(DecodeError) as info:
            parse_inner(pad(self.body() + b"x"))
        assert info.value.reason is DecodeReason.TRAILING_BYTES

    def test_bad_identity_binding(self) -> None:
        body = bytearray(self.body())
        body[2 + 16 + 1 + 32 + 32 + 5] ^= 1  # inside the binding signature
        with pytest.raises(BadSignature):
            parse_inner(pad(bytes(body)))


class TestRotation:
    def test_schedule_grace_and_erasure(self) -> None:
        ring = make_ring(b"rotation")
        rng = DeterministicRng(b"rotation rng")
        first = ring.current_public()
        recorded = seal_to(ring)  # recorded by an adversary before the rotation
        assert not ring.rotate(BOB, rng, T0 + ROTATION_PERIOD - 1)
        assert ring.rotate(BOB, rng, T0 + ROTATION_PERIOD)
        second = ring.current_public()
        assert second.key_id == first.key_id + 1
        assert ring.published() == [second, first]
        assert ring.key_ids() == [first.key_id, second.key_id]
        # During the grace period the old key still opens.
        during = T0 + ROTATION_PERIOD + GRACE_PERIOD - 1
        assert not ring.rotate(BOB, rng, during)
        assert ring.open(recorded, during).ratchet_message == b"ratchet message"
        # At its end, open refuses even before rotate() ran, and rotate() erases the key.
        after = T0 + ROTATION_PERIOD + GRACE_PERIOD
        with pytest.raises(EnvelopeKeyUnknown):
            ring.open(recorded, after)
        assert not ring.rotate(BOB, rng, after)
        assert ring.published() == [second]
        assert ring.open(seal_to(ring), after).sender_identity == ALICE.public

    def test_forward_secrecy_of_sender(self) -> None:
        ring = make_ring(b"seized later")
        old_seeds = ring.current.seeds()
        recorded = seal_to(ring)
        ring.rotate(BOB, DeterministicRng(b"x"), T0 + ROTATION_PERIOD)
        during = EnvelopeKeyRing.deserialize(ring.serialize())
        assert during.open(recorded, T0 + ROTATION_PERIOD + DAY).sender_account == ACCOUNT
        later = T0 + ROTATION_PERIOD + GRACE_PERIOD
        ring.rotate(BOB, DeterministicRng(b"y"), later)
        seized = ring.serialize()
        for secret in old_seeds:
            assert secret not in seized
        restored = EnvelopeKeyRing.deserialize(seized)
        for when in (T0, later, later + 365 * DAY):  # no clock trick brings it back
            with pytest.raises(EnvelopeKeyUnknown):
                restored.open(recorded, when)

    def test_late_rotation_keeps_grace_from_replacement(self) -> None:
        """A device off for a month still opens its mailbox after rotating on waking."""
        ring = make_ring(b"offline")
        waiting = seal_to(ring)
        wake = T0 + 30 * DAY
        assert ring.rotate(BOB, DeterministicRng(b"w"), wake)
        assert ring.open(waiting, wake + DAY).ratchet_message == b"ratchet message"

    def test_configurable_periods(self) -> None:
        ring = make_ring(b"fast", rotation_period=3600, grace_period=3600)
        assert (ring.rotation_period, ring.grace_period) == (3600, 3600)
        assert ring.rotate(BOB, DeterministicRng(b"f"), T0 + 3600)
        assert len(ring.published()) == 2
        ring.rotate(BOB, DeterministicRng(b"g"), T0 + 7200)
        assert len(ring.published()) == 2  # rotated again, and the first key is erased
        for bad in (0, 59, 400 * DAY):
            with pytest.raises(LocalProtocolError):
                make_ring(rotation_period=bad)
            with pytest.raises(LocalProtocolError):
                make_ring(grace_period=bad)

    def test_ring_is_bounded(self) -> None:
        ring = make_ring(b"many", rotation_period=3600, grace_period=300 * DAY)
        rng = DeterministicRng(b"many rng")
        for i in range(1, MAX_RING_KEYS + 3):
            ring.rotate(BOB, rng, T0 + i * 3600)
        assert len(ring.key_ids()) == MAX_RING_KEYS
        assert EnvelopeKeyRing.deserialize(ring.serialize()).key_ids() == ring.key_ids()

    def test_rotate_with_other_identity(self) -> None:
        with pytest.raises(LocalProtocolError):
            make_ring().rotate(MALLORY, DeterministicRng(b"m"), T0 + ROTATION_PERIOD)

    def test_key_id_space(self) -> None:
        ring = make_ring(b"ids")
        ring.current.signed = SignedPublicKey(KeyKind.ENVELOPE, 0xFFFFFFFF, b"", b"")
        with pytest.raises(KeyExhausted):
            ring.rotate(BOB, DeterministicRng(b"i"), T0 + ROTATION_PERIOD)


class TestSerialization:
    def rotated(self) -> EnvelopeKeyRing:
        ring = make_ring(b"serial")
        ring.rotate(BOB, DeterministicRng(b"s"), T0 + ROTATION_PERIOD)
        return ring

    def test_round_trip(self) -> None:
        ring = self.rotated()
        blob = ring.serialize()
        back = EnvelopeKeyRing.deserialize(blob)
        assert back.serialize() == blob
        assert back.published() == ring.published()
        assert back.identity == BOB.public
        assert back.open(seal_to(ring), T0 + ROTATION_PERIOD).ratchet_message == b"ratchet message"

    def test_truncations(self) -> None:
        blob = self.rotated().serialize()
        for cut in (0, 1, 5, 9, 100, 139, 140, 200, len(blob) - 1):
            with pytest.raises(DecodeError):
                EnvelopeKeyRing.deserialize(blob[:cut])
        with pytest.raises(DecodeError) as info:
            EnvelopeKeyRing.deserialize(blob + b"\x00")
        assert info.value.reason is DecodeReason.TRAILING_BYTES

    def test_version(self) -> None:
        blob = self.rotated().serialize()
        with pytest.raises(UnsupportedVersion):
            EnvelopeKeyRing.deserialize(b"\x02" + blob[1:])

    def test_bad_period_and_count(self) -> None:
        blob = self.rotated().serialize()
        with pytest.raises(DecodeError):
            EnvelopeKeyRing.deserialize(blob[:1] + (0).to_bytes(4, "big") + blob[5:])
        count_at = 1 + 4 + 4 + 129
        for count in (0, MAX_RING_KEYS + 1):
            with pytest.raises(DecodeError):
                EnvelopeKeyRing.deserialize(blob[:count_at] + bytes((count,)) + blob[count_at + 1 :])

    def test_invariants(self) -> None:
        ring = self.rotated()
        blob = bytearray(ring.serialize())
        first = 1 + 4 + 4 + 129 + 1
        size = 4 + 8 + 8 + 64 + 64 + 32
        second = first + size
        # Same id twice.
        dup = bytearray(blob)
        dup[second : second + 4] = dup[first : first + 4]
        # Old key marked current.
        cur = bytearray(blob)
        cur[first + 12 : first + 20] = bytes(8)
        # Replaced before created.
        early = bytearray(blob)
        early[first + 12 : first + 20] = (T0 - 1).to_bytes(8, "big")
        for bad in (dup, cur, early):
            with pytest.raises(DecodeError) as info:
                EnvelopeKeyRing.deserialize(bytes(bad))
            assert info.value.reason is DecodeReason.BAD_VALUE

    def test_signature_rechecked(self) -> None:
        blob = bytearray(self.rotated().serialize())
        first = 1 + 4 + 4 + 129 + 1
        blob[first + 20] ^= 1
        with pytest.raises(BadSignature):
            EnvelopeKeyRing.deserialize(bytes(blob))


class TestRepr:
    def test_no_secrets(self) -> None:
        ring = make_ring(b"repr")
        key = ring.current
        texts = [repr(ring), repr(key), str(ring), repr(ring.current_public())]
        for secret in key.seeds():
            for text in texts:
                assert secret.hex() not in text
        assert repr(ring) == f"EnvelopeKeyRing(key_ids=[{key.key_id}], private=..)"
        assert repr(key) == f"EnvelopeKeyPair(id={key.key_id}, created={T0}, private=..)"
