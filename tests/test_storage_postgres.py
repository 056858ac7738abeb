"""PostgreSQL-only storage properties: the seizure profile of its schema, schema versions, one schema
source for both engines, several relay processes on one database, durability settings, a server
restart, and the relay end to end on PostgreSQL.

The behaviour shared with the other backends is in tests/test_storage_conformance.py. The cluster is
tests/pg_support.py's (a throwaway one per test run; each test gets a fresh database).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from kluis._schema import load_deltas, render
from kluis.cli.main import cli
from kluis.server.codes import hash_code, new_code
from kluis.server.config import ConfigError, load_config
from kluis.server.storage import SchemaTooNew, StorageError, StoredEnvelope, open_storage
from kluis.server.storage._schema_version import SCHEMA_COMPAT_VERSION, SCHEMA_VERSION, schema_deltas
from kluis.server.storage.postgres import PostgresStorage
from tests.pg_support import PostgresCluster
from tests.storage_support import account, envelope
from tests.test_storage_sqlite import SEIZURE_PROFILE

ALLOWED_INDEXES = {
    "mailbox_expiry",
    # primary keys and UNIQUE (recipient, envelope_id), named by PostgreSQL
    "activation_codes_pkey",
    "accounts_pkey",
    "signed_prekeys_pkey",
    "one_time_prekeys_pkey",
    "envelope_keys_pkey",
    "mailbox_pkey",
    "mailbox_recipient_envelope_id_key",
    "schema_version_pkey",
}


def _migrate(url: str) -> None:
    """Opens (creating the schema) and closes."""

    async def main() -> None:
        await (await _open(url)).close()

    asyncio.run(main())


async def _open(url: str) -> PostgresStorage:
    storage = await open_storage(url, fsync=False)
    assert isinstance(storage, PostgresStorage)
    return storage


def _sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement.encode(), params)
        return cur.fetchall() if cur.description else []


def _with_storage(url: str, body: Callable[[PostgresStorage], Awaitable[None]]) -> None:
    async def main() -> None:
        s = await _open(url)
        try:
            await body(s)
        finally:
            await s.close()

    asyncio.run(main())


class TestSeizureProfile:
    def test_tables_columns_and_types(self, postgres_url: str) -> None:
        _migrate(postgres_url)
        columns = _sql(
            postgres_url,
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position",
        )
        found: dict[str, list[str]] = {}
        for table, column, data_type in columns:
            found.setdefault(table, []).append(column)
            # Only opaque bytes and integers: no text, no timestamp type anywhere.
            assert data_type in ("bytea", "bigint"), (table, column, data_type)
        assert found == SEIZURE_PROFILE
        kinds = _sql(
            postgres_url,
            "SELECT c.relkind, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema()",
        )
        for kind, name in kinds:
            # tables, their indexes; no sequence (a global arrival counter), view or other relation
            assert kind in ("r", "i"), (kind, name)
            if kind == "i":
                assert name in ALLOWED_INDEXES, name
        triggers = _sql(
            postgres_url,
            "SELECT count(*) FROM information_schema.triggers WHERE trigger_schema = current_schema()",
        )
        assert triggers == [(0,)]

    def test_commit_timestamps_are_off_and_commits_synchronous(self, postgres_url: str) -> None:
        async def body(s: PostgresStorage) -> None:
            async with s.db.connection("test") as conn:
                for setting, value in (("track_commit_timestamp", "off"), ("synchronous_commit", "on")):
                    cur = await conn.execute(f"SHOW {setting}")
                    assert await cur.fetchone() == (value,)

        _with_storage(postgres_url, body)

    def test_ciphertexts_are_stored_without_compression(self, postgres_url: str) -> None:
        _migrate(postgres_url)
        storage = _sql(
            postgres_url,
            "SELECT attstorage FROM pg_attribute"
            " WHERE attrelid = 'mailbox'::regclass AND attname = 'ciphertext'",
        )
        assert storage == [("e",)]  # EXTERNAL, from 001_initial.sql.postgresql


class TestSchemaVersions:
    def test_version_is_recorded_and_a_newer_schema_refused(self, postgres_url: str) -> None:
        _migrate(postgres_url)
        assert _sql(postgres_url, "SELECT version, compat_version FROM schema_version") == [
            (SCHEMA_VERSION, SCHEMA_COMPAT_VERSION)
        ]
        _migrate(postgres_url)  # a second open applies nothing
        _sql(
            postgres_url,
            "UPDATE schema_version SET version = %s, compat_version = %s",
            (SCHEMA_VERSION + 5, SCHEMA_VERSION + 1),
        )
        with pytest.raises(SchemaTooNew) as info:
            _migrate(postgres_url)
        assert (info.value.database_compat, info.value.code_version) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
        _sql(postgres_url, "UPDATE schema_version SET compat_version = %s", (SCHEMA_COMPAT_VERSION,))
        _migrate(postgres_url)  # newer, but declared compatible with this code

    def test_foreign_database_is_refused(self, postgres_url: str) -> None:
        _sql(postgres_url, "CREATE TABLE t (x int)")
        with pytest.raises(StorageError, match="not a kluis database"):
            _migrate(postgres_url)

    def test_relays_starting_together_migrate_once(self, postgres_url: str) -> None:
        async def main() -> None:
            stores = await asyncio.gather(*(_open(postgres_url) for _ in range(4)))
            for s in stores:
                await s.close()

        asyncio.run(main())
        assert _sql(postgres_url, "SELECT count(*) FROM schema_version") == [(1,)]

    def test_unreachable_server_is_a_storage_error(self, postgres_cluster: PostgresCluster) -> None:
        url = postgres_cluster.url("no_such_database")
        with pytest.raises(StorageError) as info:
            _migrate(url)
        assert "no_such_database" not in str(info.value)  # the server's text is not passed on


class TestOneSchemaSource:
    def test_both_engines_apply_every_delta(self) -> None:
        for engine in ("sqlite", "postgresql"):
            assert [v for v, _ in schema_deltas(engine)] == list(range(1, SCHEMA_VERSION + 1))
        (_, sqlite_sql), *_ = schema_deltas("sqlite")
        (_, pg_sql), *_ = schema_deltas("postgresql")
        assert "WITHOUT ROWID" in sqlite_sql
        assert "SET STORAGE EXTERNAL" not in sqlite_sql  # the PostgreSQL-only file is not SQLite's
        assert "BLOB" not in pg_sql
        assert "WITHOUT ROWID" not in pg_sql
        assert pg_sql.rstrip().endswith("SET STORAGE EXTERNAL;")  # the engine's own file runs last

    def test_render(self) -> None:
        sql = "CREATE TABLE t (a BLOB NOT NULL, n INTEGER, blobby INTEGER) WITHOUT ROWID;"
        assert render(sql, "sqlite") == sql
        assert render(sql, "postgresql") == "CREATE TABLE t (a BYTEA NOT NULL, n BIGINT, blobby BIGINT);"

    def test_client_schema_is_read_as_it_is(self) -> None:
        # The client's single-engine schema: no engine, no rendering, no engine-only files.
        files = resources.files("kluis.client").joinpath("schema")
        texts = sorted(
            (int(e.name[:3]), e.read_text(encoding="utf-8"))
            for e in files.iterdir()
            if e.name.endswith(".sql")
        )
        assert load_deltas("kluis.client", "schema") == texts


class TestSeveralRelays:
    """Two PostgresStorage objects on one database stand for two relay processes."""

    def test_appends_to_one_recipient_from_two_relays(self, postgres_url: str) -> None:
        async def main() -> None:
            a, b = await _open(postgres_url), await _open(postgres_url)
            try:
                r = account(1)
                await a.accounts.create(r)

                async def send(s: PostgresStorage, first: int) -> list[tuple[int, bool]]:
                    out = []
                    for i in range(first, first + 200, 10):
                        out += await s.mailbox.append([envelope(r.account_id, i + k) for k in range(10)])
                    return out

                results = await asyncio.gather(*(send(s, n * 1000) for n, s in enumerate((a, b, a, b, a, b))))
                seqs = [seq for per_sender in results for seq, new in per_sender if new]
                assert len(seqs) == len(set(seqs)) == 1200
                for per_sender in results:  # each sender's envelopes are numbered in its order
                    own = [seq for seq, _ in per_sender]
                    assert own == sorted(own)
                assert await b.mailbox.count(r.account_id) == 1200
                # A resend through the other relay is recognised.
                again = await b.mailbox.append([envelope(r.account_id, 0)])
                assert again == [(results[0][0][0], False)]
            finally:
                await a.close()
                await b.close()

        asyncio.run(main())

    def test_bundle_fetches_from_two_relays_never_share_a_key(self, postgres_url: str) -> None:
        async def main() -> None:
            a, b = await _open(postgres_url), await _open(postgres_url)
            try:
                r = account(1)
                await a.accounts.create(r)
                await a.directory.set_signed_prekey(r.account_id, b"spk")
                await a.directory.set_last_resort_kem(r.account_id, b"lr")
                await a.directory.set_envelope_keys(r.account_id, [b"env"])
                await a.directory.add_one_time_prekeys(r.account_id, [(i, b"otk%d" % i) for i in range(40)])
                await a.directory.add_kem_prekeys(r.account_id, [(i, b"kem%d" % i) for i in range(40)])
                entries = await asyncio.gather(
                    *(s.directory.take_bundle(r.account_id) for _ in range(30) for s in (a, b))
                )
                taken = [e for e in entries if e is not None]
                assert len(taken) == 60
                otks = [e.one_time_prekey for e in taken if e.one_time_prekey is not None]
                kems = [e.kem_prekey for e in taken if not e.kem_is_last_resort]
                assert len(otks) == len(set(otks)) == 40
                assert len(kems) == len(set(kems)) == 40
                assert sorted(e.one_time_left for e in taken) == [0] * 21 + list(range(1, 40))
            finally:
                await a.close()
                await b.close()

        asyncio.run(main())


class TestGroupCommit:
    def test_concurrent_sends_share_a_transaction(self, postgres_url: str) -> None:
        async def body(s: PostgresStorage) -> None:
            r = account(1)
            await s.accounts.create(r)
            before = s.db.commits["group_commit"]
            results = await asyncio.gather(
                *(s.mailbox.append([envelope(r.account_id, i)]) for i in range(100))
            )
            assert all(new for [(_, new)] in results)
            assert s.db.commits["group_commit"] - before <= 2
            stored = await s.mailbox.fetch(r.account_id, 0, 200)
            # receipts of one loop pass are one DELETE in one commit too
            before = s.db.commits["group_commit"]
            deleted = await asyncio.gather(*(s.mailbox.delete(r.account_id, [i.seq]) for i in stored))
            assert sum(deleted) == 100
            assert s.db.commits["group_commit"] - before <= 2

        _with_storage(postgres_url, body)

    def test_a_failed_commit_acknowledges_nothing(self, postgres_url: str) -> None:
        async def body(s: PostgresStorage) -> None:
            r = account(1)
            await s.accounts.create(r)
            await s.mailbox.append([envelope(r.account_id, 0)])  # the recipient is known from now on
            _sql(postgres_url, "ALTER TABLE mailbox ADD CONSTRAINT small CHECK (length(ciphertext) < 100)")
            results = await asyncio.gather(
                s.mailbox.append([envelope(r.account_id, 1)]),
                s.mailbox.append([envelope(r.account_id, 2, size=500)]),  # fails the whole group
                return_exceptions=True,
            )
            assert all(isinstance(x, StorageError) for x in results), results
            assert "small" not in str(results[0])  # names the kind of error, not the server's text
            assert await s.mailbox.count(r.account_id) == 1
            _sql(postgres_url, "ALTER TABLE mailbox DROP CONSTRAINT small")
            assert (await s.mailbox.append([envelope(r.account_id, 1)]))[0][1]

        _with_storage(postgres_url, body)

    def test_revoke_after_queued_appends(self, postgres_url: str) -> None:
        async def body(s: PostgresStorage) -> None:
            r = account(1)
            await s.accounts.create(r)
            await s.mailbox.append([envelope(r.account_id, 0)])
            appends = [
                asyncio.ensure_future(s.mailbox.append([envelope(r.account_id, i)])) for i in range(1, 5)
            ]
            await asyncio.sleep(0)  # they are queued for the next group commit
            await s.accounts.revoke(r.account_id, b"statement")
            await asyncio.gather(*appends)
            assert await s.mailbox.count(r.account_id) == 0  # queued before the revocation: deleted too

        _with_storage(postgres_url, body)


def test_server_restart_fails_cleanly_then_recovers(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    async def main() -> None:
        s = await _open(postgres_url)
        try:
            r = account(1)
            await s.accounts.create(r)
            await s.mailbox.append([envelope(r.account_id, 0)])
            await asyncio.to_thread(postgres_cluster.restart)
            stored = failed = 0
            for i in range(1, 200):
                try:
                    await s.mailbox.append([envelope(r.account_id, i)])
                    stored += 1
                    if stored >= 3:
                        break
                except StorageError:  # a connection the restart broke: not acknowledged
                    failed += 1
                    await asyncio.sleep(0.05)
            assert stored == 3, "the storage did not recover after the server restarted"
            assert await s.mailbox.count(r.account_id) == 1 + stored  # only what was acknowledged
        finally:
            await s.close()

    asyncio.run(main())


def test_relay_round_trip_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """``kluis server --database postgresql://...``: the real server, registrations, keys, a bundle
    fetch, a live delivery, an offline mailbox drained on connect, receipts."""
    from kluis.relay import frames as f
    from tests.server_support import new_user, running_server

    async def main() -> None:
        codes = [new_code() for _ in range(2)]
        s = await _open(postgres_url)
        await s.codes.add_codes([hash_code(c) for c in codes], 30)
        await s.close()
        async with running_server(tmp_path / "data", database=postgres_url) as server:
            alice, bob = await new_user(server, codes[0]), await new_user(server, codes[1])
            for user in (alice, bob):
                await user.connect()
                assert (await user.upload()).one_time_left == 5
            await server.http.bundle(bob.account, bob.token)
            sender = await alice.sender()
            live = os.urandom(16)
            statuses = await sender.send_envelopes(
                [f.OutgoingEnvelope(live, bob.account, bob.token, b"sealed live")]
            )
            assert statuses == {live: f.SendStatus.OK}
            assert bob.mailbox is not None
            (delivery,) = (await bob.mailbox.expect(f.Deliver)).deliveries
            assert (delivery.envelope_id, delivery.envelope) == (live, b"sealed live")
            await bob.mailbox.send(f.Receipt((delivery.seq,)))
            await bob.mailbox.close()
            # Bob offline: three envelopes wait in PostgreSQL, then drain in order on connect.
            waiting = [os.urandom(16) for _ in range(3)]
            statuses = await sender.send_envelopes(
                [
                    f.OutgoingEnvelope(i, bob.account, bob.token, b"sealed %d" % n)
                    for n, i in enumerate(waiting)
                ]
            )
            assert set(statuses.values()) == {f.SendStatus.OK}
            assert _sql(postgres_url, "SELECT count(*) FROM mailbox") == [(3,)]
            await bob.connect()
            got: list[f.Delivery] = []
            while len(got) < 3:
                got += (await bob.mailbox.expect(f.Deliver)).deliveries
            assert [d.envelope_id for d in got] == waiting
            await bob.mailbox.send(f.Receipt(tuple(d.seq for d in got)))
            for _ in range(100):
                if _sql(postgres_url, "SELECT count(*) FROM mailbox") == [(0,)]:
                    break
                await asyncio.sleep(0.02)
            assert _sql(postgres_url, "SELECT count(*) FROM mailbox") == [(0,)]
            for user in (alice, bob):
                assert user.mailbox is not None
                await user.mailbox.close()
        assert not (tmp_path / "data" / "kluis.db").exists()  # nothing went to SQLite

    asyncio.run(main())


def test_stored_envelopes_are_opaque_bytes(postgres_url: str) -> None:
    async def body(s: PostgresStorage) -> None:
        r = account(1)
        await s.accounts.create(r)
        big = StoredEnvelope(r.account_id, b"\x01" * 16, os.urandom(140_000), 20_030)
        [(seq, new)] = await s.mailbox.append([big])
        assert new
        [item] = await s.mailbox.fetch(r.account_id, 0, 10)
        assert (item.seq, item.envelope_id, item.ciphertext) == (seq, big.envelope_id, big.ciphertext)

    _with_storage(postgres_url, body)


class TestConfiguration:
    def test_database_setting(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        assert load_config(None, {"data_dir": tmp_path}).database == ""  # SQLite in the data directory
        monkeypatch.setenv("KLUIS_SERVER_DATABASE", "postgresql://kluis@db/kluis")
        assert load_config(None, {"data_dir": tmp_path}).database == "postgresql://kluis@db/kluis"
        with pytest.raises(ConfigError) as info:
            load_config(None, {"data_dir": tmp_path, "database": "mysql://user:hunter2@db/kluis"})
        assert "postgresql://" in str(info.value)
        assert "hunter2" not in str(info.value)  # a URL may carry a password: never echoed

    def test_cli_option(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(cli, ["server", "--data", str(tmp_path), "--database", "sqlite:///x.db"])
        assert result.exit_code != 0
        assert "database" in result.output
        assert "must be empty" in result.output


def test_bundle_race_through_the_server_process_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """``kluis server`` as a child process with KLUIS_SERVER_DATABASE: 64 concurrent bundle fetches
    over HTTP against a stock of 40 hand out every one-time key exactly once (as
    tests/test_server_bundle_race.py does on SQLite)."""
    import aiohttp

    from kluis.protocol.bundle import PreKeyBundle
    from kluis.protocol.keys import KeyKind
    from tests.server_process import ServerProcess
    from tests.server_support import Remote, new_user

    stock, fetchers = 40, 64
    code = new_code()

    async def add_code() -> None:
        s = await _open(postgres_url)
        await s.codes.add_codes([hash_code(code)], 30)
        await s.close()

    asyncio.run(add_code())
    server = ServerProcess(tmp_path / "data", env={"KLUIS_SERVER_DATABASE": postgres_url})
    server.start()

    async def scenario() -> list[PreKeyBundle]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=fetchers)) as session:
            remote = Remote(server.url, session)
            bob = await new_user(remote, code, one_time=stock, kem_one_time=stock)
            await bob.connect()
            assert (await bob.upload()).one_time_left == stock
            raw = await asyncio.gather(*(remote.http.bundle(bob.account, bob.token) for _ in range(fetchers)))
            assert bob.mailbox is not None
            await bob.mailbox.close()
            return [PreKeyBundle.from_bytes(b) for b in raw]

    try:
        bundles = asyncio.run(scenario())
    finally:
        assert server.stop() == 0
    one_time = [b.one_time_prekey.key_id for b in bundles if b.one_time_prekey is not None]
    kem = [b.kem_prekey.key_id for b in bundles if b.kem_prekey.kind is KeyKind.KEM_ONE_TIME]
    assert len(one_time) == len(set(one_time)) == stock
    assert len(kem) == len(set(kem)) == stock
    assert not (tmp_path / "data" / "kluis.db").exists()
