"""The kluis command (Click's CliRunner, as sqlite-utils tests its CLI)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from kluis.cli.main import cli

EXPECTED_KEYS = {
    "pqxdh_initiate",
    "pqxdh_accept",
    "ratchet_burst",
    "ratchet_alternating",
    "envelope_seal",
    "envelope_open",
    "full_path",
}


def test_demo_shows_both_sides_reading() -> None:
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 0, result.output
    assert "Bob reads: 'Hello Bob, this is Alice.'" in result.output
    assert "Alice reads: 'Yes, ten works.'" in result.output
    assert "match: True" in result.output


def test_bench_crypto_prints_one_json_object_with_every_figure() -> None:
    # One sample: this checks the shape, not the speed (benchmarks are not tests).
    result = CliRunner().invoke(cli, ["bench", "crypto", "--json", "--samples", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) >= EXPECTED_KEYS
    for key in EXPECTED_KEYS:
        figure = data[key]
        assert set(figure) == {"median_us", "floor_us", "ratio"}
        assert figure["median_us"] > 0
        assert figure["floor_us"] > 0
