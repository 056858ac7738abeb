"""``kluis demo``: Kluis working end to end on this machine, in a few seconds.

In a temporary directory (removed at the end) the demo starts a real relay on loopback (SQLite; plain
WebSocket, which the relay allows on loopback only), creates two activation codes the way an operator
does, and creates Alice's and Bob's profiles with the SDK (:class:`kluis.client.client.Client`). Alice
invites Bob, Bob accepts (the PQXDH first message), they talk through sealed envelopes with delivery
receipts, a 5-second timer erases a message from both devices, and they compare safety numbers.
While Bob is offline, the demo opens the relay's database read-only and prints what a seizure would
find, then checks that no message text, contact name or passphrase occurs in any of the relay's
files, and that the profiles on disk are encrypted. A failed check raises :class:`DemoFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kluis.client.client import Client, Message
from kluis.client.invite import Invite
from kluis.client.keyslots import Argon2Params

T = TypeVar("T")

ALICE_CALLS_BOB = "Bob Jansen"
BOB_CALLS_ALICE = "Alice de Vries"
PASSPHRASES = {"alice": "demo passphrase of alice", "bob": "demo passphrase of bob"}
TEXTS = (
    "Hi Alice, the contract is signed.",
    "Great. Lunch on Friday to celebrate?",
    "See you at ten, at the usual place.",
)
DEMO_TIMER = 5
"""The shortest timer Kluis allows, so the demo can show a message disappear."""
DEMO_ARGON2 = Argon2Params(memory_kib=16 * 1024, iterations=1, lanes=1)
"""Light Argon2id for the demo's throw-away profiles (about 20 ms per derivation instead of 0.4 s with
the real 256 MiB, t=3); the output says so. Real profiles (``kluis init``) use the defaults."""
WAIT = 10.0
"""The longest the demo waits for any one thing on loopback before it gives up."""


class DemoFailed(RuntimeError):
    """A check of the demo failed (something the relay or a profile should not hold, or a timeout)."""


class Echo(Protocol):
    """``click.echo``, or anything that prints a line (``nl=False``: no line break)."""

    def __call__(self, message: str, *, nl: bool = True) -> None: ...


def run_demo(echo: Echo) -> None:
    """Runs the demo, printing each step with ``echo``.

    Raises:
        DemoFailed: a check failed.
        KeyboardInterrupt: interrupted (SIGINT/SIGTERM); everything is stopped and removed first.
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kluis-demo-") as tmp:
        try:
            asyncio.run(_demo(Path(tmp), echo))
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
    echo(f"\nDone in {time.monotonic() - started:.1f} s; the relay is stopped and its files are removed.")


def _check(condition: bool, failure: str) -> None:
    if not condition:
        raise DemoFailed(failure)


async def _until(check: Callable[[], T | None], what: str) -> T:
    """Polls ``check`` until it returns something (clients and relay share this event loop)."""
    deadline = time.monotonic() + WAIT
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _new_text(client: Client, text: str) -> Message | None:
    """The incoming message ``text`` once it arrived (taking it shows it: its timer starts)."""
    for message in client.take_new():
        if message.text == text:
            return message
    return None


def _has_state(client: Client, contact: str, message_id: str, state: str) -> bool | None:
    return True if any(m.id == message_id and m.state == state for m in client.history(contact)) else None


def _copies(clients: list[Client], text: str) -> int:
    """Rows holding ``text`` in the clients' profile databases."""
    return sum(
        int(
            client.store.read(
                lambda c: c.execute("SELECT count(*) FROM messages WHERE body = ?", (text,))
            ).fetchone()[0]
        )
        for client in clients
    )


class _Running:
    """A client inside its ``run()`` loop: connected, receiving, erasing messages when due."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(client.run(stop=self.stop))
        self.closed = False

    async def close(self) -> None:
        """Stops the loop and closes the client (once; also when interrupted while closing)."""
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, WAIT)
        finally:
            self.task.cancel()
            await self.client.close()


async def _start_relay(data_dir: Path) -> tuple[str, asyncio.Event, asyncio.Task[None]]:
    from kluis.server.config import load_config
    from kluis.server.runner import serve

    config = load_config(
        None, {"data_dir": data_dir, "host": "127.0.0.1", "port": 0, "insecure_loopback": True}
    )
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, on_ready=lambda url, _fp: ready.set_result(url), stop=stop))
    either: set[asyncio.Future[Any]] = {ready, task}
    done, _ = await asyncio.wait(either, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        stop.set()
        await task  # raises the relay's error, if it failed
        raise DemoFailed("the relay did not start")
    # serve() makes SIGINT/SIGTERM stop the relay alone; here they end the whole demo (cleanly).
    loop, main = asyncio.get_running_loop(), asyncio.current_task()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, main.cancel if main is not None else stop.set)
    return ready.result(), stop, task


async def _activation_codes(data_dir: Path, count: int) -> list[str]:
    """What ``kluis admin codes create`` does: random bearer codes, stored as hashes only."""
    from kluis.server.codes import hash_code, new_code
    from kluis.server.storage import database_path, open_storage

    codes = [new_code() for _ in range(count)]
    storage = await open_storage(database_path(data_dir), fsync=False)
    try:
        await storage.codes.add_codes([hash_code(code) for code in codes], 30)
    finally:
        await storage.close()
    return codes


def _relay_tables(data_dir: Path) -> tuple[dict[str, int], tuple[bytes, int, bytes, int] | None]:
    """Every table's row count and one mailbox row, read as a seizer would: the file, read-only."""
    from kluis.server.storage import database_path

    uri = database_path(data_dir).resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        names = [
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        counts = {n: int(db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names}  # noqa: S608 - names from sqlite_master
        row = db.execute("SELECT recipient, seq, ciphertext, expiry_day FROM mailbox LIMIT 1").fetchone()
    return counts, None if row is None else (bytes(row[0]), int(row[1]), bytes(row[2]), int(row[3]))


def _files_holding(root: Path, needles: list[bytes]) -> tuple[int, int, list[str]]:
    """(files, bytes, findings): every file under ``root`` searched for every needle."""
    files = size = 0
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            files += 1
            size += len(data)
            found += [f"{path.name} holds {n.decode()!r}" for n in needles if n in data]
    return files, size, found


async def _demo(tmp: Path, echo: Echo) -> None:  # noqa: PLR0915 - one story, told in order
    relay_dir = tmp / "relay"
    relay_dir.mkdir()
    echo("Kluis demo: a real relay and two real profiles on this machine, in a temporary directory.\n")

    echo("1. The provider starts a relay and creates two activation codes (it keeps only their hashes).")
    codes = await _activation_codes(relay_dir, 2)
    url, relay_stop, relay_task = await _start_relay(relay_dir)
    echo(f"   relay listening on {url} (plain WebSocket: the relay allows it on loopback only)")
    running: list[_Running] = []
    try:
        echo("2. Alice and Bob create profiles: keys are made on the device and never leave it, and the")
        echo("   profile is encrypted under a passphrase with Argon2id. These demo profiles use light")
        echo("   Argon2id settings to start fast; real profiles use 256 MiB.")
        alice = await Client.create(tmp / "alice", PASSPHRASES["alice"], url, codes[0], argon2=DEMO_ARGON2)
        bob = await Client.create(tmp / "bob", PASSPHRASES["bob"], url, codes[1], argon2=DEMO_ARGON2)
        running += [_Running(alice), _Running(bob)]
        echo("   Both registered with a code and published public prekeys (X25519 and ML-KEM-768).")

        echo("3. Alice makes a single-use invite (a link or QR code, handed over in person):")
        invite = alice.invite(ALICE_CALLS_BOB).to_uri()
        echo(f"   {invite[:60]}... ({len(invite)} characters)")
        await bob.accept(Invite.from_uri(invite), BOB_CALLS_ALICE)
        echo("   Bob accepts: his first message runs PQXDH (X25519 + ML-KEM-768) on Alice's prekeys.")
        await _until(lambda: alice.contacts() or None, "Alice to see Bob's acceptance")
        echo(f'   Alice now has the contact "{ALICE_CALLS_BOB}", and Bob has "{BOB_CALLS_ALICE}".')

        echo("4. They talk. Each message is a sealed envelope: the relay sees the recipient, not the sender.")
        sent = await bob.send(BOB_CALLS_ALICE, TEXTS[0])
        echo(f"   Bob -> Alice  {TEXTS[0]!r:40} {sent.state}", nl=False)
        shown = await _until(lambda: _new_text(alice, TEXTS[0]), "Alice to receive")
        await _until(lambda: _has_state(bob, BOB_CALLS_ALICE, sent.id, "delivered"), "the receipt")
        echo(", delivered (Alice's device confirmed it)")
        left = (shown.expires_at or 0.0) - time.time()
        echo(f"   Alice reads it; it disappears in {left:.0f} s (a conversation starts with a 30 s timer).")

        echo(f"5. Alice sets their timer to {DEMO_TIMER} s (both sides are told) and writes:")
        await alice.set_timer(ALICE_CALLS_BOB, DEMO_TIMER)
        sent = await alice.send(ALICE_CALLS_BOB, TEXTS[1])
        echo(f"   Alice -> Bob  {TEXTS[1]!r:40} {sent.state}", nl=False)
        read = await _until(lambda: _new_text(bob, TEXTS[1]), "Bob to receive")
        await _until(lambda: _has_state(alice, ALICE_CALLS_BOB, sent.id, "delivered"), "the receipt")
        echo(", delivered")
        ours = [m.expires_at or 0.0 for m in alice.history(ALICE_CALLS_BOB) if m.text == TEXTS[1]]
        due = max([read.expires_at or 0.0, *ours])
        echo(f"   Bob reads it; its {DEMO_TIMER} s countdown runs on both devices (step 9 comes back to it).")

        echo("6. They compare safety numbers in person (equal: nobody swapped keys in between):")
        mine, theirs = alice.safety_number(ALICE_CALLS_BOB), bob.safety_number(BOB_CALLS_ALICE)
        echo(f"   Alice sees {mine.display()}")
        echo(f"   Bob sees   {theirs.display()}")
        _check(mine.digits == theirs.digits, "the safety numbers differ")
        alice.mark_verified(ALICE_CALLS_BOB)
        bob.mark_verified(BOB_CALLS_ALICE)

        echo("7. Bob goes offline, so Alice's next message waits at the relay. What a seizure of the relay")
        echo("   finds now (its SQLite file, opened read-only), table by table:")
        await running[1].close()
        await alice.send(ALICE_CALLS_BOB, TEXTS[2])
        counts, row = _relay_tables(relay_dir)
        if row is None:
            raise DemoFailed("the relay holds no envelope for Bob")
        recipient, seq, ciphertext, expiry_day = row
        names = list(counts)
        for part in (names[: len(names) // 2], names[len(names) // 2 :]):
            echo("   " + ", ".join(f"{name} {counts[name]}" for name in part))
        echo(f"   the mailbox row: recipient {recipient.hex()[:12]}... (a random account id), seq {seq},")
        echo(f"   expiry day {expiry_day}, ciphertext ({len(ciphertext)} bytes) {ciphertext[:16].hex()}...")
        echo("   No sender, no name, no contact list, no time of day.")
        needles = [t.encode() for t in (*TEXTS, ALICE_CALLS_BOB, BOB_CALLS_ALICE, *PASSPHRASES.values())]
        files, size, found = _files_holding(relay_dir, needles)
        _check(not found, f"the relay's files hold plaintext: {found}")
        echo(f"   Checked: no text, name or passphrase in the relay's {files} files ({size // 1024} KiB),")
        for who in ("alice", "bob"):
            profile_db = (tmp / who / "profile.db").read_bytes()
            _check(not profile_db.startswith(b"SQLite format 3"), f"{who}'s profile.db is not encrypted")
            _check(not any(n in profile_db for n in needles), f"{who}'s profile.db holds plaintext")
        echo("   nor in the profiles' profile.db files: they are encrypted (no SQLite header, no plaintext).")

        echo("8. Bob comes back (unlocks his profile) and reads it; the relay then deletes its copy:")
        reopened = Client.open(tmp / "bob", PASSPHRASES["bob"])
        if not isinstance(reopened, Client):
            raise DemoFailed("Bob's profile did not open")
        bob = reopened
        running[1] = _Running(bob)
        await _until(lambda: _new_text(bob, TEXTS[2]), "Bob to receive after reconnecting")
        await _until(lambda: _relay_tables(relay_dir)[0]["mailbox"] == 0 or None, "an empty mailbox")
        echo(f"   Bob reads {TEXTS[2]!r}; the relay's mailbox is empty again.")

        echo(f"9. The {DEMO_TIMER} s message of step 5, in Alice's and Bob's databases:")
        clients = [alice, bob]
        echo(f"   {_copies(clients, TEXTS[1])} copies, erased in", nl=False)
        shown_second = None
        while (left := due - time.time()) > 0:
            second = math.ceil(left)
            if second != shown_second and left > second - 0.8:  # not a number about to change
                echo(f" {second}", nl=False)
                shown_second = second
            await asyncio.sleep(left - second + 1.001)
        await _until(lambda: _copies(clients, TEXTS[1]) == 0 or None, "the timer to erase the message")
        echo(f" ... {_copies(clients, TEXTS[1])} copies left.")
        echo("   Gone from both devices (secure_delete zeroes the rows on disk, not only unlinks them).")
    finally:
        for client in running:
            client.stop.set()
        await asyncio.gather(*(client.close() for client in running))
        relay_stop.set()
        await asyncio.wait_for(relay_task, WAIT)
