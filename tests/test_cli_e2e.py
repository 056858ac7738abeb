"""End to end, as a new user would: a real ``kluis server`` process and the real ``kluis`` command in
subprocesses, profiles with the real Argon2id parameters, the passphrase from KLUIS_PASSPHRASE."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kluis.client import keyslots
from kluis.client.store import ProfileStore
from tests.server_process import ServerProcess, admin_codes, kluis_command

CLI_TIMEOUT_S = 60


class User:
    def __init__(self, root: Path, name: str, passphrase: str) -> None:
        self.name = name
        self.profile = root / name
        self.passphrase = passphrase

    def run(self, *args: str, passphrase: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KLUIS_")}
        environment["KLUIS_PASSPHRASE"] = passphrase if passphrase is not None else self.passphrase
        environment.update(env)
        return subprocess.run(
            [*kluis_command(), "--profile", str(self.profile), *args],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            env=environment,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def ok(self, *args: str, **env: str) -> str:
        result = self.run(*args, **env)
        assert result.returncode == 0, f"{args}: {result.stderr}"
        return result.stdout

    def fails(self, *args: str, passphrase: str | None = None) -> str:
        result = self.run(*args, passphrase=passphrase)
        assert result.returncode != 0, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr  # one clear line
        return lines[0]

    def receive(self, wait: float = 0) -> list[dict[str, object]]:
        args = ["receive", "--json"] + (["--wait", str(wait)] if wait else [])
        return [json.loads(line) for line in self.ok(*args).splitlines()]

    def history(self, contact: str) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.ok("history", contact, "--json").splitlines()]

    def invite(self, name: str) -> str:
        return str(json.loads(self.ok("invite", "--name", name, "--json"))["invite"])

    def message_rows(self) -> int:
        """Rows in the messages table, read from the database itself (no expiry runs here)."""
        unlocked = keyslots.unlock(self.profile / "keyslots", self.passphrase)
        assert isinstance(unlocked, keyslots.Unlocked)
        store = ProfileStore.open(self.profile, unlocked.profile_key)
        try:
            return int(store.read(lambda c: c.execute("SELECT count(*) FROM messages").fetchone()[0]))
        finally:
            store.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "relay")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def users(tmp_path: Path, server: ServerProcess, *names: str) -> list[User]:
    codes = admin_codes(server.data_dir, len(names))
    made = []
    for name, code in zip(names, codes, strict=True):
        user = User(tmp_path, name, f"correct horse {name}")
        out = user.ok("init", "--server", server.url, "--code", code)
        assert "profile created" in out
        made.append(user)
    return made


def texts(messages: list[dict[str, object]]) -> list[object]:
    return [m["text"] for m in messages if m.get("kind", "text") == "text"]


def test_invites_both_ways_offline_delivery_exactly_once(tmp_path: Path, server: ServerProcess) -> None:
    alice, bob, carol = users(tmp_path, server, "alice", "bob", "carol")
    # Alice invites Bob; Carol invites Alice: each side both invites and accepts.
    assert "alice added" in bob.ok("accept", alice.invite("bob"), "--name", "alice")
    alice.ok("accept", carol.invite("alice"), "--name", "carol")

    # Everyone is offline between commands: delivery goes through the mailbox.
    assert bob.ok("send", "alice", "hello alice").startswith("sent ")
    assert carol.ok("send", "alice", "hi, carol here").startswith("sent ")
    got = alice.receive()
    assert sorted((m["from"], m["text"]) for m in got) == [
        ("bob", "hello alice"),
        ("carol", "hi, carol here"),
    ]
    assert len({str(m["id"]) for m in got}) == 2
    assert all(isinstance(m["sent_at"], float) for m in got)
    assert alice.receive() == []  # exactly once

    for i in range(3):
        alice.ok("send", "bob", f"reply {i}")
    assert texts(bob.receive()) == ["reply 0", "reply 1", "reply 2"]  # in order
    assert texts(bob.receive()) == []
    # History keeps both directions; the sender sees delivery once the receipt came back.
    alice.receive()
    history = alice.history("bob")
    assert [(("from" in m), m["text"]) for m in history] == [
        (True, "hello alice"),
        (False, "reply 0"),
        (False, "reply 1"),
        (False, "reply 2"),
    ]
    assert {m["state"] for m in history if "to" in m} == {"delivered"}

    # Safety numbers agree; verification is recorded.
    a = json.loads(alice.ok("verify", "bob", "--json"))
    b = json.loads(bob.ok("verify", "alice", "--json", "--mark-verified"))
    assert a["safety_number"] == b["safety_number"]
    assert len(a["safety_number"]) == 60
    assert b["verified"] is True
    assert a["verified"] is False

    assert "no contact" in alice.fails("send", "nobody", "x")


def test_timers_expire_on_both_sides_and_in_the_database(tmp_path: Path, server: ServerProcess) -> None:
    alice, bob = users(tmp_path, server, "alice", "bob")
    bob.ok("accept", alice.invite("bob"), "--name", "alice")
    alice.receive()
    assert "5s" in alice.ok("timer", "bob", "5s")
    assert "5s to 4w" in alice.fails("timer", "bob", "2s")
    alice.ok("send", "bob", "burn after reading")
    got = bob.receive()
    assert texts(got) == ["burn after reading"]
    assert [m["text"] for m in got if m["kind"] == "timer"] == ["disappearing messages: 5s"]
    assert any(m["text"] == "burn after reading" for m in bob.history("alice"))
    time.sleep(5.5)
    assert texts(alice.history("bob")) == []
    assert texts(bob.history("alice")) == []
    assert alice.message_rows() == 0
    assert bob.message_rows() == 0
    assert "off" in alice.ok("timer", "bob", "off")
    assert "default timer: 1h" in alice.ok("timer", "--default", "1h")
    assert "NAME DURATION" in alice.fails("timer", "bob")


def test_duress_passphrase_wipes_and_revokes(tmp_path: Path, server: ServerProcess) -> None:
    alice, bob = users(tmp_path, server, "alice", "bob")
    duress = "the panic words"
    alice.ok("duress", "set", KLUIS_DURESS_PASSPHRASE=duress)
    bob.ok("accept", alice.invite("bob"), "--name", "alice")
    bob.ok("send", "alice", "the secret plan")
    assert texts(alice.receive()) == ["the secret plan"]
    unlocked = keyslots.unlock(alice.profile / "keyslots", alice.passphrase)
    assert isinstance(unlocked, keyslots.Unlocked)
    profile_key = unlocked.profile_key

    started = time.monotonic()
    result = alice.run("history", "bob", passphrase=duress)
    elapsed = time.monotonic() - started
    # Afterwards the program behaves like a fresh install, and says nothing else.
    assert result.returncode != 0
    assert "no profile" in result.stderr
    fresh = alice.run("history", "bob", passphrase="anything")
    assert fresh.stderr == result.stderr
    assert not alice.profile.exists()
    assert elapsed < 10  # process start + wipe + best-effort revocation; the wipe itself is tested < 1 s
    leftovers = b"".join(
        p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "relay" not in p.parts
    )
    for needle in (b"the secret plan", alice.passphrase.encode(), duress.encode(), profile_key):
        assert needle not in leftovers

    # The server revoked the account: Bob's client says so.
    assert "revoked" in bob.fails("send", "alice", "are you there?")
    assert "REVOKED" in bob.ok("contacts")


def test_revocation_certificate_from_another_machine(tmp_path: Path, server: ServerProcess) -> None:
    alice, bob = users(tmp_path, server, "alice", "bob")
    bob.ok("accept", alice.invite("bob"), "--name", "alice")
    cert = tmp_path / "alice.revocation"
    alice.ok("revocation-cert", "export", str(cert))
    assert cert.stat().st_mode & 0o777 == 0o600
    # The certificate written at init (Ed25519 is deterministic) is the same one.
    (carol,) = [User(tmp_path, "carol", "pw carol")]
    code = admin_codes(server.data_dir, 1)[0]
    carol_cert = tmp_path / "carol.revocation"
    assert "written" in carol.ok(
        "init", "--server", server.url, "--code", code, "--revocation-cert", str(carol_cert)
    )
    exported = tmp_path / "carol.again"
    carol.ok("revocation-cert", "export", str(exported))
    assert carol_cert.read_text() == exported.read_text()
    stranger = User(tmp_path, "elsewhere", "unused")
    out = stranger.ok("revoke", "--certificate", str(cert), "--server", server.url)
    assert "revoked" in out
    assert "revoked" in bob.fails("send", "alice", "hello?")
    assert "revoked" in alice.fails("receive")
    bad = tmp_path / "bad.revocation"
    bad.write_text("not a certificate")
    assert "not a Kluis revocation certificate" in stranger.fails("revoke", "--certificate", str(bad))


def test_wrong_passphrase_changes_nothing(tmp_path: Path, server: ServerProcess) -> None:
    (alice,) = users(tmp_path, server, "alice")
    before = {p.name: p.read_bytes() for p in alice.profile.iterdir()}
    assert alice.fails("history", "bob", passphrase="wrong") == "Error: wrong passphrase"
    assert {p.name: p.read_bytes() for p in alice.profile.iterdir()} == before
    assert "no profile" in User(tmp_path, "nobody", "x").fails("receive")
    assert "exists" in alice.fails("init", "--server", server.url, "--code", "KLUIS-AAAA")


def test_server_restart_and_sigkill_lose_nothing_show_nothing_twice(
    tmp_path: Path, server: ServerProcess
) -> None:
    alice, bob = users(tmp_path, server, "alice", "bob")
    bob.ok("accept", alice.invite("bob"), "--name", "alice")
    alice.receive()
    sent = []

    def send(text: str) -> str:
        out = bob.ok("send", "alice", text)
        sent.append(text)
        return out

    send("one")
    send("two")
    assert texts(alice.receive()) == ["one", "two"]
    server.stop()  # graceful restart
    server.start()
    send("three")
    server.kill()  # crash after an acknowledged send
    server.start()
    send("four")
    server.kill()
    # The server is down: the message is queued, and the output says so.
    assert bob.ok("send", "alice", "five").startswith("queued ")
    sent.append("five")
    server.start()
    # The next command of Bob's flushes the queue (once), then Alice gets everything exactly once.
    bob.ok("receive")
    got = texts(alice.receive())
    assert got == ["three", "four", "five"]
    assert texts(alice.receive()) == []
    assert [m["text"] for m in alice.history("bob") if "from" in m] == sent
