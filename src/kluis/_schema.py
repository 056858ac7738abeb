"""Numbered schema deltas and the version rule, shared by the relay's and the client's SQLite
databases (STYLE.md §3: SCHEMA_VERSION and SCHEMA_COMPAT_VERSION, as Synapse does).

A database records (version, compat_version). Code refuses a database whose compat version is above
its own SCHEMA_VERSION; otherwise every shipped delta above the recorded version runs, each in its
own transaction, so a crash leaves the previous version intact.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import Any

_DELTA_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def load_deltas(package: str, *folder: str) -> list[tuple[int, str]]:
    """The ``NNN_description.sql`` files shipped in ``package``/``folder``, in version order."""
    directory = resources.files(package).joinpath(*folder)
    deltas = []
    for entry in directory.iterdir():
        match = _DELTA_NAME.match(entry.name)
        if match:
            deltas.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    deltas.sort()
    return deltas


def migrate(
    conn: Any,
    deltas: list[tuple[int, str]],
    *,
    version: int,
    compat_version: int,
    begin: str,
    not_ours: Callable[[str], Exception],
    too_new: Callable[[int, int], Exception],
) -> list[int]:
    """Brings ``conn`` (sqlite3 or sqlcipher3) up to ``version``; returns the versions applied.

    Raises ``too_new(database_compat, version)`` for a database this code cannot read, and
    ``not_ours(reason)`` for one that is not a database of this kind.
    """
    current = 0
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if has_table:
        row = conn.execute("SELECT version, compat_version FROM schema_version").fetchone()
        if row is None:
            raise not_ours("schema_version table is empty")
        current, compat = int(row[0]), int(row[1])
        if compat > version:
            raise too_new(compat, version)
    elif conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone():
        raise not_ours("the database has tables but no schema_version")
    applied = []
    for delta, sql in deltas:
        if delta <= current or delta > version:
            continue
        values = f"({delta}, {compat_version})"  # integers from the caller's constants, not input
        stamp = f"DELETE FROM schema_version; INSERT INTO schema_version VALUES {values};"  # noqa: S608
        try:
            conn.executescript(f"{begin};\n{sql}\n{stamp}\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(delta)
    return applied


__all__ = ["load_deltas", "migrate"]
