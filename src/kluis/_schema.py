"""Numbered schema deltas and the version rule, shared by the relay's databases (SQLite and PostgreSQL)
and the client's SQLite database (STYLE.md §3: SCHEMA_VERSION and SCHEMA_COMPAT_VERSION, as Synapse
does).

A database records (version, compat_version). Code refuses a database whose compat version is above
its own SCHEMA_VERSION; otherwise every shipped delta above the recorded version runs, each in its
own transaction, so a crash leaves the previous version intact (:func:`pending`).

One source of truth for several engines: a delta ``NNN_description.sql`` is written once, in SQLite's
dialect, and :func:`render` turns it into another engine's with a handful of whole-word substitutions
(:data:`DIALECTS`); for SQLite it is the identity, so its text is exactly what the SQLite database
records. What no substitution can express goes in a file of the same number for one engine only,
``NNN_description.sql.<engine>`` (Synapse's ``.sql.postgres``/``.sql.sqlite``), run after the shared
one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import Any

_DELTA_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql(?:\.([a-z]+))?$")

DIALECTS: dict[str, tuple[tuple[str, str], ...]] = {
    "sqlite": (),
    "postgresql": (
        (r"\bBLOB\b", "BYTEA"),
        # SQLite's INTEGER holds 64 bits; keep the same range.
        (r"\bINTEGER\b", "BIGINT"),
        # PostgreSQL tables have no rowid; the clause does not exist there.
        (r"\s*\bWITHOUT ROWID\b", ""),
    ),
}
"""Per engine, (pattern, replacement) pairs applied in order to a shared delta. Add one only when a
delta needs it; every shipped delta is applied to both engines by the storage tests."""


def render(sql: str, engine: str) -> str:
    """A shared delta (SQLite's dialect) in ``engine``'s dialect. Raises KeyError for an unknown engine."""
    for pattern, replacement in DIALECTS[engine]:
        sql = re.sub(pattern, replacement, sql)
    return sql


def load_deltas(package: str, *folder: str, engine: str | None = None) -> list[tuple[int, str]]:
    """The ``NNN_description.sql`` files shipped in ``package``/``folder``, in version order.

    With ``engine``, each shared delta is rendered for it and followed by that engine's own
    ``NNN_*.sql.<engine>`` file of the same number, if any; other engines' files are left out.
    Without it (the client's single-engine schema), only the shared files are read, as they are.
    """
    directory = resources.files(package).joinpath(*folder)
    parts: dict[int, list[tuple[int, str]]] = {}
    for entry in directory.iterdir():
        match = _DELTA_NAME.match(entry.name)
        if not match:
            continue
        only_for = match.group(2)
        if only_for is not None and only_for != engine:
            continue
        sql = entry.read_text(encoding="utf-8")
        if only_for is None and engine is not None:
            sql = render(sql, engine)
        # The shared file first, then the engine's own.
        parts.setdefault(int(match.group(1)), []).append((0 if only_for is None else 1, sql))
    return [(version, "\n".join(sql for _, sql in sorted(parts[version]))) for version in sorted(parts)]


def pending(
    deltas: list[tuple[int, str]],
    current: int,
    compat: int,
    *,
    version: int,
    too_new: Callable[[int, int], Exception],
) -> list[tuple[int, str]]:
    """The deltas to apply to a database at (``current``, ``compat``) for code at ``version``, in order.

    Raises ``too_new(database_compat, version)`` when the database needs newer code. An empty database
    is (0, 0).
    """
    if compat > version:
        raise too_new(compat, version)
    return [(delta, sql) for delta, sql in deltas if current < delta <= version]


def stamp_sql(version: int, compat_version: int) -> str:
    """The statements that record (version, compat_version) in the one-row ``schema_version`` table."""
    values = f"({int(version)}, {int(compat_version)})"  # integers from the caller's constants
    return f"DELETE FROM schema_version; INSERT INTO schema_version VALUES {values};"  # noqa: S608


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
    current = compat = 0
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if has_table:
        row = conn.execute("SELECT version, compat_version FROM schema_version").fetchone()
        if row is None:
            raise not_ours("schema_version table is empty")
        current, compat = int(row[0]), int(row[1])
    elif conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone():
        raise not_ours("the database has tables but no schema_version")
    applied = []
    for delta, sql in pending(deltas, current, compat, version=version, too_new=too_new):
        stamp = stamp_sql(delta, compat_version)
        try:
            conn.executescript(f"{begin};\n{sql}\n{stamp}\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(delta)
    return applied


__all__ = ["DIALECTS", "load_deltas", "migrate", "pending", "render", "stamp_sql"]
