"""Fuzz target: prekey bundle, PQXDH initial message (and accept() on it), prekey-store snapshot."""

from __future__ import annotations

from kluis.protocol.bundle import PreKeyBundle
from kluis.protocol.errors import BadSignature, DecodeError, PreKeyNotFound, UnsupportedVersion
from kluis.protocol.handshake import InitialMessage, accept
from kluis.protocol.prekeys import LocalPreKeys
from tests.support import make_party

EXPECTED = (DecodeError, UnsupportedVersion, BadSignature, PreKeyNotFound)
BOB = make_party(b"fuzz/bob")


def target(data: bytes) -> None:
    if data[:1] == b"B":
        PreKeyBundle.from_bytes(data[1:]).verify()
        return
    if data[:1] == b"K":
        LocalPreKeys.deserialize(data[1:])
        return
    message = InitialMessage.from_bytes(data)
    accept(BOB.identity, BOB.prekeys, message)
