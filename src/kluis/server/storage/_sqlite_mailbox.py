"""The SQLite mailbox: the relay's hot path, on the group commit of ``_sqlite_db``.

Appends are numbered at once (an in-memory counter per recipient) and written with the group commit
at the end of the event-loop pass, in a few multi-row INSERTs. An envelope the relay pushed to its
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
import contextlib
import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence

from kluis.server.clock import reached
from kluis.server.storage._sqlite_db import SqliteDatabase, multirow_chunks
from kluis.server.storage.base import AccountId, MailboxItem, StorageError, StoredEnvelope, UnknownAccount

log = logging.getLogger(__name__)

EXPIRE_CHUNK = 1_000
"""expire() deletes this many rows per transaction and yields to the loop in between."""
RECEIPT_WAIT_S = 0.05
"""How long a held envelope waits for its recipient's receipt before it is written anyway (the
server's ``receipt_wait_s``). Its sender waits that long for the acknowledgement at most, on top
of the commit; a recipient that receipts sooner releases it sooner."""

DISCARD_WAIT_S = 0.1
"""A receipt's delete, which nobody waits for, joins the next commit that writes envelopes, or waits
this long for one. Committed on their own, deletes made a commit of a few rows per loop pass while
mailboxes drained: over nine in ten commits of Sky ECC's day (kluis bench skyecc), each rewriting the
same B-tree pages into the WAL. An envelope whose delete is lost to a crash meanwhile is delivered
again, and its recipient drops it by id."""

Result = tuple[int, bool]
Row = tuple[AccountId, int, bytes, bytes, int]
"""(recipient, seq, envelope id, ciphertext, expiry day): the INSERT's parameters."""


class Staged:
    """Envelopes numbered by :meth:`SqliteMailboxStore.stage` and not yet queued: mark the ones
    pushed to their recipient with :meth:`hold`, then :meth:`submit` them all (until then they are
    in no commit)."""

    __slots__ = ("_done", "_held", "_left", "_store", "duplicates", "elided", "items", "rows")

    def __init__(self, store: SqliteMailboxStore, rows: list[Row], items: list[MailboxItem]) -> None:
        self._store = store
        self.rows = rows
        self.items = items
        """The envelopes as their recipients see them, in the order given to stage()."""
        self.duplicates: dict[int, int] = {}
        """index -> the seq under which an earlier copy is stored (a resend), once written."""
        self.elided: set[int] | None = None
        """Indexes receipted before they were written: they never will be."""
        self._held: list[tuple[int, int]] = []
        self._left = len(rows)
        self._done: Callable[[bool], None] | None = None

    def hold(self, start: int, end: int) -> None:
        """Envelopes ``start:end``, all to one recipient, were pushed to it: they wait for its
        receipt (up to ``receipt_wait``) before being written."""
        self._held.append((start, end))

    def submit(self, done: Callable[[bool], None]) -> None:
        """Queues the envelopes. ``done(True)`` once every one is durable: committed, or receipted
        by its recipient (then it is never written); :attr:`duplicates` then names the resends.
        ``done(False)`` if they could not be written. It is called from inside the storage's own
        work (a commit, or a receipt's :meth:`SqliteMailboxStore.discard`), so it must only take
        note and schedule.

        Raises:
            StorageError: the storage is closed (nothing was queued).
        """
        self._done = done
        store, held, n = self._store, self._held, len(self.rows)
        if not held or store.receipt_wait <= 0:  # 0: written at once, pushed early or not
            store._write(self, 0, n, False)
            return
        start = 0
        for first, end in sorted(held):
            if first > start:
                store._write(self, start, first, False)
            start = end
        if start < n:
            store._write(self, start, n, False)
        for first, end in held:
            store._hold(self, first, end)

    def _settled(self, n: int) -> None:
        self._left -= n
        if self._left == 0:
            self._tell(True)

    def _failed(self) -> None:
        if self._left > 0:
            self._left = -1  # told once; whatever settles later is ignored
            self._tell(False)

    def _tell(self, ok: bool) -> None:
        # Dropped once called: the callback's owner usually holds this object (a cycle, which only
        # the cyclic GC would free: with it, a busy relay spent a fifth of its time there).
        done, self._done = self._done, None
        if done is not None:
            done(ok)


Part = tuple[Staged, int, int, bool]
"""Rows start:end of a Staged, and whether they were held (a receipt may still elide them)."""

_INSERT = (
    "INSERT INTO mailbox (recipient, seq, envelope_id, ciphertext, expiry_day) VALUES {values}"
    " ON CONFLICT (recipient, envelope_id) DO NOTHING"
)
_SELECT_STORED = (
    "WITH wanted (r, e) AS (VALUES {values}) SELECT m.recipient, m.envelope_id, m.seq FROM wanted"
    " JOIN mailbox AS m ON m.recipient = wanted.r AND m.envelope_id = wanted.e"
)
# The WITH goes inside: Python 3.11 reports no rowcount for a statement that starts with one.
_DELETE_RUNS = (
    "DELETE FROM mailbox WHERE (recipient, seq) IN (WITH runs (r, a, b) AS (VALUES {values})"
    " SELECT m.recipient, m.seq FROM runs JOIN mailbox AS m ON m.recipient = runs.r"
    " AND m.seq BETWEEN runs.a AND runs.b)"
)
_DELETE_EXACT = (
    "DELETE FROM mailbox WHERE (recipient, seq) IN (WITH wanted (r, s, e) AS (VALUES {values})"
    " SELECT m.recipient, m.seq FROM wanted JOIN mailbox AS m ON m.recipient = wanted.r"
    " AND m.seq = wanted.s AND m.envelope_id = wanted.e)"
)


@functools.cache
def _statement(template: str, rows: int, columns: int) -> str:
    """``template`` with ``rows`` rows of ``columns`` placeholders: a multi-row statement."""
    return template.replace("{values}", ",".join(["(" + ",".join("?" * columns) + ")"] * rows))


def _run_chunked(
    conn: sqlite3.Connection, template: str, rows: Sequence[tuple[object, ...]], blob: int | None = None
) -> int:
    """Runs ``template`` over ``rows`` in multi-row statements (_sqlite_db.multirow_chunks, ``blob``
    the column whose bytes bound a chunk), one release of the GIL each; returns the rows they
    changed."""
    changed = 0
    for chunk in multirow_chunks(rows, blob):
        sql = _statement(template, len(chunk), len(chunk[0]))
        changed += conn.execute(sql, [value for row in chunk for value in row]).rowcount
    return changed


def _stored_seqs(conn: sqlite3.Connection, rows: list[Row]) -> dict[tuple[AccountId, bytes], int]:
    """The seq stored under each row's (recipient, envelope id)."""
    stored: dict[tuple[AccountId, bytes], int] = {}
    for chunk in multirow_chunks([(row[0], row[2]) for row in rows]):
        sql = _statement(_SELECT_STORED, len(chunk), 2)
        for recipient, envelope_id, seq in conn.execute(sql, [v for row in chunk for v in row]):
            stored[AccountId(bytes(recipient)), bytes(envelope_id)] = int(seq)
    return stored


class _AppendBatch:
    """All appends of one loop pass: a few multi-row INSERTs inside the group commit."""

    name = "mailbox_append"

    def __init__(self, store: SqliteMailboxStore) -> None:
        self._store = store
        self.parts: list[Part] = []
        self.size = 0
        self._params: list[Row] | None = None
        self._written: list[tuple[Staged, range | list[int]]] = []
        self._resent: dict[int, int] = {}
        """index in _params -> the seq stored under its envelope id, where that is another."""

    def prepare(self) -> None:
        """Takes the rows (on the loop): from here on a receipt deletes the held ones instead of
        eliding them, and appends go to a new batch."""
        if self._params is not None:
            return
        store = self._store
        if store._batch is self:
            store._batch = None
        params: list[Row] = []
        written = self._written
        for staged, start, end, held in self.parts:
            if held:
                store._unhold(staged, start, end)
            elided = staged.elided
            indexes: range | list[int] = range(start, end)
            if elided:
                indexes = [i for i in indexes if i not in elided]
                params += [staged.rows[i] for i in indexes]
            else:
                params += staged.rows[start:end]
            written.append((staged, indexes))
        self._params = params

    def run(self, conn: sqlite3.Connection) -> None:
        params = self._params
        assert params is not None, "prepare() first"
        self._resent = {}
        inserted = _run_chunked(conn, _INSERT, params, blob=3)
        if inserted == len(params):  # the common case: nothing was a resend
            return
        # Some rows hit UNIQUE (recipient, envelope_id): a resend (maybe within this very batch). Its
        # freshly assigned seq was not used; report the seq that is stored (a gap in seqs is fine).
        stored = _stored_seqs(conn, params)
        for position, (recipient, seq, envelope_id, _, _) in enumerate(params):
            kept = stored[recipient, envelope_id]
            if kept != seq:
                self._resent[position] = kept

    def done(self, error: BaseException | None) -> None:
        # prepare() has run (flush calls it before any commit), so new appends go to another batch.
        if error is not None:
            for staged, start, end, _ in self.parts:
                self._store._unhold(staged, start, end)
                staged._failed()
            return
        resent = self._resent
        position = 0
        for staged, indexes in self._written:
            if resent:
                for i in indexes:
                    if position in resent:
                        staged.duplicates[i] = resent[position]
                    position += 1
            if indexes:
                staged._settled(len(indexes))


class _DeleteWork:
    name = "mailbox_delete"

    def __init__(
        self,
        recipient: AccountId,
        seqs: list[int],
        envelope_ids: list[bytes] | None,
        future: asyncio.Future[int],
    ) -> None:
        self._runs: list[tuple[AccountId, int, int]] = []
        self._exact: list[tuple[AccountId, int, bytes]] = []
        if envelope_ids is None:
            self._runs = [(recipient, seq, seq) for seq in seqs]
        else:
            self._exact = [(recipient, seq, eid) for seq, eid in zip(seqs, envelope_ids, strict=True)]
        self.size = len(seqs)
        self._future = future
        self._deleted = 0

    def prepare(self) -> None:
        pass

    def run(self, conn: sqlite3.Connection) -> None:
        self._deleted = _run_chunked(conn, _DELETE_RUNS, self._runs) + _run_chunked(
            conn, _DELETE_EXACT, self._exact
        )

    def done(self, error: BaseException | None) -> None:
        if self._future.done():
            return
        if error is None:
            self._future.set_result(self._deleted)
        else:
            self._future.set_exception(error)


class _DiscardBatch:
    """Receipts' deletes gathered until the next commit (DISCARD_WAIT_S), nobody waiting
    (MailboxStore.discard).

    Receipts name runs of consecutive seqs (a DELIVER frame's envelopes), and every seq inside such a
    run was receipted, so each run is deleted as one range: one descent of the B-tree per run
    instead of per envelope (the deletes were a fifth of a busy relay's CPU).
    """

    name = "mailbox_discard"

    def __init__(self, store: SqliteMailboxStore) -> None:
        self._store = store
        self.runs: list[tuple[AccountId, int, int]] = []
        self.recipients: set[AccountId] = set()
        self.size = 0

    def add(self, recipient: AccountId, seqs: list[int]) -> None:
        self.recipients.add(recipient)
        runs = self.runs
        ordered = sorted(set(seqs))
        self.size += len(ordered)
        start = previous = ordered[0]
        for seq in ordered[1:]:
            if seq != previous + 1:
                runs.append((recipient, start, previous))
                start = seq
            previous = seq
        runs.append((recipient, start, previous))

    def prepare(self) -> None:
        pass

    def run(self, conn: sqlite3.Connection) -> None:
        _run_chunked(conn, _DELETE_RUNS, self.runs)

    def done(self, error: BaseException | None) -> None:
        with contextlib.suppress(ValueError):
            self._store._queued_discards.remove(self)
        if error is not None:
            log.warning("deleting receipted envelopes failed; they will be delivered again")


class SqliteMailboxStore:
    def __init__(self, db: SqliteDatabase, *, receipt_wait: float = RECEIPT_WAIT_S) -> None:
        self._db = db
        self.receipt_wait = receipt_wait
        self._batch: _AppendBatch | None = None
        self._discards: _DiscardBatch | None = None
        """Receipts' deletes not yet handed to the group commit (see DISCARD_WAIT_S)."""
        self._discard_timer: asyncio.TimerHandle | None = None
        self._queued_discards: list[_DiscardBatch] = []
        """Deletes handed to the group commit and not yet committed (at most a few)."""
        # Last seq handed out per recipient, loaded lazily from max(seq). In memory only: the database
        # holds no counter. After a restart with an empty mailbox numbering starts again at 1, so a
        # client must not carry after_seq across connections.
        self._last_seq: dict[AccountId, int] = {}
        self._unwritten: dict[tuple[AccountId, int], tuple[Staged, int]] = {}
        """Held rows, and released ones whose commit has not run yet: a receipt still elides them."""
        self._held: collections.deque[tuple[float, Staged, int, int]] = collections.deque()
        """Held rows by deadline (oldest first), in runs of one recipient."""
        self._holding: dict[AccountId, float] = {}
        """The last deadline of each recipient's held rows (entries past it may linger a while)."""
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
        """
        if not envelopes:
            raise ValueError("nothing to stage")
        last_seq = self._last_seq
        for e in envelopes:
            if e.recipient not in last_seq:
                self._load_counter(e.recipient)  # may raise UnknownAccount before anything is numbered
        rows: list[Row] = []
        items: list[MailboxItem] = []
        for recipient, envelope_id, ciphertext, expiry_day in envelopes:
            seq = last_seq[recipient] = last_seq[recipient] + 1
            rows.append((recipient, seq, envelope_id, ciphertext, expiry_day))
            items.append(MailboxItem(seq, envelope_id, ciphertext))
        return Staged(self, rows, items)

    async def append(self, envelopes: list[StoredEnvelope]) -> list[Result]:
        if not envelopes:
            return []
        staged = self.stage(envelopes)
        future: asyncio.Future[bool] = self._db.loop().create_future()

        def done(ok: bool) -> None:
            if not future.done():  # the caller was cancelled; the rows are stored all the same
                future.set_result(ok)

        staged.submit(done)
        if not await future:
            raise StorageError("mailbox_append: the group commit failed")
        duplicates = staged.duplicates
        return [(duplicates.get(i, item.seq), i not in duplicates) for i, item in enumerate(staged.items)]

    def _write(self, staged: Staged, start: int, end: int, held: bool) -> None:
        """Queues rows for this loop pass's group commit."""
        batch = self._batch
        if batch is None:
            batch = _AppendBatch(self)
            self._db.group_commit(batch)  # raises StorageError once closed: nothing was queued
            self._batch = batch
            if self._discards is not None:  # a commit happens anyway: the deletes join it
                self._queue_discards()
        batch.parts.append((staged, start, end, held))
        batch.size += end - start

    def _hold(self, staged: Staged, start: int, end: int) -> None:
        """Holds rows of one recipient."""
        unwritten = self._unwritten
        rows = staged.rows
        for i in range(start, end):
            unwritten[rows[i][0], rows[i][1]] = (staged, i)
        loop = self._db.loop()
        deadline = loop.time() + self.receipt_wait
        self._holding[rows[start][0]] = deadline
        self._held.append((deadline, staged, start, end))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._release)

    def _release(self) -> None:
        """Writes the held rows whose wait is over."""
        self._timer = None
        held = self._held
        now = self._db.loop().time()
        while held and reached(held[0][0], now):
            _, staged, start, end = held.popleft()
            self._write_held(staged, start, end)
        if held:
            self._timer = self._db.loop().call_at(held[0][0], self._release)
            if len(self._holding) > 2 * len(held) + 1_000:  # forget recipients no longer held
                self._holding = {r: d for r, d in self._holding.items() if d > now}
        else:
            self._holding.clear()

    def _write_held(self, staged: Staged, start: int, end: int) -> None:
        if staged._left <= 0:  # every row was receipted already (its rows are let go), or it failed
            return
        if staged.elided and all(i in staged.elided for i in range(start, end)):
            return
        try:
            self._write(staged, start, end, True)
        except StorageError:  # closed under them: their senders get no OK
            self._unhold(staged, start, end)
            staged._failed()

    def _unhold(self, staged: Staged, start: int, end: int) -> None:
        """Rows ``start:end`` are being written (or failed): a receipt can no longer elide them."""
        unwritten = self._unwritten
        for row in staged.rows[start:end]:
            unwritten.pop((row[0], row[1]), None)

    def _release_recipient(self, recipient: AccountId) -> None:
        """Writes a recipient's held rows now: a fetch sees every envelope numbered before it (a
        new connection of the mailbox, draining, must find those pushed to the one it replaced)."""
        kept: collections.deque[tuple[float, Staged, int, int]] = collections.deque()
        for group in self._held:
            if group[1]._left <= 0:  # nothing to write (_write_held), and its rows may be gone
                continue
            if group[1].rows[group[2]][0] == recipient:
                self._write_held(*group[1:])
            else:
                kept.append(group)
        self._held = kept
        del self._holding[recipient]
        self._db.flush(wait=True)

    def release_held(self) -> None:
        """Queues every held row, and the pending deletes, for the next commit (before closing)."""
        self._queue_discards()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, collections.deque()
        self._holding.clear()
        for _, staged, start, end in held:
            self._write_held(staged, start, end)

    async def fetch(self, recipient: AccountId, after_seq: int, limit: int) -> list[MailboxItem]:
        if self._holding.get(recipient, 0.0) >= self._db.loop().time():
            self._release_recipient(recipient)
        if self._discarding(recipient):
            # A new connection of the mailbox must not be sent again what the old one receipted.
            self._commit_discards()
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
            entry = unwritten.pop((recipient, seq), None)
            if entry is None:
                rest.append(seq)
                continue
            staged, index = entry
            if staged.elided is None:
                staged.elided = {index}
            else:
                staged.elided.add(index)
            staged._settled(1)
            if staged._left == 0:
                # Every row is durable, and what is still held was receipted: the rows are let go
                # now, while they are still in the CPU's caches, rather than with the held entry
                # at the end of its wait (freeing them then was a tenth of W1 batched's CPU).
                staged.rows, staged.items = [], []
        return rest

    def forget(self, recipient: AccountId) -> None:
        """Revocation: the recipient's envelopes not yet written never will be (its mailbox is being
        deleted; their senders were answered OK before it was)."""
        seqs = [seq for r, seq in self._unwritten if r == recipient]
        if seqs:
            self._elide(recipient, seqs)

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
        if not seqs or self._db.closed:  # closed: the envelopes are delivered again after a restart
            return
        batch = self._discards
        if batch is None:
            batch = self._discards = _DiscardBatch(self)
            self._discard_timer = self._db.loop().call_later(DISCARD_WAIT_S, self._queue_discards)
        batch.add(recipient, seqs)

    def _queue_discards(self) -> None:
        """Hands the pending deletes to the group commit (with appends that commit anyway, or once
        they have waited DISCARD_WAIT_S)."""
        if self._discard_timer is not None:
            self._discard_timer.cancel()
            self._discard_timer = None
        batch, self._discards = self._discards, None
        if batch is not None:
            with contextlib.suppress(StorageError):  # closed: delivered again after a restart
                self._db.group_commit(batch)
                self._queued_discards.append(batch)

    def _discarding(self, recipient: AccountId | None) -> bool:
        """Whether receipts' deletes (of ``recipient``, or of anyone) are not committed yet: pending,
        queued, or in a commit in flight in the writer thread."""
        batches = self._queued_discards
        if self._discards is not None:
            batches = [*batches, self._discards]
        return any(recipient is None or recipient in batch.recipients for batch in batches)

    def _commit_discards(self) -> None:
        """Commits the pending deletes (and whatever else is queued) now."""
        self._queue_discards()
        self._db.flush(wait=True)

    async def expire(self, today: int) -> int:
        self._commit_discards()
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
        if self._discarding(None):  # a count sees every receipt before it
            self._commit_discards()
        row = self._db.read(
            "mailbox_count",
            lambda c: c.execute("SELECT count(*) FROM mailbox WHERE recipient = ?", (recipient,)).fetchone(),
        )
        return int(row[0])
