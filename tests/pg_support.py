"""A throwaway PostgreSQL cluster for the tests: ``initdb`` into a temporary directory, ``pg_ctl start`` on
a free loopback port, one fresh database per test, ``pg_ctl stop -m fast`` at the end of the session
(``kluis.bench.services.PostgresCluster``, which the benchmarks start too; this module adds the
fixtures).

The server binaries come from ``$KLUIS_PG_BIN`` (a directory), else the newest
``/usr/lib/postgresql/*/bin`` (Debian's layout), else ``initdb``/``pg_ctl`` on ``PATH``; ``scripts/test``
installs Debian's ``postgresql`` package when none is there (``scripts/services.sh``).

PostgreSQL refuses to run as root, so under root ``initdb`` and ``pg_ctl`` run as the ``postgres``
system user (``runuser``) in a directory it owns. Each pytest-xdist worker starts its own cluster
(its own directory and port): nothing is shared, so nothing needs a lock.

If PostgreSQL cannot be started the PostgreSQL tests *fail* (CI must not pass without them), unless
``KLUIS_TEST_NO_POSTGRES=1`` is set, which turns them into skips with the reason (local runs).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from kluis.bench.services import PostgresCluster, PostgresUnavailable, free_port

SKIP_ENV = "KLUIS_TEST_NO_POSTGRES"
TEST_SETTINGS = (
    "-c listen_addresses=127.0.0.1",
    "-c max_connections=100",
    "-c shared_buffers=32MB",
)
"""Smaller than the benchmark's: each pytest-xdist worker runs a cluster of its own."""

__all__ = ["SKIP_ENV", "PostgresCluster", "free_port", "postgres_cluster", "postgres_url"]


def _unavailable(reason: str) -> None:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"PostgreSQL unavailable ({SKIP_ENV}=1): {reason}")
    pytest.fail(f"PostgreSQL unavailable: {reason} (set {SKIP_ENV}=1 to skip these tests locally)")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The session's cluster, started on first use (a run without PostgreSQL tests starts none).

    pytest keeps a session fixture's failure or skip, so a cluster that cannot start is tried once."""
    try:
        cluster = PostgresCluster.start(TEST_SETTINGS)
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        _unavailable(str(exc))
        raise  # not reached: _unavailable skips or fails
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database of the session's cluster, for one test."""
    return postgres_cluster.create_database()
