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
SCHEMA_VERSION = 2
"""The newest schema delta this code writes (``schema/NNN_*.sql``)."""
SCHEMA_COMPAT_VERSION = 2
"""The oldest code version that can still use a database written by this code."""
PROFILE_KEY_SIZE = 32


Direction = Literal["in", "out"]
MessageKind = Literal["text", "timer"]
MessageState = Literal["queued", "sent", "delivered", "failed", "received"]


class SchemaTooNew(StoreError):
    def __init__(self, compat: int, supported: int) -> None:
        super().__init__(f"the profile database needs schema {compat}; this program supports {supported}")
        self.compat = compat
        self.supported = supported


@dataclass(frozen=True, slots=True)
class Contact:
    """A contact row. ``sessions`` is the secret PeerSessions snapshot."""

    id: int
    name: str
    account: bytes
    identity: bytes
    token: bytes
    envelope_key: bytes | None
    envelope_key_at: int
    sessions: bytes | None
    timer: int
    verified: bool
    identity_changed: bool
    revoked: bool
    created_at: int

    def __repr__(self) -> str:
        return f"Contact(id={self.id}, ..)"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message row; times in Unix milliseconds."""

    id: int
    contact_id: int
    direction: Direction
    kind: MessageKind
    message_id: bytes
    body: str
    timer: int
    sent_at: int
    displayed_at: int | None
    expires_at: int | None
    state: MessageState

    def __repr__(self) -> str:
        return f"StoredMessage(id={self.id}, {self.direction}, {self.kind}, {self.state}, ..)"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    contact_id: int
    envelope_id: bytes
    envelope: bytes
    message_id: bytes | None

    def __repr__(self) -> str:
        return f"OutboxEntry(id={self.id}, {len(self.envelope)} bytes)"


CONTACT_COLUMNS = (
    "id, name, account, identity, token, envelope_key, envelope_key_at, sessions, timer, verified, "
    "identity_changed, revoked, created_at"
)
MESSAGE_COLUMNS = (
    "id, contact_id, direction, kind, message_id, body, timer, sent_at, displayed_at, expires_at, state"
)


def contact_from_row(row: Any) -> Contact:
    return Contact(
        row[0],
        row[1],
        bytes(row[2]),
        bytes(row[3]),
        bytes(row[4]),
        None if row[5] is None else bytes(row[5]),
        row[6],
        None if row[7] is None else bytes(row[7]),
        row[8],
        bool(row[9]),
        bool(row[10]),
        bool(row[11]),
        row[12],
    )


def _message(row: Any) -> StoredMessage:
    return StoredMessage(
        row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6], row[7], row[8], row[9], row[10]
    )


def schema_deltas() -> list[tuple[int, str]]:
    """The numbered delta files shipped in the package, in order."""
    return load_deltas("kluis.client", "schema")


def _connect(path: Path, profile_key: bytes) -> Any:
    # Owner-only before SQLite creates it; the rollback journal copies the database file's mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    # check_same_thread off: a profile may be opened in a worker thread (Argon2id takes ~0.4 s) and then
    # used from the event loop's thread. A ProfileStore is still used by one thread at a time.
    conn = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False)
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


def kv_put(c: Any, key: str, value: bytes) -> None:
    """Writes one kv entry inside a running transaction (ProfileStore.put is this in one of its own)."""
    c.execute(
        "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
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
        self.run_interaction("kv_put", lambda c: kv_put(c, key, value))

    def get(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def delete(self, key: str) -> None:
        self.run_interaction("kv_delete", lambda c: c.execute("DELETE FROM kv WHERE key = ?", (key,)))

    def read(self, fn: Callable[[Any], T]) -> T:
        """Runs ``fn(connection)`` outside a write transaction (reads only)."""
        try:
            return fn(self._conn)
        except sqlcipher3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc

    # -- contacts

    def contacts(self) -> list[Contact]:
        rows = self.read(
            lambda c: c.execute(f"SELECT {CONTACT_COLUMNS} FROM contacts ORDER BY name").fetchall()  # noqa: S608 - constant column list
        )
        return [contact_from_row(r) for r in rows]

    def contact_by_name(self, name: str) -> Contact | None:
        return self._one_contact("name = ?", name)

    def contact_by_account(self, account: bytes) -> Contact | None:
        return self._one_contact("account = ?", account)

    def contact_by_id(self, contact_id: int) -> Contact | None:
        return self._one_contact("id = ?", contact_id)

    def _one_contact(self, where: str, value: object) -> Contact | None:
        row = self.read(
            lambda c: c.execute(f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE {where}", (value,)).fetchone()  # noqa: S608 - constant column list
        )
        return None if row is None else contact_from_row(row)

    # -- messages

    def messages(self, contact_id: int) -> list[StoredMessage]:
        """A conversation's messages still kept, in the order they were stored."""
        rows = self.read(
            lambda c: c.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE contact_id = ? ORDER BY id",  # noqa: S608
                (contact_id,),
            ).fetchall()
        )
        return [_message(r) for r in rows]

    def undisplayed(self, contact_id: int | None = None) -> list[StoredMessage]:
        """Received messages not yet shown (of one conversation, or all), oldest first."""
        where, args = ("AND contact_id = ?", (contact_id,)) if contact_id is not None else ("", ())
        rows = self.read(
            lambda c: c.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE displayed_at IS NULL {where} ORDER BY id",  # noqa: S608 - constant column list
                args,
            ).fetchall()
        )
        return [_message(r) for r in rows]

    def unread_counts(self) -> dict[int, int]:
        rows = self.read(
            lambda c: c.execute(
                "SELECT contact_id, count(*) FROM messages WHERE displayed_at IS NULL GROUP BY contact_id"
            ).fetchall()
        )
        return {int(r[0]): int(r[1]) for r in rows}

    def next_expiry(self) -> int | None:
        row = self.read(lambda c: c.execute("SELECT min(expires_at) FROM messages").fetchone())
        return None if row is None or row[0] is None else int(row[0])

    def delete_expired(self, now_ms: int) -> int:
        """Deletes every message whose ``expires_at <= now_ms``; returns how many.

        secure_delete zeroes them inside the database pages before the commit returns.
        """
        return self.run_interaction(
            "delete_expired",
            lambda c: int(
                c.execute(
                    "DELETE FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ?", (now_ms,)
                ).rowcount
            ),
        )

    # -- outbox

    def outbox(self) -> list[OutboxEntry]:
        rows = self.read(
            lambda c: c.execute(
                "SELECT id, contact_id, envelope_id, envelope, message_id FROM outbox ORDER BY id"
            ).fetchall()
        )
        return [
            OutboxEntry(r[0], r[1], bytes(r[2]), bytes(r[3]), None if r[4] is None else bytes(r[4]))
            for r in rows
        ]

    def close(self) -> None:
        with contextlib.suppress(sqlcipher3.Error):
            self._conn.close()

    def __repr__(self) -> str:
        return f"ProfileStore({self.path.name}, ..)"


__all__ = ["DB_NAME", "Contact", "OutboxEntry", "ProfileStore", "SchemaTooNew", "StoredMessage"]
