"""The ``kluis`` command: a thin Click layer over the library (STYLE.md §8)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kluis.cli.admin import admin
from kluis.cli.bench_relay import bench_relay
from kluis.cli.bench_skyecc import bench_skyecc
from kluis.cli.client_cmds import COMMANDS
from kluis.cli.server import server


@click.group()
@click.version_option(package_name="kluis")
@click.option(
    "--profile",
    "profile_dir",
    envvar="KLUIS_PROFILE",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The profile directory (default: a per-user data directory). Env: KLUIS_PROFILE.",
)
def cli(profile_dir: Path | None) -> None:
    """Kluis: end-to-end encrypted messaging that survives a seizure of its server.

    The passphrase is asked for, or read from KLUIS_PASSPHRASE.
    """


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


@bench.command("client")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default output too).")
@click.option("--samples", default=5, show_default=True, help="Profiles unlocked and erased (median).")
@click.option("--messages", default=50, show_default=True, help="Texts sent through a loopback relay.")
def bench_client(as_json: bool, samples: int, messages: int) -> None:
    """Unlock and duress-erase with the real Argon2id parameters, and one text through the SDK."""
    from kluis.bench.client import run

    click.echo(json.dumps(run(samples=samples, messages=messages), indent=None if as_json else 2))


@cli.command()
def demo() -> None:
    """Alice and Bob talk through a real relay on loopback; shows what the relay and disk hold.

    Runs in a temporary directory that is removed at the end (about 7 seconds).
    """
    from kluis.cli.demo import DemoFailed, run_demo

    try:
        run_demo(click.echo)
    except DemoFailed as error:
        raise click.ClickException(f"demo check failed: {error}") from None


bench.add_command(bench_relay)
bench.add_command(bench_skyecc)
cli.add_command(admin)
cli.add_command(server)
for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    """The ``kluis`` entry point: every error, usage errors included, is one line on stderr."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        raise SystemExit(1) from None
    except click.UsageError as error:
        hint = f" (see: {error.ctx.command_path} --help)" if error.ctx is not None else ""
        click.echo(f"Error: {error.format_message()}{hint}", err=True)
        raise SystemExit(error.exit_code) from None
    except click.ClickException as error:
        click.echo(f"Error: {error.format_message()}", err=True)
        raise SystemExit(error.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)
