"""Revocation statements: the account owner's signed "this account is revoked".

Made at set-up as an offline certificate (sendable from any machine), or on the spot by the panic
passphrase; the server verifies it against the account's identity key, revokes the account, and
hands the statement to contacts who fetch the bundle, so they can verify it themselves.

Wire form: ``u8 version (1) | account id (16) | Ed25519 signature (64)`` over
``"Kluis revocation v1\\x00" || account id``. It carries no time, so a certificate made at set-up
stays valid, and says nothing but which account.
"""

from __future__ import annotations

from dataclasses import dataclass

from kluis.protocol._codec import Reader, Writer
from kluis.protocol.keys import SIGNATURE_LEN, IdentityKeyPair, IdentityPublicKey

REVOCATION_VERSION = 1
ACCOUNT_LEN = 16
LABEL = b"Kluis revocation v1\x00"
ENCODED_LEN = 1 + ACCOUNT_LEN + SIGNATURE_LEN


@dataclass(frozen=True, slots=True)
class RevocationStatement:
    account: bytes
    signature: bytes

    @classmethod
    def sign(cls, identity: IdentityKeyPair, account: bytes) -> RevocationStatement:
        return cls(account, identity.sign(LABEL + account))

    def verify(self, identity: IdentityPublicKey) -> None:
        """Raises BadSignature unless ``identity`` signed this statement."""
        identity.verify(self.signature, LABEL + self.account, "revocation statement")

    def to_bytes(self) -> bytes:
        return Writer().u8(REVOCATION_VERSION).raw(self.account).raw(self.signature).getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RevocationStatement:
        """Raises DecodeError or UnsupportedVersion."""
        r = Reader(data, "revocation statement")
        r.expect_version(REVOCATION_VERSION)
        statement = cls(r.raw(ACCOUNT_LEN), r.raw(SIGNATURE_LEN))
        r.done()
        return statement

    def __repr__(self) -> str:
        return "RevocationStatement(..)"


__all__ = ["RevocationStatement"]
