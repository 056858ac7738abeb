"""The relay schema's version, one for every engine, and its deltas (``schema/NNN_*.sql``).

Both backends apply the same numbered deltas (kluis._schema renders each for its engine) and follow the
same rule (kluis._schema.pending): a database records (version, compat_version), and code refuses one
whose compat version is above its SCHEMA_VERSION (SchemaTooNew).
"""

from __future__ import annotations

from kluis._schema import load_deltas

SCHEMA_VERSION = 1
"""The newest schema delta this code writes (``schema/NNN_*.sql``)."""
SCHEMA_COMPAT_VERSION = 1
"""The oldest code version that can still use a database written by this code. Stored in the database:
code whose SCHEMA_VERSION is below a database's compat version refuses to open it (SchemaTooNew)."""


def schema_deltas(engine: str = "sqlite") -> list[tuple[int, str]]:
    """The numbered deltas shipped in the package, rendered for ``engine``, in order."""
    return load_deltas("kluis.server.storage", "schema", engine=engine)


__all__ = ["SCHEMA_COMPAT_VERSION", "SCHEMA_VERSION", "schema_deltas"]
