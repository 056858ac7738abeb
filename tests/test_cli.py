"""The kluis command (Click's CliRunner, as sqlite-utils tests its CLI)."""

from __future__ import annotations

import json

import pytest
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


def test_demo_command_runs_the_demo_and_reports_a_failed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo itself (a real relay, about 7 s) runs in tests/test_cli_demo.py; this is the command.
    from kluis.cli import demo

    def fine(echo: demo.Echo) -> None:
        echo("Bob reads it", nl=False)
        echo(".")

    monkeypatch.setattr(demo, "run_demo", fine)
    result = CliRunner().invoke(cli, ["demo"])
    assert (result.exit_code, result.output) == (0, "Bob reads it.\n")

    def failing(echo: demo.Echo) -> None:
        raise demo.DemoFailed("the safety numbers differ")

    monkeypatch.setattr(demo, "run_demo", failing)
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 1
    assert "demo check failed: the safety numbers differ" in result.output


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
