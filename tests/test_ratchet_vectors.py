"""Replays vectors/ratchet.json: rebuilt from the recorded seeds, both sessions must reproduce every
message byte for byte, decrypt every delivery, and end in the recorded serialized states."""

from __future__ import annotations

from typing import Any

import pytest

from kluis.protocol.ratchet import RatchetSession, parse_message
from kluis.protocol.rng import DeterministicRng
from vectors import load_vectors_from_file
from vectors.gen_ratchet import generate

VECTORS = load_vectors_from_file("ratchet.json")


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_replay(case: dict[str, Any]) -> None:
    def h(key: str) -> bytes:
        return bytes.fromhex(case[key])

    rngs = {"A": DeterministicRng(h("initiator_seed")), "B": DeterministicRng(h("responder_seed"))}
    sessions = {
        "A": RatchetSession.initiator(
            h("shared_secret"), h("responder_ratchet_public"), h("associated_data"), rngs["A"]
        ),
        "B": RatchetSession.responder(
            h("shared_secret"), h("responder_ratchet_private"), h("associated_data")
        ),
    }
    messages = case["messages"]
    for step in case["steps"]:
        msg = messages[step["index"]]
        wire, plaintext = bytes.fromhex(msg["message"]), bytes.fromhex(msg["plaintext"])
        if step["op"] == "send":
            assert sessions[step["from"]].encrypt(plaintext, rngs[step["from"]]) == wire
        else:
            assert sessions[step["to"]].decrypt(wire) == plaintext
            assert parse_message(wire).to_bytes() == wire
    assert sessions["A"].serialize().hex() == case["final_state_initiator"]
    assert sessions["B"].serialize().hex() == case["final_state_responder"]


def test_generator_reproduces_file() -> None:
    assert generate()["cases"] == VECTORS["cases"]
