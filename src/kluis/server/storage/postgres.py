"""PostgreSQL storage (psycopg 3, see _pg_db.py for why), for a provider that outgrows one SQLite box.

The same four interfaces as SQLite, over the same schema (``schema/NNN_*.sql`` rendered for
PostgreSQL) and the same seizure profile. The four stores share one
:class:`~kluis.server.storage._pg_db.PostgresDatabase`; every write is a named transaction, except the
mailbox hot path: ``append`` and ``delete`` join the group commit, so every send and receipt of an
event-loop pass (and of the time the previous group spent in flight) costs one transaction, one
network round trip (pipeline mode) and one INSERT for all of its envelopes.

Concurrency, including several relay processes on one database:

- ``take_bundle`` locks the account's row (``FOR NO KEY UPDATE``) before it deletes the lowest
  one-time keys, so fetchers of one account take turns: no key goes to two of them, and each sees the
  stock one lower than the one before. Fetchers of different accounts do not wait for each other.
- A group commit locks its recipients' account rows, in one global order (no deadlock between relay
  processes), then numbers each recipient's new envelopes above both the highest ``seq`` stored and
  the highest this process handed out (the same in-memory counter as SQLite: the database holds no
  counter, which would tell a seizer how many envelopes an account ever received). The lock makes
  the second statement see the rows another process committed just before.
- Sequence numbers therefore increase per recipient within one process, as with SQLite, and two
  processes never store the same (recipient, seq). Across processes they increase only as long as
  rows are stored: once a mailbox's top rows are deleted, a process whose counter is behind numbers a
  new envelope below seqs another process handed out. Connections of a multi-node service
  (``FanOut.shared``, ws.SharedCursor) number deliveries themselves, fetch from what they know is
  still stored, and delete by seq *and* envelope id (``delete(..., envelope_ids)``), so a reused seq
  is neither skipped nor deleted by a stale receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import KeysView, Sequence
from typing import Any

from kluis.server.storage._pg_db import Conn, PostgresDatabase
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

log = logging.getLogger(__name__)

_SLOT_SIGNED_PREKEY = 1
_SLOT_LAST_RESORT_KEM = 2
_KIND_X25519 = 1
_KIND_KEM = 2
EXPIRE_CHUNK = 1_000
"""expire() deletes this many rows per transaction and yields in between."""


async def _one(conn: Conn, sql: str, params: Sequence[object]) -> tuple[Any, ...] | None:
    cur = await conn.execute(sql, params, binary=True)
    return await cur.fetchone()


_ACCOUNT_EXISTS = "SELECT 1 FROM accounts WHERE account_id = %b"
_LOCK_ACCOUNT = "SELECT 1 FROM accounts WHERE account_id = %b FOR NO KEY UPDATE"


async def _require_account(conn: Conn, account_id: AccountId, op: str, *, lock: bool = False) -> None:
    if await _one(conn, _LOCK_ACCOUNT if lock else _ACCOUNT_EXISTS, (account_id,)) is None:
        raise UnknownAccount(op)


class PostgresCodeStore:
    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    async def add_codes(self, code_hashes: list[bytes], days: int) -> None:
        async def txn(c: Conn) -> None:
            await c.execute(
                "INSERT INTO activation_codes (code_hash, days) SELECT h, %b FROM unnest(%b::bytea[]) AS h"
                " ON CONFLICT DO NOTHING",
                (days, code_hashes),
            )

        await self._db.run_interaction("add_codes", txn)

    async def redeem(self, code_hash: bytes) -> int | None:
        async def txn(c: Conn) -> int | None:
            row = await _one(
                c, "DELETE FROM activation_codes WHERE code_hash = %b RETURNING days", (code_hash,)
            )
            return None if row is None else int(row[0])

        return await self._db.run_interaction("redeem_code", txn)


class PostgresAccountStore:
    def __init__(self, db: PostgresDatabase, mailbox: PostgresMailboxStore) -> None:
        self._db = db
        self._mailbox = mailbox

    async def create(self, account: Account) -> None:
        async def txn(c: Conn) -> None:
            row = await _one(
                c,
                "INSERT INTO accounts (account_id, identity, token_hash, expires_day, revoked, revocation)"
                " VALUES (%b, %b, %b, %b, %b, %b) ON CONFLICT (account_id) DO NOTHING RETURNING 1",
                (
                    account.account_id,
                    account.identity,
                    account.token_hash,
                    account.expires_day,
                    int(account.revoked),
                    account.revocation,
                ),
            )
            if row is None:
                raise AlreadyExists

        await self._db.run_interaction("create_account", txn)

    async def get(self, account_id: AccountId) -> Account | None:
        async def q(c: Conn) -> tuple[Any, ...] | None:
            return await _one(
                c,
                "SELECT identity, token_hash, expires_day, revoked, revocation FROM accounts"
                " WHERE account_id = %b",
                (account_id,),
            )

        row = await self._db.read("get_account", q)
        if row is None:
            return None
        identity, token_hash, expires_day, revoked, revocation = row
        assert isinstance(identity, bytes)
        assert isinstance(token_hash, bytes)
        assert isinstance(expires_day, int)
        assert revocation is None or isinstance(revocation, bytes)
        return Account(account_id, identity, token_hash, expires_day, bool(revoked), revocation)

    async def extend(self, account_id: AccountId, days: int, today: int) -> int:
        async def txn(c: Conn) -> int:
            row = await _one(
                c,
                "UPDATE accounts SET expires_day = greatest(expires_day, %b) + %b WHERE account_id = %b"
                " RETURNING expires_day",
                (today, days, account_id),
            )
            if row is None:
                raise UnknownAccount("extend")
            return int(row[0])

        return await self._db.run_interaction("extend_account", txn)

    async def revoke(self, account_id: AccountId, statement: bytes) -> None:
        async def txn(c: Conn) -> None:
            row = await _one(
                c,
                "UPDATE accounts SET revoked = 1, revocation = %b WHERE account_id = %b RETURNING 1",
                (statement, account_id),
            )
            if row is None:
                raise UnknownAccount("revoke")
            for table, column in (
                ("signed_prekeys", "account_id"),
                ("one_time_prekeys", "account_id"),
                ("envelope_keys", "account_id"),
                ("mailbox", "recipient"),
            ):
                await c.execute(f"DELETE FROM {table} WHERE {column} = %b", (account_id,))  # noqa: S608

        await self._mailbox.flushed()  # appends already queued land first, then go with the rest
        await self._db.run_interaction("revoke_account", txn)


class PostgresDirectoryStore:
    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    async def _set_slot(self, op: str, account_id: AccountId, slot: int, encoding: bytes) -> None:
        async def txn(c: Conn) -> None:
            await _require_account(c, account_id, op)
            await c.execute(
                "INSERT INTO signed_prekeys (account_id, slot, encoding) VALUES (%b, %b, %b)"
                " ON CONFLICT (account_id, slot) DO UPDATE SET encoding = excluded.encoding",
                (account_id, slot, encoding),
            )

        await self._db.run_interaction(op, txn)

    async def _add(self, op: str, account_id: AccountId, kind: int, items: list[tuple[int, bytes]]) -> None:
        async def txn(c: Conn) -> None:
            await _require_account(c, account_id, op)
            await c.execute(
                "INSERT INTO one_time_prekeys (account_id, kind, key_id, encoding)"
                " SELECT %b, %b, k.key_id, k.encoding"
                " FROM unnest(%b::bigint[], %b::bytea[]) AS k (key_id, encoding)"
                " ON CONFLICT DO NOTHING",
                (account_id, kind, [i for i, _ in items], [e for _, e in items]),
            )

        await self._db.run_interaction(op, txn)

    async def set_signed_prekey(self, account_id: AccountId, signed: bytes) -> None:
        await self._set_slot("set_signed_prekey", account_id, _SLOT_SIGNED_PREKEY, signed)

    async def set_last_resort_kem(self, account_id: AccountId, signed: bytes) -> None:
        await self._set_slot("set_last_resort_kem", account_id, _SLOT_LAST_RESORT_KEM, signed)

    async def add_one_time_prekeys(self, account_id: AccountId, items: list[tuple[int, bytes]]) -> None:
        await self._add("add_one_time_prekeys", account_id, _KIND_X25519, items)

    async def add_kem_prekeys(self, account_id: AccountId, items: list[tuple[int, bytes]]) -> None:
        await self._add("add_kem_prekeys", account_id, _KIND_KEM, items)

    async def set_envelope_keys(self, account_id: AccountId, keys: list[bytes]) -> None:
        async def txn(c: Conn) -> None:
            await _require_account(c, account_id, "set_envelope_keys")
            await c.execute("DELETE FROM envelope_keys WHERE account_id = %b", (account_id,))
            await c.execute(
                "INSERT INTO envelope_keys (account_id, position, encoding)"
                " SELECT %b, k.position - 1, k.encoding FROM unnest(%b::bytea[]) WITH ORDINALITY"
                " AS k (encoding, position)",
                (account_id, keys),
            )

        await self._db.run_interaction("set_envelope_keys", txn)

    async def envelope_keys(self, account_id: AccountId) -> list[bytes]:
        async def q(c: Conn) -> list[bytes]:
            cur = await c.execute(
                "SELECT encoding FROM envelope_keys WHERE account_id = %b ORDER BY position",
                (account_id,),
                binary=True,
            )
            return [bytes(r[0]) for r in await cur.fetchall()]

        return await self._db.read("envelope_keys", q)

    async def take_bundle(self, account_id: AccountId) -> DirectoryEntry | None:
        async def take_lowest(c: Conn, kind: int) -> bytes | None:
            row = await _one(
                c,
                "DELETE FROM one_time_prekeys WHERE account_id = %b AND kind = %b AND key_id = ("
                " SELECT min(key_id) FROM one_time_prekeys WHERE account_id = %b AND kind = %b)"
                " RETURNING encoding",
                (account_id, kind, account_id, kind),
            )
            return None if row is None else bytes(row[0])

        async def txn(c: Conn) -> DirectoryEntry | None:
            # The account's row lock: fetchers of one account take turns (see the module docstring).
            try:
                await _require_account(c, account_id, "take_bundle", lock=True)
            except UnknownAccount:
                return None
            cur = await c.execute(
                "SELECT slot, encoding FROM signed_prekeys WHERE account_id = %b", (account_id,), binary=True
            )
            slots = {int(slot): bytes(encoding) for slot, encoding in await cur.fetchall()}
            envelope = await _one(
                c,
                "SELECT encoding FROM envelope_keys WHERE account_id = %b ORDER BY position LIMIT 1",
                (account_id,),
            )
            if _SLOT_SIGNED_PREKEY not in slots or _SLOT_LAST_RESORT_KEM not in slots or envelope is None:
                return None
            one_time = await take_lowest(c, _KIND_X25519)
            kem = await take_lowest(c, _KIND_KEM)
            left = await _counts(c, account_id)
            return DirectoryEntry(
                signed_prekey=slots[_SLOT_SIGNED_PREKEY],
                kem_prekey=slots[_SLOT_LAST_RESORT_KEM] if kem is None else kem,
                kem_is_last_resort=kem is None,
                one_time_prekey=one_time,
                envelope_key=bytes(envelope[0]),
                one_time_left=left[0],
                kem_one_time_left=left[1],
            )

        # Committed before the key leaves the server: a restart never hands it out again.
        return await self._db.run_interaction("take_bundle", txn)

    async def counts(self, account_id: AccountId) -> tuple[int, int]:
        return await self._db.read("prekey_counts", lambda c: _counts(c, account_id))


async def _counts(c: Conn, account_id: AccountId) -> tuple[int, int]:
    cur = await c.execute(
        "SELECT kind, count(*) FROM one_time_prekeys WHERE account_id = %b GROUP BY kind",
        (account_id,),
        binary=True,
    )
    by_kind = {int(kind): int(n) for kind, n in await cur.fetchall()}
    return by_kind.get(_KIND_X25519, 0), by_kind.get(_KIND_KEM, 0)


# The group commit's statements. In READ COMMITTED each statement sees what committed before it
# began, so the INSERT, which runs once the locks are held, sees every row another process stored
# under the same locks.
_LOCK_RECIPIENTS = (
    "SELECT 1 FROM accounts WHERE account_id = ANY(%b::bytea[]) ORDER BY account_id FOR NO KEY UPDATE"
)
_APPEND = """
WITH input AS (
    SELECT * FROM unnest(%b::bytea[], %b::bytea[], %b::bytea[], %b::bigint[], %b::bigint[])
        WITH ORDINALITY AS i (recipient, envelope_id, ciphertext, expiry_day, rank, n)
),
base AS MATERIALIZED (  -- each recipient's highest seq once, not once per row
    SELECT r.recipient,
           greatest(r.floor, (SELECT coalesce(max(m.seq), 0) FROM mailbox m WHERE m.recipient = r.recipient))
               AS top
    FROM unnest(%b::bytea[], %b::bigint[]) AS r (recipient, floor)
),
stored AS (
    INSERT INTO mailbox (recipient, seq, envelope_id, ciphertext, expiry_day)
    SELECT i.recipient, b.top + i.rank, i.envelope_id, i.ciphertext, i.expiry_day
    FROM input i JOIN base b ON b.recipient = i.recipient
    ORDER BY i.n
    ON CONFLICT (recipient, envelope_id) DO NOTHING
    RETURNING recipient, envelope_id, seq
)
SELECT coalesce(
           s.seq,
           -- a resend: the seq it is stored under (looked up by the unique index, and only for resends:
           -- a join here was planned as a scan of the whole mailbox)
           (SELECT m.seq FROM mailbox m WHERE m.recipient = i.recipient AND m.envelope_id = i.envelope_id)
       ),
       s.seq IS NOT NULL
FROM input i
LEFT JOIN stored s ON s.recipient = i.recipient AND s.envelope_id = i.envelope_id
ORDER BY i.n
"""
_DELETE = (
    "DELETE FROM mailbox m USING unnest(%b::bytea[], %b::bigint[], %b::bytea[]) AS d (recipient, seq, eid)"
    " WHERE m.recipient = d.recipient AND m.seq = d.seq AND (d.eid = ''::bytea OR m.envelope_id = d.eid)"
    " RETURNING m.recipient, m.seq"
)
"""A receipt's rows; an empty ``eid`` matches any envelope id (a caller that gave none)."""


class _Batch:
    """Everything one group commit writes: appends, receipts' deletions, and barriers."""

    def __init__(self) -> None:
        self.rows: list[StoredEnvelope] = []
        self.appenders: list[tuple[int, int, asyncio.Future[list[tuple[int, bool]]]]] = []
        self.deleters: list[tuple[AccountId, list[int], list[bytes] | None, asyncio.Future[int] | None]] = []
        """None for a discard (MailboxStore.discard): nobody waits for it."""
        self.barriers: list[asyncio.Future[None]] = []
        self.first: dict[tuple[AccountId, bytes], int] = {}
        """(recipient, envelope id) -> index of its row in plan()'s list."""
        self.is_first: list[bool] = []

    def drop_unknown(self, known: KeysView[AccountId]) -> None:
        """Fails, with UnknownAccount, every append that names a recipient not in ``known``, and
        removes its rows: such a caller stores none of its envelopes."""
        rows: list[StoredEnvelope] = []
        appenders = []
        for start, end, future in self.appenders:
            mine = self.rows[start:end]
            if all(e.recipient in known for e in mine):
                appenders.append((len(rows), len(rows) + len(mine), future))
                rows += mine
            elif not future.done():
                future.set_exception(UnknownAccount("append"))
        self.rows, self.appenders = rows, appenders

    def plan(self) -> tuple[list[StoredEnvelope], list[int]]:
        """The rows to INSERT, each (recipient, envelope id) once, and each one's rank among its
        recipient's rows (the INSERT numbers them from the recipient's highest seq). A duplicate
        inside the batch is answered with its first occurrence's seq and ``False``."""
        unique: list[StoredEnvelope] = []
        ranks: list[int] = []
        per_recipient: dict[AccountId, int] = {}
        for e in self.rows:
            key = (e.recipient, e.envelope_id)
            self.is_first.append(key not in self.first)
            if key not in self.first:
                self.first[key] = len(unique)
                unique.append(e)
                rank = per_recipient[e.recipient] = per_recipient.get(e.recipient, 0) + 1
                ranks.append(rank)
        return unique, ranks

    def answer(self, results: list[tuple[int, bool]], gone: set[tuple[AccountId, int]]) -> None:
        """Wakes every waiter once the batch committed: ``results`` per row of :meth:`plan`, ``gone``
        the (recipient, seq) pairs the DELETE removed."""
        for start, end, future in self.appenders:
            out = []
            for i in range(start, end):
                e = self.rows[i]
                seq, new = results[self.first[e.recipient, e.envelope_id]]
                out.append((seq, new and self.is_first[i]))
            if not future.done():
                future.set_result(out)
        for recipient, seqs, _, deleted in self.deleters:
            count = 0
            for q in dict.fromkeys(seqs):  # a seq named twice counts once
                if (recipient, q) in gone:
                    gone.discard((recipient, q))  # and not again for another caller
                    count += 1
            if deleted is not None and not deleted.done():
                deleted.set_result(count)
        for barrier in self.barriers:
            if not barrier.done():
                barrier.set_result(None)

    def fail(self, error: BaseException) -> None:
        if any(f is None for *_, f in self.deleters):
            log.warning("deleting receipted envelopes failed; they will be delivered again")
        deleters = [f for *_, f in self.deleters if f is not None]
        futures = [f for *_, f in self.appenders] + deleters + self.barriers
        for future in futures:
            if not future.done():  # a cancelled caller's rows may be stored all the same
                future.set_exception(error)


class PostgresMailboxStore:
    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._batch: _Batch | None = None
        # Highest seq this process handed out per recipient (see the module docstring); a key also
        # says the account exists (accounts are never deleted).
        self._last_seq: dict[AccountId, int] = {}

    async def _check_recipients(self, batch: _Batch) -> None:
        """Answers UnknownAccount to the callers of ``batch`` that name an account that does not exist
        and takes their rows out. Done by the flusher, not in append(): an append queues its rows
        without awaiting, so rows reach the database in the order append() was called."""
        unknown = list({e.recipient for e in batch.rows if e.recipient not in self._last_seq})
        if not unknown:
            return

        async def q(c: Conn) -> list[AccountId]:
            cur = await c.execute(
                "SELECT account_id FROM accounts WHERE account_id = ANY(%b::bytea[])", (unknown,), binary=True
            )
            return [AccountId(bytes(r[0])) for r in await cur.fetchall()]

        for account_id in await self._db.read("mailbox_recipients", q):
            self._last_seq.setdefault(account_id, 0)
        batch.drop_unknown(self._last_seq.keys())

    def _current(self) -> _Batch:
        if self._batch is None:
            self._db.start_flusher(self._flush_all)  # raises StorageError once closed
            self._batch = _Batch()
        return self._batch

    def stage(self, envelopes: list[StoredEnvelope]) -> None:
        """Numbers come from the commit (several nodes share the counters)."""
        return None

    async def append(self, envelopes: list[StoredEnvelope]) -> list[tuple[int, bool]]:
        if not envelopes:
            return []
        batch = self._current()
        start = len(batch.rows)
        batch.rows += envelopes
        future: asyncio.Future[list[tuple[int, bool]]] = asyncio.get_running_loop().create_future()
        batch.appenders.append((start, len(batch.rows), future))
        return await future

    async def delete(
        self, recipient: AccountId, seqs: list[int], envelope_ids: list[bytes] | None = None
    ) -> int:
        if not seqs:
            return 0
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._current().deleters.append((recipient, seqs, envelope_ids, future))
        return await future

    def discard(self, recipient: AccountId, seqs: list[int]) -> None:
        if not seqs:
            return
        try:
            batch = self._current()
        except StorageError:  # closed: the envelopes are delivered again after a restart
            return
        batch.deleters.append((recipient, seqs, None, None))

    async def flushed(self) -> None:
        """Waits until everything queued so far is committed (or failed)."""
        if self._batch is None:
            await self._db.wait_flushed()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.barriers.append(future)
        with contextlib.suppress(Exception):
            await future

    async def _flush_all(self) -> None:
        """The flusher: commits batches one after another until none is waiting."""
        while self._batch is not None:
            batch, self._batch = self._batch, None
            try:
                await self._check_recipients(batch)
                await self._commit(batch)
            except Exception as exc:  # delivered to every waiter; the flusher must keep going
                batch.fail(exc)

    async def _commit(self, batch: _Batch) -> None:
        unique, ranks = batch.plan()
        recipients = sorted({e.recipient for e in unique})
        deletes = [
            (r, q, b"" if ids is None else ids[i])
            for r, seqs, ids, _ in batch.deleters
            for i, q in enumerate(seqs)
        ]
        if not unique and not deletes:  # only barriers, or appends refused by _check_recipients
            batch.answer([], set())
            return
        start = time.perf_counter()
        async with self._db.connection("group_commit") as conn:
            # One round trip: BEGIN, the locks, the INSERT, the DELETE and COMMIT go out together.
            async with conn.pipeline(), conn.transaction():
                appended = deleted = None
                if unique:
                    await conn.execute(_LOCK_RECIPIENTS, (recipients,))
                    appended = await conn.execute(
                        _APPEND,
                        (
                            [e.recipient for e in unique],
                            [e.envelope_id for e in unique],
                            [e.ciphertext for e in unique],
                            [e.expiry_day for e in unique],
                            ranks,
                            recipients,
                            [self._last_seq.get(r, 0) for r in recipients],
                        ),
                        binary=True,
                    )
                if deletes:
                    deleted = await conn.execute(
                        _DELETE,
                        ([r for r, _, _ in deletes], [q for _, q, _ in deletes], [e for *_, e in deletes]),
                        binary=True,
                    )
            stored = [] if appended is None else await appended.fetchall()
            gone = [] if deleted is None else await deleted.fetchall()
        self._db.committed("group_commit", start)
        if any(seq is None for seq, _ in stored):  # pragma: no cover - only without the row locks
            raise RuntimeError("group commit: a resent envelope's seq was not found")
        results = [(int(seq), bool(new)) for seq, new in stored]
        for e, (seq, new) in zip(unique, results, strict=True):
            if new and seq > self._last_seq.get(e.recipient, 0):
                self._last_seq[e.recipient] = seq
        batch.answer(results, {(AccountId(bytes(r)), int(q)) for r, q in gone})

    async def fetch(self, recipient: AccountId, after_seq: int, limit: int) -> list[MailboxItem]:
        if limit <= 0:
            return []

        async def q(c: Conn) -> list[MailboxItem]:
            cur = await c.execute(
                "SELECT seq, envelope_id, ciphertext FROM mailbox WHERE recipient = %b AND seq > %b"
                " ORDER BY seq LIMIT %b",
                (recipient, after_seq, limit),
                binary=True,
            )
            return [MailboxItem(int(seq), bytes(eid), bytes(ct)) for seq, eid, ct in await cur.fetchall()]

        return await self._db.read("mailbox_fetch", q)

    async def expire(self, today: int) -> int:
        total = 0
        while True:

            async def txn(c: Conn) -> int:
                cur = await c.execute(
                    "DELETE FROM mailbox WHERE (recipient, seq) IN (SELECT recipient, seq FROM mailbox"
                    " WHERE expiry_day < %b LIMIT %b)",
                    (today, EXPIRE_CHUNK),
                )
                return cur.rowcount

            deleted = await self._db.run_interaction("mailbox_expire", txn)
            total += deleted
            if deleted < EXPIRE_CHUNK:
                return total

    async def count(self, recipient: AccountId) -> int:
        async def q(c: Conn) -> int:
            row = await _one(c, "SELECT count(*) FROM mailbox WHERE recipient = %b", (recipient,))
            assert row is not None
            return int(row[0])

        return await self._db.read("mailbox_count", q)


class PostgresStorage:
    """The PostgreSQL backend (``open_storage("postgresql://user@host/db", ...)``)."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        self.codes = PostgresCodeStore(db)
        self.mailbox = PostgresMailboxStore(db)
        self.accounts = PostgresAccountStore(db, self.mailbox)
        self.directory = PostgresDirectoryStore(db)

    @classmethod
    async def open(cls, url: str) -> PostgresStorage:
        return cls(await PostgresDatabase.open(url))

    async def checkpoint(self, *, truncate: bool = True) -> None:
        """Nothing to do: the server checkpoints its own WAL (``checkpoint_timeout``)."""

    async def close(self) -> None:
        """Commits anything queued, then closes the pool."""
        await self.db.close()


__all__ = [
    "PostgresAccountStore",
    "PostgresCodeStore",
    "PostgresDirectoryStore",
    "PostgresMailboxStore",
    "PostgresStorage",
]
