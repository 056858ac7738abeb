"""CPU placement for the benchmarks: each relay node on a core of its own, the load generators on
the others.

The generators stand in for clients on other machines. Sharing every core with the relay, a
generator woken by a delivery was at times placed on the core where the relay was still busy, and
waited there for the relay's time slice to end: a mode near 1 ms in W2's latencies (p99 1.0 ms
with both free to use either core, 0.26 ms with the relay on one core and the generator on the
other, same build, 2026-11-23). Placing them apart keeps that scheduling artefact of a shared
machine out of the relay's figures, as real clients elsewhere would. ``--no-pin`` turns it off.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def split(nodes: int) -> tuple[list[int], set[int]] | None:
    """(a CPU for each node, the CPUs left for the generators), or None when there are not more
    CPUs than nodes (then nothing is pinned)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= nodes:
        return None
    return cpus[:nodes], set(cpus[nodes:])


def pin(pid: int, cpus: set[int]) -> None:
    """Restricts every thread of process ``pid`` to ``cpus`` (threads it starts later inherit it).
    A process or thread that is gone meanwhile is skipped."""
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task.name), cpus)


__all__ = ["pin", "split"]
