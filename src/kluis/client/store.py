"""The profile database: SQLCipher (sqlcipher3) opened with the raw 32-byte profile key.

Everything the client keeps lives in ``<profile>/profile.db``, encrypted page by page (SQLCipher 4:
AES-256-CBC per page with HMAC-SHA512; the raw key skips SQLCipher's own PBKDF2, since the key is
already random, and Argon2id guards the passphrase in keyslots.py).

Journal mode: ``DELETE`` (rollback journal), not WAL. A client writes little, so WAL's concurrency
buys nothing, while its cost here is a file that keeps old page images, including those of
disappearing messages, until a checkpoint truncates it. With ``DELETE`` the set of files between
transactions is ``profile.db`` alone; ``secure_delete = ON`` zeroes a deleted row's bytes inside the
page (and freed pages) before the page is re-encrypted, so once :meth:`ProfileStore.delete_expired`
commits, no page of the live database decrypts to the message. The pre-image the rollback journal
held during that transaction (encrypted, and deleted at commit) may remain in free filesystem blocks:
see docs/SECURITY.md, "What a seized device reveals", residual risks.

``cipher_memory_security = ON`` makes SQLCipher wipe and lock the memory it uses for keys and pages.

Schema: numbered delta files ``schema/NNN_name.sql`` with ``SCHEMA_VERSION`` and
``SCHEMA_COMPAT_VERSION`` (the server's rule, STYLE.md §3): code refuses a database whose compat
version is newer than it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import sqlcipher3

from kluis._schema import load_deltas, migrate
from kluis.client.errors import StoreError, WrongProfileKey

T = TypeVar("T")

DB_NAME = "profile.db"
SCHEMA_VERSION = 1
"""The newest schema delta this code writes (``schema/NNN_*.sql``)."""
SCHEMA_COMPAT_VERSION = 1
"""The oldest code version that can still use a database written by this code."""
PROFILE_KEY_SIZE = 32


Direction = Literal["in", "out"]


class SchemaTooNew(StoreError):
    def __init__(self, compat: int, supported: int) -> None:
        super().__init__(f"the profile database needs schema {compat}; this program supports {supported}")
        self.compat = compat
        self.supported = supported


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation: str
    direction: Direction
    body: bytes
    sent_at: int
    expires_at: int | None

    def __repr__(self) -> str:
        return f"StoredMessage(id={self.id}, {self.direction}, {len(self.body)} bytes, ..)"


def schema_deltas() -> list[tuple[int, str]]:
    """The numbered delta files shipped in the package, in order."""
    return load_deltas("kluis.client", "schema")


def _connect(path: Path, profile_key: bytes) -> Any:
    # Owner-only before SQLite creates it; the rollback journal copies the database file's mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    conn = sqlcipher3.connect(str(path), isolation_level=None)
    try:
        # Quiet: a wrong key is reported as WrongProfileKey, not as SQLCipher's log lines on stderr.
        conn.execute("PRAGMA cipher_log_level = NONE")
        # Hex of our own 32 bytes, not input: nothing to escape.
        conn.execute(f"PRAGMA key = \"x'{profile_key.hex()}'\"")
        conn.execute("PRAGMA cipher_memory_security = ON")
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher3.DatabaseError as exc:
            if "file is not a database" in str(exc):
                raise WrongProfileKey from None
            raise
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        if mode != "delete":
            raise StoreError(f"cannot set the journal mode (got {mode})")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: Any) -> None:
    migrate(
        conn,
        schema_deltas(),
        version=SCHEMA_VERSION,
        compat_version=SCHEMA_COMPAT_VERSION,
        begin="BEGIN IMMEDIATE",
        not_ours=lambda reason: StoreError(f"{reason}: not a kluis profile"),
        too_new=SchemaTooNew,
    )


class ProfileStore:
    """The open profile database. One connection; every write is a named transaction."""

    def __init__(self, conn: Any, path: Path) -> None:
        self._conn = conn
        self.path = path
        self.commits: dict[str, int] = {}
        """Committed transactions by name (tests)."""

    @classmethod
    def open(cls, directory: Path, profile_key: bytes) -> ProfileStore:
        """Opens (creating and migrating if needed) ``directory/profile.db``.

        Raises:
            WrongProfileKey: the key does not decrypt the database.
            SchemaTooNew: the database was written by a newer, incompatible version.
            StoreError: any other database failure.
        """
        if len(profile_key) != PROFILE_KEY_SIZE:
            raise StoreError("the profile key must be 32 bytes")
        path = directory / DB_NAME
        try:
            conn = _connect(path, profile_key)
        except sqlcipher3.Error as exc:
            raise StoreError(f"cannot open the profile database: {exc}") from exc
        try:
            _migrate(conn)
        except sqlcipher3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open the profile database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def run_interaction(self, name: str, fn: Callable[[Any], T]) -> T:
        """Runs ``fn(connection)`` in one write transaction named ``name``."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlcipher3.Error as exc:
            raise StoreError(f"{name} failed: {exc}") from exc
        self.commits[name] = self.commits.get(name, 0) + 1
        return result

    # -- kv: identity, prekey and ring snapshots

    def put(self, key: str, value: bytes) -> None:
        self.run_interaction(
            "kv_put",
            lambda c: c.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            ),
        )

    def get(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def delete(self, key: str) -> None:
        self.run_interaction("kv_delete", lambda c: c.execute("DELETE FROM kv WHERE key = ?", (key,)))

    # -- messages

    def add_message(
        self,
        conversation: str,
        direction: Direction,
        body: bytes,
        sent_at: int,
        expires_at: int | None,
    ) -> int:
        def insert(c: Any) -> int:
            cur = c.execute(
                "INSERT INTO messages (conversation, direction, body, sent_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (conversation, direction, body, sent_at, expires_at),
            )
            return int(cur.lastrowid)

        return self.run_interaction("add_message", insert)

    def messages(self, conversation: str) -> list[StoredMessage]:
        rows = self._conn.execute(
            "SELECT id, conversation, direction, body, sent_at, expires_at FROM messages "
            "WHERE conversation = ? ORDER BY id",
            (conversation,),
        ).fetchall()
        return [StoredMessage(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    def delete_expired(self, now: int) -> int:
        """Deletes every message whose ``expires_at <= now``; returns how many.

        secure_delete zeroes them inside the database pages before the commit returns.
        """
        return self.run_interaction(
            "delete_expired",
            lambda c: int(
                c.execute(
                    "DELETE FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
                ).rowcount
            ),
        )

    def close(self) -> None:
        with contextlib.suppress(sqlcipher3.Error):
            self._conn.close()

    def __repr__(self) -> str:
        return f"ProfileStore({self.path.name}, ..)"


__all__ = ["DB_NAME", "ProfileStore", "SchemaTooNew", "StoredMessage"]
