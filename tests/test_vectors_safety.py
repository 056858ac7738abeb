"""Replays vectors/safety.json (see vectors/gen_safety.py)."""

from __future__ import annotations

from typing import Any

import pytest

from kluis.protocol.keys import IdentityKeyPair, IdentityPublicKey
from kluis.protocol.rng import DeterministicRng
from kluis.protocol.safety import ITERATIONS, fingerprint, safety_number
from vectors import load_vectors_from_file

SAFETY = load_vectors_from_file("safety.json")


@pytest.mark.parametrize("case", SAFETY["cases"], ids=lambda c: c["name"])
def test_safety_vector(case: dict[str, Any]) -> None:
    assert SAFETY["iterations"] == ITERATIONS
    local = IdentityPublicKey.from_bytes(bytes.fromhex(case["local_identity"]))
    remote = IdentityPublicKey.from_bytes(bytes.fromhex(case["remote_identity"]))
    regenerated = IdentityKeyPair.generate(DeterministicRng(bytes.fromhex(case["local_seed"]))).public
    assert regenerated == local
    local_account = bytes.fromhex(case["local_account"])
    remote_account = bytes.fromhex(case["remote_account"])
    assert fingerprint(local, local_account).hex() == case["local_fingerprint"]
    assert fingerprint(remote, remote_account).hex() == case["remote_fingerprint"]
    for number in (
        safety_number(local, local_account, remote, remote_account),
        safety_number(remote, remote_account, local, local_account),
    ):
        assert number.digits == case["digits"]
        assert number.display() == case["display"]
        assert number.qr_payload().hex() == case["qr_payload"]
        assert number.matches_qr(bytes.fromhex(case["qr_payload"]))
