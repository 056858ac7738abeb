"""Fuzz target: prekey bundle and PQXDH initial-message parsers, and accept() on parsed input."""

from __future__ import annotations

from kluis.protocol.bundle import PreKeyBundle
from kluis.protocol.errors import BadSignature, DecodeError, PreKeyNotFound, UnsupportedVersion
from kluis.protocol.handshake import InitialMessage, accept
from tests.support import make_party

EXPECTED = (DecodeError, UnsupportedVersion, BadSignature, PreKeyNotFound)
BOB = make_party(b"fuzz/bob")


def target(data: bytes) -> None:
    if data[:1] == b"B":
        PreKeyBundle.from_bytes(data[1:]).verify()
        return
    message = InitialMessage.from_bytes(data)
    accept(BOB.identity, BOB.prekeys, message)
