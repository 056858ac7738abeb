"""The SQLite mailbox: the relay's hot path, on the group commit of ``_sqlite_db``.

Appends are numbered at once (an in-memory counter per recipient) and written with the group commit
at the end of the event-loop pass, in one ``executemany``. An envelope the relay pushed to its
connected recipient before it was written may be *held* instead (:meth:`SqliteMailboxStore.stage`):
it waits up to ``receipt_wait`` seconds for that recipient's receipt. Receipted in time, it is never
written at all, and its sender's acknowledgement needs no commit: the recipient's receipt says its
own store committed the envelope, so it is durable there (DESIGN.md "Delivery semantics" asks for
durable, and a receipt is the client's word that it is). Not receipted in time, it is written like
any other. Most envelopes of a busy relay go to connected recipients; each of them, written and
then deleted, cost about four B-tree page writes twice (docs/OPERATING.md, "Benchmarks").
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
from collections.abc import Callable

from kluis.server.storage._sqlite_db import SqliteDatabase
from kluis.server.storage.base import AccountId, MailboxItem, StorageError, StoredEnvelope, UnknownAccount

log = logging.getLogger(__name__)

EXPIRE_CHUNK = 1_000
"""expire() deletes this many rows per transaction and yields to the loop in between."""
RECEIPT_WAIT_S = 0.05
"""How long a held envelope waits for its recipient's receipt before it is written anyway (the
server's ``receipt_wait_s``). Its sender waits that long for the acknowledgement at most, on top
of the commit; a recipient that receipts sooner releases it sooner."""

_INSERT = (
    "INSERT INTO mailbox (recipient, seq, envelope_id, ciphertext, expiry_day) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (recipient, envelope_id) DO NOTHING"
)
_DELETE_BY_SEQ = "DELETE FROM mailbox WHERE recipient = ? AND seq = ?"
_DELETE_RUN = "DELETE FROM mailbox WHERE recipient = ? AND seq BETWEEN ? AND ?"

Result = tuple[int, bool]


class _Waiter:
    """One append's answer: (seq, newly stored) per envelope, handed to ``done`` once each of its
    rows is written or was receipted before it could be (or None, once, if a write failed)."""

    __slots__ = ("done", "left", "results")

    def __init__(self, n: int) -> None:
        self.done: Callable[[list[Result] | None], None] | None = None
        self.left = n
        self.results: list[Result] = [(0, False)] * n

    def settle(self, index: int, result: Result) -> None:
        self.results[index] = result
        self.left -= 1
        if self.left == 0 and self.done is not None:
            self.done(self.results)

    def fail(self) -> None:
        if self.left > 0 and self.done is not None:
            self.left = -1  # told once; whatever settles later is ignored
            self.done(None)


class _Row:
    __slots__ = ("ciphertext", "elided", "envelope_id", "expiry_day", "index", "recipient", "seq", "waiter")

    def __init__(self, envelope: StoredEnvelope, seq: int, waiter: _Waiter, index: int) -> None:
        self.recipient, self.envelope_id, self.ciphertext, self.expiry_day = envelope
        self.seq = seq
        self.waiter = waiter
        self.index = index
        self.elided = False
        """Receipted before it was written: it never will be."""


class Staged:
    """Envelopes numbered by :meth:`SqliteMailboxStore.stage` and not yet queued: mark the ones
    pushed to their recipient with :meth:`hold`, then :meth:`submit` them all (at once: until then
    they are in no commit)."""

    __slots__ = ("_held", "_rows", "_store", "items")

    def __init__(self, store: SqliteMailboxStore, rows: list[_Row]) -> None:
        self._store = store
        self._rows = rows
        self._held: list[tuple[int, int]] = []
        self.items = [MailboxItem(r.seq, r.envelope_id, r.ciphertext) for r in rows]
        """The envelopes as their recipients see them, in the order given to stage()."""

    def hold(self, start: int, end: int) -> None:
        """Envelopes ``start:end``, all to one recipient, were pushed to it: they wait for its
        receipt (up to ``receipt_wait``) before being written."""
        self._held.append((start, end))

    def submit(self, done: Callable[[list[Result] | None], None]) -> None:
        """Queues the envelopes. ``done`` is called with (seq, newly stored) for each once every one
        is durable (committed, or receipted by its recipient: then it is never written, and is
        reported new), or with None if they could not be written. It is called from inside the
        storage's own work (a commit, or a receipt's :meth:`SqliteMailboxStore.discard`), so it must
        only take note and schedule.

        Raises:
            StorageError: the storage is closed (nothing was queued).
        """
        rows, store = self._rows, self._store
        rows[0].waiter.done = done
        if not self._held:
            store._write(rows)
            return
        held = [False] * len(rows)
        for start, end in self._held:
            held[start:end] = [True] * (end - start)
        if not all(held):
            store._write([r for r, h in zip(rows, held, strict=True) if not h])
        for start, end in self._held:
            store._hold(rows[start:end])


class _AppendBatch:
    """All appends of one loop pass: one ``executemany`` inside the group commit."""

    name = "mailbox_append"

    def __init__(self, store: SqliteMailboxStore) -> None:
        self._store = store
        self.rows: list[_Row] = []
        self._written: list[tuple[_Row, Result]] = []

    def run(self, conn: sqlite3.Connection) -> None:
        if self._store._batch is self:  # rows staged after this point go to the next commit
            self._store._batch = None
        unwritten = self._store._unwritten
        rows = []
        for r in self.rows:
            if unwritten:
                unwritten.pop((r.recipient, r.seq), None)
            if not r.elided:
                rows.append(r)
        cur = conn.executemany(
            _INSERT, [(r.recipient, r.seq, r.envelope_id, r.ciphertext, r.expiry_day) for r in rows]
        )
        if cur.rowcount == len(rows):  # the common case: nothing was a resend
            self._written = [(r, (r.seq, True)) for r in rows]
            return
        # Some rows hit UNIQUE (recipient, envelope_id): a resend (maybe within this very batch). Its
        # freshly assigned seq was not used; report the seq that is stored (a gap in seqs is fine).
        self._written = []
        for r in rows:
            stored = conn.execute(
                "SELECT seq FROM mailbox WHERE recipient = ? AND envelope_id = ?",
                (r.recipient, r.envelope_id),
            ).fetchone()
            self._written.append((r, (int(stored[0]), int(stored[0]) == r.seq)))

    def done(self, error: BaseException | None) -> None:
        if self._store._batch is self:
            self._store._batch = None
        if error is not None:
            unwritten = self._store._unwritten
            for r in self.rows:
                unwritten.pop((r.recipient, r.seq), None)
                r.waiter.fail()
            return
        for r, result in self._written:
            r.waiter.settle(r.index, result)


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
    def __init__(self, db: SqliteDatabase, *, receipt_wait: float = RECEIPT_WAIT_S) -> None:
        self._db = db
        self.receipt_wait = receipt_wait
        self._batch: _AppendBatch | None = None
        self._discards: _DiscardBatch | None = None
        # Last seq handed out per recipient, loaded lazily from max(seq). In memory only: the database
        # holds no counter. After a restart with an empty mailbox numbering starts again at 1, so a
        # client must not carry after_seq across connections.
        self._last_seq: dict[AccountId, int] = {}
        self._unwritten: dict[tuple[AccountId, int], _Row] = {}
        """Held rows, and released ones whose commit has not run yet: a receipt still elides them."""
        self._held: collections.deque[tuple[float, AccountId, list[_Row]]] = collections.deque()
        """Held rows by deadline (oldest first), in runs of one recipient."""
        self._holding: dict[AccountId, int] = {}
        """Runs in _held per recipient."""
        self._timer: asyncio.TimerHandle | None = None

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

    def stage(self, envelopes: list[StoredEnvelope]) -> Staged:
        """Numbers ``envelopes`` (nothing is queued until :meth:`Staged.submit`).

        Raises:
            UnknownAccount: a recipient does not exist (nothing was numbered).
            StorageError: the storage is closed.
        """
        if not envelopes:
            raise ValueError("nothing to stage")
        last_seq = self._last_seq
        for recipient in {e.recipient for e in envelopes}:
            self._load_counter(recipient)  # may raise UnknownAccount before anything is numbered
        waiter = _Waiter(len(envelopes))
        rows = []
        for index, e in enumerate(envelopes):
            seq = last_seq[e.recipient] = last_seq[e.recipient] + 1
            rows.append(_Row(e, seq, waiter, index))
        return Staged(self, rows)

    async def append(self, envelopes: list[StoredEnvelope]) -> list[Result]:
        if not envelopes:
            return []
        staged = self.stage(envelopes)
        future: asyncio.Future[list[Result] | None] = self._db.loop().create_future()

        def done(results: list[Result] | None) -> None:
            if not future.done():  # the caller was cancelled; the rows are stored all the same
                future.set_result(results)

        staged.submit(done)
        results = await future
        if results is None:
            raise StorageError("mailbox_append: the group commit failed")
        return results

    def _write(self, rows: list[_Row]) -> None:
        """Queues rows for this loop pass's group commit."""
        batch = self._batch
        if batch is None:
            batch = _AppendBatch(self)
            self._db.group_commit(batch)  # raises StorageError once closed: nothing was queued
            self._batch = batch
        batch.rows += rows

    def _hold(self, rows: list[_Row]) -> None:
        """Holds rows of one recipient."""
        unwritten = self._unwritten
        for r in rows:
            unwritten[r.recipient, r.seq] = r
        recipient = rows[0].recipient
        self._holding[recipient] = self._holding.get(recipient, 0) + 1
        loop = self._db.loop()
        deadline = loop.time() + self.receipt_wait
        self._held.append((deadline, recipient, rows))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._release)

    def _release(self) -> None:
        """Writes the held rows whose wait is over."""
        self._timer = None
        held = self._held
        now = self._db.loop().time()
        rows: list[_Row] = []
        while held and held[0][0] <= now:
            _, recipient, group = held.popleft()
            self._unhold(recipient)
            rows += group
        self._write_held(rows)
        if held:
            self._timer = self._db.loop().call_at(held[0][0], self._release)

    def _unhold(self, recipient: AccountId) -> None:
        left = self._holding[recipient] - 1
        if left:
            self._holding[recipient] = left
        else:
            del self._holding[recipient]

    def _write_held(self, rows: list[_Row]) -> None:
        rows = [r for r in rows if not r.elided]
        if not rows:
            return
        try:
            self._write(rows)
        except StorageError:  # closed under them: their senders get no OK
            for r in rows:
                self._unwritten.pop((r.recipient, r.seq), None)
                r.waiter.fail()

    def _release_recipient(self, recipient: AccountId) -> None:
        """Writes a recipient's held rows now: a fetch sees every envelope numbered before it (a
        new connection of the mailbox, draining, must find those pushed to the one it replaced)."""
        kept: collections.deque[tuple[float, AccountId, list[_Row]]] = collections.deque()
        rows: list[_Row] = []
        for group in self._held:
            if group[1] == recipient:
                rows += group[2]
            else:
                kept.append(group)
        self._held = kept
        del self._holding[recipient]
        self._write_held(rows)
        self._db.flush(wait=True)

    def release_held(self) -> None:
        """Queues every held row for the next commit (before closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows = [r for _, _, group in self._held for r in group]
        self._held.clear()
        self._holding.clear()
        self._write_held(rows)

    async def fetch(self, recipient: AccountId, after_seq: int, limit: int) -> list[MailboxItem]:
        if recipient in self._holding:
            self._release_recipient(recipient)
        rows = self._db.read(
            "mailbox_fetch",
            lambda c: c.execute(
                "SELECT seq, envelope_id, ciphertext FROM mailbox WHERE recipient = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (recipient, after_seq, max(limit, 0)),
            ).fetchall(),
        )
        return [MailboxItem(int(seq), bytes(eid), bytes(ct)) for seq, eid, ct in rows]

    def _elide(self, recipient: AccountId, seqs: list[int]) -> list[int]:
        """Settles the rows of ``seqs`` that are not written yet (they never will be); returns the
        other seqs."""
        unwritten = self._unwritten
        rest = []
        for seq in seqs:
            row = unwritten.pop((recipient, seq), None)
            if row is None:
                rest.append(seq)
            else:
                row.elided = True
                row.waiter.settle(row.index, (seq, True))
        return rest

    async def delete(
        self, recipient: AccountId, seqs: list[int], envelope_ids: list[bytes] | None = None
    ) -> int:
        if not seqs:
            return 0
        future: asyncio.Future[int] = self._db.loop().create_future()
        self._db.group_commit(_DeleteWork(recipient, seqs, envelope_ids, future))
        return await future

    def discard(self, recipient: AccountId, seqs: list[int]) -> None:
        if self._unwritten:
            seqs = self._elide(recipient, seqs)
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
