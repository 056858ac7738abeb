"""The SQLite connection the SQLite stores share: engine settings, schema deltas, named transactions
and the group commit of the mailbox hot path.

Transactions run inline on the event loop and never span an ``await``, so coroutines cannot
interleave inside one. The one exception is a large group commit (:data:`THREAD_MIN_ROWS`), which
runs in a writer thread while the loop goes on: SQLite's C code releases the GIL, so the commit's
B-tree and WAL work is done on the machine's other core. A writer thread running ``executemany``
collapsed at a steady 25k msg/s (PERFORMANCE.md): each row's step released the GIL and waited up to
the switch interval to take it back. Group work therefore runs a few multi-row statements
(:func:`multirow_chunks`), each one release of the GIL.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar, cast

from kluis._schema import migrate as apply_deltas
from kluis.server.storage._schema_version import SCHEMA_COMPAT_VERSION, SCHEMA_VERSION, schema_deltas
from kluis.server.storage.base import SchemaTooNew, StorageError

__all__ = [
    "DEFAULT_CACHE_MIB",
    "SCHEMA_COMPAT_VERSION",
    "SCHEMA_VERSION",
    "Checkpointer",
    "SqliteDatabase",
    "SqliteEngine",
    "migrate",
    "multirow_chunks",
    "schema_deltas",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

WAL_AUTOCHECKPOINT_PAGES = 10_000
"""Safety net only (~40 MB of WAL): checkpoints normally come from :meth:`SqliteDatabase.checkpoint` on
a timer, so a commit that acknowledges envelopes does not also pay for a checkpoint."""
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
"""After a checkpoint resets the WAL, truncate the file to this size so it does not stay large."""
PAGE_SIZE = 4096
DEFAULT_CACHE_MIB = 128
"""SQLite's page cache in MiB (``sqlite_cache_mib`` in the server's configuration; SQLite's own
default is 2 MiB). Every envelope stored checks its recipient's account row and touches that
recipient's mailbox pages; with 10,000 mailboxes connected (kluis bench skyecc) those pages did not
fit in 2 MiB, and reading them back from the OS (pread) was a quarter of the relay's CPU. Memory is
taken only as pages are touched."""
BUSY_TIMEOUT_MS = 2_000
"""``kluis admin`` may write while the server runs; its transactions are tiny, so a short wait."""
LOCKED_RETRY_S = 0.0005
"""A group commit that finds the write lock taken (the checkpointer emptying the WAL, ``kluis admin``)
tries again after this long, on the loop. Waiting inside SQLite's busy handler instead slept the
whole event loop for 1, 2, 5 ms ... and every connection with it (the relay benchmark's W2 p99)."""


THREAD_MIN_ROWS = 32
"""A group commit of at least this many rows (:attr:`GroupWork.size`) runs in the writer thread.
Smaller ones, the usual case below a few thousand messages a second, commit inline at the end of the
loop pass: handing a commit to a thread and back costs two wake-ups, which at 500 msg/s would be most
of the acknowledgement's latency (the relay benchmark's W2)."""
GIL_SWITCH_INTERVAL_S = 0.001
"""While the writer thread is busy, the interpreter's switch interval (CPython's default is 5 ms).
After each statement the writer needs the GIL back, and the busy loop thread hands it over only when
the interval runs out; at 5 ms a commit of a dozen statements took longer than its senders wait."""
MULTIROW_MAX = 512
"""Rows per multi-row statement at most (SQLite allows 32,766 parameters per statement)."""
MULTIROW_MAX_BYTES = 1 << 19
"""Bytes of blobs per multi-row statement at most (beyond its first row): SQLite copies every bound
blob, so 512 of the largest envelopes (200 KB) would hold 100 MB at once."""


def multirow_chunks(
    rows: Sequence[Sequence[object]], blob: int | None = None
) -> list[Sequence[Sequence[object]]]:
    """Splits ``rows`` into chunks whose sizes are powers of two up to :data:`MULTIROW_MAX`, so a
    multi-row statement takes one of ten shapes and stays in the connection's statement cache. With
    ``blob`` (a column holding bytes), a chunk also stops at :data:`MULTIROW_MAX_BYTES` of them."""
    chunks = []
    i, n = 0, len(rows)
    while i < n:
        k = min(MULTIROW_MAX, n - i)
        if blob is not None:
            total, j = 0, i
            while j < i + k:
                total += len(cast(bytes, rows[j][blob]))
                if total > MULTIROW_MAX_BYTES and j > i:
                    break
                j += 1
            k = j - i
        size = 1 << (k.bit_length() - 1)
        chunks.append(rows[i : i + size])
        i += size
    return chunks


class SqliteEngine:
    """What differs between engines (Synapse ``storage/engines``), for SQLite."""

    name = "sqlite"
    begin_write = "BEGIN IMMEDIATE"  # take the write lock up front: no upgrade deadlock with readers

    def __init__(self, library_version: tuple[int, ...] = sqlite3.sqlite_version_info) -> None:
        self.supports_returning = library_version >= (3, 35, 0)

    def connect(self, path: Path, *, fsync: bool, cache_mib: int = DEFAULT_CACHE_MIB) -> sqlite3.Connection:
        # Create the file owner-only before SQLite does; the -wal and -shm files copy its mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        # Used from the loop and, for one group commit at a time, the writer thread (SqliteDatabase
        # never lets the two overlap).
        conn = sqlite3.connect(path, isolation_level=None, cached_statements=256, check_same_thread=False)
        try:
            # Takes effect only while the file is new (before WAL mode is set). A trade-off, measured:
            # sealed envelopes are 1,397 bytes and up, and on 4 KiB pages each spills into an
            # overflow page (store + secure delete 26 us; 13 us on 16 KiB pages), but larger pages
            # write more WAL per commit, and at a steady 500 msg/s (one commit per message) that
            # raised the acknowledgement p99 from 2.7 ms to 9 ms (8 KiB) and 14 ms (16 KiB).
            # Latency at ordinary load wins; see docs/OPERATING.md "Benchmarks".
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError(f"cannot switch the database to WAL mode (got {mode})")
            # NORMAL: a commit survives a crash of the process (kill -9) but not a power loss; FULL
            # syncs the WAL on every commit (PERFORMANCE.md: little throughput, p99 ~1.1 ms).
            conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            # Deleted envelopes and keys are overwritten with zeros, not left in free pages.
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except BaseException:
            conn.close()
            raise
        return conn

    def connect_reader(self, path: Path, *, cache_mib: int = DEFAULT_CACHE_MIB) -> sqlite3.Connection:
        """A read-only connection to a database :meth:`connect` opened (the WAL mode is the file's)."""
        conn = sqlite3.connect(path, isolation_level=None, cached_statements=256)
        try:
            conn.execute("PRAGMA query_only=ON")
            conn.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except BaseException:
            conn.close()
            raise
        return conn


class Locked(Exception):
    """Another connection holds the write lock (raised only when asked not to wait)."""


class TransactionObserver(Protocol):
    def __call__(self, name: str, seconds: float, /) -> None: ...


class GroupWork(Protocol):
    """One unit of the group commit: ``prepare`` on the loop, ``run`` inside the shared transaction
    (on the loop or in the writer thread: it touches only the connection and its own fields, and
    runs a few statements, not one per row), then ``done`` once, on the loop.

    ``prepare`` is called once, when the commit takes the work; a commit that finds the write lock
    taken runs the same prepared work again later."""

    name: str
    size: int
    """Rows written or deleted: what decides whether the commit runs in the writer thread."""

    def prepare(self) -> None: ...

    def run(self, conn: sqlite3.Connection) -> None: ...

    def done(self, error: BaseException | None) -> None: ...


class SqliteDatabase:
    """One write connection, named transactions and the end-of-loop-pass group commit.

    Group commit: :meth:`group_commit` queues a work item and, for the first item of a loop pass,
    schedules :meth:`flush` with ``loop.call_soon``. Work queued by every coroutine that runs in the
    current pass lands in the queue first; the flush then runs all of it in ONE transaction, commits,
    and tells each item whether it is durable.

    A group of :data:`THREAD_MIN_ROWS` rows or more commits in the writer thread instead, one commit
    at a time: work queued meanwhile waits for the next, which starts when the one in flight ends.
    While a commit is in flight the loop does not touch the write connection: reads go to a second,
    read-only connection (which sees the last commit, as reads always did), and a named transaction
    or a flush that must finish now (``wait``) first waits for the commit in flight.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        engine: SqliteEngine,
        reader: sqlite3.Connection | None = None,
    ) -> None:
        self.conn = conn
        self.engine = engine
        self._reader = reader
        """Reads while a commit is in flight in the writer thread (None: no writer thread, as for a
        database in memory, which a second connection would not see)."""
        self.thread_min_rows = THREAD_MIN_ROWS
        """Rows from which a group commit runs in the writer thread (tests set 1)."""
        self.commits: collections.Counter[str] = collections.Counter()
        """Committed transactions by name (tests and metrics)."""
        self.group_items: collections.Counter[str] = collections.Counter()
        """Work items committed through :meth:`group_commit`, by name."""
        self.threaded_commits = 0
        """Group commits run in the writer thread (tests and benchmarks)."""
        self.observer: TransactionObserver | None = None
        """Called with (transaction name, seconds) after each commit, e.g. a Prometheus histogram."""
        self._pending: list[GroupWork] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: concurrent.futures.Future[float] | None = None
        self._inflight_works: list[GroupWork] = []

    @classmethod
    def open(cls, path: Path, *, fsync: bool, cache_mib: int = DEFAULT_CACHE_MIB) -> SqliteDatabase:
        """Opens (creating if needed) and migrates the database; errors become StorageError."""
        engine = SqliteEngine()
        try:
            conn = engine.connect(path, fsync=fsync, cache_mib=cache_mib)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the database: {exc}") from exc
        try:
            migrate(conn, engine)
            reader = engine.connect_reader(path, cache_mib=cache_mib)
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(f"cannot open the database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, engine, reader)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def commit_count(self) -> int:
        return sum(self.commits.values())

    def run_interaction(self, name: str, fn: Callable[[sqlite3.Connection], T], *, wait: bool = True) -> T:
        """Runs ``fn`` in one write transaction called ``name`` and commits it (Synapse's runInteraction).

        ``name`` is what logs and metrics show; they never show ids or bytes. With ``wait`` False,
        raises :class:`Locked` at once (nothing done) if another connection holds the write lock.
        A group commit in flight in the writer thread is waited for first (it holds the connection).
        """
        if self._closed:
            raise StorageError(f"{name}: storage is closed")
        if self._inflight is not None:
            self._finish_inflight()
            if self._pending:  # queued meanwhile: group_commit left them to the end of that commit
                self.loop().call_soon(self.flush)
        result, seconds = self._transaction(fn, wait=wait)
        self._committed(name, seconds)
        return result

    def _transaction(self, fn: Callable[[sqlite3.Connection], T], *, wait: bool) -> tuple[T, float]:
        """One write transaction on the write connection (from the loop, or the writer thread)."""
        conn = self.conn
        start = time.perf_counter()
        if wait:
            conn.execute(self.engine.begin_write)
        else:
            self._begin_now()
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result, time.perf_counter() - start

    def _committed(self, name: str, seconds: float) -> None:
        self.commits[name] += 1
        if self.observer is not None:
            self.observer(name, seconds)

    def _begin_now(self) -> None:
        conn = self.conn
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute(self.engine.begin_write)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise Locked() from None
            raise
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def read(self, name: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read outside any explicit transaction (each statement sees the last commit)."""
        if self._closed:
            raise StorageError(f"{name}: storage is closed")
        del name  # reads are not counted; the name documents the call site
        # The write connection when it is free: its page cache is warm, where the reader's is
        # dropped whenever another connection has committed since its last read (SQLite's WAL mode).
        if self._inflight is not None and self._reader is not None:
            return fn(self._reader)
        return fn(self.conn)

    def group_commit(self, work: GroupWork) -> None:
        """Queues ``work`` for the commit at the end of this event-loop pass (or, if a commit is in
        flight in the writer thread, for the one after it)."""
        if self._closed:
            raise StorageError(f"{work.name}: storage is closed")
        if not self._pending and self._inflight is None:
            self.loop().call_soon(self.flush)
        self._pending.append(work)

    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the database is used from. Kept: on Python 3.11 every
        ``asyncio.get_running_loop()`` is a getpid() system call, which showed at several per cent
        of a busy relay's CPU."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def flush(self, *, wait: bool = False) -> None:
        """Runs and commits every queued work item in one transaction; never raises (a loop callback).

        If the transaction fails, every item of the group is told so (none of it is stored). If the
        write lock is taken, the items wait (on the loop, LOCKED_RETRY_S) unless ``wait``. A large
        group goes to the writer thread unless ``wait``, which returns only once everything queued
        before it is committed.
        """
        if self._inflight is not None:
            if not wait:
                return  # the commit in flight flushes again when it ends (_thread_done)
            self._finish_inflight()
        works, self._pending = self._pending, []
        if not works:
            return
        for work in works:
            work.prepare()
        if not wait and self._reader is not None and sum(w.size for w in works) >= self.thread_min_rows:
            self._start_thread(works)
            return
        try:
            _, seconds = self._transaction(lambda conn: _run_all(works, conn), wait=wait)
        except Locked:
            self._pending = works + self._pending  # none of it ran; whatever came since joins it
            self.loop().call_later(LOCKED_RETRY_S, self.flush)
            return
        except Exception as exc:  # delivered to every waiter; the loop must keep running
            self._group_failed(works, exc)
            return
        self._committed("group_commit", seconds)
        self._group_done(works)

    def _group_failed(self, works: list[GroupWork], exc: BaseException) -> None:
        log.warning("group commit of %d items failed: %s", len(works), type(exc).__name__)
        for work in works:
            work.done(exc)

    def _group_done(self, works: list[GroupWork]) -> None:
        for work in works:
            self.group_items[work.name] += 1
            work.done(None)

    def _start_thread(self, works: list[GroupWork]) -> None:
        writer = self._writer
        if writer is None:
            writer = self._writer = concurrent.futures.ThreadPoolExecutor(1, "kluis-sqlite-writer")
            sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        loop = self.loop()
        # Waits for the write lock in SQLite's busy handler: that sleeps this thread, not the loop.
        future = writer.submit(lambda: self._transaction(lambda conn: _run_all(works, conn), wait=True)[1])
        self._inflight, self._inflight_works = future, works
        self.threaded_commits += 1
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._thread_done, f))

    def _thread_done(self, future: concurrent.futures.Future[float]) -> None:
        if self._inflight is future:  # else already finished by _finish_inflight
            self._finish_inflight()
            self.flush()  # what was queued meanwhile starts now, not a loop pass later

    def _finish_inflight(self) -> None:
        """Waits for the commit in flight in the writer thread, if any, and tells its work."""
        future = self._inflight
        if future is None:
            return
        concurrent.futures.wait([future])  # releases the GIL: the writer thread finishes
        works, self._inflight, self._inflight_works = self._inflight_works, None, []
        exc = future.exception()
        if exc is not None:
            self._group_failed(works, exc)
        else:
            self._committed("group_commit", future.result())
            self._group_done(works)

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """A WAL checkpoint: PASSIVE never waits for readers or writers. Returns (busy, wal pages,
        checkpointed pages)."""
        if mode not in {"PASSIVE", "FULL", "RESTART", "TRUNCATE"}:
            raise ValueError(mode)
        self.flush(wait=True)
        start = time.perf_counter()
        busy, log_pages, done = self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        if self.observer is not None:
            self.observer("wal_checkpoint", time.perf_counter() - start)
        return int(busy), int(log_pages), int(done)

    def truncate_wal(self) -> bool:
        """Empties the WAL file if that can be done without waiting (a TRUNCATE checkpoint with the
        busy timeout off); returns whether it was. Old page images in the WAL would otherwise keep
        deleted envelopes and keys readable until overwritten: secure_delete zeroes only the main
        file's pages."""
        self.flush(wait=True)
        self.conn.execute("PRAGMA busy_timeout=0")
        try:
            busy, _, _ = self.checkpoint("TRUNCATE")
        finally:
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return busy == 0

    def close(self) -> None:
        if self._closed:
            return
        self.flush(wait=True)
        self._closed = True
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self._reader is not None:
            self._reader.close()
        self.conn.close()


def _run_all(works: list[GroupWork], conn: sqlite3.Connection) -> None:
    for work in works:
        work.run(conn)


class Checkpointer:
    """WAL checkpoints on a second connection, run in a worker thread.

    A checkpoint copies WAL pages into the main file: C code and file I/O, during which Python's
    sqlite3 module releases the GIL. On the event loop it stalled every acknowledgement for 25-35 ms
    (the relay benchmark's W2 p99); in a thread it overlaps with the loop's work.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def run(self, truncate: bool = True) -> tuple[int, int, int]:
        """PASSIVE checkpoint, then, with ``truncate`` and if it copied every frame, a TRUNCATE that
        does not wait for anyone (seizure profile: old page images leave the WAL). Returns (busy,
        wal pages, copied).

        The TRUNCATE holds the write lock briefly, and the relay's commit waiting on it sleeps in
        SQLite's busy-handler steps (1, 2, 5 ms...): run every second it put the acknowledgement p99
        at a steady 500 msg/s at 2-3 ms instead of 0.7 ms, so the server truncates less often than
        it checkpoints (runner.py)."""
        with self._lock:
            if self._closed:
                return 1, 0, 0
            if self._conn is None:
                self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                self._conn.execute("PRAGMA busy_timeout=0")
            busy, pages, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if truncate and busy == 0 and pages > 0 and copied == pages:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return int(busy), int(pages), int(copied)

    def close(self) -> None:
        """Waits for a running checkpoint, then closes its connection."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def migrate(conn: sqlite3.Connection, engine: SqliteEngine) -> None:
    """Brings the schema up to SCHEMA_VERSION, or raises SchemaTooNew (Synapse's compat rule)."""
    applied = apply_deltas(
        conn,
        schema_deltas(engine.name),
        version=SCHEMA_VERSION,
        compat_version=SCHEMA_COMPAT_VERSION,
        begin=engine.begin_write,
        not_ours=lambda reason: StorageError(f"{reason}: not a kluis database"),
        too_new=SchemaTooNew,
    )
    for version in applied:
        log.info("database schema now at version %d", version)
