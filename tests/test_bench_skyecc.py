"""`kluis bench skyecc`: the JSON contract of issue 5's Sky ECC day, nothing lost, on a tiny day.

Shape and accounting only, not speed (a benchmark is not a test). It runs as a subprocess, as a user
would: the bench provisions its accounts, starts its own server and generator processes, and must
stop them and clean up on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kluis.bench.services import BenchError, find_pg_bindir
from kluis.bench.skyecc import Options, Plan
from kluis.bench.wsclient import OP_BINARY, _frame_at, client_frame

CONTRACT = ("messages", "accounts", "seconds", "msgs_per_s", "p99_ms", "lost")


def _bench(tmp_path: Path, *args: str, timeout: float = 180) -> dict[str, Any]:
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", "from kluis.cli.main import main; main()", "bench", "skyecc", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TMPDIR": str(env_tmp)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(env_tmp.iterdir()) == []  # data directory (and cluster) removed
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _check_day(result: dict[str, Any], messages: int, accounts: int) -> None:
    assert list(result)[: len(CONTRACT)] == list(CONTRACT)
    for key in CONTRACT:
        assert isinstance(result[key], int | float), key
    assert result["messages"] == messages
    assert result["accounts"] == accounts
    assert result["lost"] == 0
    assert result["acknowledged"] == messages
    assert result["delivered"] == messages  # each to the account it was addressed to, once
    assert result["delivered_live"] + result["delivered_from_storage"] == messages
    assert result["misrouted"] == 0
    assert result["refused"] == 0
    assert result["errors"] == []
    assert result["msgs_per_s"] > 0
    assert result["seconds"] > 0
    assert result["joined"] == result["active_accounts"] - result["connected"]  # the accounts rotated


def test_a_tiny_day_on_sqlite_loses_nothing(tmp_path: Path) -> None:
    result = _bench(tmp_path, "--messages", "2000", "--accounts", "500", "--seed", "7")
    _check_day(result, 2000, 500)
    assert result["connected"] == 100  # a fifth of the accounts
    assert result["delivered_from_storage"] > 0  # some went to accounts that connected later
    assert result["backend"] == "sqlite"
    assert result["config"]["seed"] == 7
    assert "how" in result["provisioning"]


def test_a_tiny_day_on_postgres_loses_nothing(tmp_path: Path) -> None:
    try:
        find_pg_bindir()
    except BenchError as exc:
        if os.environ.get("KLUIS_TEST_NO_POSTGRES") == "1":
            pytest.skip(f"PostgreSQL unavailable (KLUIS_TEST_NO_POSTGRES=1): {exc}")
        pytest.fail(f"PostgreSQL unavailable: {exc} (set KLUIS_TEST_NO_POSTGRES=1 to skip locally)")
    result = _bench(tmp_path, "--messages", "1000", "--accounts", "300", "--backend", "postgres")
    _check_day(result, 1000, 300)
    assert result["backend"] == "postgres"
    assert isinstance(result["database_cpu_pct"], float)


def test_the_default_day_is_sky_eccs() -> None:
    opts = Options()
    assert (opts.messages, opts.accounts) == (3_000_000, 171_000)
    plan = Plan.of(opts)
    assert plan.connected == 10_000
    assert plan.rotate == 1_000
    assert plan.active == 10_000 + 23 * 1_000
    small = Plan.of(Options(messages=10, accounts=50, hours=24))
    assert small.active <= 50


def test_nodes_need_postgres() -> None:
    from kluis.bench.services import Deployment

    with pytest.raises(BenchError, match="--backend postgres"):
        Deployment(Path("/nonexistent"), nodes=2, max_connections=10)


def test_client_frames_are_masked_and_server_frames_parse() -> None:
    payload = random.randbytes(300)
    frame = client_frame(OP_BINARY, payload)
    assert frame[0] == 0x80 | OP_BINARY
    assert frame[1] == 0x80 | 126  # masked, 16-bit length
    mask = frame[4:8]
    unmasked = bytes(b ^ mask[i % 4] for i, b in enumerate(frame[8:]))
    assert unmasked == payload
    server = bytes((0x82, 126)) + (300).to_bytes(2, "big") + payload + bytes((0x82, 5)) + b"abc"
    assert _frame_at(server, 0, len(server)) == (4, 304)
    assert _frame_at(server, 304, len(server)) is None  # the second frame is not complete yet


def test_provisioned_accounts_are_registered_and_left_envelopes_are_counted(tmp_path: Path) -> None:
    import asyncio

    from kluis.bench.skyecc import _still_stored, derive, provision
    from kluis.bench.skyecc_load import derive_account
    from kluis.protocol.keys import IdentityPublicKey
    from kluis.server.storage import AccountId, StoredEnvelope, open_storage

    secret = os.urandom(32)
    target = str(tmp_path / "kluis.db")
    timing = provision(target, secret, 3, postgres=False)
    assert set(timing) == {"keys_s", "store_s"}
    account_id, identity, token = derive_account(secret, 2)
    assert account_id == derive(secret, 2, b"id", 16)

    async def check() -> None:
        storage = await open_storage(target, fsync=False)
        try:
            account = await storage.accounts.get(AccountId(account_id))
            assert account is not None
            assert IdentityPublicKey.from_bytes(account.identity).to_bytes() == identity.public.to_bytes()
            assert account.token_hash == hashlib.sha256(token).digest()
            envelope = StoredEnvelope(AccountId(account_id), os.urandom(16), b"x" * 10, account.expires_day)
            await storage.mailbox.append([envelope])
        finally:
            await storage.close()

    asyncio.run(check())
    assert asyncio.run(_still_stored(target, [account_id])) == 1
