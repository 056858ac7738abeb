"""SQLite storage (stdlib ``sqlite3``), the default backend of a single relay.

The four stores share one :class:`~kluis.server.storage._sqlite_db.SqliteDatabase`. Every write is a
named transaction (``run_interaction("take_bundle", fn)``), except the mailbox hot path: ``append``
and ``delete`` join the group commit at the end of the current event-loop pass, so many concurrent
sends cost one transaction and a few multi-row statements (in the writer thread when there are many).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from kluis.server.storage._sqlite_db import DEFAULT_CACHE_MIB, Checkpointer, SqliteDatabase
from kluis.server.storage._sqlite_mailbox import RECEIPT_WAIT_S, SqliteMailboxStore
from kluis.server.storage.base import (
    Account,
    AccountId,
    AlreadyExists,
    DirectoryEntry,
    UnknownAccount,
)

_SLOT_SIGNED_PREKEY = 1
_SLOT_LAST_RESORT_KEM = 2
_KIND_X25519 = 1
_KIND_KEM = 2
log = logging.getLogger(__name__)


def _require_account(conn: sqlite3.Connection, account_id: AccountId, op: str) -> None:
    if conn.execute("SELECT 1 FROM accounts WHERE account_id = ?", (account_id,)).fetchone() is None:
        raise UnknownAccount(op)


class SqliteCodeStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def add_codes(self, code_hashes: list[bytes], days: int) -> None:
        rows = [(h, days) for h in code_hashes]
        self._db.run_interaction(
            "add_codes",
            lambda c: c.executemany(
                "INSERT INTO activation_codes (code_hash, days) VALUES (?, ?) ON CONFLICT DO NOTHING", rows
            ),
        )

    async def redeem(self, code_hash: bytes) -> int | None:
        def txn(c: sqlite3.Connection) -> int | None:
            if self._db.engine.supports_returning:
                row = c.execute(
                    "DELETE FROM activation_codes WHERE code_hash = ? RETURNING days", (code_hash,)
                ).fetchone()
            else:
                row = c.execute(
                    "SELECT days FROM activation_codes WHERE code_hash = ?", (code_hash,)
                ).fetchone()
                c.execute("DELETE FROM activation_codes WHERE code_hash = ?", (code_hash,))
            return None if row is None else int(row[0])

        return self._db.run_interaction("redeem_code", txn)


class SqliteAccountStore:
    def __init__(self, db: SqliteDatabase, mailbox: SqliteMailboxStore | None = None) -> None:
        self._db = db
        self._mailbox = mailbox

    async def create(self, account: Account) -> None:
        def txn(c: sqlite3.Connection) -> None:
            if c.execute("SELECT 1 FROM accounts WHERE account_id = ?", (account.account_id,)).fetchone():
                raise AlreadyExists
            c.execute(
                "INSERT INTO accounts (account_id, identity, token_hash, expires_day, revoked, revocation)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    account.account_id,
                    account.identity,
                    account.token_hash,
                    account.expires_day,
                    int(account.revoked),
                    account.revocation,
                ),
            )

        self._db.run_interaction("create_account", txn)

    async def get(self, account_id: AccountId) -> Account | None:
        row = self._db.read(
            "get_account",
            lambda c: c.execute(
                "SELECT identity, token_hash, expires_day, revoked, revocation FROM accounts"
                " WHERE account_id = ?",
                (account_id,),
            ).fetchone(),
        )
        if row is None:
            return None
        identity, token_hash, expires_day, revoked, revocation = row
        return Account(account_id, identity, token_hash, int(expires_day), bool(revoked), revocation)

    async def extend(self, account_id: AccountId, days: int, today: int) -> int:
        def txn(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE accounts SET expires_day = max(expires_day, ?) + ? WHERE account_id = ?",
                (today, days, account_id),
            )
            if cur.rowcount != 1:
                raise UnknownAccount("extend")
            row = c.execute("SELECT expires_day FROM accounts WHERE account_id = ?", (account_id,)).fetchone()
            return int(row[0])

        return self._db.run_interaction("extend_account", txn)

    async def revoke(self, account_id: AccountId, statement: bytes) -> None:
        def txn(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE accounts SET revoked = 1, revocation = ? WHERE account_id = ?",
                (statement, account_id),
            )
            if cur.rowcount != 1:
                raise UnknownAccount("revoke")
            for table, column in (
                ("signed_prekeys", "account_id"),
                ("one_time_prekeys", "account_id"),
                ("envelope_keys", "account_id"),
                ("mailbox", "recipient"),
            ):
                c.execute(f"DELETE FROM {table} WHERE {column} = ?", (account_id,))  # noqa: S608

        # Held envelopes are never written; appends queued in this loop pass land first, then are
        # deleted with the rest.
        if self._mailbox is not None:
            self._mailbox.forget(account_id)
        self._db.flush(wait=True)
        self._db.run_interaction("revoke_account", txn)


class SqliteDirectoryStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    def _set_slot(self, op: str, account_id: AccountId, slot: int, encoding: bytes) -> None:
        def txn(c: sqlite3.Connection) -> None:
            _require_account(c, account_id, op)
            c.execute(
                "INSERT INTO signed_prekeys (account_id, slot, encoding) VALUES (?, ?, ?)"
                " ON CONFLICT (account_id, slot) DO UPDATE SET encoding = excluded.encoding",
                (account_id, slot, encoding),
            )

        self._db.run_interaction(op, txn)

    def _add(self, op: str, account_id: AccountId, kind: int, items: list[tuple[int, bytes]]) -> None:
        rows = [(account_id, kind, key_id, encoding) for key_id, encoding in items]

        def txn(c: sqlite3.Connection) -> None:
            _require_account(c, account_id, op)
            c.executemany(
                "INSERT INTO one_time_prekeys (account_id, kind, key_id, encoding) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                rows,
            )

        self._db.run_interaction(op, txn)

    async def set_signed_prekey(self, account_id: AccountId, signed: bytes) -> None:
        self._set_slot("set_signed_prekey", account_id, _SLOT_SIGNED_PREKEY, signed)

    async def set_last_resort_kem(self, account_id: AccountId, signed: bytes) -> None:
        self._set_slot("set_last_resort_kem", account_id, _SLOT_LAST_RESORT_KEM, signed)

    async def add_one_time_prekeys(self, account_id: AccountId, items: list[tuple[int, bytes]]) -> None:
        self._add("add_one_time_prekeys", account_id, _KIND_X25519, items)

    async def add_kem_prekeys(self, account_id: AccountId, items: list[tuple[int, bytes]]) -> None:
        self._add("add_kem_prekeys", account_id, _KIND_KEM, items)

    async def set_envelope_keys(self, account_id: AccountId, keys: list[bytes]) -> None:
        def txn(c: sqlite3.Connection) -> None:
            _require_account(c, account_id, "set_envelope_keys")
            c.execute("DELETE FROM envelope_keys WHERE account_id = ?", (account_id,))
            c.executemany(
                "INSERT INTO envelope_keys (account_id, position, encoding) VALUES (?, ?, ?)",
                [(account_id, i, key) for i, key in enumerate(keys)],
            )

        self._db.run_interaction("set_envelope_keys", txn)

    async def envelope_keys(self, account_id: AccountId) -> list[bytes]:
        rows = self._db.read(
            "envelope_keys",
            lambda c: c.execute(
                "SELECT encoding FROM envelope_keys WHERE account_id = ? ORDER BY position", (account_id,)
            ).fetchall(),
        )
        return [bytes(r[0]) for r in rows]

    async def take_bundle(self, account_id: AccountId) -> DirectoryEntry | None:
        def take_lowest(c: sqlite3.Connection, kind: int) -> bytes | None:
            row = c.execute(
                "SELECT key_id, encoding FROM one_time_prekeys WHERE account_id = ? AND kind = ?"
                " ORDER BY key_id LIMIT 1",
                (account_id, kind),
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "DELETE FROM one_time_prekeys WHERE account_id = ? AND kind = ? AND key_id = ?",
                (account_id, kind, row[0]),
            )
            return bytes(row[1])

        def txn(c: sqlite3.Connection) -> DirectoryEntry | None:
            slots = dict(
                c.execute("SELECT slot, encoding FROM signed_prekeys WHERE account_id = ?", (account_id,))
            )
            envelope = c.execute(
                "SELECT encoding FROM envelope_keys WHERE account_id = ? ORDER BY position LIMIT 1",
                (account_id,),
            ).fetchone()
            if _SLOT_SIGNED_PREKEY not in slots or _SLOT_LAST_RESORT_KEM not in slots or envelope is None:
                return None
            one_time = take_lowest(c, _KIND_X25519)
            kem = take_lowest(c, _KIND_KEM)
            left = _counts(c, account_id)
            return DirectoryEntry(
                signed_prekey=bytes(slots[_SLOT_SIGNED_PREKEY]),
                kem_prekey=bytes(slots[_SLOT_LAST_RESORT_KEM]) if kem is None else kem,
                kem_is_last_resort=kem is None,
                one_time_prekey=one_time,
                envelope_key=bytes(envelope[0]),
                one_time_left=left[0],
                kem_one_time_left=left[1],
            )

        # A transaction per fetch: the deletion is committed before the key leaves the server, so a
        # restart can never hand the same one-time key out again.
        return self._db.run_interaction("take_bundle", txn)

    async def counts(self, account_id: AccountId) -> tuple[int, int]:
        return self._db.read("prekey_counts", lambda c: _counts(c, account_id))


def _counts(c: sqlite3.Connection, account_id: AccountId) -> tuple[int, int]:
    by_kind = dict(
        c.execute(
            "SELECT kind, count(*) FROM one_time_prekeys WHERE account_id = ? GROUP BY kind", (account_id,)
        )
    )
    return int(by_kind.get(_KIND_X25519, 0)), int(by_kind.get(_KIND_KEM, 0))


class SqliteStorage:
    """The SQLite backend (``open_storage("sqlite:///path/kluis.db", fsync=...)``)."""

    def __init__(
        self, db: SqliteDatabase, path: Path | None = None, *, receipt_wait: float = RECEIPT_WAIT_S
    ) -> None:
        self.db = db
        self._checkpointer = None if path is None else Checkpointer(path)
        self.codes = SqliteCodeStore(db)
        self.mailbox = SqliteMailboxStore(db, receipt_wait=receipt_wait)
        self.accounts = SqliteAccountStore(db, self.mailbox)
        self.directory = SqliteDirectoryStore(db)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        fsync: bool,
        cache_mib: int = DEFAULT_CACHE_MIB,
        receipt_wait: float = RECEIPT_WAIT_S,
    ) -> SqliteStorage:
        return cls(
            SqliteDatabase.open(path, fsync=fsync, cache_mib=cache_mib), path, receipt_wait=receipt_wait
        )

    async def checkpoint(self, *, truncate: bool = True) -> None:
        """A PASSIVE WAL checkpoint; the server calls it from a timer (every few seconds).

        When it copied every frame, the WAL file is then truncated (without waiting for a reader), so
        envelopes and keys deleted before the checkpoint are gone from the WAL too, not only from the
        main file (seizure profile: a seized running server holds no delivered envelope once a
        checkpoint has passed).
        """
        if self._checkpointer is None:
            busy, wal_pages, copied = self.db.checkpoint("PASSIVE")
            if truncate and busy == 0 and wal_pages > 0 and copied == wal_pages:
                self.db.truncate_wal()
            return
        # Off the event loop: on it, checkpoints stalled acknowledgements (Checkpointer).
        await asyncio.to_thread(self._checkpointer.run, truncate)

    async def close(self) -> None:
        self.mailbox.release_held()  # written by the closing flush: their senders get their OK
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.db.close()
