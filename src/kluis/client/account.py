"""The device's own account: identity key, account id, delivery token, server, prekeys, envelope keys.

Kept in the profile database's ``kv`` table (encrypted at rest):

- ``account``: a versioned binary record (below) of what registration fixed;
- ``prekeys``: the LocalPreKeys snapshot; ``ring``: the EnvelopeKeyRing snapshot;
- ``settings``: small JSON (default timer, when the signed prekey last rotated).

``account`` layout: ``u8 version 1 | var16 server_url | u8 fp_len (0/32) | fp | u8[16] account |
u8[32] delivery token | var16 identity private bytes``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kluis.client.store import ProfileStore, kv_put
from kluis.protocol._codec import Reader, Writer
from kluis.protocol.envelope import EnvelopeKeyRing
from kluis.protocol.keys import IdentityKeyPair
from kluis.protocol.prekeys import LocalPreKeys

ACCOUNT_RECORD_VERSION = 1
FINGERPRINT_LEN = 32
TOKEN_LEN = 32


def parse_fingerprint(text: str | None) -> bytes | None:
    """A server certificate fingerprint as printed by ``kluis server``: 64 hex digits (colons allowed)."""
    if text is None or not text.strip():
        return None
    try:
        raw = bytes.fromhex(text.strip().replace(":", ""))
    except ValueError:
        raise ValueError("the server fingerprint must be 64 hexadecimal digits") from None
    if len(raw) != FINGERPRINT_LEN:
        raise ValueError("the server fingerprint must be 64 hexadecimal digits")
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    default_timer: int
    signed_prekey_at: int

    def to_json(self) -> bytes:
        return json.dumps(
            {"default_timer": self.default_timer, "signed_prekey_at": self.signed_prekey_at}
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Settings:
        raw: dict[str, Any] = json.loads(data)
        return cls(int(raw["default_timer"]), int(raw["signed_prekey_at"]))


@dataclass(repr=False)
class LocalAccount:
    """Everything secret that makes this device this account. Mutable: prekeys and ring evolve."""

    server_url: str
    fingerprint: bytes | None
    account: bytes
    token: bytes
    identity: IdentityKeyPair
    prekeys: LocalPreKeys
    ring: EnvelopeKeyRing
    settings: Settings
    dirty: set[str] = field(default_factory=set)

    def record(self) -> bytes:
        fp = self.fingerprint or b""
        return (
            Writer()
            .u8(ACCOUNT_RECORD_VERSION)
            .var16(self.server_url.encode("utf-8"))
            .u8(len(fp))
            .raw(fp)
            .raw(self.account)
            .raw(self.token)
            .var16(self.identity.private_bytes())
            .getvalue()
        )

    def kv_items(self) -> list[tuple[str, bytes]]:
        return [
            ("account", self.record()),
            ("prekeys", self.prekeys.serialize()),
            ("ring", self.ring.serialize()),
            ("settings", self.settings.to_json()),
        ]

    def save_all(self, store: ProfileStore) -> None:
        def write(c: Any) -> None:
            for key, value in self.kv_items():
                kv_put(c, key, value)

        store.run_interaction("account_save", write)

    @classmethod
    def load(cls, store: ProfileStore) -> LocalAccount | None:
        """The account of this profile, or None if registration never completed."""
        record = store.get("account")
        if record is None:
            return None
        r = Reader(record, "account record")
        r.expect_version(ACCOUNT_RECORD_VERSION)
        url = r.var16(255).decode("utf-8")
        fp_len = r.u8()
        fp = r.raw(fp_len) if fp_len else None
        account = r.raw(16)
        token = r.raw(TOKEN_LEN)
        identity = IdentityKeyPair.from_private_bytes(r.var16(1024))
        r.done()
        prekeys, ring, settings = store.get("prekeys"), store.get("ring"), store.get("settings")
        if prekeys is None or ring is None or settings is None:
            return None
        return cls(
            url,
            fp,
            account,
            token,
            identity,
            LocalPreKeys.deserialize(prekeys),
            EnvelopeKeyRing.deserialize(ring),
            Settings.from_json(settings),
        )

    def __repr__(self) -> str:
        return "LocalAccount(..)"


__all__ = ["LocalAccount", "Settings", "parse_fingerprint"]
