"""Fuzz target: the ratchet message parser, the session-state parser, and decrypt on a fixed session.

Every input goes to all three. A message that parses must re-encode to the same bytes, and a state that
parses must re-serialize to the same bytes (both encodings are canonical).
"""

from __future__ import annotations

import contextlib

from kluis.protocol.errors import (
    DecodeError,
    DecryptionError,
    DuplicateMessage,
    TooManySkipped,
    UnsupportedVersion,
)
from kluis.protocol.ratchet import RatchetSession, parse_message
from tests.ratchet_helpers import make_pair

EXPECTED = (DecodeError, UnsupportedVersion, DecryptionError, DuplicateMessage, TooManySkipped)


def _fixed_state() -> tuple[bytes, list[bytes]]:
    pair = make_pair(b"fuzz/ratchet")
    messages = [pair.alice.encrypt(b"fuzz %d" % i, pair.alice_rng) for i in range(3)]
    pair.bob.decrypt(messages[0])
    return pair.bob.serialize(), messages


STATE, MESSAGES = _fixed_state()


def target(data: bytes) -> None:
    with contextlib.suppress(*EXPECTED):
        assert parse_message(data).to_bytes() == data
    with contextlib.suppress(*EXPECTED):
        assert RatchetSession.deserialize(data).serialize() == data
    RatchetSession.deserialize(STATE).decrypt(data)
