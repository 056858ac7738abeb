"""The real relay as a child process (``kluis server``), for tests that must see what the process
itself does: its logs, its files, and what survives SIGTERM or SIGKILL.

The process is started through the CLI on ``127.0.0.1:0`` in insecure loopback mode; its announced
URL is read from its output. Every line it prints (stdout and stderr) is kept in :attr:`lines` by a
reader thread, so the pipe never fills up. Only processes started here are ever signalled, by their
PID.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from kluis.server.cluster import NodeProcess, kluis_command

__all__ = ["ServerProcess", "admin_codes", "kluis_command"]


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


class ServerProcess(NodeProcess):
    """One ``kluis server`` child on ``127.0.0.1`` in insecure loopback mode, storing in SQLite in its
    data directory (``kluis.server.cluster.NodeProcess``, which runs the nodes of a service too).
    ``start()`` returns once it has announced its URL; a restart listens on the same port."""

    def __init__(self, data_dir: Path, *, env: Mapping[str, str] | None = None) -> None:
        super().__init__(data_dir, env=env)
