"""SQLite-only storage properties: durability, group commit, schema versions, the seizure profile."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import cast

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from kluis.server.storage import SchemaTooNew, StorageError, StoredEnvelope, database_path, open_storage
from kluis.server.storage._sqlite_db import (
    MULTIROW_MAX,
    MULTIROW_MAX_BYTES,
    SCHEMA_COMPAT_VERSION,
    SCHEMA_VERSION,
    THREAD_MIN_ROWS,
    multirow_chunks,
)
from kluis.server.storage._sqlite_mailbox import DISCARD_WAIT_S
from kluis.server.storage.sqlite import SqliteStorage
from tests.storage_support import account, envelope

# The seizure profile (DESIGN.md, issue 3), column by column. A new column anywhere fails this test:
# adding one is a decision about what a seized server gives away, to be made here on purpose.
SEIZURE_PROFILE = {
    "activation_codes": ["code_hash", "days"],
    "accounts": ["account_id", "identity", "token_hash", "expires_day", "revoked", "revocation"],
    "signed_prekeys": ["account_id", "slot", "encoding"],
    "one_time_prekeys": ["account_id", "kind", "key_id", "encoding"],
    "envelope_keys": ["account_id", "position", "encoding"],
    "mailbox": ["recipient", "seq", "envelope_id", "ciphertext", "expiry_day"],
    "schema_version": ["version", "compat_version"],
}


async def _open(path: Path, *, fsync: bool = False) -> SqliteStorage:
    storage = await open_storage(f"sqlite://{path}", fsync=fsync)
    assert isinstance(storage, SqliteStorage)
    return storage


def test_database_holds_only_the_seizure_profile(tmp_path: Path) -> None:
    path = database_path(tmp_path)

    async def main() -> None:
        s = await _open(path)
        await s.close()

    asyncio.run(main())
    conn = sqlite3.connect(path)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert sorted(tables) == sorted(SEIZURE_PROFILE)
    for table in tables:
        columns = [r[1] for r in conn.execute(f"PRAGMA table_xinfo({table})")]
        assert columns == SEIZURE_PROFILE[table], table
        # WITHOUT ROWID: no hidden integer that records the order rows arrived in across accounts.
        with pytest.raises(sqlite3.OperationalError, match="rowid"):
            conn.execute(f"SELECT rowid FROM {table}")
    assert conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type IN ('trigger', 'view')"
    ).fetchone() == (0,)
    conn.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


SCHEMA_V1_SHA256 = "9cab0b1f5d59b1b79951c3d65f224b6a9e3dd3b4870dee62a010c5ef280dace9"
"""SHA-256 of repr(sqlite_master rows) of a database made by schema/sqlite/001_initial.sql, the SQLite-only
file that the shared schema/001_initial.sql replaced: new SQLite databases must stay exactly like the
ones already in data directories."""


def test_schema_text_is_what_existing_databases_hold(tmp_path: Path) -> None:
    path = database_path(tmp_path)

    async def main() -> None:
        await (await _open(path)).close()

    asyncio.run(main())
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    conn.close()
    assert hashlib.sha256(repr(rows).encode()).hexdigest() == SCHEMA_V1_SHA256


def test_pragmas(tmp_path: Path) -> None:
    async def main() -> None:
        for fsync, level in ((False, 1), (True, 2)):  # NORMAL, FULL
            s = await _open(tmp_path / f"{fsync}.db", fsync=fsync)
            c = s.db.conn
            assert c.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert c.execute("PRAGMA synchronous").fetchone() == (level,)
            assert c.execute("PRAGMA secure_delete").fetchone() == (1,)
            assert c.execute("PRAGMA page_size").fetchone() == (4096,)
            assert c.execute("PRAGMA foreign_keys").fetchone() == (1,)
            await s.close()

    asyncio.run(main())


def test_deleted_envelope_is_gone_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "kluis.db"
    secret = os.urandom(3000)

    async def main() -> None:
        s = await _open(path)
        a = account(1)
        await s.accounts.create(a)
        [(seq, _)] = await s.mailbox.append([StoredEnvelope(a.account_id, b"e" * 16, secret, 20_000)])
        s.db.checkpoint("TRUNCATE")
        assert secret[:32] in path.read_bytes()  # it reached the main file
        assert await s.mailbox.delete(a.account_id, [seq]) == 1
        s.db.checkpoint("TRUNCATE")
        await s.close()

    asyncio.run(main())
    data = path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("kluis.db-*"))
    for offset in range(0, 3000 - 32, 500):
        assert secret[offset : offset + 32] not in data


def test_durable_across_reopen_and_counters_continue(tmp_path: Path) -> None:
    path = tmp_path / "kluis.db"
    a = account(1)

    async def first() -> list[tuple[int, bool]]:
        s = await _open(path)
        await s.accounts.create(a)
        await s.codes.add_codes([b"c" * 32], 5)
        await s.directory.add_one_time_prekeys(a.account_id, [(1, b"k")])
        stored = await s.mailbox.append([envelope(a.account_id, i) for i in range(3)])
        await s.close()
        return stored

    async def second(stored: list[tuple[int, bool]]) -> None:
        s = await _open(path)
        assert await s.accounts.get(a.account_id) == a
        assert await s.codes.redeem(b"c" * 32) == 5
        assert await s.directory.counts(a.account_id) == (1, 0)
        assert [i.seq for i in await s.mailbox.fetch(a.account_id, 0, 10)] == [q for q, _ in stored]
        # the resend of a stored envelope is recognised after a restart too
        assert await s.mailbox.append([envelope(a.account_id, 0)]) == [(stored[0][0], False)]
        [(seq, new)] = await s.mailbox.append([envelope(a.account_id, 7)])
        assert new
        assert seq > stored[-1][0]
        await s.close()

    asyncio.run(second(asyncio.run(first())))


def test_group_commit_one_transaction_per_loop_pass(tmp_path: Path) -> None:
    async def main() -> None:
        s = await _open(tmp_path / "kluis.db")
        a, b = account(1), account(2)
        await s.accounts.create(a)
        await s.accounts.create(b)
        before = s.db.commit_count
        appends = [s.mailbox.append([envelope(r.account_id, i)]) for i in range(100) for r in (a, b)]
        results = await asyncio.gather(*appends)
        assert s.db.commit_count == before + 1
        assert s.db.commits["group_commit"] == 1
        assert len({seq for r in results[::2] for seq, _ in r}) == 100
        # deletes and appends from the same pass share one transaction too
        seqs = [r[0][0] for r in results[::2]]
        await asyncio.gather(
            *(s.mailbox.delete(a.account_id, [q]) for q in seqs),
            s.mailbox.append([envelope(b.account_id, 500)]),
        )
        assert s.db.commit_count == before + 2
        assert s.db.group_items["mailbox_delete"] == 100
        assert await s.mailbox.count(a.account_id) == 0
        assert await s.mailbox.count(b.account_id) == 101
        await s.close()

    asyncio.run(main())


def test_group_commit_failure_reaches_every_waiter(tmp_path: Path) -> None:
    async def main() -> None:
        s = await _open(tmp_path / "kluis.db")
        a = account(1)
        await s.accounts.create(a)
        await s.mailbox.append([envelope(a.account_id, 0)])
        # Make the next transaction fail: the table is gone behind the store's back.
        s.db.conn.execute("DROP TABLE mailbox")
        results = await asyncio.gather(
            *(s.mailbox.append([envelope(a.account_id, i)]) for i in range(1, 4)), return_exceptions=True
        )
        assert all(isinstance(r, StorageError) for r in results)  # typed, whatever SQLite said
        assert not s.db.conn.in_transaction
        await s.close()

    asyncio.run(main())


def test_newer_incompatible_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kluis.db"

    async def create() -> None:
        await (await _open(path)).close()

    asyncio.run(create())
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE schema_version SET version = ?, compat_version = ?", (SCHEMA_VERSION + 5, SCHEMA_VERSION + 1)
    )
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew) as info:
        asyncio.run(_open(path))
    assert (info.value.database_compat, info.value.code_version) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)

    # a newer schema that declares itself compatible with this code is opened
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET compat_version = ?", (SCHEMA_COMPAT_VERSION,))
    conn.commit()
    conn.close()
    asyncio.run(create())


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="not a kluis database"):
        asyncio.run(_open(path))


def test_storage_urls(tmp_path: Path) -> None:
    async def main() -> None:
        for target in (tmp_path / "plain.db", str(tmp_path / "str.db")):
            s = await open_storage(target, fsync=False)
            assert isinstance(s, SqliteStorage)
            await s.checkpoint()
            await s.close()
            await s.close()  # idempotent
        with pytest.raises(StorageError, match="unknown storage URL scheme"):
            await open_storage("mysql://db/kluis", fsync=False)

    asyncio.run(main())
    assert database_path(tmp_path) == tmp_path / "kluis.db"


def test_schema_files_are_packaged() -> None:
    from kluis.server.storage._sqlite_db import schema_deltas

    versions = [v for v, _ in schema_deltas()]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_a_group_commit_that_finds_the_write_lock_taken_waits_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    """Another connection (the checkpointer emptying the WAL, ``kluis admin``) holds the write lock:
    the envelopes wait on the event loop, which keeps serving everything else, and are stored once
    the lock is free. Waiting in SQLite's busy handler instead froze the loop for every connection."""

    async def body() -> None:
        path = tmp_path / "kluis.db"
        storage = await open_storage(path, fsync=False)
        a = account(1)
        await storage.accounts.create(a)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            appending = asyncio.ensure_future(storage.mailbox.append([envelope(a.account_id, 1)]))
            started = asyncio.get_running_loop().time()
            for _ in range(20):  # each sleep returns on time: the loop is not held
                await asyncio.sleep(0.005)
            assert asyncio.get_running_loop().time() - started < 1.0
            assert not appending.done()
            other.execute("COMMIT")
            ((_, stored),) = await asyncio.wait_for(appending, 5)
            assert stored
            assert await storage.mailbox.count(a.account_id) == 1
        finally:
            other.close()
            await storage.close()

    asyncio.run(body())


# -- Held envelopes (MailboxStore.stage): pushed before they are written --------------------------


async def _staged(
    s: SqliteStorage, n: int, *, hold: tuple[int, int] | None = None, secrets: list[bytes] | None = None
) -> tuple[list[int], list[bool]]:
    """Stages ``n`` envelopes to account 1 (holding ``hold``; their ciphertexts go to ``secrets``);
    returns their seqs and a list that receives the ``done`` outcome."""
    a = account(1)
    if await s.accounts.get(a.account_id) is None:
        await s.accounts.create(a)
    staged = s.mailbox.stage([envelope(a.account_id, i, size=300) for i in range(n)])
    if secrets is not None:
        secrets.extend(item.ciphertext for item in staged.items)
    if hold is not None:
        staged.hold(*hold)
    outcome: list[bool] = []
    staged.submit(outcome.append)
    return [item.seq for item in staged.items], outcome


def _stored_seqs(s: SqliteStorage) -> list[int]:
    return [row[0] for row in s.db.conn.execute("SELECT seq FROM mailbox ORDER BY seq")]


def _on_disk(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_a_held_envelope_receipted_in_time_is_never_written(tmp_path: Path) -> None:
    """The recipient's receipt arrives while the envelope is held: no commit, no byte on disk (the
    database file and its WAL), and the sender's answer comes at once."""
    path = tmp_path / "kluis.db"
    secrets: list[bytes] = []

    async def main() -> None:
        s = await _open(path)
        s.mailbox.receipt_wait = 30.0
        seqs, outcome = await _staged(s, 3, hold=(0, 3), secrets=secrets)
        await asyncio.sleep(0.05)
        assert outcome == []  # held: neither written nor receipted
        s.mailbox.discard(account(1).account_id, seqs)
        assert outcome == [True]
        await asyncio.sleep(0.05)
        assert s.db.group_items["mailbox_append"] == 0
        assert s.db.group_items["mailbox_discard"] == 0  # nothing to delete either
        assert await s.mailbox.count(account(1).account_id) == 0
        await s.close()

    asyncio.run(main())
    disk = _on_disk(path)
    assert not any(secret in disk for secret in secrets)


def test_a_held_envelope_not_receipted_in_time_is_written(tmp_path: Path) -> None:
    async def main() -> None:
        s = await _open(tmp_path / "kluis.db")
        s.mailbox.receipt_wait = 0.05
        seqs, outcome = await _staged(s, 4, hold=(0, 4))
        await asyncio.sleep(0.01)
        assert outcome == []
        assert await s.mailbox.count(account(1).account_id) == 0
        await asyncio.sleep(0.2)
        assert outcome == [True]
        items = await s.mailbox.fetch(account(1).account_id, 0, 10)
        assert [i.seq for i in items] == seqs
        await s.close()

    asyncio.run(main())


def test_only_the_receipted_envelopes_of_a_frame_are_never_written(tmp_path: Path) -> None:
    """Part held and part not; some of the held ones receipted: the sender hears once all are
    durable, and exactly the others are stored."""

    async def main() -> None:
        s = await _open(tmp_path / "kluis.db")
        s.mailbox.receipt_wait = 0.1
        a = account(1).account_id
        seqs, outcome = await _staged(s, 6, hold=(2, 6))
        await asyncio.sleep(0.01)  # the unheld two are written with this loop pass's commit
        assert _stored_seqs(s) == seqs[:2]  # (a fetch would write the held ones: not that)
        s.mailbox.discard(a, [seqs[2], seqs[4]])
        assert outcome == []  # seqs[3] and seqs[5] are still held
        await asyncio.sleep(0.3)
        assert outcome == [True]
        assert _stored_seqs(s) == [seqs[0], seqs[1], seqs[3], seqs[5]]
        await s.close()

    asyncio.run(main())


def test_the_held_envelopes_timer_fires_once_per_deadline_on_uvloop(tmp_path: Path) -> None:
    """uvloop rounds a timer's delay to whole milliseconds, so a timer for a deadline a fraction of
    a millisecond ahead fires while the clock still reads before it; re-armed for the same deadline
    it spun for up to a millisecond each time (about 150 firings per deadline, a fifth of the
    relay's CPU at W2's 500 msg/s). Twenty holds a few tenths of a millisecond apart: each wait ends
    with one firing, maybe two."""
    calls = 0

    async def main() -> None:
        nonlocal calls
        s = await _open(tmp_path / "kluis.db")
        s.mailbox.receipt_wait = 0.01
        release = s.mailbox._release

        def counted() -> None:
            nonlocal calls
            calls += 1
            release()

        s.mailbox._release = counted  # type: ignore[method-assign]
        outcomes = []
        for k in range(20):
            _, outcome = await _staged(s, 1, hold=(0, 1))
            outcomes.append(outcome)
            await asyncio.sleep(0.0003 * (k % 7))
        await asyncio.sleep(0.1)
        assert all(o == [True] for o in outcomes)  # every held envelope was written in the end
        await s.close()

    uvloop.run(main())
    assert 1 <= calls <= 40


def test_a_fetch_writes_its_mailboxs_held_envelopes_first(tmp_path: Path) -> None:
    """A new connection of the mailbox drains it: it must find the envelopes pushed to the old one
    and not yet receipted, however long their wait."""

    async def main() -> None:
        s = await _open(tmp_path / "kluis.db")
        s.mailbox.receipt_wait = 30.0
        seqs, outcome = await _staged(s, 3, hold=(0, 3))
        items = await s.mailbox.fetch(account(1).account_id, 0, 10)
        assert [i.seq for i in items] == seqs
        assert outcome == [True]
        # A receipt now (from the old connection) deletes them like any stored envelope.
        s.mailbox.discard(account(1).account_id, seqs)
        await asyncio.sleep(0.01)
        assert await s.mailbox.count(account(1).account_id) == 0
        await s.close()

    asyncio.run(main())


def test_closing_writes_the_held_envelopes(tmp_path: Path) -> None:
    path = tmp_path / "kluis.db"
    outcomes: list[bool] = []

    async def main() -> None:
        s = await _open(path)
        s.mailbox.receipt_wait = 30.0
        _, outcome = await _staged(s, 5, hold=(0, 5))
        await s.close()
        outcomes.extend(outcome)

    asyncio.run(main())
    assert outcomes == [True]
    assert sqlite3.connect(path).execute("SELECT count(*) FROM mailbox").fetchone() == (5,)


def test_a_held_resend_of_a_stored_envelope_is_reported_as_one(tmp_path: Path) -> None:
    async def main() -> None:
        s = await _open(tmp_path / "kluis.db")
        s.mailbox.receipt_wait = 0.01
        a = account(1)
        await s.accounts.create(a)
        first = envelope(a.account_id, 7)
        [(stored_seq, new)] = await s.mailbox.append([first])
        assert new
        staged = s.mailbox.stage([first])
        staged.hold(0, 1)
        outcome: list[bool] = []
        staged.submit(outcome.append)
        await asyncio.sleep(0.1)
        assert outcome == [True]
        assert staged.duplicates == {0: stored_seq}
        assert await s.mailbox.count(a.account_id) == 1
        await s.close()

    asyncio.run(main())


def test_a_failed_write_of_held_envelopes_is_reported(tmp_path: Path) -> None:
    async def main() -> None:
        s = await _open(tmp_path / "kluis.db")
        s.mailbox.receipt_wait = 0.02
        _, outcome = await _staged(s, 2, hold=(0, 2))
        s.db.conn.execute("DROP TABLE mailbox")
        await asyncio.sleep(0.1)
        assert outcome == [False]
        assert not s.mailbox._unwritten  # nothing left behind to elide
        await s.close()

    asyncio.run(main())


def test_a_receipts_delete_waits_for_a_commit_that_writes_envelopes_or_a_moment(tmp_path: Path) -> None:
    """Deletes alone do not make a commit per loop pass: they join the next append's commit, or are
    committed after DISCARD_WAIT_S."""

    async def main() -> None:
        s = await _open(tmp_path / "kluis.db")
        a = account(1)
        await s.accounts.create(a)
        seqs = [seq for seq, _ in await s.mailbox.append([envelope(a.account_id, i) for i in range(4)])]
        commits = s.db.commit_count
        s.mailbox.discard(a.account_id, seqs[:1])
        await asyncio.sleep(0)
        s.mailbox.discard(a.account_id, seqs[1:2])
        await asyncio.sleep(0.01)
        assert s.db.commit_count == commits  # waiting for company
        assert _stored_seqs(s) == seqs
        await s.mailbox.append([envelope(a.account_id, 9)])  # one commit for it and both deletes
        assert s.db.commit_count == commits + 1
        assert _stored_seqs(s)[:2] == seqs[2:]
        s.mailbox.discard(a.account_id, seqs[2:3])
        await asyncio.sleep(DISCARD_WAIT_S + 0.1)  # alone: committed after the wait
        assert s.db.commit_count == commits + 2
        assert _stored_seqs(s)[:1] == seqs[3:]
        s.mailbox.discard(a.account_id, seqs[3:])
        await s.close()  # closing commits what is pending

    asyncio.run(main())
    conn = sqlite3.connect(tmp_path / "kluis.db")
    assert conn.execute(
        "SELECT count(*) FROM mailbox WHERE envelope_id != ?", ((9).to_bytes(16, "big"),)
    ).fetchone() == (0,)


def test_revocation_leaves_no_held_envelope_to_be_written(tmp_path: Path) -> None:
    """Envelopes held for an account when it is revoked are never written (its mailbox is gone)."""
    path = tmp_path / "kluis.db"
    secrets: list[bytes] = []

    async def main() -> None:
        s = await _open(path)
        s.mailbox.receipt_wait = 0.05
        _, outcome = await _staged(s, 3, hold=(0, 3), secrets=secrets)
        await s.accounts.revoke(account(1).account_id, b"statement")
        assert outcome == [True]
        await asyncio.sleep(0.2)  # past the wait: nothing is written
        assert _stored_seqs(s) == []
        assert s.db.group_items["mailbox_append"] == 0
        await s.close()

    asyncio.run(main())
    assert not any(secret in _on_disk(path) for secret in secrets)


def test_a_cancelled_store_leaves_the_others_in_its_commit_answered(tmp_path: Path) -> None:
    """Relay.store's caller is cancelled while its envelopes are in a group commit: the commit still
    answers everyone else in it (the storage calls its callers back from inside the commit)."""
    from kluis.relay import frames as f
    from kluis.server.relay import Relay, Screened

    async def main() -> None:
        s = await _open(tmp_path / "kluis.db")
        a = account(1)
        await s.accounts.create(a)
        relay = Relay(s, pass_secret=bytes(32), clock=lambda: 1.7e9)
        first = envelope(a.account_id, 1)
        cancelled = asyncio.create_task(
            relay.store(Screened([(first.envelope_id, f.SendStatus.OK)], [(0, first)], len(first.ciphertext)))
        )
        other = asyncio.create_task(s.mailbox.append([envelope(a.account_id, 2)]))
        await asyncio.sleep(0)  # both staged in this loop pass's commit
        cancelled.cancel()
        assert [new for _, new in await asyncio.wait_for(other, 2)] == [True]
        assert await s.mailbox.count(a.account_id) == 2
        await s.close()

    asyncio.run(main())


# -- The writer thread (SqliteDatabase: large group commits run off the event loop) ---------------


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection takes the write lock, so a commit started now stays in flight until it
    is released (from a timer thread: the loop may be waiting for that commit)."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_large_group_commit_runs_in_the_writer_thread_while_the_loop_goes_on(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "kluis.db"
        s = await _open(path)
        a, b = account(1), account(2)
        await s.accounts.create(a)
        await s.accounts.create(b)
        other = _hold_write_lock(path)
        try:
            appending = asyncio.ensure_future(
                s.mailbox.append([envelope(a.account_id, i) for i in range(THREAD_MIN_ROWS)])
            )
            for _ in range(10):  # each sleep returns on time: the commit waits in its own thread
                await asyncio.sleep(0.005)
            assert s.db.threaded_commits == 1
            assert not appending.done()
            # Reads go on meanwhile (a second connection), and see the last commit.
            assert await s.accounts.get(b.account_id) is not None
            assert await s.mailbox.fetch(a.account_id, 0, 1_000) == []
            # A named transaction waits for the commit in flight, which owns the write connection.
            threading.Timer(0.1, other.execute, ("COMMIT",)).start()
            await s.accounts.create(account(3))
            assert s.db.commits["group_commit"] == 1  # committed before the account was created
            assert all(new for _, new in await appending)
            assert len(await s.mailbox.fetch(a.account_id, 0, 1_000)) == THREAD_MIN_ROWS
        finally:
            other.close()
            await s.close()

    asyncio.run(main())


def test_a_fetch_does_not_return_what_a_commit_in_flight_deletes(tmp_path: Path) -> None:
    """A receipt's delete in a commit still in flight: a new connection of the mailbox, fetching, is
    not sent those envelopes again (the fetch waits for that commit)."""

    async def main() -> None:
        path = tmp_path / "kluis.db"
        s = await _open(path)
        a = account(1)
        await s.accounts.create(a)
        old = [seq for seq, _ in await s.mailbox.append([envelope(a.account_id, i) for i in range(3)])]
        s.db.thread_min_rows = 1
        other = _hold_write_lock(path)
        try:
            s.mailbox.discard(a.account_id, old)
            appending = asyncio.ensure_future(s.mailbox.append([envelope(a.account_id, 9)]))
            await asyncio.sleep(0.01)  # the append and the deletes are in flight, waiting for the lock
            assert s.db.threaded_commits == 1
            threading.Timer(0.1, other.execute, ("COMMIT",)).start()
            fetched = await s.mailbox.fetch(a.account_id, 0, 100)
            assert [item.envelope_id for item in fetched] == [(9).to_bytes(16, "big")]
            await appending
        finally:
            other.close()
            await s.close()

    asyncio.run(main())


def test_a_failed_commit_in_the_writer_thread_reaches_every_waiter(tmp_path: Path) -> None:
    async def main() -> None:
        s = await _open(tmp_path / "kluis.db")
        a = account(1)
        await s.accounts.create(a)
        await s.mailbox.append([envelope(a.account_id, 0)])
        s.db.thread_min_rows = 1
        s.db.conn.execute("DROP TABLE mailbox")
        results = await asyncio.gather(
            *(s.mailbox.append([envelope(a.account_id, i)]) for i in range(1, 4)), return_exceptions=True
        )
        assert s.db.threaded_commits == 1
        assert all(isinstance(r, StorageError) for r in results)
        assert not s.db.conn.in_transaction
        await s.close()

    asyncio.run(main())


@given(st.lists(st.integers(min_value=0, max_value=300_000), max_size=3 * MULTIROW_MAX))
def test_multirow_chunks_cover_the_rows_in_few_shapes(sizes: list[int]) -> None:
    rows = [(i, bytes(size)) for i, size in enumerate(sizes)]
    chunks = multirow_chunks(rows, blob=1)
    assert [row for chunk in chunks for row in chunk] == rows
    for chunk in chunks:
        assert len(chunk) & (len(chunk) - 1) == 0
        assert 0 < len(chunk) <= MULTIROW_MAX
        if len(chunk) > 1:  # a single row may be as large as it is
            assert sum(len(cast(bytes, row[1])) for row in chunk) <= MULTIROW_MAX_BYTES
    assert len(multirow_chunks(rows)) <= len(rows) // MULTIROW_MAX + MULTIROW_MAX.bit_length()
