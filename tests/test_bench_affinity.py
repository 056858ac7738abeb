"""CPU placement of the benchmarks (kluis.bench.affinity)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from kluis.bench.affinity import pin, split


def test_split_gives_each_node_a_cpu_and_the_generators_the_rest() -> None:
    cpus = os.sched_getaffinity(0)
    assert split(len(cpus)) is None  # no CPU would be left for the generators
    if len(cpus) < 2:
        return
    placement = split(1)
    assert placement is not None
    nodes, generators = placement
    assert len(nodes) == 1
    assert nodes[0] not in generators
    assert {*nodes, *generators} == cpus


def test_pin_restricts_every_thread_of_a_process() -> None:
    code = (
        "import threading, time;"
        " threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        cpu = min(os.sched_getaffinity(0))
        for _ in range(100):  # until its second thread exists
            if len(os.listdir(f"/proc/{child.pid}/task")) >= 2:
                break
            time.sleep(0.05)
        pin(child.pid, {cpu})
        for task in os.listdir(f"/proc/{child.pid}/task"):
            assert os.sched_getaffinity(int(task)) == {cpu}
    finally:
        child.kill()
        child.wait()
    pin(child.pid, {cpu})  # gone: nothing happens
