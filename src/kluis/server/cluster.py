"""Relay nodes as child processes: several ``kluis server --database URL --redis URL`` on one machine,
one service (tests, benchmarks, trying a cluster out). docs/OPERATING.md "Several nodes" describes
the same set-up by hand.

All nodes share one data directory, so they hold the same send-pass secret and TLS certificate (one
fingerprint for clients to pin); they listen on their own ports. Each node's output is kept, line by
line, in :attr:`NodeProcess.lines` (a reader thread per node, so the pipe never fills). Only the
processes started here are ever signalled, by their PID.

    nodes = start_nodes(2, data_dir=tmp / "data", database=pg_url, redis=redis_url)
    try:
        urls = [n.url for n in nodes]            # ws://127.0.0.1:PORT (or wss:// with tls=True)
    finally:
        stop_nodes(nodes)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ANNOUNCE = re.compile(r"kluis relay listening on (wss?://\S+?)(?: fingerprint ([0-9a-f]{64}))?(?: |$)")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


class NodeError(Exception):
    """A node did not start; the message ends with its last lines of output."""


def kluis_command() -> list[str]:
    """The ``kluis`` entry point of this interpreter's environment."""
    script = Path(sys.executable).with_name("kluis")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from kluis.cli.main import main; main()"]


class NodeProcess:
    """One ``kluis server`` child process. :meth:`start` returns once it announced its URL.

    Args:
        data_dir: the data directory (shared by the nodes of one service).
        database: the PostgreSQL URL every node uses; None: SQLite in the data directory (one node).
        redis: the Redis URL every node uses; None: no fan-out (one node).
        host: the address to listen on.
        port: 0 for a free port on the first start; a restart reuses the port it got.
        tls: serve TLS with the data directory's certificate; False serves plain ``ws://``
            (``--insecure-loopback``, loopback addresses only).
        env: extra environment variables (e.g. ``KLUIS_SERVER_LOG_LEVEL``); ``KLUIS_SERVER_*``
            variables of this process are not passed on.
        args: extra command-line options for ``kluis server``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str | None = None,
        redis: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.database = database
        self.redis = redis
        self.host = host
        self.port = port
        self.tls = tls
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KLUIS_SERVER_")}
        self.env.update(env or {})
        self.args = list(args)
        self.url = ""
        self.fingerprint: str | None = None
        self.lines: list[str] = []
        """Everything the process printed (stdout and stderr), across restarts."""
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._announced = threading.Event()

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not running"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        listen = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        cmd = [*kluis_command(), "server", "--data", str(self.data_dir), "--listen", listen]
        if self.database is not None:  # else SQLite in the data directory
            cmd += ["--database", self.database]
        if self.redis is not None:
            cmd += ["--redis", self.redis]
        if not self.tls:
            cmd.append("--insecure-loopback")
        return cmd + self.args

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))
            match = ANNOUNCE.search(line)
            if match:
                self.url = match.group(1)
                self.fingerprint = match.group(2)
                self._announced.set()

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        """Starts the node; returns its URL.

        Raises:
            NodeError: it exited or did not announce itself within ``timeout``.
        """
        assert self._proc is None, "already running"
        self._announced.clear()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        proc = subprocess.Popen(  # noqa: S603 - our own entry point and arguments
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        self._proc = proc
        self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._announced.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise NodeError("relay node did not start:\n" + "\n".join(self.lines[-20:]))
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def _end(self, signum: int) -> int:
        proc, self._proc = self._proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            os.kill(proc.pid, signum)
        try:
            code = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            code = proc.wait(STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self) -> int:
        """SIGTERM (graceful shutdown) and wait; returns the exit status."""
        return self._end(signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL, a crash; :meth:`start` brings the node back on the same port."""
        return self._end(signal.SIGKILL)


def start_nodes(
    count: int,
    *,
    data_dir: Path,
    database: str | None = None,
    redis: str | None = None,
    host: str = "127.0.0.1",
    tls: bool = False,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    timeout: float = START_TIMEOUT_S,
) -> list[NodeProcess]:
    """Starts ``count`` nodes of one service on free ports of ``host``, one after the other (the first
    creates the shared secret and certificate); returns them running. If one fails, those already
    started are stopped and :class:`NodeError` is raised."""
    nodes: list[NodeProcess] = []
    try:
        for _ in range(count):
            node = NodeProcess(
                data_dir, database=database, redis=redis, host=host, tls=tls, env=env, args=args
            )
            nodes.append(node)
            node.start(timeout)
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: Sequence[NodeProcess]) -> None:
    """SIGTERM to every node still running, then waits for each."""
    for node in nodes:
        if node.running:
            os.kill(node.pid, signal.SIGTERM)
    for node in nodes:
        node.stop()


__all__ = ["NodeError", "NodeProcess", "start_nodes", "stop_nodes"]
