"""The ``kluis`` command: a thin Click layer over the library (STYLE.md §8)."""

from __future__ import annotations

import json

import click

from kluis.cli.admin import admin
from kluis.cli.bench_relay import bench_relay
from kluis.cli.server import server


@click.group()
@click.version_option(package_name="kluis")
def cli() -> None:
    """Kluis: end-to-end encrypted messaging that survives a seizure of its server."""


@cli.group()
def bench() -> None:
    """Benchmarks that print JSON; each figure is measured beside a reference in the same run."""


@bench.command("crypto")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default output too).")
@click.option("--samples", default=31, show_default=True, help="Timed batches per figure (median).")
def bench_crypto(as_json: bool, samples: int) -> None:
    """Protocol operations against the pyca primitives they call (ratio = ours / floor)."""
    from kluis.bench.crypto import run

    result = run(samples=samples)
    click.echo(json.dumps(result, indent=None if as_json else 2))


@cli.command()
def demo() -> None:
    """Two parties talk through the protocol in memory, showing what a server would see."""
    from kluis.cli.demo import run_demo

    run_demo(click.echo)


bench.add_command(bench_relay)
cli.add_command(admin)
cli.add_command(server)


def main() -> None:
    cli()
