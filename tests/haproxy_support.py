"""HAProxy in front of relay nodes, for the tests: the example configuration of docs/OPERATING.md with
its addresses replaced by loopback ones, run in the foreground (``haproxy -f CFG -db``) as a child
process and stopped by its PID.

The binary is ``haproxy`` (Debian's package, which ``scripts/services.sh`` installs when missing). If
it cannot be found the tests that need it fail, unless ``KLUIS_TEST_NO_HAPROXY=1`` turns them into
skips (local runs), like ``KLUIS_TEST_NO_REDIS``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.pg_support import free_port

SKIP_ENV = "KLUIS_TEST_NO_HAPROXY"
OPERATING = Path(__file__).resolve().parents[1] / "docs" / "OPERATING.md"
START_TIMEOUT_S = 20.0
DOC_FRONTEND = "0.0.0.0:443"
DOC_NODES = ("10.0.0.11:8443", "10.0.0.12:8443")


def documented_config() -> str:
    """The haproxy.cfg of docs/OPERATING.md, as printed there."""
    text = OPERATING.read_text()
    found = re.search(
        r"<!-- haproxy-config:start[^>]*-->\n```[a-z]*\n(.*?)```\n<!-- haproxy-config:end -->", text, re.S
    )
    assert found, "no haproxy-config section in docs/OPERATING.md"
    return found.group(1)


def loopback_config(port: int, nodes: list[int]) -> str:
    """The documented configuration, listening on 127.0.0.1:``port`` in front of nodes on loopback."""
    config = documented_config()
    assert config.count(DOC_FRONTEND) == 1
    assert len(nodes) == len(DOC_NODES)
    config = config.replace(DOC_FRONTEND, f"127.0.0.1:{port}")
    for documented, node_port in zip(DOC_NODES, nodes, strict=True):
        assert config.count(documented) == 1
        config = config.replace(documented, f"127.0.0.1:{node_port}")
    return config


class HAProxy:
    """One ``haproxy -db`` child process."""

    def __init__(self, directory: Path, nodes: list[int]) -> None:
        self.port = free_port()
        self.config = directory / "haproxy.cfg"
        self.config.write_text(loopback_config(self.port, nodes))
        self.lines: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
        if binary is None:
            message = "no haproxy: install Debian's haproxy package (scripts/test does)"
            if os.environ.get(SKIP_ENV) == "1":
                pytest.skip(f"{message} ({SKIP_ENV}=1)")
            pytest.fail(f"{message} (set {SKIP_ENV}=1 to skip these tests locally)")
        proc = subprocess.Popen(
            [binary, "-f", str(self.config), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._proc = proc
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("haproxy did not start:\n" + "\n".join(self.lines[-20:]))

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
