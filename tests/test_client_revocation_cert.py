"""The offline revocation certificate: round trip, refusal of anything else, nothing secret in it."""

from __future__ import annotations

import pytest

from kluis.client.revocation_cert import BEGIN, InvalidCertificate, RevocationCertificate
from kluis.protocol.keys import IdentityKeyPair
from kluis.protocol.revocation import RevocationStatement
from kluis.protocol.rng import DeterministicRng


def make(url: str = "wss://relay.example:8443", pinned: bool = True) -> RevocationCertificate:
    rng = DeterministicRng(b"cert")
    identity = IdentityKeyPair.generate(rng)
    statement = RevocationStatement.sign(identity, rng(16))
    statement.verify(identity.public)
    return RevocationCertificate(url, rng(32) if pinned else None, statement)


def test_round_trip_and_armour() -> None:
    for cert in (make(), make("ws://127.0.0.1:9", pinned=False)):
        text = cert.to_text()
        assert text.startswith(BEGIN)
        assert all(len(line) <= 64 for line in text.splitlines()[1:-1])
        again = RevocationCertificate.from_text("notes before\n" + text + "\nnotes after")
        assert again.to_bytes() == cert.to_bytes()
        assert repr(again) == "RevocationCertificate(..)"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: "",
        lambda t: t.replace(BEGIN, ""),
        lambda t: t[:80] + "!" + t[81:],
        lambda t: t.replace("\n-----END", "AAAA\n-----END"),
        lambda t: t * 40,
    ],
)
def test_anything_else_is_refused(mangle: object) -> None:
    text = make().to_text()
    with pytest.raises(InvalidCertificate, match="not a Kluis revocation certificate"):
        RevocationCertificate.from_text(mangle(text))  # type: ignore[operator]
