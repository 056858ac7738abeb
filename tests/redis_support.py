"""A throwaway Redis server for the tests: ``redis-server`` on a free loopback port, nothing saved to
disk, its files in a temporary directory, stopped by its PID.

The binary is ``redis-server`` on ``PATH`` (Debian's ``redis-server`` package, which
``scripts/services.sh`` installs when missing). It runs as whoever runs the tests (root is fine).
If it cannot be started the tests that need it fail, unless ``KLUIS_TEST_NO_REDIS=1`` turns them into
skips (local runs), like ``KLUIS_TEST_NO_POSTGRES`` for PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pg_support import free_port

SKIP_ENV = "KLUIS_TEST_NO_REDIS"
START_TIMEOUT_S = 20.0


class RedisUnavailable(Exception):
    """No Redis server could be found or started; the message says why."""


def ping(port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING on 127.0.0.1:``port`` (RESP, no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One running ``redis-server``; :meth:`stop` signals only its own PID."""

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
        """Starts one on ``port`` (0: a free one); returns once it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable(
                "no redis-server: install Debian's redis-server package (scripts/test does)"
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
            self.process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                    "--daemonize",
                    "no",
                    "--logfile",
                    str(log),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and self.process.poll() is None:
                if ping(port):
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
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL, as a crash (fault tests); :meth:`restart` brings it back on the same port."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Stops it and starts a new, empty one on the same port (nothing is saved)."""
        self._terminate()
        binary = shutil.which("redis-server")
        assert binary is not None
        self._launch(binary)

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.directory, ignore_errors=True)


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
