"""An echo bot on the Kluis SDK: answers every text message with "echo: <text>".

The bot is an ordinary Kluis profile (the same files ``kluis init`` makes), driven by
:class:`kluis.client.client.Client`:

- ``Client.create`` (first run) or ``Client.open`` unlocks the profile (passphrase: KLUIS_PASSPHRASE);
- ``client.invite(name)`` makes a single-use invite; whoever accepts it becomes the contact ``name``;
- ``client.run(stop=...)`` stays connected: it receives as messages arrive, sends receipts, retries the
  outbox, erases messages whose timer ran out, and reconnects after a network failure;
- ``client.subscribe(listener)`` reports new messages (and contacts); ``client.take_new()`` returns the
  messages not shown yet (which starts their disappearing timers), and ``client.send`` answers.

Run it against a local relay (see README.md, "Using Kluis")::

    export KLUIS_PASSPHRASE='a long passphrase for the bot'
    python examples/echo_bot.py --profile ./bot --server wss://127.0.0.1:8443 \\
        --server-fingerprint FP --code CODE --invite alice      # first run: creates the profile
    kluis --profile ./alice accept 'kluis:invite/...' --name bot
    kluis --profile ./alice send bot hello
    kluis --profile ./alice receive --wait 10                   # -> bot: echo: hello

Later runs need only ``--profile`` (and ``--invite NAME`` for another contact). The bot stops on
SIGINT or SIGTERM, or after ``--seconds``. It never prints message texts: its output says who it
answered, not what was said.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from kluis.client.account import parse_fingerprint
from kluis.client.client import Client, ContactInfo, Event, Message
from kluis.client.errors import ClientError, ProfileError
from kluis.client.keyslots import DEFAULT_ARGON2, Argon2Params

PASSPHRASE_ENV = "KLUIS_PASSPHRASE"  # noqa: S105 - the name of a variable, not a secret
LIGHT_ARGON2 = Argon2Params(memory_kib=16 * 1024, iterations=1, lanes=1)
"""--light-kdf: for tests and throw-away bots. A stolen profile's passphrase is then far cheaper to guess."""
PREFIX = "echo: "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A Kluis echo bot: answers every text message with 'echo: <text>'. "
        f"The profile's passphrase is read from {PASSPHRASE_ENV}."
    )
    parser.add_argument("--profile", type=Path, required=True, help="the bot's profile directory")
    parser.add_argument("--server", help="first run only: the relay URL (wss://HOST:PORT)")
    parser.add_argument("--server-fingerprint", help="first run only: the relay's certificate fingerprint")
    parser.add_argument("--code", help="first run only: an activation code")
    parser.add_argument(
        "--light-kdf",
        action="store_true",
        help="first run only: protect the new profile with light Argon2id settings (16 MiB, 1 pass) "
        "instead of the default 256 MiB, 3 passes. For tests and throw-away bots only: the "
        "passphrase of a stolen profile is then much cheaper to guess.",
    )
    parser.add_argument(
        "--invite", metavar="NAME", help="print a single-use invite for contact NAME at start"
    )
    parser.add_argument(
        "--seconds", type=float, help="stop after this many seconds (default: run until stopped)"
    )
    return parser.parse_args(argv)


async def open_profile(args: argparse.Namespace, passphrase: str) -> Client:
    """Unlocks the bot's profile, or creates it (registering with the activation code) on first run."""
    if (args.profile / "keyslots").exists():
        client = Client.open(args.profile, passphrase)
        if not isinstance(client, Client):  # the duress passphrase: the profile is erased
            raise ClientError("the profile was erased")
        return client
    if not (args.server and args.code):
        raise ClientError(f"no profile in {args.profile}: the first run needs --server and --code")
    fingerprint = parse_fingerprint(args.server_fingerprint)
    argon2 = LIGHT_ARGON2 if args.light_kdf else DEFAULT_ARGON2
    client = await Client.create(args.profile, passphrase, args.server, args.code, fingerprint, argon2=argon2)
    say(f"profile created in {args.profile}")
    return client


def say(line: str) -> None:
    print(line, flush=True)


async def answer_new(client: Client) -> None:
    """Answers every text message not shown yet (taking them starts their disappearing timers)."""
    for message in client.take_new():
        if message.direction != "in" or message.kind != "text":
            continue  # e.g. a timer change: nothing to answer
        try:
            await client.send(message.contact, PREFIX + message.text)
        except (ClientError, ValueError) as error:  # revoked, identity changed, text too long ...
            say(f"could not answer {message.contact}: {error}")
        else:
            say(f"answered {message.contact}")


async def serve(client: Client, stop: asyncio.Event) -> None:
    """Runs the client until ``stop``; answers as messages arrive."""
    arrived = asyncio.Event()
    arrived.set()  # messages received on an earlier run but never answered

    def on_event(event: Event) -> None:
        if isinstance(event, Message) and event.direction == "in":
            arrived.set()
        elif isinstance(event, ContactInfo):
            say(f"contact {event.name}: timer {event.timer} s{', revoked' if event.revoked else ''}")

    unsubscribe = client.subscribe(on_event)
    runner = asyncio.create_task(client.run(stop=stop))
    stopped = asyncio.create_task(stop.wait())
    try:
        while not (stop.is_set() or runner.done()):
            wake = asyncio.create_task(arrived.wait())
            await asyncio.wait({wake, stopped, runner}, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            if arrived.is_set():
                arrived.clear()
                await answer_new(client)
    finally:
        unsubscribe()
        stop.set()
        stopped.cancel()
        await runner  # raises what ended it early (e.g. ServerRefused: this account was revoked)


async def main(args: argparse.Namespace) -> int:
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if not passphrase:
        print(f"set {PASSPHRASE_ENV} to the bot's passphrase", file=sys.stderr)
        return 2
    try:
        client = await open_profile(args, passphrase)
    except (ClientError, ProfileError, ValueError) as error:
        print(f"echo bot: {error}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if args.seconds is not None:
        loop.call_later(args.seconds, stop.set)
    try:
        if args.invite:
            say(client.invite(args.invite).to_uri())
        say("echo bot running")
        await serve(client, stop)
    except (ClientError, ProfileError, ValueError) as error:
        print(f"echo bot: {error}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    say("echo bot stopped")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
