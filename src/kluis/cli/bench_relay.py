"""``kluis bench relay``: issue 3's relay workloads W1-W4 against a server process on loopback."""

from __future__ import annotations

import json
from typing import Any

import click


@click.command("relay")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on one line (default: indented)."
)
@click.option(
    "--quick",
    is_flag=True,
    help="Tiny parameters for a smoke test (2 pairs, 1 s, 2 x 200 envelopes, 50 idle).",
)
@click.option("--seconds", type=click.FloatRange(0.1), help="Measured seconds of W1 and W2 [20].")
@click.option("--warmup", type=click.FloatRange(0), help="Warm-up seconds before each W1/W2 window [5].")
@click.option("--pairs", type=click.IntRange(1, 1000), help="Sender/receiver pairs of W1 and W2 [50].")
@click.option("--workers", type=click.IntRange(1, 16), help="Generator processes of W1 [2].")
@click.option("--w2-rate", type=click.FloatRange(1), help="W2's total messages per second [500].")
@click.option(
    "--w3-envelopes", type=click.IntRange(1), help="Envelopes W3 stores for offline accounts [20000]."
)
@click.option("--w3-recipients", type=click.IntRange(1, 1000), help="Offline accounts of W3 [20].")
@click.option(
    "--w3-rounds",
    type=click.IntRange(1, 100),
    help="Times W3 runs, each with fresh offline accounts; the median round is reported [5].",
)
@click.option("--w4-connections", type=click.IntRange(1, 100_000), help="Idle connections of W4 [10000].")
@click.option("--w4-seconds", type=click.FloatRange(0), help="How long W4 holds them [60].")
@click.option("--only", "workloads", help="Comma-separated subset of w1,w1_batched,w2,w3,w4 [all].")
@click.option("--backend", type=click.Choice(["sqlite", "postgres"]), help="Relay storage [sqlite].")
@click.option(
    "--database",
    metavar="URL",
    help="An existing, dedicated PostgreSQL database (implies --backend postgres); without it the "
    "bench starts a throwaway cluster. What the bench writes is left there.",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, 64),
    help="Relay processes sharing the database; streams are spread over them [1].",
)
@click.option("--redis", metavar="URL", help="Redis for --nodes N>1 (default: a throwaway redis-server).")
@click.option(
    "--pin/--no-pin",
    default=None,
    help="Each relay node on a CPU of its own and the generators on the others, when there are more "
    "CPUs than nodes (kluis.bench.affinity) [pin].",
)
def bench_relay(as_json: bool, quick: bool, workloads: str | None, **given: Any) -> None:
    """Relay throughput, latency, store-and-forward and idle memory, with a load generator in its own
    processes against `kluis server` started on loopback for the run (and stopped after it): on
    SQLite, or on PostgreSQL (a throwaway cluster the bench starts, or --database), with one node or
    several (--nodes, fan-out through Redis)."""
    from dataclasses import replace

    from kluis.bench.relay import QUICK, BenchError, Options, run

    values = {k: v for k, v in given.items() if v is not None}
    if "database" in values and "backend" not in values:
        values["backend"] = "postgres"
    opts = replace(QUICK if quick else Options(), **values)
    if workloads:
        opts = replace(opts, workloads=tuple(w.strip() for w in workloads.split(",") if w.strip()))
    try:
        result = run(opts)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=None if as_json else 2))
