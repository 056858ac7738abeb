"""SQLite storage (stdlib ``sqlite3``), the default backend of a single relay.

The four stores share one :class:`~kluis.server.storage._sqlite_db.SqliteDatabase`. Every write is a
named transaction (``run_interaction("take_bundle", fn)``), except the mailbox hot path: ``append``
and ``delete`` join the group commit at the end of the current event-loop pass, so many concurrent
sends cost one transaction and one ``executemany``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from kluis.server.storage._sqlite_db import DEFAULT_CACHE_MIB, Checkpointer, SqliteDatabase
from kluis.server.storage.base import (
    Account,
    AccountId,
    AlreadyExists,
    DirectoryEntry,
    MailboxItem,
    StorageError,
    StoredEnvelope,
    UnknownAccount,
)

_SLOT_SIGNED_PREKEY = 1
_SLOT_LAST_RESORT_KEM = 2
_KIND_X25519 = 1
_KIND_KEM = 2
log = logging.getLogger(__name__)

EXPIRE_CHUNK = 1_000
"""expire() deletes this many rows per transaction and yields to the loop in between."""


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
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

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

        # Appends queued in this loop pass land first, then are deleted with the rest.
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


class _AppendBatch:
    """All appends of one loop pass: one ``executemany`` inside the group commit."""

    name = "mailbox_append"
    _INSERT = (
        "INSERT INTO mailbox (recipient, seq, envelope_id, ciphertext, expiry_day) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (recipient, envelope_id) DO NOTHING"
    )

    def __init__(self, store: SqliteMailboxStore) -> None:
        self._store = store
        self.rows: list[tuple[AccountId, int, bytes, bytes, int]] = []
        self.waiters: list[tuple[int, int, asyncio.Future[list[tuple[int, bool]]]]] = []
        self._results: list[tuple[int, bool]] = []

    def run(self, conn: sqlite3.Connection) -> None:
        cur = conn.executemany(self._INSERT, self.rows)
        if cur.rowcount == len(self.rows):  # the common case: nothing was a resend
            self._results = [(row[1], True) for row in self.rows]
            return
        # Some rows hit UNIQUE (recipient, envelope_id): a resend (maybe within this very batch). Its
        # freshly assigned seq was not used; report the seq that is stored (a gap in seqs is fine).
        self._results = []
        for recipient, seq, envelope_id, _, _ in self.rows:
            stored = conn.execute(
                "SELECT seq FROM mailbox WHERE recipient = ? AND envelope_id = ?", (recipient, envelope_id)
            ).fetchone()
            self._results.append((int(stored[0]), int(stored[0]) == seq))

    def done(self, error: BaseException | None) -> None:
        if self._store._batch is self:
            self._store._batch = None
        for start, end, future in self.waiters:
            if future.done():  # the caller was cancelled; its rows are stored all the same
                continue
            if error is None:
                future.set_result(self._results[start:end])
            else:
                future.set_exception(error)


_DELETE_BY_SEQ = "DELETE FROM mailbox WHERE recipient = ? AND seq = ?"


class _DeleteWork:
    name = "mailbox_delete"

    def __init__(
        self,
        recipient: AccountId,
        seqs: list[int],
        envelope_ids: list[bytes] | None,
        future: asyncio.Future[int],
    ) -> None:
        self._rows: list[tuple[AccountId, int]] | list[tuple[AccountId, int, bytes]]
        if envelope_ids is None:
            self._rows = [(recipient, seq) for seq in seqs]
        else:
            self._rows = [(recipient, seq, eid) for seq, eid in zip(seqs, envelope_ids, strict=True)]
        self._future = future
        self._deleted = 0

    def run(self, conn: sqlite3.Connection) -> None:
        sql = _DELETE_BY_SEQ
        if self._rows and len(self._rows[0]) == 3:
            sql += " AND envelope_id = ?"
        cur = conn.executemany(sql, self._rows)
        self._deleted = cur.rowcount

    def done(self, error: BaseException | None) -> None:
        if self._future.done():
            return
        if error is None:
            self._future.set_result(self._deleted)
        else:
            self._future.set_exception(error)


_DELETE_RUN = "DELETE FROM mailbox WHERE recipient = ? AND seq BETWEEN ? AND ?"


class _DiscardBatch:
    """Every receipt of one loop pass: one ``executemany``, nobody waiting (MailboxStore.discard).

    Receipts name runs of consecutive seqs (a DELIVER frame's envelopes), and every seq inside such a
    run was receipted, so each run is deleted as one range: one statement and one descent of the
    B-tree per run instead of per envelope (the deletes were a fifth of a busy relay's CPU).
    """

    name = "mailbox_discard"

    def __init__(self, store: SqliteMailboxStore) -> None:
        self._store = store
        self.runs: list[tuple[AccountId, int, int]] = []

    def add(self, recipient: AccountId, seqs: list[int]) -> None:
        runs = self.runs
        ordered = sorted(set(seqs))
        start = previous = ordered[0]
        for seq in ordered[1:]:
            if seq != previous + 1:
                runs.append((recipient, start, previous))
                start = seq
            previous = seq
        runs.append((recipient, start, previous))

    def run(self, conn: sqlite3.Connection) -> None:
        conn.executemany(_DELETE_RUN, self.runs)

    def done(self, error: BaseException | None) -> None:
        if self._store._discards is self:
            self._store._discards = None
        if error is not None:
            log.warning("deleting receipted envelopes failed; they will be delivered again")


class SqliteMailboxStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._batch: _AppendBatch | None = None
        self._discards: _DiscardBatch | None = None
        # Last seq handed out per recipient, loaded lazily from max(seq). In memory only: the database
        # holds no counter. After a restart with an empty mailbox numbering starts again at 1, so a
        # client must not carry after_seq across connections.
        self._last_seq: dict[AccountId, int] = {}

    def _load_counter(self, recipient: AccountId) -> None:
        if recipient in self._last_seq:
            return
        exists, last = self._db.read(
            "mailbox_counter",
            lambda c: c.execute(
                "SELECT EXISTS (SELECT 1 FROM accounts WHERE account_id = ?),"
                " (SELECT max(seq) FROM mailbox WHERE recipient = ?)",
                (recipient, recipient),
            ).fetchone(),
        )
        if not exists:
            raise UnknownAccount("append")
        self._last_seq[recipient] = int(last or 0)

    async def append(self, envelopes: list[StoredEnvelope]) -> list[tuple[int, bool]]:
        if not envelopes:
            return []
        for recipient in {e.recipient for e in envelopes}:
            self._load_counter(recipient)  # may raise UnknownAccount before anything is queued
        batch = self._batch
        if batch is None:
            batch = self._batch = _AppendBatch(self)
            self._db.group_commit(batch)
        start = len(batch.rows)
        for e in envelopes:
            seq = self._last_seq[e.recipient] = self._last_seq[e.recipient] + 1
            batch.rows.append((e.recipient, seq, e.envelope_id, e.ciphertext, e.expiry_day))
        future: asyncio.Future[list[tuple[int, bool]]] = self._db.loop().create_future()
        batch.waiters.append((start, len(batch.rows), future))
        return await future

    async def fetch(self, recipient: AccountId, after_seq: int, limit: int) -> list[MailboxItem]:
        rows = self._db.read(
            "mailbox_fetch",
            lambda c: c.execute(
                "SELECT seq, envelope_id, ciphertext FROM mailbox WHERE recipient = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (recipient, after_seq, max(limit, 0)),
            ).fetchall(),
        )
        return [MailboxItem(int(seq), bytes(eid), bytes(ct)) for seq, eid, ct in rows]

    async def delete(
        self, recipient: AccountId, seqs: list[int], envelope_ids: list[bytes] | None = None
    ) -> int:
        if not seqs:
            return 0
        future: asyncio.Future[int] = self._db.loop().create_future()
        self._db.group_commit(_DeleteWork(recipient, seqs, envelope_ids, future))
        return await future

    def discard(self, recipient: AccountId, seqs: list[int]) -> None:
        if not seqs:
            return
        batch = self._discards
        if batch is None:
            batch = _DiscardBatch(self)
            try:
                self._db.group_commit(batch)
            except StorageError:  # closed: the envelopes are delivered again after a restart
                return
            self._discards = batch
        batch.add(recipient, seqs)

    async def expire(self, today: int) -> int:
        self._db.flush(wait=True)
        total = 0
        while True:
            deleted = self._db.run_interaction(
                "expire_mailbox",
                lambda c: (
                    c.execute(
                        "DELETE FROM mailbox WHERE (recipient, seq) IN"
                        " (SELECT recipient, seq FROM mailbox WHERE expiry_day < ? LIMIT ?)",
                        (today, EXPIRE_CHUNK),
                    ).rowcount
                ),
            )
            total += deleted
            if deleted < EXPIRE_CHUNK:
                return total
            await asyncio.sleep(0)  # let sends through between chunks

    async def count(self, recipient: AccountId) -> int:
        row = self._db.read(
            "mailbox_count",
            lambda c: c.execute("SELECT count(*) FROM mailbox WHERE recipient = ?", (recipient,)).fetchone(),
        )
        return int(row[0])


class SqliteStorage:
    """The SQLite backend (``open_storage("sqlite:///path/kluis.db", fsync=...)``)."""

    def __init__(self, db: SqliteDatabase, path: Path | None = None) -> None:
        self.db = db
        self._checkpointer = None if path is None else Checkpointer(path)
        self.codes = SqliteCodeStore(db)
        self.accounts = SqliteAccountStore(db)
        self.directory = SqliteDirectoryStore(db)
        self.mailbox = SqliteMailboxStore(db)

    @classmethod
    def open(cls, path: Path, *, fsync: bool, cache_mib: int = DEFAULT_CACHE_MIB) -> SqliteStorage:
        return cls(SqliteDatabase.open(path, fsync=fsync, cache_mib=cache_mib), path)

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
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.db.close()
