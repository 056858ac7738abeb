"""What a relay benchmark starts for itself and stops after: relay nodes (``kluis server`` child
processes), a throwaway PostgreSQL cluster and a throwaway Redis server.

Every process is started here, by its own Popen handle, and only those are ever signalled (by PID).
PostgreSQL refuses to run as root, so under root ``initdb`` and ``pg_ctl`` run as the ``postgres``
system user (``runuser``) in a directory it owns, as tests/pg_support.py does for the tests.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kluis.bench.affinity import pin, split
from kluis.server.cluster import NodeError, NodeProcess, start_nodes, stop_nodes

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
PG_USER = "kluis"
PG_BIN_ENV = "KLUIS_PG_BIN"
PG_DATABASE = "kluis_bench"
PG_SETTINGS = (
    "-c listen_addresses=127.0.0.1",
    "-c max_connections=200",
    "-c shared_buffers=256MB",
    "-c max_wal_size=4GB",
    "-c log_min_messages=warning",
)
"""The throwaway cluster's settings: the defaults (``fsync`` and ``synchronous_commit`` on: durable
commits) but more shared buffers and WAL between checkpoints than a test cluster needs."""


class BenchError(Exception):
    """The benchmark could not run (a server did not start, a generator failed or timed out)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (/proc/<pid>/stat); 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def _children(pid: int) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                yield int(entry.name)


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM raises SystemExit while the bench runs, so its ``finally`` blocks stop what it started
    and remove its temporary directories (Python's default for SIGTERM skips them)."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- relay nodes --------------------------------------------------------------------------------


class Nodes:
    """N relay nodes sharing one database (and one Redis); the generators spread their streams over
    their URLs. One node on SQLite is the default deployment."""

    def __init__(self, servers: list[NodeProcess]) -> None:
        self.servers = servers
        self.services_cpu: Callable[[], float | None] = lambda: None
        """CPU seconds of what the nodes use beside themselves (PostgreSQL, Redis), if measured."""
        self.generator_cpus: set[int] | None = None
        """Where generator processes run, when the nodes have CPUs of their own."""

    @classmethod
    def start(
        cls,
        directory: Path,
        count: int,
        max_connections: int,
        *,
        database: str | None = None,
        redis: str | None = None,
    ) -> Nodes:
        """``kluis server --insecure-loopback`` processes (kluis.server.cluster), one after the other
        on one data directory: the send-pass secret (send-pass.key) must be the same on every node,
        since a client fetches its pass on one node and sends on another, and the first creates it.
        Settings given as ``KLUIS_SERVER_*`` variables reach them; the open-file limit raised in
        this process (raise_nofile) is inherited."""
        if count > 1 and database is None:
            raise BenchError("--nodes N>1 needs --backend postgres (nodes share one database)")
        env = {k: v for k, v in os.environ.items() if k.startswith("KLUIS_SERVER_")}
        # The default (10,000) is W4's count exactly; leave room for the control streams.
        env["KLUIS_SERVER_MAX_CONNECTIONS"] = str(max_connections)
        try:
            servers = start_nodes(
                count,
                data_dir=directory / "data",
                database=database,
                redis=redis,
                env=env,
                timeout=START_TIMEOUT_S,
            )
        except NodeError as exc:
            raise BenchError(str(exc)[-600:]) from None
        return cls(servers)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.servers]

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(s.pid) for s in self.servers)

    def rss_kib(self) -> int:
        return sum(_rss_kib(s.pid) for s in self.servers)

    def stop(self) -> None:
        stop_nodes(self.servers)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError("no VmRSS for the server process")


# -- PostgreSQL ---------------------------------------------------------------------------------


class PostgresUnavailable(BenchError):
    """No PostgreSQL server could be found or started; the message says why."""


def find_pg_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: ``$KLUIS_PG_BIN`` (then no
    fallback), else the newest ``/usr/lib/postgresql/*/bin`` (Debian's layout), else ``initdb`` on
    PATH."""
    configured = os.environ.get(PG_BIN_ENV)
    candidates = [Path(configured)] if configured else []
    if not configured:
        candidates += sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    if configured:
        raise PostgresUnavailable(f"{PG_BIN_ENV}={configured} holds no initdb, pg_ctl and postgres")
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres): install Debian's postgresql package "
        f"(scripts/services.sh does, as root), set {PG_BIN_ENV}, or pass --database URL of an existing"
        " database"
    )


def _run_as() -> str | None:
    """The unprivileged user to run PostgreSQL as (it refuses root), or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresUnavailable("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL")


def _pg_parent(user: str | None) -> str | None:
    """Where to make the cluster's directory: the usual temporary directory, unless PostgreSQL runs
    as another user who could not reach it (a private TMPDIR); then /tmp."""
    if user is None:
        return None
    base = Path(tempfile.gettempdir()).resolve()
    if all(p.stat().st_mode & 0o001 for p in (base, *base.parents)):
        return None
    return "/tmp"  # noqa: S108 - world-traversable; the directory itself is made private (mkdtemp)


@dataclass
class PostgresCluster:
    """A throwaway cluster, for the benchmarks and the tests: ``initdb`` into a temporary directory,
    ``pg_ctl start`` on a free loopback port (as the ``postgres`` user when run as root), fresh
    databases from :meth:`create_database`; :meth:`stop` stops it and removes the directory."""

    bindir: Path
    directory: Path
    port: int
    user: str | None
    settings: tuple[str, ...] = PG_SETTINGS
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _command(self, *args: str) -> list[str]:
        return [*(["runuser", "-u", self.user, "--"] if self.user else []), *args]

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - PostgreSQL's own tools, fixed arguments
            self._command(*args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def _ctl(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args, timeout=timeout)

    @classmethod
    def start(cls, settings: tuple[str, ...] = PG_SETTINGS) -> PostgresCluster:
        """Raises PostgresUnavailable (no binaries, initdb or pg_ctl failed)."""
        bindir = find_pg_bindir()
        user = _run_as()
        directory = Path(tempfile.mkdtemp(prefix="kluis-pg-", dir=_pg_parent(user)))
        if user is not None:
            shutil.chown(directory, user, user)
        cluster = cls(bindir, directory, 0, user, settings)
        try:
            cluster._initdb()
            cluster._start_on_free_port()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _initdb(self) -> None:
        done = self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            PG_USER,
            "--auth=trust",  # loopback only, a throwaway cluster
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {(done.stderr or done.stdout).strip()[-800:]}")

    def _start_on_free_port(self) -> None:
        last = ""
        for _ in range(3):  # another process may take the port between free_port() and the bind
            self.port = free_port()
            done = self.start_server()
            if done.returncode == 0:
                return
            last = (done.stderr or done.stdout).strip()
            with contextlib.suppress(OSError):
                last += "\n" + (self.directory / "server.log").read_text(errors="replace")[-1500:]
        raise PostgresUnavailable(f"pg_ctl start failed: {last}")

    def start_server(self) -> subprocess.CompletedProcess[str]:
        """``pg_ctl start`` on the cluster's port with its settings (again, after :meth:`stop_server`)."""
        options = " ".join(
            (*self.settings, f"-p {self.port}", f"-c unix_socket_directories={self.directory}")
        )
        log = str(self.directory / "server.log")
        return self._ctl("start", "-w", "-t", str(int(START_TIMEOUT_S)), "-l", log, "-o", options)

    def stop_server(self) -> subprocess.CompletedProcess[str]:
        """``pg_ctl stop -m fast``, keeping the cluster's files (fault tests)."""
        return self._ctl("stop", "-m", "fast", "-w", timeout=STOP_TIMEOUT_S * 3)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut (fault tests)."""
        # With -l the server's output goes to the log, not to a pipe we would wait on.
        log = str(self.directory / "server.log")
        done = self._ctl("restart", "-m", "fast", "-w", "-t", str(int(START_TIMEOUT_S)), "-l", log)
        if done.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl restart failed: {(done.stderr or done.stdout).strip()}")

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (``CREATE DATABASE`` from template0); returns its URL."""
        import psycopg

        name = name or f"kluis_test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        return None

    def cpu_seconds(self) -> float:
        """CPU seconds of the postmaster and its live children (the backends serving the relay).

        A backend that exited between two samples takes its CPU time with it: the relay's pool keeps
        its connections open, so over a run that is the rare reconnection."""
        pid = self.postmaster_pid()
        if pid is None:
            return 0.0
        return process_cpu_seconds(pid) + sum(process_cpu_seconds(c) for c in _children(pid))

    def stop(self) -> None:
        if self.datadir.joinpath("postmaster.pid").exists():
            self.stop_server()
        shutil.rmtree(self.directory, ignore_errors=True)


# -- Redis --------------------------------------------------------------------------------------
# One throwaway redis-server for the benchmarks and the tests (tests/redis_support.py adds the fixture).


class RedisUnavailable(BenchError):
    """No redis-server could be found or started; the message says why."""


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING on 127.0.0.1:``port`` (RESP, no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A throwaway ``redis-server`` on a loopback port, saving nothing to disk, its files in a
    temporary directory; :meth:`stop` signals only its own PID."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @classmethod
    def start(cls, port: int = 0) -> RedisServer:
        """Starts one on ``port`` (0: a free one); returns once it answers PING.

        Raises:
            RedisUnavailable: no ``redis-server`` on PATH (Debian's package), or it did not start.
        """
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable(
                "no redis-server: install Debian's redis-server package (scripts/services.sh does),"
                " or pass --redis URL"
            )
        server = cls(Path(tempfile.mkdtemp(prefix="kluis-redis-")), port)
        try:
            server._launch(binary)
        except BaseException:
            server.stop()
            raise
        return server

    def _launch(self, binary: str) -> None:
        last = ""
        for _ in range(3):  # another process may take a free port before redis binds it
            port = self.port or free_port()
            log = self.directory / "redis.log"
            args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--dir", str(self.directory), "--daemonize", "no", "--logfile", str(log)]
            self.process = subprocess.Popen(  # noqa: S603 - the system's redis-server, fixed arguments
                [binary, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and self.process.poll() is None:
                if redis_ping(port):
                    self.port = port
                    return
                time.sleep(0.02)
            self._terminate()
            with contextlib.suppress(OSError):
                last = log.read_text(errors="replace")[-800:]
            if self.port:  # a fixed port (a restart): no other to try
                break
        raise RedisUnavailable(f"redis-server did not start: {last.strip()}")

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL, as a crash (fault tests); :meth:`restart` brings it back on the same port."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None

    def restart(self) -> None:
        """Stops it and starts a new, empty one on the same port (nothing is saved)."""
        self._terminate()
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable("redis-server is gone from PATH")
        self._launch(binary)

    def cpu_seconds(self) -> float:
        return 0.0 if self.process is None else process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.directory, ignore_errors=True)


# -- a deployment: database, Redis and nodes together --------------------------------------------

BACKENDS = ("sqlite", "postgres")


class Deployment:
    """What one benchmark run serves from: SQLite in a data directory, or PostgreSQL (a throwaway
    cluster, or ``database``); with N > 1 nodes, Redis (``redis``, or a throwaway redis-server).

    :meth:`prepare` brings up the database (so the caller can provision into :attr:`target` before a
    node runs), :meth:`start_nodes` the relay nodes, :meth:`stop` everything it started.
    """

    def __init__(
        self,
        directory: Path,
        *,
        backend: str = "sqlite",
        database: str | None = None,
        nodes: int = 1,
        redis: str | None = None,
        max_connections: int,
        pin: bool = True,
    ) -> None:
        if backend not in BACKENDS:
            raise BenchError(f"unknown backend {backend!r} (sqlite or postgres)")
        if database is not None and backend != "postgres":
            raise BenchError("--database is a PostgreSQL URL: it needs --backend postgres")
        if nodes < 1:
            raise BenchError("--nodes must be at least 1")
        if nodes > 1 and backend != "postgres":
            raise BenchError("--nodes N>1 needs --backend postgres (the nodes share one database)")
        self.directory = directory
        self.backend = backend
        self.database = database
        self.node_count = nodes
        self.redis_url = redis
        self.max_connections = max_connections
        self.pin = pin
        self.placement: tuple[list[int], set[int]] | None = None
        """(node CPUs, generator CPUs) once the nodes are pinned (kluis.bench.affinity)."""
        self.cluster: PostgresCluster | None = None
        self.redis: RedisServer | None = None
        self.nodes: Nodes | None = None
        self.target: str = ""

    def prepare(self) -> str:
        """Starts what the nodes need; returns the storage target (a SQLite path or a URL)."""
        if self.node_count > 1 and self.redis_url is None:
            self.redis = RedisServer.start()
            self.redis_url = self.redis.url
        if self.backend == "postgres":
            if self.database is None:
                self.cluster = PostgresCluster.start()
                self.target = self.cluster.create_database(PG_DATABASE)
            else:
                self.target = self.database
        else:
            from kluis.server.storage import database_path

            data = self.directory / "data"
            data.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.target = str(database_path(data))
        return self.target

    def start_nodes(self) -> Nodes:
        database = self.target if self.backend == "postgres" else None
        redis = self.redis_url if self.node_count > 1 else None
        self.nodes = Nodes.start(
            self.directory, self.node_count, self.max_connections, database=database, redis=redis
        )
        self.nodes.services_cpu = self.services_cpu_seconds
        self.placement = split(self.node_count) if self.pin else None
        if self.placement is not None:
            for node, cpu in zip(self.nodes.servers, self.placement[0], strict=False):
                pin(node.pid, {cpu})
            self.nodes.generator_cpus = self.placement[1]
        return self.nodes

    def database_cpu_seconds(self) -> float | None:
        """The throwaway cluster's CPU seconds (None for SQLite, inside the nodes, or a given URL)."""
        return None if self.cluster is None else self.cluster.cpu_seconds()

    def redis_cpu_seconds(self) -> float | None:
        return None if self.redis is None else self.redis.cpu_seconds()

    def services_cpu_seconds(self) -> float | None:
        """PostgreSQL's and Redis's CPU seconds together (None when neither is ours to measure)."""
        parts = [x for x in (self.database_cpu_seconds(), self.redis_cpu_seconds()) if x is not None]
        return sum(parts) if parts else None

    def describe(self) -> dict[str, object]:
        """What ran, for the JSON's config (no URL: it may carry a password)."""
        if self.backend == "postgres":
            database = (
                f"throwaway PostgreSQL cluster ({' '.join(PG_SETTINGS)})"
                if self.cluster is not None
                else "the PostgreSQL database given by --database"
            )
        else:
            database = "SQLite in the node's data directory (WAL, no fsync: the server's default)"
        out: dict[str, object] = {"backend": self.backend, "nodes": self.node_count, "database": database}
        if self.node_count > 1:
            out["redis"] = "throwaway redis-server" if self.redis is not None else "given by --redis"
        if self.placement is None:
            out["cpu_pinning"] = "none: nodes and generators share every CPU"
        else:
            nodes, generators = self.placement
            out["cpu_pinning"] = (
                f"node k on CPU {nodes} [k], generators on CPUs {sorted(generators)} (kluis.bench.affinity)"
            )
        return out

    def stop(self) -> None:
        for part in (self.nodes, self.redis, self.cluster):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()


__all__ = [
    "BACKENDS",
    "BenchError",
    "Deployment",
    "Nodes",
    "PostgresCluster",
    "PostgresUnavailable",
    "RedisServer",
    "RedisUnavailable",
    "exit_on_sigterm",
    "find_pg_bindir",
    "free_port",
    "process_cpu_seconds",
    "redis_ping",
]
