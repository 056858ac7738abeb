"""``kluis admin``: operator commands that work on the relay's data directory directly.

They may run while the server runs: SQLite's locking (WAL, busy timeout) orders the writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
@click.option(
    "--data",
    "data_dir",
    required=True,
    envvar="KLUIS_DATA",
    type=click.Path(file_okay=False, path_type=Path),
    help="The relay's data directory (holds kluis.db); created if missing. Env: KLUIS_DATA.",
)
@click.pass_context
def admin(ctx: click.Context, data_dir: Path) -> None:
    """Operator commands on a relay's data directory."""
    ctx.obj = data_dir


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
def codes_create(data_dir: Path, days: int, count: int, as_json: bool) -> None:
    """Creates COUNT codes worth DAYS each and prints them; only their hashes are stored.

    Print them once and hand them out: they cannot be shown again.
    """
    import asyncio

    from kluis.server.codes import hash_code, new_code
    from kluis.server.storage import StorageError, database_path, open_storage

    created = [new_code() for _ in range(count)]

    async def store() -> None:
        storage = await open_storage(database_path(data_dir), fsync=True)
        try:
            await storage.codes.add_codes([hash_code(c) for c in created], days)
        finally:
            await storage.close()

    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        asyncio.run(store())
    except (OSError, StorageError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(created))
    else:
        for code in created:
            click.echo(code)
