"""``kluis server``: run a relay (docs/OPERATING.md). A thin layer over kluis.server (STYLE.md §8)."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_LISTEN = "127.0.0.1:8443"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port). The port range is checked by the config.

    Raises:
        ValueError: no port, an empty host, or an IPv6 address without brackets.
    """
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address is written [ADDRESS]:PORT, e.g. [::1]:8443")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8443")
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets: [ADDRESS]:PORT")
    if not host:
        raise ValueError("the host is empty; to listen on every address say 0.0.0.0 or [::]")
    if not port.isdigit():
        raise ValueError(f"the port must be a number, not {port!r}")
    return host, int(port)


def _listen(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _announce(url: str, fingerprint: str | None) -> None:
    if fingerprint is None:
        click.echo(f"kluis relay listening on {url} (insecure, loopback only: tests)", err=True)
    else:
        click.echo(f"kluis relay listening on {url} fingerprint {fingerprint}", err=True)


@click.command()
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory: database, TLS key and certificate. Created if absent.",
)
@click.option(
    "--database",
    metavar="URL",
    help="PostgreSQL URL (postgresql://USER@HOST:PORT/DB); without it, SQLite in the data directory.",
)
@click.option(
    "--redis",
    metavar="URL",
    help="Redis URL (redis://HOST:PORT/DB) for fan-out between several nodes on one PostgreSQL database.",
)
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    callback=_listen,
    help="Address and port, HOST:PORT or [IPV6]:PORT; port 0 picks a free one.",
)
@click.option(
    "--insecure-loopback",
    is_flag=True,
    help="Serve plain ws:// without TLS, for tests; refused unless the address is loopback.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file of settings (see docs/OPERATING.md); KLUIS_SERVER_* variables and options win over it.",
)
@click.option(
    "--fsync/--no-fsync",
    default=False,
    help="Make every commit survive power loss, not only a crash of the process.  [default: no-fsync]",
)
@click.pass_context
def server(
    ctx: click.Context,
    *,
    data_dir: Path,
    database: str | None,
    redis: str | None,
    listen: tuple[str, int],
    insecure_loopback: bool,
    config_file: Path | None,
    fsync: bool,
) -> None:
    """Run a relay server until SIGTERM or Ctrl-C (which let in-flight work finish).

    Prints one line to stderr when it listens: the URL and the certificate fingerprint that clients
    pin (kluis init --server-fingerprint).
    """
    from kluis.server.config import ConfigError, load_config
    from kluis.server.logging import configure_logging
    from kluis.server.tls import ListenAddressError, TlsSetupError, check_listen

    given = {
        name
        for name in ("listen", "insecure_loopback", "fsync")
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    }
    # Only what the user typed overrides the file and the environment; defaults come from the model.
    overrides: dict[str, object] = {"data_dir": data_dir}
    if database is not None:
        overrides["database"] = database
    if redis is not None:
        overrides["redis"] = redis
    if "listen" in given:
        overrides["host"], overrides["port"] = listen
    if "insecure_loopback" in given:
        overrides["insecure_loopback"] = insecure_loopback
    if "fsync" in given:
        overrides["fsync"] = fsync
    try:
        config = load_config(config_file, overrides)
        check_listen(config.host, config.insecure_loopback)
    except (ConfigError, ListenAddressError) as exc:
        raise click.ClickException(str(exc)) from None

    configure_logging(config.log_level)
    from kluis.server.errors import FanOutError
    from kluis.server.runner import run
    from kluis.server.storage.base import StorageError

    try:
        # The database and the TLS key live here: no one else on the machine needs to list it.
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        run(config, on_ready=_announce)
    except (TlsSetupError, StorageError, FanOutError) as exc:
        # StorageError: the database cannot be opened (unreachable, too new, not ours); its message
        # names no URL or password.
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        # Typically the address is in use or not ours to bind; the operator typed it, so it may be shown.
        raise click.ClickException(
            f"cannot serve on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from None
    except KeyboardInterrupt:  # before the runner's signal handlers were installed
        ctx.exit(130)
