"""A throwaway Redis server for the tests: ``redis-server`` on a free loopback port, nothing saved to
disk, its files in a temporary directory, stopped by its PID (``kluis.bench.services.RedisServer``,
which the benchmarks start too; this module adds the fixture).

The binary is ``redis-server`` on ``PATH`` (Debian's ``redis-server`` package, which
``scripts/services.sh`` installs when missing). It runs as whoever runs the tests (root is fine).
If it cannot be started the tests that need it fail, unless ``KLUIS_TEST_NO_REDIS=1`` turns them into
skips (local runs), like ``KLUIS_TEST_NO_POSTGRES`` for PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kluis.bench.services import RedisServer, RedisUnavailable
from kluis.bench.services import redis_ping as ping

SKIP_ENV = "KLUIS_TEST_NO_REDIS"

__all__ = ["SKIP_ENV", "RedisServer", "RedisUnavailable", "ping", "redis_server"]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis server of its own for one test (it starts in milliseconds)."""
    try:
        server = RedisServer.start()
    except (RedisUnavailable, OSError) as exc:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"Redis unavailable ({SKIP_ENV}=1): {exc}")
        pytest.fail(f"Redis unavailable: {exc} (set {SKIP_ENV}=1 to skip these tests locally)")
    try:
        yield server
    finally:
        server.stop()
