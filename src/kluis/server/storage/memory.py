"""In-memory reference storage: plain dicts, the behaviour every backend must match.

Used by unit tests, fuzzers and the conformance suite (tests/test_storage_conformance.py), which runs
the same tests against this store and SQLite. Nothing here awaits, so every method is atomic with
respect to other coroutines, which is the guarantee the real backends give with transactions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kluis.server.storage.base import (
    Account,
    AccountId,
    AlreadyExists,
    DirectoryEntry,
    MailboxItem,
    StoredEnvelope,
    UnknownAccount,
)


@dataclass
class _Keys:
    signed_prekey: bytes | None = None
    last_resort_kem: bytes | None = None
    one_time: dict[int, bytes] = field(default_factory=dict)
    kem_one_time: dict[int, bytes] = field(default_factory=dict)
    envelope_keys: list[bytes] = field(default_factory=list)


@dataclass
class _Data:
    codes: dict[bytes, int] = field(default_factory=dict)
    accounts: dict[AccountId, Account] = field(default_factory=dict)
    keys: dict[AccountId, _Keys] = field(default_factory=dict)
    # recipient -> seq -> (envelope_id, ciphertext, expiry_day)
    mailbox: dict[AccountId, dict[int, tuple[bytes, bytes, int]]] = field(default_factory=dict)
    by_envelope_id: dict[tuple[AccountId, bytes], int] = field(default_factory=dict)
    next_seq: dict[AccountId, int] = field(default_factory=dict)

    def keys_of(self, account_id: AccountId, op: str) -> _Keys:
        if account_id not in self.accounts:
            raise UnknownAccount(op)
        return self.keys.setdefault(account_id, _Keys())


class MemoryCodeStore:
    def __init__(self, data: _Data) -> None:
        self._d = data

    async def add_codes(self, code_hashes: list[bytes], days: int) -> None:
        for h in code_hashes:
            self._d.codes.setdefault(h, days)

    async def redeem(self, code_hash: bytes) -> int | None:
        return self._d.codes.pop(code_hash, None)


class MemoryAccountStore:
    def __init__(self, data: _Data) -> None:
        self._d = data

    async def create(self, account: Account) -> None:
        if account.account_id in self._d.accounts:
            raise AlreadyExists
        self._d.accounts[account.account_id] = account

    async def get(self, account_id: AccountId) -> Account | None:
        return self._d.accounts.get(account_id)

    async def extend(self, account_id: AccountId, days: int, today: int) -> int:
        account = self._d.accounts.get(account_id)
        if account is None:
            raise UnknownAccount("extend")
        expires = max(account.expires_day, today) + days
        self._d.accounts[account_id] = replace(account, expires_day=expires)
        return expires

    async def revoke(self, account_id: AccountId, statement: bytes) -> None:
        account = self._d.accounts.get(account_id)
        if account is None:
            raise UnknownAccount("revoke")
        self._d.accounts[account_id] = replace(account, revoked=True, revocation=statement)
        self._d.keys.pop(account_id, None)
        for envelope_id, _, _ in self._d.mailbox.pop(account_id, {}).values():
            del self._d.by_envelope_id[account_id, envelope_id]


class MemoryDirectoryStore:
    def __init__(self, data: _Data) -> None:
        self._d = data

    async def set_signed_prekey(self, account_id: AccountId, signed: bytes) -> None:
        self._d.keys_of(account_id, "set_signed_prekey").signed_prekey = signed

    async def set_last_resort_kem(self, account_id: AccountId, signed: bytes) -> None:
        self._d.keys_of(account_id, "set_last_resort_kem").last_resort_kem = signed

    async def add_one_time_prekeys(self, account_id: AccountId, items: list[tuple[int, bytes]]) -> None:
        stock = self._d.keys_of(account_id, "add_one_time_prekeys").one_time
        for key_id, encoding in items:
            stock.setdefault(key_id, encoding)

    async def add_kem_prekeys(self, account_id: AccountId, items: list[tuple[int, bytes]]) -> None:
        stock = self._d.keys_of(account_id, "add_kem_prekeys").kem_one_time
        for key_id, encoding in items:
            stock.setdefault(key_id, encoding)

    async def set_envelope_keys(self, account_id: AccountId, keys: list[bytes]) -> None:
        self._d.keys_of(account_id, "set_envelope_keys").envelope_keys = list(keys)

    async def envelope_keys(self, account_id: AccountId) -> list[bytes]:
        keys = self._d.keys.get(account_id)
        return list(keys.envelope_keys) if keys else []

    async def take_bundle(self, account_id: AccountId) -> DirectoryEntry | None:
        keys = self._d.keys.get(account_id)
        if keys is None or keys.signed_prekey is None or keys.last_resort_kem is None:
            return None
        if not keys.envelope_keys:
            return None
        one_time = keys.one_time.pop(min(keys.one_time)) if keys.one_time else None
        if keys.kem_one_time:
            kem, last_resort = keys.kem_one_time.pop(min(keys.kem_one_time)), False
        else:
            kem, last_resort = keys.last_resort_kem, True
        return DirectoryEntry(
            signed_prekey=keys.signed_prekey,
            kem_prekey=kem,
            kem_is_last_resort=last_resort,
            one_time_prekey=one_time,
            envelope_key=keys.envelope_keys[0],
            one_time_left=len(keys.one_time),
            kem_one_time_left=len(keys.kem_one_time),
        )

    async def counts(self, account_id: AccountId) -> tuple[int, int]:
        keys = self._d.keys.get(account_id)
        return (len(keys.one_time), len(keys.kem_one_time)) if keys else (0, 0)


class MemoryMailboxStore:
    def __init__(self, data: _Data) -> None:
        self._d = data

    def stage(self, envelopes: list[StoredEnvelope]) -> None:
        """Appends are immediate here: nothing waits to be written."""
        return None

    async def append(self, envelopes: list[StoredEnvelope]) -> list[tuple[int, bool]]:
        if any(e.recipient not in self._d.accounts for e in envelopes):
            raise UnknownAccount("append")
        out: list[tuple[int, bool]] = []
        for e in envelopes:
            existing = self._d.by_envelope_id.get((e.recipient, e.envelope_id))
            if existing is not None:
                out.append((existing, False))
                continue
            seq = self._d.next_seq.get(e.recipient, 0) + 1
            self._d.next_seq[e.recipient] = seq
            self._d.mailbox.setdefault(e.recipient, {})[seq] = (e.envelope_id, e.ciphertext, e.expiry_day)
            self._d.by_envelope_id[e.recipient, e.envelope_id] = seq
            out.append((seq, True))
        return out

    async def fetch(self, recipient: AccountId, after_seq: int, limit: int) -> list[MailboxItem]:
        box = self._d.mailbox.get(recipient, {})
        seqs = sorted(s for s in box if s > after_seq)[: max(limit, 0)]
        return [MailboxItem(s, box[s][0], box[s][1]) for s in seqs]

    async def delete(
        self, recipient: AccountId, seqs: list[int], envelope_ids: list[bytes] | None = None
    ) -> int:
        return self._delete(recipient, seqs, envelope_ids)

    def discard(self, recipient: AccountId, seqs: list[int]) -> None:
        self._delete(recipient, seqs, None)

    def _delete(self, recipient: AccountId, seqs: list[int], envelope_ids: list[bytes] | None) -> int:
        box = self._d.mailbox.get(recipient, {})
        deleted = 0
        for i, seq in enumerate(seqs):
            row = box.get(seq)
            if row is not None and (envelope_ids is None or row[0] == envelope_ids[i]):
                del box[seq]
                del self._d.by_envelope_id[recipient, row[0]]
                deleted += 1
        return deleted

    async def expire(self, today: int) -> int:
        expired = 0
        for recipient, box in self._d.mailbox.items():
            old = [seq for seq, row in box.items() if row[2] < today]
            expired += await self.delete(recipient, old)
        return expired

    async def count(self, recipient: AccountId) -> int:
        return len(self._d.mailbox.get(recipient, {}))


class MemoryStorage:
    """The reference backend (``open_storage("memory:")``)."""

    def __init__(self) -> None:
        data = _Data()
        self.codes = MemoryCodeStore(data)
        self.accounts = MemoryAccountStore(data)
        self.directory = MemoryDirectoryStore(data)
        self.mailbox = MemoryMailboxStore(data)

    async def checkpoint(self, *, truncate: bool = True) -> None:
        """Nothing to do in memory."""

    async def close(self) -> None:
        """Nothing to release."""
