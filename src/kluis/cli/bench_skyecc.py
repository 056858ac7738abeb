"""``kluis bench skyecc``: Sky ECC's day (3,000,000 envelopes, 171,000 accounts) through a relay on
loopback, on SQLite or PostgreSQL, with one or more relay nodes (docs/OPERATING.md, Benchmarks)."""

from __future__ import annotations

import json
from typing import Any

import click


@click.command("skyecc")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on one line (default: indented)."
)
@click.option("--messages", type=click.IntRange(1), help="Envelopes in the day [3000000].")
@click.option("--accounts", type=click.IntRange(2), help="Registered accounts [171000].")
@click.option(
    "--connected",
    type=click.IntRange(1),
    help="Mailboxes connected at once [10000, or a fifth of --accounts if fewer].",
)
@click.option("--hours", type=click.IntRange(1, 1000), help="Steps of the day; accounts rotate at each [24].")
@click.option(
    "--rotate-share",
    type=click.FloatRange(0, 1),
    help="Share of the connected accounts replaced by offline ones at each hour [0.1].",
)
@click.option(
    "--offline-share",
    type=click.FloatRange(0, 1),
    help="Share of envelopes sent to an account that connects later in the day [0.1].",
)
@click.option(
    "--envelope-bytes",
    type=click.IntRange(8, 131_072),
    help="Bytes per envelope [1397: a sealed short text].",
)
@click.option("--streams", type=click.IntRange(1, 1000), help="Anonymous send streams [32].")
@click.option(
    "--frames-in-flight",
    type=click.IntRange(1, 64),
    help="Unanswered envelopes per send stream, in full SEND frames of 32 [2: 64 envelopes].",
)
@click.option("--backend", type=click.Choice(["sqlite", "postgres"]), help="Relay storage [sqlite].")
@click.option(
    "--database",
    metavar="URL",
    help="An existing, dedicated PostgreSQL database (implies --backend postgres); without it the "
    "bench starts a throwaway cluster. The accounts and envelopes it writes are left there.",
)
@click.option("--nodes", type=click.IntRange(1, 64), help="Relay processes sharing the database [1].")
@click.option("--redis", metavar="URL", help="Redis for --nodes N>1 (default: a throwaway redis-server).")
@click.option(
    "--pin/--no-pin",
    default=None,
    help="Each relay node on a CPU of its own and the generators on the others, when there are more "
    "CPUs than nodes (kluis.bench.affinity) [no-pin].",
)
@click.option("--seed", type=int, help="Seed of the schedule (default: random, printed in config).")
def bench_skyecc(as_json: bool, **given: Any) -> None:
    """Replays Sky ECC's day: envelopes among registered accounts, a rotating share of them connected,
    through `kluis server` started on loopback for the run (and stopped after it). Accounts are
    written into the storage before the clock starts; sending, storing, delivering, receipts and the
    rotating accounts' connections and drains are timed."""
    from dataclasses import replace

    from kluis.bench.services import BenchError
    from kluis.bench.skyecc import Options, run

    values = {k: v for k, v in given.items() if v is not None}
    if "database" in values and "backend" not in values:
        values["backend"] = "postgres"
    opts = replace(Options(), **values)
    try:
        result = run(opts)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=None if as_json else 2))
