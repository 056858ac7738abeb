"""The user's commands: ``init``, ``invite``, ``accept``, ``send``, ``receive``, ``history``, ``timer``,
``verify``, ``contacts``, ``duress set``, ``revocation-cert export``, ``revoke``, ``chat``.

A thin layer over kluis.client (STYLE.md §8). Every command that opens the profile asks for the
passphrase (or reads KLUIS_PASSPHRASE); the duress passphrase works wherever the passphrase is asked:
the profile is erased, the revocation goes to the server (best effort, silently), and the command
then answers exactly as it would on a machine that never had a profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

P = ParamSpec("P")
T = TypeVar("T")

PASSPHRASE_ENV = "KLUIS_PASSPHRASE"  # noqa: S105 - the name of a variable, not a secret
DURESS_ENV = "KLUIS_DURESS_PASSPHRASE"
REVOKE_TIMEOUT = 3.0


def default_profile() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("kluis", appauthor=False)) / "profile"


def profile_dir() -> Path:
    ctx = click.get_current_context()
    root = ctx.find_root()
    value = root.params.get("profile_dir")
    return Path(value) if value else default_profile()


def user_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """One clear line on stderr and exit 1 for every error the user can cause (no traceback)."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        from kluis.client.errors import ClientError, ProfileError
        from kluis.protocol.errors import KluisProtocolError

        try:
            return fn(*args, **kwargs)
        except (ClientError, ProfileError) as error:
            raise click.ClickException(error.message) from None
        except KluisProtocolError as error:
            raise click.ClickException(str(error)) from None
        except ValueError as error:
            raise click.ClickException(str(error)) from None

    return wrapper


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def passphrase(prompt: str = "Passphrase", *, confirm: bool = False, env: str = PASSPHRASE_ENV) -> str:
    value = os.environ.get(env)
    if value is not None:
        return value
    if not sys.stdin.isatty():
        raise click.ClickException(f"no terminal to ask for the passphrase; set {env}")
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


async def _send_revocation(url: str, fingerprint: bytes | None, statement: bytes) -> None:
    from kluis.client.link import RelayLink

    async with RelayLink(url, fingerprint) as link:
        await asyncio.wait_for(link.http.revoke(statement), REVOKE_TIMEOUT)


def wiped(result: object) -> None:
    """After the duress passphrase: revoke silently, then act like a fresh install."""
    from kluis.client.errors import NoProfile

    panic = getattr(result, "panic", None)
    if panic is not None:
        with contextlib.suppress(Exception):
            run(_send_revocation(panic.server_url, panic.fingerprint, panic.statement))
    raise NoProfile()


async def open_client() -> Any:
    """The unlocked Client of ``--profile`` (or a NoProfile error, also after a duress wipe)."""
    from kluis.client.client import Client
    from kluis.client.errors import NoProfile

    directory = profile_dir()
    if not (directory / "keyslots").exists():
        raise NoProfile()
    result = Client.open(directory, passphrase())
    if not isinstance(result, Client):
        await asyncio.to_thread(wiped, result)
    return result


def with_client(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Runs ``fn(client, ...)`` with the unlocked profile, closing it afterwards."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        async def main() -> T:
            client = await open_client()
            try:
                return await fn(client, *args, **kwargs)
            finally:
                await client.close()

        return run(main())

    return user_errors(wrapper)


# -- commands -------------------------------------------------------------------------------------


@click.command()
@click.option("--server", "server_url", required=True, help="The relay, e.g. wss://relay.example:8443.")
@click.option("--code", required=True, help="An activation code from the provider.")
@click.option("--server-fingerprint", default=None, help="The relay certificate's SHA-256 (pinned).")
@click.option("--duress/--no-duress", default=False, help="Also set a duress passphrase now.")
@click.option(
    "--revocation-cert",
    "cert_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the revocation certificate to FILE (keep it offline).",
)
@user_errors
def init(
    server_url: str, code: str, server_fingerprint: str | None, duress: bool, cert_file: Path | None
) -> None:
    """Creates a profile: keys made here, account registered with CODE, keys published."""
    from kluis.client.account import parse_fingerprint
    from kluis.client.client import Client
    from kluis.client.errors import ProfileExists

    directory = profile_dir()
    if (directory / "keyslots").exists():
        raise ProfileExists()
    fingerprint = parse_fingerprint(server_fingerprint)
    if server_url.startswith("wss://") and fingerprint is None:
        raise click.ClickException("a wss:// server needs --server-fingerprint (printed by `kluis server`)")
    secret = passphrase("New passphrase", confirm=True)

    async def main() -> None:
        client = await Client.create(directory, secret, server_url, code, fingerprint)
        try:
            if duress:
                _set_duress(client, secret, passphrase("Duress passphrase", confirm=True, env=DURESS_ENV))
            if cert_file is not None:
                _write_certificate(client, cert_file)
        finally:
            await client.close()

    run(main())
    click.echo(f"profile created in {directory}")
    if cert_file is None:
        click.echo("export a revocation certificate and keep it offline: kluis revocation-cert export FILE")
    else:
        click.echo(f"revocation certificate written to {cert_file}: keep it offline")


def _set_duress(client: Any, secret: str, duress_secret: str) -> None:
    from kluis.client import profile as pf
    from kluis.client.panic import PanicInfo

    info = PanicInfo(client.me.server_url, client.me.fingerprint, client.revocation_statement().to_bytes())
    pf.set_duress(client.profile, secret, duress_secret, info, os.urandom)


@click.command()
@click.option("--name", required=True, help="What you will call whoever accepts this invite.")
@click.option("--json", "as_json", is_flag=True, help='Print {"invite": "..."}.')
@click.option("--qr/--no-qr", default=True, help="Also print a QR code (not with --json).")
@with_client
async def invite(client: Any, name: str, as_json: bool, qr: bool) -> None:
    """Prints a single-use invite for one new contact."""
    made = client.invite(name)
    uri = made.to_uri()
    if as_json:
        click.echo(json.dumps({"invite": uri}))
        return
    click.echo(uri)
    if qr:
        click.echo(made.qr_text())


@click.command()
@click.argument("invite_text", metavar="INVITE")
@click.option("--name", required=True, help="What you will call the inviter.")
@with_client
async def accept(client: Any, invite_text: str, name: str) -> None:
    """Accepts an invite: adds the inviter as NAME and introduces you to them."""
    from kluis.client.invite import Invite

    await client.accept(Invite.from_uri(invite_text), name)
    click.echo(f"{name} added")


@click.command()
@click.argument("name")
@click.argument("text")
@with_client
async def send(client: Any, name: str, text: str) -> None:
    """Sends TEXT to NAME (exit 0 once the server stored it, or once queued: the output says which)."""
    outcome = await client.send(name, text)
    if outcome.state == "queued":
        click.echo(f"queued {outcome.id} (server unreachable; it is sent on the next connection)")
    else:
        click.echo(f"{outcome.state} {outcome.id}")


def _print_messages(messages: list[Any], as_json: bool) -> None:
    import time

    from kluis.client.display import printable

    for message in messages:
        if as_json:
            click.echo(json.dumps(message.to_json()))
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(message.sent_at))
            arrow = "<-" if message.direction == "in" else "->"
            state = "" if message.direction == "in" else f"  [{message.state}]"
            click.echo(f"{stamp} {arrow} {printable(message.contact)}: {printable(message.text)}{state}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--wait", type=click.FloatRange(0, 86400), default=0.0, help="Wait up to SECONDS for a message."
)
@with_client
async def receive(client: Any, as_json: bool, wait: float) -> None:
    """Fetches and prints new messages (this is when they are shown and their timers start)."""
    import time

    from kluis.client.errors import ServerUnreachable

    deadline = time.monotonic() + wait
    arrived = asyncio.Event()
    unsubscribe = client.subscribe(lambda e: arrived.set() if getattr(e, "direction", None) == "in" else None)
    try:
        try:
            await client.sync()
        except ServerUnreachable:
            if wait == 0:
                raise
        shown = client.take_new()
        while not shown and time.monotonic() < deadline:
            arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(arrived.wait(), min(1.0, deadline - time.monotonic()))
            shown = client.take_new()
    finally:
        unsubscribe()
    _print_messages(shown, as_json)


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@with_client
async def history(client: Any, name: str, as_json: bool) -> None:
    """Shows NAME's conversation: what is still kept (unexpired)."""
    _print_messages(client.history(name), as_json)


@click.command()
@click.argument("args", nargs=-1, metavar="NAME DURATION|off")
@click.option("--default", "default", metavar="DURATION", help="Set the timer new conversations start with.")
@with_client
async def timer(client: Any, args: tuple[str, ...], default: str | None) -> None:
    """Sets the disappearing-message timer of NAME (5s..4w, or off); announced to both sides."""
    from kluis.client.durations import format_timer, parse_timer

    if default is not None:
        if args:
            raise click.UsageError("give either NAME DURATION or --default DURATION")
        seconds = parse_timer(default)
        client.set_default_timer(seconds)
        click.echo(f"default timer: {format_timer(seconds)}")
        return
    if len(args) != 2:
        raise click.UsageError("expected NAME DURATION (e.g. kluis timer bob 5m), or --default DURATION")
    name, duration = args
    seconds = parse_timer(duration)
    await client.set_timer(name, seconds)
    click.echo(f"{name}: disappearing messages {format_timer(seconds)}")


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the safety number as JSON.")
@click.option("--mark-verified", is_flag=True, help="Record that you compared it and it matched.")
@click.option("--qr/--no-qr", default=False, help="Print the safety number's QR code.")
@with_client
async def verify(client: Any, name: str, as_json: bool, mark_verified: bool, qr: bool) -> None:
    """Shows the safety number shared with NAME; compare it in person, then --mark-verified."""
    number = client.safety_number(name)
    if mark_verified:
        client.mark_verified(name)
    info = next(c for c in client.contacts() if c.name == name)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "name": name,
                    "safety_number": number.digits,
                    "verified": info.verified,
                    "identity_changed": info.identity_changed,
                }
            )
        )
        return
    click.echo(f"safety number with {name}:\n{number.display()}")
    if info.identity_changed:
        click.echo(f"{name}'s identity key CHANGED: compare again before sending")
    click.echo("verified" if info.verified else "not verified")
    if qr:
        from kluis.client.qr import qr_text

        click.echo(qr_text(number.qr_payload()))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per contact.")
@with_client
async def contacts(client: Any, as_json: bool) -> None:
    """Lists contacts with their timer, verification and revocation state."""
    from kluis.client.durations import format_timer

    for c in client.contacts():
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "name": c.name,
                        "timer": c.timer,
                        "verified": c.verified,
                        "identity_changed": c.identity_changed,
                        "revoked": c.revoked,
                        "unread": c.unread,
                    }
                )
            )
        else:
            flags = [
                f
                for f, on in (
                    ("verified", c.verified),
                    ("IDENTITY CHANGED", c.identity_changed),
                    ("REVOKED", c.revoked),
                )
                if on
            ]
            unread = f" ({c.unread} unread)" if c.unread else ""
            click.echo(f"{c.name}{unread}  timer {format_timer(c.timer)}  {' '.join(flags)}".rstrip())


@click.group()
def duress() -> None:
    """The panic (duress) passphrase."""


@duress.command("set")
@user_errors
def duress_set() -> None:
    """Sets the duress passphrase: entered anywhere instead of the passphrase, it erases this profile
    and revokes the account. Nobody can tell from the files whether one is set."""
    from kluis.client.client import Client

    directory = profile_dir()
    secret = passphrase()

    async def main() -> None:
        from kluis.client.errors import NoProfile

        if not (directory / "keyslots").exists():
            raise NoProfile()
        client = Client.open(directory, secret)
        if not isinstance(client, Client):
            await asyncio.to_thread(wiped, client)
            return
        try:
            _set_duress(client, secret, passphrase("Duress passphrase", confirm=True, env=DURESS_ENV))
        finally:
            await client.close()

    run(main())
    click.echo("duress passphrase set")


@click.group("revocation-cert")
def revocation_cert() -> None:
    """The offline revocation certificate."""


@revocation_cert.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@with_client
async def revocation_export(client: Any, file: Path) -> None:
    """Writes the revocation certificate to FILE (keep it offline; it revokes this account from anywhere)."""
    _write_certificate(client, file)
    click.echo(f"revocation certificate written to {file}")


def _write_certificate(client: Any, file: Path) -> None:
    from kluis.client.revocation_cert import RevocationCertificate

    cert = RevocationCertificate(client.me.server_url, client.me.fingerprint, client.revocation_statement())
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(cert.to_text())


@click.command()
@click.option("--certificate", "cert_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--server", "server_url", default=None, help="The relay (default: the one in the certificate).")
@click.option("--server-fingerprint", default=None, help="Pin this certificate fingerprint instead.")
@user_errors
def revoke(cert_file: Path, server_url: str | None, server_fingerprint: str | None) -> None:
    """Revokes an account with its revocation certificate, from any machine."""
    from kluis.client.account import parse_fingerprint
    from kluis.client.errors import ServerRefused, ServerUnreachable
    from kluis.client.link import RelayLink
    from kluis.client.revocation_cert import RevocationCertificate
    from kluis.client.transport import RelayClientError

    cert = RevocationCertificate.from_text(cert_file.read_text(encoding="ascii", errors="replace"))
    url = (server_url or cert.server_url).rstrip("/")
    fingerprint = parse_fingerprint(server_fingerprint) or (
        cert.fingerprint if url == cert.server_url.rstrip("/") else None
    )

    async def main() -> None:
        async with RelayLink(url, fingerprint) as link:
            try:
                await link.http.revoke(cert.statement.to_bytes())
            except RelayClientError as error:
                raise ServerRefused(str(error), error.code) from None
            except (TimeoutError, OSError, Exception) as error:
                if isinstance(error, ServerRefused):
                    raise
                raise ServerUnreachable() from None

    run(main())
    click.echo("account revoked")


@click.command()
@user_errors
def chat() -> None:
    """Opens the terminal app."""
    from kluis.tui.app import run_app

    run_app(profile_dir(), os.environ.get(PASSPHRASE_ENV))


COMMANDS = [
    init,
    invite,
    accept,
    send,
    receive,
    history,
    timer,
    verify,
    contacts,
    duress,
    revocation_cert,
    revoke,
    chat,
]
