"""``kluis admin``: operator commands that work on the relay's storage directly: SQLite in the data
directory, or the service's PostgreSQL database (``--database``, or ``KLUIS_SERVER_DATABASE`` as for
``kluis server``).

They may run while the server runs: SQLite's locking (WAL, busy timeout) and PostgreSQL's
transactions order the writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click


@dataclass(frozen=True)
class Target:
    """Where ``kluis admin`` writes: the PostgreSQL URL, or SQLite in the data directory."""

    data_dir: Path | None
    database: str

    def storage_url(self) -> str | Path:
        from kluis.server.storage import database_path

        if self.database:
            return self.database
        assert self.data_dir is not None
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return database_path(self.data_dir)


@click.group()
@click.option(
    "--data",
    "data_dir",
    envvar="KLUIS_DATA",
    type=click.Path(file_okay=False, path_type=Path),
    help="The relay's data directory (holds kluis.db); created if missing. Env: KLUIS_DATA.",
)
@click.option(
    "--database",
    metavar="URL",
    envvar="KLUIS_SERVER_DATABASE",
    default="",
    help="The relay's PostgreSQL database (postgresql://USER@HOST:PORT/DB), as given to kluis server;"
    " then --data is not needed. Env: KLUIS_SERVER_DATABASE.",
)
@click.pass_context
def admin(ctx: click.Context, data_dir: Path | None, database: str) -> None:
    """Operator commands on a relay's storage: SQLite in --data, or PostgreSQL with --database."""
    if database and not database.startswith(("postgresql://", "postgres://")):
        # The value is not repeated: a URL may carry a password.
        raise click.BadParameter("must be a postgresql:// URL", param_hint="--database")
    if not database and data_dir is None:
        raise click.UsageError("give --data DIR (SQLite) or --database URL (PostgreSQL)")
    ctx.obj = Target(data_dir, database)


@admin.group()
def codes() -> None:
    """Activation codes (bearer codes that pay for subscription days)."""


@codes.command("create")
@click.option("--days", required=True, type=click.IntRange(1, 3660), help="Days each code adds (1..3660).")
@click.option(
    "--count", default=1, show_default=True, type=click.IntRange(1, 10_000), help="How many (1..10000)."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of the codes.")
@click.pass_obj
def codes_create(target: Target, days: int, count: int, as_json: bool) -> None:
    """Creates COUNT codes worth DAYS each and prints them; only their hashes are stored.

    Print them once and hand them out: they cannot be shown again.
    """
    import asyncio

    from kluis.server.codes import hash_code, new_code
    from kluis.server.storage import StorageError, open_storage

    created = [new_code() for _ in range(count)]

    async def store() -> None:
        storage = await open_storage(target.storage_url(), fsync=True)
        try:
            await storage.codes.add_codes([hash_code(c) for c in created], days)
        finally:
            await storage.close()

    try:
        asyncio.run(store())
    except (OSError, StorageError) as exc:  # StorageError's message names no URL or password
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(created))
    else:
        for code in created:
            click.echo(code)
