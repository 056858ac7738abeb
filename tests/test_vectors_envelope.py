"""Replays vectors/envelope.json and vectors/padding.json (see vectors/gen_envelope.py, gen_padding.py)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from kluis.protocol.envelope import EnvelopeKeyRing, hpke_info, parse_envelope
from kluis.protocol.errors import DecodeError, DecodeReason
from kluis.protocol.keys import IdentityKeyPair
from kluis.protocol.padding import pad, unpad
from kluis.protocol.rng import DeterministicRng
from vectors import load_vectors_from_file

ENVELOPE = load_vectors_from_file("envelope.json")
PADDING = load_vectors_from_file("padding.json")


def h(value: str) -> bytes:
    return bytes.fromhex(value)


@pytest.mark.parametrize("case", PADDING["cases"], ids=lambda c: str(len(c["data"]) // 2))
def test_padding(case: dict[str, Any]) -> None:
    assert pad(h(case["data"])) == h(case["padded"])
    assert len(h(case["padded"])) == case["bucket"]
    assert unpad(h(case["padded"])) == h(case["data"])


@pytest.mark.parametrize("case", PADDING["rejected"], ids=lambda c: c["why"])
def test_padding_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as info:
        unpad(h(case["padded"]))
    assert info.value.reason is DecodeReason.BAD_PADDING


class TestEnvelopeVectors:
    def ring(self) -> tuple[IdentityKeyPair, EnvelopeKeyRing]:
        recipient = IdentityKeyPair.generate(DeterministicRng(h(ENVELOPE["recipient_seed"])))
        ring = EnvelopeKeyRing.create(recipient, DeterministicRng(h(ENVELOPE["ring_seed"])), ENVELOPE["now"])
        return recipient, ring

    def test_keys_reproduce(self) -> None:
        recipient, ring = self.ring()
        assert recipient.public.to_bytes() == h(ENVELOPE["recipient_identity"])
        key = ring.current
        assert key.key_id == ENVELOPE["key_id"]
        assert key.seeds() == (h(ENVELOPE["mlkem_seed"]), h(ENVELOPE["x25519_private"]))
        assert key.signed.public == h(ENVELOPE["envelope_public"])
        assert key.signed.signature == h(ENVELOPE["envelope_public_signature"])
        assert ring.serialize() == h(ENVELOPE["ring_serialized"])
        sender = IdentityKeyPair.generate(DeterministicRng(h(ENVELOPE["sender_seed"])))
        assert sender.public.to_bytes() == h(ENVELOPE["sender_identity"])

    @pytest.mark.parametrize("case", ENVELOPE["envelopes"], ids=lambda c: c["name"])
    def test_open_recorded(self, case: dict[str, Any]) -> None:
        ring = EnvelopeKeyRing.deserialize(h(ENVELOPE["ring_serialized"]))
        data = h(case["envelope"])
        assert len(data) == case["envelope_len"]
        content = ring.open(data, ENVELOPE["now"])
        assert content.sender_account == h(case["sender_account"])
        assert content.ratchet_message == h(case["ratchet_message"])
        assert content.sender_identity.to_bytes() == h(ENVELOPE["sender_identity"])

    @pytest.mark.parametrize("case", ENVELOPE["envelopes"], ids=lambda c: c["name"])
    def test_raw_hpke_from_the_documented_format(self, case: dict[str, Any]) -> None:
        """Opens with pyca's HPKE directly from the seeds and the documented info, bypassing the ring."""
        recipient = h(ENVELOPE["recipient_identity"])
        info = b"Kluis sealed envelope v1\x00" + b"\x01" + ENVELOPE["key_id"].to_bytes(4, "big")
        info += recipient[1:33]  # the Ed25519 identity key
        assert info == h(ENVELOPE["hpke_info"])
        assert info == hpke_info(1, ENVELOPE["key_id"], recipient[1:33])
        private = hpke.MLKEM768X25519PrivateKey(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(h(ENVELOPE["mlkem_seed"])),
            x25519.X25519PrivateKey.from_private_bytes(h(ENVELOPE["x25519_private"])),
        )
        suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
        data = h(case["envelope"])
        assert data[0] == 1
        assert int.from_bytes(data[1:5], "big") == ENVELOPE["key_id"]
        assert parse_envelope(data).hpke_ciphertext == data[5:]
        inner = unpad(suite.decrypt(data[5:], private, info=info), max_bucket=128 * 1024)
        account = h(case["sender_account"])
        message = h(case["ratchet_message"])
        expected = bytes((1, len(account))) + account + h(ENVELOPE["sender_identity"])
        expected += len(message).to_bytes(4, "big") + message
        assert inner == expected
