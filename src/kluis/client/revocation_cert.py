"""The offline revocation certificate: the account's signed revocation statement plus where to send it.

Exported at set-up (``kluis revocation-cert export FILE``) and kept offline, it revokes the account
from any machine (``kluis revoke --certificate FILE``) even when the device is lost. It is ASCII
armour around ``u8 version 1 | var16 server_url | u8 fp_len (0/32) | fp | revocation statement``::

    -----BEGIN KLUIS REVOCATION CERTIFICATE-----
    <base64, 64 columns>
    -----END KLUIS REVOCATION CERTIFICATE-----

Anyone holding it can revoke the account (that is its purpose), but it reveals nothing else: no key,
no token, no message.
"""

from __future__ import annotations

import base64
import binascii
import textwrap
from dataclasses import dataclass

from kluis.client.errors import ClientError
from kluis.protocol._codec import Reader, Writer
from kluis.protocol.errors import KluisProtocolError
from kluis.protocol.revocation import ENCODED_LEN, RevocationStatement

CERT_VERSION = 1
BEGIN = "-----BEGIN KLUIS REVOCATION CERTIFICATE-----"
END = "-----END KLUIS REVOCATION CERTIFICATE-----"
MAX_TEXT = 4096


class InvalidCertificate(ClientError):
    title = "Invalid certificate"

    def __init__(self) -> None:
        super().__init__("not a Kluis revocation certificate")


@dataclass(frozen=True, repr=False)
class RevocationCertificate:
    server_url: str
    fingerprint: bytes | None
    statement: RevocationStatement

    def to_bytes(self) -> bytes:
        fp = self.fingerprint or b""
        return (
            Writer()
            .u8(CERT_VERSION)
            .var16(self.server_url.encode("ascii"))
            .u8(len(fp))
            .raw(fp)
            .raw(self.statement.to_bytes())
            .getvalue()
        )

    def to_text(self) -> str:
        body = "\n".join(textwrap.wrap(base64.b64encode(self.to_bytes()).decode("ascii"), 64))
        return f"{BEGIN}\n{body}\n{END}\n"

    @classmethod
    def from_text(cls, text: str) -> RevocationCertificate:
        """Raises InvalidCertificate for anything that is not one."""
        if len(text) > MAX_TEXT or BEGIN not in text or END not in text:
            raise InvalidCertificate()
        inner = text.split(BEGIN, 1)[1].split(END, 1)[0]
        try:
            data = base64.b64decode("".join(inner.split()), validate=True)
            r = Reader(data, "revocation certificate")
            r.expect_version(CERT_VERSION)
            url = r.var16(255).decode("ascii")
            fp_len = r.u8()
            if fp_len not in (0, 32):
                raise InvalidCertificate()
            fp = r.raw(fp_len) if fp_len else None
            statement = RevocationStatement.from_bytes(r.raw(ENCODED_LEN))
            r.done()
        except (binascii.Error, ValueError, KluisProtocolError):
            raise InvalidCertificate() from None
        if not url.startswith(("ws://", "wss://")):
            raise InvalidCertificate()
        return cls(url, fp, statement)

    def __repr__(self) -> str:
        return "RevocationCertificate(..)"


__all__ = ["InvalidCertificate", "RevocationCertificate"]
