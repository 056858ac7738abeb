"""`kluis bench relay --quick`: the JSON contract of issue 3's benchmark, and nothing lost.

Shape only, not speed (a benchmark is not a test). It runs as a subprocess, as a user would: the bench
starts its own server and generator processes and must stop them and clean up on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kluis.bench.relay import percentile_ms
from kluis.bench.relay_load import self_check

CONTRACT = {
    "w1": {"msgs_per_s", "p50_ms", "p99_ms", "server_cpu_pct", "generator_cpu_pct"},
    "w1_batched": {"msgs_per_s", "p50_ms", "p99_ms", "server_cpu_pct", "generator_cpu_pct"},
    "w2": {"p50_ms", "p99_ms", "max_ms", "server_cpu_pct"},
    "w3": {"store_per_s", "drain_per_s", "lost"},
    "w4": {"held", "kib_per_conn"},
}


def test_quick_bench_prints_the_contract_and_loses_nothing(tmp_path: Path) -> None:
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from kluis.cli.main import main; main()",
            "bench",
            "relay",
            "--quick",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(env_tmp)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for workload, keys in CONTRACT.items():
        assert keys <= set(result[workload]), workload
        for key in keys:
            assert isinstance(result[workload][key], int | float), (workload, key)
    assert result["w3"]["lost"] == 0
    assert result["w3"]["stored"] == 400  # two rounds of 200
    rounds = result["w3"]["rounds"]
    assert [r["stored"] for r in rounds] == [200, 200]
    assert result["w3"]["store_per_s"] in {r["store_per_s"] for r in rounds}
    assert result["w4"]["held"] == 50
    assert result["w1"]["msgs_per_s"] > 0
    assert result["w1_batched"]["msgs_per_s"] > 0
    assert "config" in result
    assert list(env_tmp.iterdir()) == []  # the temporary data directory was removed


def test_hand_packed_frames_match_the_schema() -> None:
    self_check()


def test_percentile_is_nearest_rank() -> None:
    assert percentile_ms([], 99) == 0.0
    ordered = [i / 1000 for i in range(1, 101)]
    assert percentile_ms(ordered, 50) == 50.0
    assert percentile_ms(ordered, 99) == 99.0
    assert percentile_ms(ordered, 100) == 100.0
