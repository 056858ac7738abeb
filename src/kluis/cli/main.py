"""The ``kluis`` command: a thin Click layer over the library."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="kluis")
def cli() -> None:
    """Kluis: end-to-end encrypted messaging that survives a seizure of its server."""


def main() -> None:
    cli()
