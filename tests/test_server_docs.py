"""docs/OPERATING.md cannot drift from the code: its configuration table and metric list are checked."""

from __future__ import annotations

import re
from pathlib import Path

from kluis.server.config import markdown_table
from kluis.server.metrics import Metrics

OPERATING = Path(__file__).resolve().parents[1] / "docs" / "OPERATING.md"


def section(marker: str) -> str:
    text = OPERATING.read_text()
    found = re.search(rf"<!-- {marker}:start[^>]*-->\n(.*?)\n<!-- {marker}:end -->", text, re.DOTALL)
    assert found, f"no {marker} section in {OPERATING.name}"
    return found.group(1)


def test_configuration_table_matches_the_model() -> None:
    assert section("config-table") == markdown_table(), (
        "docs/OPERATING.md is out of date: paste the output of `python -m kluis.server.config`"
    )


def test_metric_list_matches_the_registry() -> None:
    documented = {
        (name, kind) for name, kind in re.findall(r"^\| `(kluis_\w+)` \| (\w+) \|", section("metrics"), re.M)
    }
    actual = set()
    for family in Metrics(process=False).registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        actual.add((name, family.type))
    assert documented == actual


def test_storage_and_benchmark_sections_are_reserved() -> None:
    text = OPERATING.read_text()
    assert "\n## Storage\n" in text
    assert "\n## Benchmarks\n" in text
