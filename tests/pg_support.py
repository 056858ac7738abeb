"""A throwaway PostgreSQL cluster for the tests: ``initdb`` into a temporary directory, ``pg_ctl start`` on
a free loopback port, one fresh database per test, ``pg_ctl stop -m fast`` at the end of the session.

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

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SKIP_ENV = "KLUIS_TEST_NO_POSTGRES"
BIN_ENV = "KLUIS_PG_BIN"
SUPERUSER = "kluis"
START_TIMEOUT_S = 60
UNPRIVILEGED_USERS = ("postgres", "nobody")
"""Who runs the cluster when the tests run as root (the first that exists)."""


class PostgresUnavailable(Exception):
    """No PostgreSQL server could be found or started; the message says why."""


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    configured = os.environ.get(BIN_ENV)
    if configured:  # said explicitly: no fallback to another installation
        if all((Path(configured) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(configured)
        raise PostgresUnavailable(f"{BIN_ENV}={configured} holds no initdb, pg_ctl and postgres")
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )  # Debian's layout, newest version first
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres): install Debian's postgresql "
        f"package (scripts/test does, as root) or set {BIN_ENV}"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_as() -> str | None:
    """The unprivileged user to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresUnavailable("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL")


@dataclass
class PostgresCluster:
    """One running throwaway cluster; :meth:`create_database` hands out fresh, empty databases."""

    bindir: Path
    directory: Path
    port: int
    user: str | None
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _command(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return [*prefix, *args]

    def _ctl(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._command(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @classmethod
    def start(cls) -> PostgresCluster:
        bindir = find_bindir()
        user = _run_as()
        directory = Path(tempfile.mkdtemp(prefix="kluis-pg-"))
        if user is not None:
            shutil.chown(directory, user, user)
        cluster = cls(bindir, directory, 0, user)
        try:
            cluster._initdb()
            cluster._start_on_free_port()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _initdb(self) -> None:
        done = subprocess.run(
            self._command(
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--auth=trust",  # loopback only, a throwaway cluster of the test run
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {(done.stderr or done.stdout).strip()[-800:]}")

    def _start_on_free_port(self) -> None:
        log = self.directory / "server.log"
        last = ""
        for _ in range(3):  # another process may take the port between free_port() and the bind
            self.port = free_port()
            options = " ".join(
                (
                    "-c listen_addresses=127.0.0.1",
                    f"-p {self.port}",
                    f"-c unix_socket_directories={self.directory}",
                    "-c max_connections=100",
                    "-c shared_buffers=32MB",
                )
            )
            done = self._ctl("start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(log), "-o", options)
            if done.returncode == 0:
                return
            last = (done.stderr or done.stdout).strip()
            with contextlib.suppress(OSError):
                last += "\n" + log.read_text(errors="replace")[-1500:]
        raise PostgresUnavailable(f"pg_ctl start failed: {last}")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut (fault tests)."""
        log = self.directory / "server.log"
        # With -l the server's output goes to the log, not to a pipe we would wait on.
        done = self._ctl("restart", "-m", "fast", "-w", "-t", str(START_TIMEOUT_S), "-l", str(log))
        if done.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl restart failed: {(done.stderr or done.stdout).strip()}")

    def create_database(self) -> str:
        """A new empty database (``CREATE DATABASE`` from template0); returns its URL."""
        import psycopg

        name = f"kluis_test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def stop(self) -> None:
        if self.datadir.joinpath("postmaster.pid").exists():
            self._ctl("stop", "-m", "fast", "-w", timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"PostgreSQL unavailable ({SKIP_ENV}=1): {reason}")
    pytest.fail(f"PostgreSQL unavailable: {reason} (set {SKIP_ENV}=1 to skip these tests locally)")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The session's cluster, started on first use (a run without PostgreSQL tests starts none).

    pytest keeps a session fixture's failure or skip, so a cluster that cannot start is tried once."""
    try:
        cluster = PostgresCluster.start()
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
