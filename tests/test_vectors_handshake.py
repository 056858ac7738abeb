"""Replays vectors/handshake.json (provenance in the file)."""

from __future__ import annotations

from typing import Any

import pytest

from kluis.protocol.bundle import PreKeyBundle
from kluis.protocol.handshake import InitialMessage, accept, initiate
from tests.support import make_party
from vectors import load_vectors_from_file

CASES = load_vectors_from_file("handshake.json")["cases"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_handshake_vector(case: dict[str, Any]) -> None:
    alice = make_party(bytes.fromhex(case["alice_seed"]))
    bob = make_party(bytes.fromhex(case["bob_seed"]))
    bundle = bob.bundle(one_time=case["one_time"], kem_one_time=case["kem_one_time"])
    assert bundle.to_bytes().hex() == case["bundle"]
    recorded = InitialMessage.from_bytes(bytes.fromhex(case["initial_message"]))
    secret, _ = accept(bob.identity, bob.prekeys, recorded)
    assert secret.shared_secret.hex() == case["shared_secret"]
    assert secret.associated_data.hex() == case["associated_data"]
    # Alice's side is deterministic up to the KEM ciphertext.
    message, _ = initiate(alice.identity, PreKeyBundle.from_bytes(bundle.to_bytes()).verify(), alice.rng)
    assert message.ephemeral == recorded.ephemeral
    assert message.identity == recorded.identity
