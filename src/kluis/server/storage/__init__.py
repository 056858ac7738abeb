"""Relay storage: small interfaces (base), the in-memory reference, SQLite and PostgreSQL (STYLE.md §3).

``open_storage`` picks the backend from a URL::

    memory:                       the reference store (tests, fuzzers)
    sqlite:///var/lib/kluis/kluis.db, or a plain path   SQLite (the default deployment)
    postgresql://user@host:5432/kluis (or postgres://)  PostgreSQL (several relay processes)
"""

from __future__ import annotations

from pathlib import Path

from kluis.server.storage._sqlite_db import DEFAULT_CACHE_MIB
from kluis.server.storage._sqlite_mailbox import RECEIPT_WAIT_S
from kluis.server.storage.base import (
    ACCOUNT_ID_LEN,
    ENVELOPE_ID_LEN,
    Account,
    AccountId,
    AccountStore,
    AlreadyExists,
    CodeStore,
    DirectoryEntry,
    DirectoryStore,
    MailboxItem,
    MailboxStore,
    SchemaTooNew,
    Storage,
    StorageError,
    StoredEnvelope,
    UnknownAccount,
    epoch_day,
)

__all__ = [
    "ACCOUNT_ID_LEN",
    "DATABASE_FILENAME",
    "ENVELOPE_ID_LEN",
    "Account",
    "AccountId",
    "AccountStore",
    "AlreadyExists",
    "CodeStore",
    "DirectoryEntry",
    "DirectoryStore",
    "MailboxItem",
    "MailboxStore",
    "SchemaTooNew",
    "Storage",
    "StorageError",
    "StoredEnvelope",
    "UnknownAccount",
    "database_path",
    "epoch_day",
    "is_postgres_url",
    "open_storage",
]

DATABASE_FILENAME = "kluis.db"


def database_path(data_dir: str | Path) -> Path:
    """Where the relay's database lives inside its data directory (server and ``kluis admin`` agree)."""
    return Path(data_dir) / DATABASE_FILENAME


def is_postgres_url(target: str) -> bool:
    """Whether ``target`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return target.startswith(("postgresql://", "postgres://"))


async def open_storage(
    url_or_path: str | Path,
    *,
    fsync: bool,
    sqlite_cache_mib: int = DEFAULT_CACHE_MIB,
    receipt_wait_s: float = RECEIPT_WAIT_S,
) -> Storage:
    """Opens a backend: ``memory:``, ``sqlite:///abs/path.db``, a plain file path or a
    ``postgresql://`` URL (libpq's syntax: ``postgresql://user:password@host:port/dbname?sslmode=...``).

    Args:
        url_or_path: which backend and where.
        fsync: SQLite only: sync every commit to disk (survives power loss; ``synchronous=FULL``).
            Without it a commit survives a crash of the process, not of the machine. PostgreSQL
            always acknowledges after the commit is flushed (``synchronous_commit = on``); power-loss
            safety is the server's own ``fsync`` setting.
        sqlite_cache_mib: SQLite only: its page cache.
        receipt_wait_s: SQLite only: how long an envelope pushed to its connected recipient waits for
            the receipt before it is written (receipted in time, it never is).

    Raises:
        SchemaTooNew: the database was written by a newer, incompatible release.
        StorageError: the file is not a kluis database or cannot be put in WAL mode; the
            PostgreSQL server cannot be reached, or runs with ``track_commit_timestamp`` on.
    """
    target = str(url_or_path)
    if target == "memory:":
        from kluis.server.storage.memory import MemoryStorage

        return MemoryStorage()
    if is_postgres_url(target):
        from kluis.server.storage.postgres import PostgresStorage

        return await PostgresStorage.open(target)
    if target.startswith("sqlite://"):
        target = target.removeprefix("sqlite://")
    elif ":" in target.split("/")[0] and not Path(target).exists():
        raise StorageError(
            "unknown storage URL scheme (use memory:, sqlite:///path, postgresql://... or a path)"
        )
    from kluis.server.storage.sqlite import SqliteStorage

    return SqliteStorage.open(
        Path(target), fsync=fsync, cache_mib=sqlite_cache_mib, receipt_wait=receipt_wait_s
    )
