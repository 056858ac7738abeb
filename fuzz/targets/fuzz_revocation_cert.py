"""Fuzz target: revocation certificates (the file ``kluis revoke --certificate`` reads from anywhere).

An accepted text must carry a statement that serializes back to the bytes inside it.
"""

from __future__ import annotations

from kluis.client.revocation_cert import InvalidCertificate, RevocationCertificate

EXPECTED = (InvalidCertificate,)


def target(data: bytes) -> None:
    cert = RevocationCertificate.from_text(data.decode("utf-8", "replace"))
    again = RevocationCertificate.from_text(cert.to_text())
    if again.to_bytes() != cert.to_bytes():
        raise AssertionError("a parsed certificate does not survive a round trip")
