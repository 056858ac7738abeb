"""The real relay as a child process (``kluis server``), for tests that must see what the process
itself does: its logs, its files, and what survives SIGTERM or SIGKILL.

The process is started through the CLI on ``127.0.0.1:0`` in insecure loopback mode; its announced
URL is read from stderr. Every line it prints (stdout and stderr) is kept in :attr:`lines` by a reader
thread, so the pipe never fills up. Only processes started here are ever signalled, by their PID.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ANNOUNCE = re.compile(r"kluis relay listening on (ws://127\.0\.0\.1:\d+) ")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0


def kluis_command() -> list[str]:
    """The installed ``kluis`` entry point of this interpreter's environment."""
    script = Path(sys.executable).with_name("kluis")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from kluis.cli.main import main; main()"]


def admin_codes(data_dir: Path, count: int, days: int = 30) -> list[str]:
    """Activation codes made by ``kluis admin --data DIR codes create`` (the operator's way)."""
    out = subprocess.run(
        [
            *kluis_command(),
            "admin",
            "--data",
            str(data_dir),
            "codes",
            "create",
            "--days",
            str(days),
            "--count",
            str(count),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    codes = out.split()
    assert len(codes) == count
    return codes


class ServerProcess:
    """One ``kluis server`` child. ``start()`` returns once it has announced its URL."""

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KLUIS_SERVER_")}
        self.env.update(env or {})
        self.lines: list[str] = []
        """Everything the process printed, across restarts, one entry per line."""
        self.url = ""
        self.port = 0
        """0 until the first start; a restart listens on the same port (clients keep their URL)."""
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._announced = threading.Event()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))
            match = ANNOUNCE.search(line)
            if match:
                self.url = match.group(1)
                self._announced.set()

    def start(self) -> str:
        assert self._proc is None, "already running"
        self._announced.clear()
        proc = subprocess.Popen(
            [
                *kluis_command(),
                "server",
                "--data",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--insecure-loopback",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        self._proc = proc
        self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._announced.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("server did not start:\n" + "\n".join(self.lines[-20:]))
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
        """SIGTERM (graceful shutdown) and wait; returns the exit code."""
        return self._end(signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL: the crash a durable store must survive."""
        return self._end(signal.SIGKILL)
