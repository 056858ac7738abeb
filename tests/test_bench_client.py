"""``kluis bench client`` prints its figures (the shape, not the speed: benchmarks are not tests)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from kluis.cli.main import cli


def test_bench_client_prints_every_figure() -> None:
    result = CliRunner().invoke(cli, ["bench", "client", "--json", "--samples", "1", "--messages", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["argon2id"]["memory_kib"] == 256 * 1024
    assert data["unlock"]["median_ms"] > 0
    assert data["duress_erase"]["median_ms"] > 0
    assert data["message"]["count"] == 2
    assert data["message"]["send_ms"] > 0
    assert data["message"]["receive_ms"] > 0
