"""PQXDH (Signal PQXDH rev. 3): both sides agree, the reference agrees, prekeys are consumed once."""

from __future__ import annotations

import dataclasses

import pytest

from kluis.protocol.bundle import PreKeyBundle
from kluis.protocol.errors import BadSignature, DecodeError, PreKeyNotFound, UnsupportedVersion
from kluis.protocol.handshake import INFO, InitialMessage, accept, initiate
from kluis.protocol.keys import IdentityKeyPair, IdentityPublicKey, KeyKind, SignedPublicKey
from kluis.protocol.prekeys import LocalPreKeys
from kluis.protocol.rng import DeterministicRng
from tests.reference.pqxdh import responder_secret
from tests.support import make_party


@pytest.mark.parametrize("one_time", [True, False])
@pytest.mark.parametrize("kem_one_time", [True, False])
class TestAgreement:
    """§3.3 Sending the initial message / §3.4 Receiving the initial message."""

    def test_both_sides_derive_the_same_secret(self, one_time: bool, kem_one_time: bool) -> None:
        alice, bob = make_party(b"alice"), make_party(b"bob")
        bundle = bob.bundle(one_time=one_time, kem_one_time=kem_one_time)
        message, sent = initiate(alice.identity, bundle.verify(), alice.rng)
        received, used = accept(bob.identity, bob.prekeys, InitialMessage.from_bytes(message.to_bytes()))
        assert sent.shared_secret == received.shared_secret
        assert sent.associated_data == received.associated_data
        assert sent.associated_data == alice.identity.public.to_bytes() + bob.identity.public.to_bytes()
        assert (used.one_time_prekey_id is not None) == one_time
        assert (used.last_resort_marker is not None) == (not one_time and not kem_one_time)
        assert sent.ratchet_key == bob.prekeys.current_signed_prekey().public

    def test_matches_reference_transcription(self, one_time: bool, kem_one_time: bool) -> None:
        alice, bob = make_party(b"alice"), make_party(b"bob")
        bundle = bob.bundle(one_time=one_time, kem_one_time=kem_one_time)
        message, sent = initiate(alice.identity, bundle.verify(), alice.rng)
        kem = bob.prekeys.kem_prekey(message.kem_prekey_id)
        spk = bob.prekeys.signed_prekey(message.signed_prekey_id)
        assert kem is not None
        assert spk is not None
        otk = None
        if message.one_time_prekey_id is not None:
            pair = bob.prekeys.one_time_prekey(message.one_time_prekey_id)
            assert pair is not None
            otk = pair.private_bytes()
        expected = responder_secret(
            ik_b=bob.identity.private_bytes()[32:],
            spk_b=spk.private_bytes(),
            opk_b=otk,
            ik_a_pub=alice.identity.public.dh,
            ek_a_pub=message.ephemeral,
            kem_ss=kem.private.decapsulate(message.kem_ciphertext),
            info=INFO,
        )
        assert sent.shared_secret == expected


class TestConsumption:
    """§3.4: one-time prekeys are deleted after use; a replay is refused."""

    def test_one_time_prekeys_are_consumed_once(self) -> None:
        alice, bob = make_party(b"alice"), make_party(b"bob")
        message, _ = initiate(alice.identity, bob.bundle().verify(), alice.rng)
        _, used = accept(bob.identity, bob.prekeys, message)
        before = bob.prekeys.serialize()
        # accept() alone changes nothing: consumption waits for the first message to decrypt.
        accept(bob.identity, bob.prekeys, message)
        assert bob.prekeys.serialize() == before
        bob.prekeys.consume(used)
        with pytest.raises(PreKeyNotFound):
            accept(bob.identity, bob.prekeys, message)

    def test_last_resort_replay_is_refused(self) -> None:
        alice, bob = (
            make_party(b"alice", one_time=0, kem_one_time=0),
            make_party(b"bob", one_time=0, kem_one_time=0),
        )
        message, _ = initiate(alice.identity, bob.bundle().verify(), alice.rng)
        _, used = accept(bob.identity, bob.prekeys, message)
        bob.prekeys.consume(used)
        with pytest.raises(PreKeyNotFound):
            accept(bob.identity, bob.prekeys, message)
        # A new initial message on the same last-resort keys is still welcome.
        fresh, _ = initiate(alice.identity, bob.bundle().verify(), alice.rng)
        accept(bob.identity, bob.prekeys, fresh)

    def test_unknown_prekey_ids(self) -> None:
        alice, bob = make_party(b"alice"), make_party(b"bob")
        message, _ = initiate(alice.identity, bob.bundle().verify(), alice.rng)
        for forged in (
            dataclasses.replace(message, signed_prekey_id=999),
            dataclasses.replace(message, kem_prekey_id=999),
            dataclasses.replace(message, one_time_prekey_id=999),
        ):
            with pytest.raises(PreKeyNotFound):
                accept(bob.identity, bob.prekeys, forged)

    def test_store_snapshot_round_trip(self) -> None:
        bob = make_party(b"bob")
        alice = make_party(b"alice")
        message, _ = initiate(alice.identity, bob.bundle().verify(), alice.rng)
        _, used = accept(bob.identity, bob.prekeys, message)
        bob.prekeys.consume(used)
        restored = LocalPreKeys.deserialize(bob.prekeys.serialize())
        assert restored.serialize() == bob.prekeys.serialize()
        with pytest.raises(PreKeyNotFound):
            accept(bob.identity, restored, message)


class TestBundleVerification:
    """§3.3: "Alice verifies the prekey signatures and aborts the protocol if verification fails"."""

    @pytest.mark.parametrize("field", ["signed_prekey", "kem_prekey", "envelope_key"])
    def test_substituted_key_is_rejected(self, field: str) -> None:
        bob, mallory = make_party(b"bob"), make_party(b"mallory")
        bundle = bob.bundle()
        forged = dataclasses.replace(bundle, **{field: getattr(mallory.bundle(), field)})
        with pytest.raises(BadSignature):
            forged.verify()
        with pytest.raises(BadSignature):
            PreKeyBundle.from_bytes(forged.to_bytes()).verify()

    def test_signature_binds_kind_and_id(self) -> None:
        bob = make_party(b"bob")
        bundle = bob.bundle()
        spk = bundle.signed_prekey
        renumbered = SignedPublicKey(spk.kind, spk.key_id + 1, spk.public, spk.signature)
        with pytest.raises(BadSignature):
            dataclasses.replace(bundle, signed_prekey=renumbered).verify()
        kem = bundle.kem_prekey
        as_last_resort = SignedPublicKey(KeyKind.KEM_LAST_RESORT, kem.key_id, kem.public, kem.signature)
        with pytest.raises(BadSignature):
            dataclasses.replace(bundle, kem_prekey=as_last_resort).verify()

    def test_identity_binding_is_checked_on_parse(self) -> None:
        bob, mallory = make_party(b"bob"), make_party(b"mallory")
        data = bytearray(bob.bundle().to_bytes())
        data[1 + 32 : 1 + 64] = mallory.identity.public.dh  # swap the X25519 identity key
        with pytest.raises(BadSignature):
            PreKeyBundle.from_bytes(bytes(data))

    def test_a_stored_identity_is_parsed_like_a_received_one_but_its_binding_not_reverified(self) -> None:
        """The relay's account table holds identities whose binding was verified at registration."""
        bob, mallory = make_party(b"bob"), make_party(b"mallory")
        data = bob.identity.public.to_bytes()
        assert IdentityPublicKey.from_stored_bytes(data) == IdentityPublicKey.from_bytes(data)
        swapped = data[:33] + mallory.identity.public.dh + data[65:]
        with pytest.raises(BadSignature):
            IdentityPublicKey.from_bytes(swapped)
        assert IdentityPublicKey.from_stored_bytes(swapped).dh == mallory.identity.public.dh
        for bad in (data[:-1], data + b"\x00", b""):
            with pytest.raises(DecodeError):
                IdentityPublicKey.from_stored_bytes(bad)
        with pytest.raises(UnsupportedVersion):
            IdentityPublicKey.from_stored_bytes(b"\x02" + data[1:])

    def test_bundle_round_trip_and_malformed(self) -> None:
        bundle = make_party(b"bob").bundle()
        data = bundle.to_bytes()
        assert PreKeyBundle.from_bytes(data) == bundle
        with pytest.raises(DecodeError):
            PreKeyBundle.from_bytes(data[:-1])
        with pytest.raises(DecodeError):
            PreKeyBundle.from_bytes(data + b"\x00")
        with pytest.raises(UnsupportedVersion):
            PreKeyBundle.from_bytes(b"\x02" + data[1:])

    def test_low_order_ephemeral_is_a_decode_error(self) -> None:
        alice, bob = make_party(b"alice"), make_party(b"bob")
        message, _ = initiate(alice.identity, bob.bundle().verify(), alice.rng)
        with pytest.raises(DecodeError):
            accept(bob.identity, bob.prekeys, dataclasses.replace(message, ephemeral=b"\x00" * 32))


def test_reprs_show_no_secret() -> None:
    rng = DeterministicRng(b"repr")
    identity = IdentityKeyPair.generate(rng)
    alice = make_party(b"alice")
    bob = make_party(b"bob")
    message, secret = initiate(alice.identity, bob.bundle().verify(), alice.rng)
    secrets = [identity.private_bytes(), secret.shared_secret, secret.ratchet_key]
    secrets += [p.private_bytes() for p in bob.prekeys.one_time.values()]
    for obj in [
        identity,
        secret,
        message,
        bob.prekeys,
        *bob.prekeys.one_time.values(),
        *(k for k, _ in bob.prekeys.kem.values()),
        bob.bundle(),
        identity.public,
    ]:
        text = repr(obj)
        assert ".." in text
        for s in secrets:
            assert s.hex()[:16] not in text
            assert repr(s)[2:18] not in text
