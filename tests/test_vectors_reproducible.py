"""Every vector file is what its checked-in generator produces now (vectors/README.md)."""

from __future__ import annotations

import importlib
import json

import pytest

from vectors import HERE, load_vectors_from_file

AREAS = sorted(p.stem.removeprefix("gen_") for p in HERE.glob("gen_*.py"))


@pytest.mark.parametrize("area", AREAS)
def test_generator_reproduces_file(area: str) -> None:
    generated = importlib.import_module(f"vectors.gen_{area}").generate()
    recorded = load_vectors_from_file(f"{area}.json")
    generated.setdefault("provenance", recorded["provenance"])
    assert json.loads(json.dumps(generated)) == recorded
