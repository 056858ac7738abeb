"""Helpers for the storage tests: open a backend inside a fresh event loop, build accounts.

BACKENDS is what the conformance suite runs against; ``postgresql`` takes its database from the
``postgres_url`` fixture (tests/pg_support.py: a throwaway cluster, a fresh database per test)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from kluis.server.storage import Account, AccountId, Storage, StoredEnvelope, open_storage
from kluis.server.storage.sqlite import SqliteStorage

Body = Callable[[Storage], Awaitable[None]]


BACKENDS = ("memory", "sqlite", "sqlite-threaded", "postgresql")
"""``sqlite-threaded``: SQLite with every group commit in the writer thread (thread_min_rows 1), not
only the large ones."""
THREADED = "#threaded"


def storage_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest | None = None) -> str:
    """Where ``backend`` keeps this test's data; ``postgresql`` needs the test's ``request``."""
    if backend == "memory":
        return "memory:"
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'kluis.db'}"
    if backend == "sqlite-threaded":
        return f"sqlite://{tmp_path / 'kluis.db'}{THREADED}"
    if backend == "postgresql" and request is not None:
        url: str = request.getfixturevalue("postgres_url")
        return url
    raise ValueError(f"unknown backend {backend!r}")


def run_with(url: str, body: Body) -> None:
    threaded = url.endswith(THREADED)
    url = url.removesuffix(THREADED)

    async def main() -> None:
        storage = await open_storage(url, fsync=False)
        if threaded:
            assert isinstance(storage, SqliteStorage)
            storage.db.thread_min_rows = 1
        try:
            await body(storage)
        finally:
            await storage.close()

    asyncio.run(main())


def account(n: int = 0, *, expires_day: int = 20_000) -> Account:
    return Account(
        account_id=AccountId(n.to_bytes(16, "big")),
        identity=bytes([n % 256]) * 129,
        token_hash=bytes([(n + 1) % 256]) * 32,
        expires_day=expires_day,
    )


def envelope(recipient: AccountId, n: int, *, expiry_day: int = 20_030, size: int = 64) -> StoredEnvelope:
    return StoredEnvelope(recipient, n.to_bytes(16, "big"), os.urandom(size), expiry_day)
