"""The PostgreSQL connection pool the PostgreSQL stores share: engine settings, schema deltas, named
transactions and the group commit of the mailbox hot path.

Driver: psycopg 3 (``psycopg[binary]`` and ``psycopg-pool``), chosen over asyncpg because

- its pipeline mode sends a whole group commit (BEGIN, the recipients' row locks, one INSERT for
  every envelope of the batch, the batch's receipts as one DELETE, COMMIT) in one network round trip
  and still reports each statement's result;
- it is typed (``py.typed``), so the backend passes ``mypy --strict`` without third-party stubs;
- it speaks through libpq, so an operator's URL works as with ``psql``: every ``sslmode`` (e.g.
  ``verify-full``), ``passfile``/``~/.pgpass``, ``service`` files, Unix sockets; the binary wheel
  bundles libpq, so nothing is needed from the system;
- psycopg-pool replaces connections that broke (a restarted server) without help from us.

Both drivers are well kept (psycopg 3.3.9 and asyncpg 0.32.0 are from late 2026); asyncpg decodes rows
faster, but the relay moves opaque bytes in batches, and round trips, not decoding, bound it.

Durability: every connection runs with ``synchronous_commit = on``, and an append is acknowledged
only once the COMMIT of its group has returned. Whether a committed row survives power loss is the
server's ``fsync`` setting (on by default), not ours.

Errors: anything the driver or the pool raises becomes :class:`StorageError` whose message holds the
transaction's name and the error's class or SQLSTATE, never the server's message text, which can quote
key values (``Key (account_id)=(\\x...)``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from kluis._schema import pending, stamp_sql
from kluis.server.storage._schema_version import SCHEMA_COMPAT_VERSION, SCHEMA_VERSION, schema_deltas
from kluis.server.storage.base import SchemaTooNew, StorageError

T = TypeVar("T")
Conn = AsyncConnection[tuple[Any, ...]]
log = logging.getLogger(__name__)

POOL_MIN = 2
POOL_MAX = 10
"""Connections per relay process. Writes go through one group commit at a time; the rest serve
reads (mailbox drains), bundle fetches and account writes concurrently."""
POOL_TIMEOUT_S = 5.0
"""How long an operation waits for a connection before it fails (StorageError: a send is answered
``unavailable``, never acknowledged), e.g. while the server restarts."""
CONNECT_TIMEOUT_S = 10
MIGRATION_LOCK = 0x6B6C7569  # "klui": any constant; two relays starting at once migrate one at a time


class PostgresEngine:
    """What differs between engines (Synapse ``storage/engines``), for PostgreSQL."""

    name = "postgresql"
    supports_returning = True


def _error(name: str, exc: BaseException) -> StorageError:
    """A StorageError naming the transaction and the kind of failure, without the server's text."""
    code = getattr(exc, "sqlstate", None)
    kind = type(exc).__name__ + (f" {code}" if code else "")
    return StorageError(f"{name}: database error ({kind})")


class PostgresDatabase:
    """A connection pool, named transactions and the group commit.

    Group commit: :meth:`submit` puts work into the current batch; the first submit of a batch starts
    the flusher task, whose first step runs after every coroutine already ready in this event-loop
    pass has added its work. The flusher commits the batch in ONE transaction (:meth:`commit_batch`
    is the caller's, see postgres.py), tells every waiter, and takes the next batch, which filled up
    while the previous one was in flight. One batch at a time: rows reach the database in the order
    they were submitted, so a mailbox's sequence numbers follow arrival order.
    """

    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self.pool = pool
        self.engine = PostgresEngine()
        self.commits: collections.Counter[str] = collections.Counter()
        """Committed transactions by name (tests and metrics)."""
        self.observer: Callable[[str, float], None] | None = None
        """Called with (transaction name, seconds) after each commit, e.g. a Prometheus histogram."""
        self._flusher: asyncio.Task[None] | None = None
        self._check: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> PostgresDatabase:
        """Connects, checks the server's settings and migrates, then opens the pool; errors become
        StorageError. The first connection is made directly, so an unreachable server fails at once
        rather than after the pool's retries."""
        try:
            conn = await AsyncConnection.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise _error("connect", exc) from None
        try:
            await _check_server(conn)
            await migrate(conn)
        except psycopg.Error as exc:
            raise _error("migrate", exc) from None
        finally:
            await conn.close()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            open=False,
            timeout=POOL_TIMEOUT_S,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            configure=_configure,
            name="kluis",
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except Exception as exc:
            await pool.close()
            raise _error("connect", exc) from None
        return cls(pool)

    def connection(self, name: str) -> _Connection:
        """``async with db.connection("name") as conn``: a pooled connection in autocommit mode."""
        if self._closed:
            raise StorageError(f"{name}: storage is closed")
        return _Connection(self, name)

    async def run_interaction(self, name: str, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Runs ``fn`` in one transaction called ``name`` and commits it (Synapse's runInteraction).

        ``name`` is what logs and metrics show; they never show ids or bytes. Exceptions of the
        storage layer (UnknownAccount...) raised by ``fn`` roll back and pass through unchanged.
        """
        start = time.perf_counter()
        async with self.connection(name) as conn, conn.transaction():
            result = await fn(conn)
        self.committed(name, start)
        return result

    async def read(self, name: str, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Statements outside an explicit transaction (each sees the last commit)."""
        async with self.connection(name) as conn:
            return await fn(conn)

    def committed(self, name: str, start: float) -> None:
        """Counts a committed transaction that began at ``start`` (perf_counter) and reports it."""
        self.commits[name] += 1
        if self.observer is not None:
            self.observer(name, time.perf_counter() - start)

    @property
    def commit_count(self) -> int:
        return sum(self.commits.values())

    def start_flusher(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Starts ``run`` (which commits batches until none is left) unless it is running already."""
        if self._closed:
            raise StorageError("group commit: storage is closed")
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(run())

    async def wait_flushed(self) -> None:
        """Waits until the flusher has committed everything submitted so far."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    def connection_failed(self) -> None:
        """After a connection-level error: have the pool test its idle connections now, so the ones a
        restarted server broke are replaced before the next operation picks one."""
        if not self._closed and (self._check is None or self._check.done()):
            self._check = asyncio.get_running_loop().create_task(self.pool.check())

    async def close(self) -> None:
        if self._closed:
            return
        await self.wait_flushed()
        self._closed = True
        if self._check is not None:
            self._check.cancel()
        await self.pool.close()


class _Connection:
    """A pooled connection for one named operation; driver errors become StorageError on the way out."""

    def __init__(self, db: PostgresDatabase, name: str) -> None:
        self._db = db
        self._name = name
        self._cm: Any = None

    async def __aenter__(self) -> Conn:
        self._cm = self._db.pool.connection()
        try:
            conn: Conn = await self._cm.__aenter__()
        except Exception as exc:  # PoolTimeout, PoolClosed: no connection to be had
            self._db.connection_failed()
            raise _error(self._name, exc) from exc
        return conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        try:
            await self._cm.__aexit__(exc_type, exc, tb)
        except psycopg.Error as inner:
            if exc is None:
                raise _error(self._name, inner) from inner
        if isinstance(exc, psycopg.Error):
            if isinstance(exc, psycopg.OperationalError):
                self._db.connection_failed()
            raise _error(self._name, exc) from exc


async def _configure(conn: Conn) -> None:
    # A commit returns only once its WAL is flushed (the server default, made explicit: a role or
    # database setting of "off" or "local" would otherwise acknowledge sends that a crash can lose).
    await conn.execute("SET synchronous_commit = on")


async def _check_server(conn: Conn) -> None:
    cur = await conn.execute("SELECT current_setting('track_commit_timestamp')")
    row = await cur.fetchone()
    if row is not None and row[0] == "on":
        # The server would record each transaction's commit time next to the rows it wrote:
        # timestamps finer than a day, which the seizure profile rules out.
        raise StorageError(
            "PostgreSQL has track_commit_timestamp = on; the relay stores no time finer than a day: "
            "turn it off"
        )


async def _table_count(conn: Conn, name: str | None) -> int:
    sql = "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()"
    cur = await (conn.execute(sql) if name is None else conn.execute(sql + " AND tablename = %s", (name,)))
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def migrate(conn: Conn) -> list[int]:
    """Brings the schema up to SCHEMA_VERSION, or raises SchemaTooNew: the same deltas, rendered for
    PostgreSQL, and the same rule as SQLite (kluis._schema). Each delta runs in its own transaction
    under an advisory lock, so relays that start together against a new database do not race: the
    second finds the first one's stamp."""
    applied: list[int] = []
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            current = compat = 0
            if await _table_count(conn, "schema_version"):
                cur = await conn.execute("SELECT version, compat_version FROM schema_version")
                stamped = await cur.fetchone()
                if stamped is None:
                    raise StorageError("schema_version table is empty: not a kluis database")
                current, compat = int(stamped[0]), int(stamped[1])
            elif await _table_count(conn, None):
                raise StorageError("the database has tables but no schema_version: not a kluis database")
            todo = pending(
                schema_deltas(PostgresEngine.name),
                current,
                compat,
                version=SCHEMA_VERSION,
                too_new=SchemaTooNew,
            )
            if not todo:
                return applied
            version, sql = todo[0]
            # A delta is trusted SQL shipped in the package; a multi-statement string goes through
            # the simple query protocol (no parameters).
            await conn.execute(f"{sql}\n{stamp_sql(version, SCHEMA_COMPAT_VERSION)}".encode())
        applied.append(version)
        log.info("database schema now at version %d", version)


__all__ = [
    "POOL_MAX",
    "POOL_MIN",
    "POOL_TIMEOUT_S",
    "Conn",
    "PostgresDatabase",
    "PostgresEngine",
    "migrate",
]
