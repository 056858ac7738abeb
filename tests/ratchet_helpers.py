"""Shared set-up for the ratchet tests: a deterministic Alice/Bob pair."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from kluis.protocol.ratchet import DEFAULT_AEAD, RatchetAead, RatchetSession
from kluis.protocol.rng import DeterministicRng


@dataclass
class Pair:
    alice: RatchetSession
    bob: RatchetSession
    alice_rng: DeterministicRng
    bob_rng: DeterministicRng
    associated_data: bytes


def make_pair(seed: bytes = b"pair", aead: RatchetAead = DEFAULT_AEAD) -> Pair:
    setup = DeterministicRng(seed + b"/setup")
    shared_secret, spk, ad = setup(32), setup(32), setup(64)
    spk_pub = X25519PrivateKey.from_private_bytes(spk).public_key().public_bytes_raw()
    alice_rng = DeterministicRng(seed + b"/alice")
    return Pair(
        RatchetSession.initiator(shared_secret, spk_pub, ad, alice_rng, aead=aead),
        RatchetSession.responder(shared_secret, spk, ad, aead=aead),
        alice_rng,
        DeterministicRng(seed + b"/bob"),
        ad,
    )
