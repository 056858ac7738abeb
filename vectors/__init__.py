"""Known-answer vectors: data files with their provenance (see vectors/README.md).

Files are JSON; byte strings are lowercase hex. Each file's ``"provenance"`` says how it was made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load_vectors_from_file(name: str) -> dict[str, Any]:
    """Loads ``vectors/<name>`` and checks that it states its provenance."""
    data: dict[str, Any] = json.loads((HERE / name).read_text())
    if not data.get("provenance"):
        raise ValueError(f"vector file {name} does not state its provenance")
    return data
