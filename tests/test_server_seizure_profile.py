"""Seizure profile: what a seized relay holds, proven on the real server process.

The relay runs as ``kluis server`` (a child process, DEBUG logging) and carries a realistic exchange
between real clients: registrations with operator-made codes, key uploads, bundle fetches, sealed
envelopes with real PQXDH/ratchet sessions, live and offline delivery, receipts, an extension, a
revocation and a handful of bad requests. The data directory is copied while the server runs (a
seizure of a live machine) and read again after SIGTERM. Then:

- every table and column of the database is in the allow-list of the seizure profile, and nothing else
  (no triggers, views or statistics tables);
- no stored integer and no byte pattern looks like a timestamp finer than a day;
- no plaintext, delivery token, activation code, sender account id (in any mailbox row) or private key
  appears in the bytes of kluis.db, its -wal or its -shm;
- the logs hold no account id, token, code, key bytes, envelope id or IP address;
- the data directory holds only what docs/SECURITY.md ("Seizure profile") lists.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import sqlite3
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from kluis.client.transport import MailboxStream, RelayClientError
from kluis.protocol.bundle import PreKeyBundle
from kluis.protocol.envelope import seal
from kluis.protocol.peer import PeerSessions
from kluis.protocol.revocation import RevocationStatement
from kluis.protocol.session import SessionPayload
from kluis.relay import frames as f
from kluis.server.storage.base import epoch_day
from tests.server_process import ServerProcess, admin_codes
from tests.server_support import NOW, Remote, User, new_user

ALLOWED_COLUMNS: dict[str, set[str]] = {
    "activation_codes": {"code_hash", "days"},
    "accounts": {"account_id", "identity", "token_hash", "expires_day", "revoked", "revocation"},
    "signed_prekeys": {"account_id", "slot", "encoding"},
    "one_time_prekeys": {"account_id", "kind", "key_id", "encoding"},
    "envelope_keys": {"account_id", "position", "encoding"},
    "mailbox": {"recipient", "seq", "envelope_id", "ciphertext", "expiry_day"},
    "schema_version": {"version", "compat_version"},
}
ALLOWED_INDEXES = {"mailbox_expiry"}
DAY_COLUMNS = {("accounts", "expires_day"), ("mailbox", "expiry_day")}
ANNOUNCEMENT = "kluis relay listening on "
CHECKPOINT_WAIT_S = 8.0

SECRET_TEXT = "Seizure marker {n}: meet at the old harbour at 04:00, bring the ledger"


@dataclass
class Secrets:
    """Everything that must never reach the database or the logs."""

    plaintexts: list[bytes] = field(default_factory=list)
    tokens: list[bytes] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    senders: list[bytes] = field(default_factory=list)
    private_keys: list[bytes] = field(default_factory=list)
    # Allowed in the database, never in the logs:
    accounts: list[bytes] = field(default_factory=list)
    envelope_ids: list[bytes] = field(default_factory=list)
    public_keys: list[bytes] = field(default_factory=list)
    waiting: list[bytes] = field(default_factory=list)
    """Ids of the envelopes left undelivered (Dave's)."""


@dataclass
class Chat:
    """A user's sessions with each peer (by account id)."""

    user: User
    peers: dict[bytes, PeerSessions] = field(default_factory=dict)


def text_forms(value: bytes) -> set[str]:
    """How a byte string could show up in a log line."""
    forms = {
        value.hex(),
        value.hex().upper(),
        base64.b64encode(value).decode().rstrip("="),
        base64.urlsafe_b64encode(value).decode().rstrip("="),
        repr(value)[2:-1],
    }
    return {form for form in forms if len(form) >= 16}


async def send_sealed(
    chat: Chat, recipient: User, text: bytes, secrets: Secrets, *, stream: object
) -> tuple[bytes, f.SendStatus]:
    """Fetches the recipient's bundle, encrypts in the peer session, seals, sends anonymously."""
    sender = chat.user
    bundle = PreKeyBundle.from_bytes(await sender.server.http.bundle(recipient.account, recipient.token))
    sessions = chat.peers.setdefault(recipient.account, PeerSessions())
    verified = bundle.verify() if sessions.active is None else None
    payload = sessions.encrypt(sender.identity, verified, text, os.urandom)
    envelope = seal(bundle.envelope_key, bundle.identity, sender.account, sender.identity.public, payload)
    envelope_id = os.urandom(16)
    secrets.plaintexts.append(text)
    secrets.envelope_ids.append(envelope_id)
    assert hasattr(stream, "send_envelopes")
    statuses = await stream.send_envelopes(
        [f.OutgoingEnvelope(envelope_id, recipient.account, recipient.token, envelope)]
    )
    return envelope_id, statuses[envelope_id]


def open_delivery(chat: Chat, delivery: f.Delivery) -> tuple[bytes, bytes]:
    """(sender account, plaintext) of a delivered envelope."""
    user = chat.user
    content = user.ring.open(delivery.envelope, NOW)
    sessions = chat.peers.setdefault(content.sender_account, PeerSessions())
    text = sessions.decrypt(
        user.identity,
        user.prekeys,
        SessionPayload.from_bytes(content.ratchet_message),
        content.sender_identity,
    )
    return content.sender_account, text


async def receive_until_drained(mailbox: MailboxStream, chat: Chat) -> list[tuple[bytes, bytes]]:
    """Opens every delivery until DRAINED, receipting each frame after "committing" it."""
    got: list[tuple[bytes, bytes]] = []
    for _ in range(100):
        frame = await mailbox.receive(timeout=10)
        if isinstance(frame, f.Deliver):
            got += [open_delivery(chat, d) for d in frame.deliveries]
            await mailbox.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))
        elif isinstance(frame, f.Drained):
            return got
    raise AssertionError("no DRAINED")


async def http_status(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, dict[str, object]]:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json(content_type=None)


async def exchange(server: ServerProcess, secrets: Secrets, codes: list[str], extra_code: str) -> None:
    """The realistic session: five users, live and offline delivery, extend, revoke, bad input."""
    async with aiohttp.ClientSession() as session:
        remote = Remote(server.url, session)
        users = [await new_user(remote, code) for code in codes[:5]]
        alice, bob, carol, dave, eve = users
        for user in users:
            secrets.accounts.append(user.account)
            secrets.tokens.append(user.token)
            secrets.public_keys.append(user.identity.public.to_bytes())
            secrets.public_keys.append(user.ring.current_public().public)
            secrets.private_keys += list(user.ring.current.seeds())
            secrets.private_keys += [p.private_bytes() for p in user.prekeys.one_time.values()]
            await user.connect()
            await user.upload()
        chats = {u.account: Chat(u) for u in users}

        # Carol and Dave go offline; their envelopes wait in their mailboxes.
        for user in (carol, dave):
            assert user.mailbox is not None
            await user.mailbox.close()

        alice_out, bob_out = await alice.sender(), await bob.sender()
        # Live: Alice -> Bob, Bob -> Alice (the reply rides the session Alice started).
        n = 0
        for chat, to, stream in (
            (chats[alice.account], bob, alice_out),
            (chats[bob.account], alice, bob_out),
        ):
            for _ in range(2):
                n += 1
                secrets.senders.append(chat.user.account)
                _, status = await send_sealed(
                    chat, to, SECRET_TEXT.format(n=n).encode(), secrets, stream=stream
                )
                assert status is f.SendStatus.OK
                assert to.mailbox is not None
                frame = await to.mailbox.expect(f.Deliver, timeout=10)
                sender, text = open_delivery(chats[to.account], frame.deliveries[0])
                assert (sender, text) == (chat.user.account, SECRET_TEXT.format(n=n).encode())
                await to.mailbox.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))

        # Offline: both write to Carol and to Dave.
        for chat, stream in ((chats[alice.account], alice_out), (chats[bob.account], bob_out)):
            for to in (carol, dave):
                for _ in range(3):
                    n += 1
                    text = SECRET_TEXT.format(n=n).encode()
                    envelope_id, status = await send_sealed(chat, to, text, secrets, stream=stream)
                    assert status is f.SendStatus.OK
                    if to is dave:
                        secrets.waiting.append(envelope_id)
        secrets.senders += [alice.account, bob.account]

        # Carol comes back and drains; Dave stays away (his envelopes are what a seizure finds).
        mailbox = await carol.connect()
        got = await receive_until_drained(mailbox, chats[carol.account])
        assert sorted(s for s, _ in got) == sorted([alice.account] * 3 + [bob.account] * 3)
        await mailbox.close()

        # An extension with a code the operator made while the server ran.
        before = alice.mailbox.auth.expires_day if alice.mailbox else 0
        assert await remote.http.extend(alice.account, extra_code) == before + 30

        # Eve revokes her account; a send to her is then refused as REVOKED.
        statement = RevocationStatement.sign(eve.identity, eve.account)
        await remote.http.revoke(statement.to_bytes())
        _eid, status = await send_sealed_raw(alice_out, eve, b"x" * 300, secrets)
        assert status is f.SendStatus.REVOKED

        # Bad requests: a used code, a wrong token, malformed bodies, a forged statement.
        with pytest.raises(RelayClientError, match="code"):
            await new_user(remote, codes[0])
        with pytest.raises(RelayClientError):
            await remote.http.bundle(bob.account, os.urandom(32))
        wrong_token = os.urandom(32)
        secrets.tokens.append(wrong_token)
        _, status = await send_sealed_raw(alice_out, bob, b"y" * 300, secrets, token=wrong_token)
        assert status is f.SendStatus.REJECTED
        base = server.url.replace("ws://", "http://")
        for body in (
            b"{not json",
            json.dumps({"account": base64.b64encode(bob.account).decode(), "token": "!!"}).encode(),
            json.dumps({"code": codes[1], "identity": "AAAA", "token_hash": "AAAA"}).encode(),
        ):
            status_code, payload = await http_status(session, base + "/v1/bundle", body)
            assert status_code == 400, payload
        forged = RevocationStatement.sign(alice.identity, bob.account)
        with pytest.raises(RelayClientError):
            await remote.http.revoke(forged.to_bytes())
        # A stream with garbage, and an AUTH with a wrong signature.
        ws = await session.ws_connect(server.url + "/v1/stream")
        await ws.receive(timeout=5)
        await ws.send_bytes(b"\x01\x99garbage" + bob.account)
        await ws.receive(timeout=5)
        await ws.close()
        with pytest.raises(RelayClientError):
            await MailboxStream.connect(session, server.url, alice.identity, bob.account, False)

        for user in users:
            if user.mailbox is not None:
                with contextlib.suppress(Exception):
                    await user.mailbox.close()
        await alice_out.close()
        await bob_out.close()


async def send_sealed_raw(
    stream: object, to: User, envelope: bytes, secrets: Secrets, *, token: bytes | None = None
) -> tuple[bytes, f.SendStatus]:
    envelope_id = os.urandom(16)
    secrets.envelope_ids.append(envelope_id)
    assert hasattr(stream, "send_envelopes")
    statuses = await stream.send_envelopes(
        [f.OutgoingEnvelope(envelope_id, to.account, token or to.token, envelope)]
    )
    return envelope_id, statuses[envelope_id]


def snapshot(data_dir: Path, into: Path) -> dict[str, bytes]:
    """The database files' bytes, as a seizure of the running machine would copy them."""
    into.mkdir()
    files = {}
    for name in ("kluis.db", "kluis.db-wal", "kluis.db-shm"):
        path = data_dir / name
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(path, into / name)
            files[name] = (into / name).read_bytes()
    return files


def time_like_offsets(data: bytes, low: int, high: int) -> list[int]:
    """Offsets where a u32 or u64 (either byte order) holds a value in [low, high] (Unix seconds or
    milliseconds around the test run)."""
    hits = []
    for fmt, size in (("<I", 4), (">I", 4), ("<Q", 8), (">Q", 8)):
        for shift in range(size):
            end = shift + (len(data) - shift) // size * size
            for i, (value,) in enumerate(struct.iter_unpack(fmt, data[shift:end])):
                if low <= value <= high or low * 1000 <= value <= high * 1000:
                    hits.append(shift + i * size)
    return hits


def check_database(db: Path, secrets: Secrets, started: float, ended: float) -> dict[str, int]:
    """The allow-list, value checks and per-row sender checks; returns row counts per table."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        objects = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        tables = {name for kind, name, _, _ in objects if kind == "table"}
        assert tables == set(ALLOWED_COLUMNS), tables
        for kind, name, table, sql in objects:
            assert kind in ("table", "index"), (kind, name)
            if kind == "table":
                assert "WITHOUT ROWID" in sql.upper(), name  # no hidden arrival-order column
            else:
                assert name in ALLOWED_INDEXES or name.startswith("sqlite_autoindex_"), name
                assert table in ALLOWED_COLUMNS
        counts = {}
        today = epoch_day(time.time())
        for table, allowed in ALLOWED_COLUMNS.items():
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            assert set(columns) == allowed, (table, columns)
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            counts[table] = len(rows)
            for row in rows:
                for column, value in zip(columns, row, strict=True):
                    assert not isinstance(value, str | float), (table, column, "only integers and blobs")
                    if isinstance(value, int):
                        assert 0 <= value < 10**8, (table, column, value)  # no Unix seconds/millis
                        if (table, column) in DAY_COLUMNS:
                            assert today - 1 <= value <= today + 400, (table, column, value)
                    elif (
                        value is not None
                        and table != "accounts"
                        and column not in ("account_id", "recipient")
                    ):
                        # The senders named in the sealed envelopes appear in no other account's rows.
                        for sender in secrets.senders:
                            assert sender not in value, (table, column)
        mailbox = conn.execute("SELECT recipient, envelope_id FROM mailbox").fetchall()
        assert len(mailbox) == len({tuple(r) for r in mailbox})
    finally:
        conn.close()
    assert started < ended
    return counts


def check_bytes(name: str, data: bytes, secrets: Secrets, started: float, ended: float) -> None:
    for plaintext in secrets.plaintexts:
        assert plaintext[:24] not in data, (name, "plaintext")
    for token in secrets.tokens:
        assert token not in data, (name, "delivery token")
        assert token.hex().encode() not in data
    for code in secrets.codes:
        compact = code.replace("-", "").removeprefix("KLUIS")
        raw = base64.b32decode(compact)
        for form in (code.encode(), compact.encode(), raw):
            assert form not in data, (name, "activation code")
    for key in secrets.private_keys:
        assert key not in data, (name, "private key")
    assert not re.search(rb"20\d\d-[01]\d-[0-3]\d[T ][0-2]\d:", data), (name, "an ISO timestamp")
    hits = time_like_offsets(data, int(started) - 60, int(ended) + 60)
    assert not hits, (name, "Unix time at offsets", hits[:5])


def check_logs(lines: list[str], secrets: Secrets) -> None:
    assert any(ANNOUNCEMENT in line for line in lines)
    # The one startup line names the address the operator told it to listen on; no other line may
    # name any address (clients connect from 127.0.0.1 too).
    body = "\n".join(line for line in lines if ANNOUNCEMENT not in line)
    assert "127.0.0.1" not in body
    assert not re.search(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])", body), "an IPv4 address"
    assert "::1" not in body
    forbidden: list[tuple[str, bytes]] = [
        *(("account id", a) for a in secrets.accounts),
        *(("token", t) for t in secrets.tokens),
        *(("envelope id", e) for e in secrets.envelope_ids),
        *(("public key", k[:12]) for k in secrets.public_keys),
        *(("private key", k[:12]) for k in secrets.private_keys),
        *(("plaintext", p[:24]) for p in secrets.plaintexts),
    ]
    for what, value in forbidden:
        for form in text_forms(value):
            assert form not in body, (what, form)
    for plaintext in secrets.plaintexts:
        assert plaintext[:24].decode(errors="replace") not in body
    for code in secrets.codes:
        compact = code.replace("-", "")
        assert code not in body
        assert compact not in body
        assert compact.removeprefix("KLUIS")[:16] not in body


def listing(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*")):
        yield path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")


def test_seizure_profile(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    codes = admin_codes(data_dir, 5)
    server = ServerProcess(data_dir, env={"KLUIS_SERVER_LOG_LEVEL": "DEBUG"})
    secrets = Secrets(codes=list(codes))
    started = time.time()
    server.start()
    try:
        extra = admin_codes(data_dir, 1)  # the operator adds a code while the server runs
        secrets.codes += extra
        asyncio.run(exchange(server, secrets, codes, extra[0]))
        # The housekeeping checkpoint (every 5 s) empties the WAL, so page images of delivered
        # envelopes do not outlive it there.
        wal = data_dir / "kluis.db-wal"
        deadline = time.monotonic() + CHECKPOINT_WAIT_S
        while wal.exists() and wal.stat().st_size > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        live = snapshot(data_dir, tmp_path / "seized-live")
    finally:
        code = server.stop()
    ended = time.time()
    assert code == 0, server.lines[-10:]

    # The data directory after a clean shutdown (listed before anything here opens the database:
    # a reader would create -wal and -shm files of its own). The WAL was checkpointed and removed.
    files = list(listing(data_dir))
    assert set(files) == {"kluis.db", "send-pass.key"}, files
    assert (data_dir / "send-pass.key").stat().st_size == 32
    assert oct((data_dir / "kluis.db").stat().st_mode & 0o777) == "0o600"
    on_disk = (data_dir / "kluis.db").read_bytes()
    # The checks below see the data: what the profile allows is there.
    for account in secrets.accounts:
        assert account in on_disk
    check_bytes("kluis.db", on_disk, secrets, started, ended)

    # What a seizure of the live machine copied (the WAL then held the recent writes).
    assert "kluis.db" in live
    seized = b"".join(live.values())
    assert live.get("kluis.db-wal", b"") == b"", "the WAL was not emptied by the checkpoint"
    waiting = set(secrets.waiting)
    for envelope_id in secrets.envelope_ids:
        # Dave's six wait in his mailbox; every delivered (or refused) one is gone without a trace.
        assert (envelope_id in seized) == (envelope_id in waiting)
    for name, data in live.items():
        check_bytes(f"live {name}", data, secrets, started, ended)
    counts = check_database(tmp_path / "seized-live" / "kluis.db", secrets, started, ended)
    assert counts["mailbox"] == 6  # Dave's six are still waiting (Carol's were receipted)
    counts = check_database(data_dir / "kluis.db", secrets, started, ended)
    assert counts["accounts"] == 5
    assert counts["mailbox"] == 6
    assert counts["activation_codes"] == 0  # every code redeemed, and redeemed codes are deleted
    conn = sqlite3.connect(f"file:{data_dir / 'kluis.db'}?mode=ro", uri=True)
    try:
        ((_revoked, statement),) = conn.execute(
            "SELECT revoked, revocation FROM accounts WHERE revoked = 1"
        ).fetchall()
        assert statement is not None
        eve = RevocationStatement.from_bytes(statement).account
        for table in ("signed_prekeys", "one_time_prekeys", "envelope_keys"):
            left = conn.execute(f"SELECT count(*) FROM {table} WHERE account_id = ?", (eve,)).fetchone()
            assert left == (0,), table
    finally:
        conn.close()

    check_logs(server.lines, secrets)


def test_housekeeping_checkpoint_empties_the_wal_without_waiting(tmp_path: Path) -> None:
    """storage.checkpoint() (the server's timer) leaves no deleted envelope in kluis.db or its WAL,
    and does not wait for a reader that holds a snapshot (kluis admin, a backup)."""
    from kluis.server.storage import Account, AccountId, StoredEnvelope, open_storage

    path = tmp_path / "kluis.db"
    secret = os.urandom(4000)

    async def main() -> None:
        storage = await open_storage(path, fsync=False)
        try:
            account = AccountId(os.urandom(16))
            await storage.accounts.create(Account(account, b"i" * 129, b"t" * 32, 20_000))
            [(seq, _)] = await storage.mailbox.append([StoredEnvelope(account, b"e" * 16, secret, 20_000)])
            assert await storage.mailbox.delete(account, [seq]) == 1
            assert secret[:32] in path.with_name("kluis.db-wal").read_bytes()
            await storage.checkpoint()
            data = b"".join(p.read_bytes() for p in tmp_path.glob("kluis.db*"))
            assert secret[:32] not in data
            assert path.with_name("kluis.db-wal").stat().st_size == 0
            # A reader holding a snapshot: the checkpoint neither waits nor fails.
            await storage.mailbox.append([StoredEnvelope(account, b"f" * 16, b"x" * 100, 20_000)])
            reader = sqlite3.connect(path)
            try:
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM mailbox").fetchone()
                await storage.mailbox.append([StoredEnvelope(account, b"g" * 16, b"y" * 100, 20_000)])
                begun = time.monotonic()
                await storage.checkpoint()
                assert time.monotonic() - begun < 1.0
            finally:
                reader.close()
        finally:
            await storage.close()

    asyncio.run(main())
