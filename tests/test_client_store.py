"""The encrypted profile database (kluis.client.store) and the profile glue (kluis.client.profile)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3

from kluis.client import keyslots as ks
from kluis.client import profile as pf
from kluis.client import tables
from kluis.client.errors import ProfileExists, StoreError, WrongPassphrase, WrongProfileKey
from kluis.client.panic import PanicInfo
from kluis.client.store import DB_NAME, ProfileStore, SchemaTooNew, StoredMessage
from kluis.protocol.rng import DeterministicRng

CHEAP = ks.Argon2Params(memory_kib=8, iterations=1, lanes=1)
KEY = bytes(range(32))
SECRET_TEXT = b"meet at the harbour at 23:00, bring the blue case"


def all_bytes(root: Path) -> bytes:
    """Every byte of every file under ``root`` (empty if it is gone)."""
    if not root.exists():
        return b""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def add_message(
    s: ProfileStore, name: str, direction: str, body: bytes, sent_at: int, expires_at: int | None
) -> int:
    """A message in ``name``'s conversation (the contact is made on first use); returns its row id."""

    def write(c: Any) -> int:
        row = c.execute("SELECT id FROM contacts WHERE name = ?", (name,)).fetchone()
        if row is None:
            keys = tables.ContactKeys(name.encode().ljust(16, b"."), b"identity", b"token", b"key", 0, b"s")
            contact_id = tables.insert_contact(c, keys, name=name, timer=30)
        else:
            contact_id = row[0]
        tables.insert_message(
            c,
            contact_id,
            direction=direction,
            kind="text",
            message_id=os.urandom(16),
            body=body.decode(),
            timer=30,
            sent_at=sent_at,
            displayed_at=sent_at,
            expires_at=expires_at,
            state="received" if direction == "in" else "sent",
        )
        return int(c.execute("SELECT max(id) FROM messages").fetchone()[0])

    return s.run_interaction("add_message", write)


def conversation(s: ProfileStore, name: str) -> list[StoredMessage]:
    contact = s.contact_by_name(name)
    return [] if contact is None else s.messages(contact.id)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProfileStore]:
    s = ProfileStore.open(tmp_path, KEY)
    yield s
    s.close()


class TestStore:
    def test_kv_and_messages_round_trip_across_reopen(self, tmp_path: Path) -> None:
        s = ProfileStore.open(tmp_path, KEY)
        s.put("identity", b"\x01\x02")
        s.put("identity", b"\x03")
        s.put("ring", b"r")
        s.delete("ring")
        first = add_message(s, "alice", "in", SECRET_TEXT, 100, 130)
        add_message(s, "alice", "out", b"ok", 101, None)
        s.close()
        s = ProfileStore.open(tmp_path, KEY)
        assert s.get("identity") == b"\x03"
        assert s.get("ring") is None
        msgs = conversation(s, "alice")
        assert [(m.id, m.direction, m.body, m.sent_at, m.expires_at) for m in msgs] == [
            (first, "in", SECRET_TEXT.decode(), 100, 130),
            (first + 1, "out", "ok", 101, None),
        ]
        assert conversation(s, "bob") == []
        s.close()

    def test_expired_messages_are_deleted(self, store: ProfileStore) -> None:
        add_message(store, "alice", "in", b"a", 0, 30)
        add_message(store, "alice", "in", b"b", 0, 60)
        add_message(store, "alice", "in", b"c", 0, None)
        assert store.delete_expired(30) == 1
        assert [m.body for m in conversation(store, "alice")] == ["b", "c"]
        assert store.commits["delete_expired"] == 1

    def test_encrypted_at_rest(self, tmp_path: Path) -> None:
        s = ProfileStore.open(tmp_path, KEY)
        add_message(s, "alice", "in", SECRET_TEXT, 0, None)
        s.put("identity-snapshot", b"kv-plaintext-marker")
        s.close()
        raw = all_bytes(tmp_path)
        assert SECRET_TEXT not in raw
        assert b"kv-plaintext-marker" not in raw
        assert b"SQLite format 3" not in raw
        assert b"CREATE TABLE" not in raw
        assert KEY not in raw

    def test_pragmas_and_files(self, tmp_path: Path, store: ProfileStore) -> None:
        conn = store._conn
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA cipher_memory_security").fetchone()[0] == "1"
        assert conn.execute("SELECT version, compat_version FROM schema_version").fetchall() == [(2, 2)]
        add_message(store, "alice", "in", b"x", 0, 1)
        store.delete_expired(5)
        # Between transactions the database is the only file: no WAL or journal keeps old pages.
        assert sorted(p.name for p in tmp_path.iterdir()) == [DB_NAME]
        assert (tmp_path / DB_NAME).stat().st_mode & 0o777 == 0o600

    def test_wrong_key_cannot_open(self, tmp_path: Path) -> None:
        ProfileStore.open(tmp_path, KEY).close()
        before = (tmp_path / DB_NAME).read_bytes()
        with pytest.raises(WrongProfileKey) as info:
            ProfileStore.open(tmp_path, bytes(32))
        assert isinstance(info.value, StoreError)
        assert (tmp_path / DB_NAME).read_bytes() == before

    def test_plain_sqlite_file_is_refused(self, tmp_path: Path) -> None:
        import sqlite3

        conn = sqlite3.connect(tmp_path / DB_NAME)
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
        with pytest.raises(WrongProfileKey):
            ProfileStore.open(tmp_path, KEY)

    def test_key_length_checked(self, tmp_path: Path) -> None:
        with pytest.raises(StoreError, match="32 bytes"):
            ProfileStore.open(tmp_path, b"short")

    def test_newer_schema_is_refused(self, tmp_path: Path) -> None:
        s = ProfileStore.open(tmp_path, KEY)
        s.run_interaction("bump", lambda c: c.execute("UPDATE schema_version SET compat_version = 9"))
        s.close()
        with pytest.raises(SchemaTooNew) as info:
            ProfileStore.open(tmp_path, KEY)
        assert (info.value.compat, info.value.supported) == (9, 2)

    def test_foreign_database_is_refused(self, tmp_path: Path) -> None:
        conn = sqlcipher3.connect(str(tmp_path / DB_NAME))
        conn.execute(f"PRAGMA key = \"x'{KEY.hex()}'\"")
        conn.execute("CREATE TABLE other (x)")
        conn.commit()
        conn.close()
        with pytest.raises(StoreError, match="no schema_version"):
            ProfileStore.open(tmp_path, KEY)

    def test_failed_interaction_rolls_back(self, store: ProfileStore) -> None:
        def boom(c: object) -> None:
            store._conn.execute("INSERT INTO kv VALUES ('a', x'00')")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            store.run_interaction("boom", boom)
        assert store.get("a") is None
        with pytest.raises(StoreError, match=r"^bad failed"):
            store.run_interaction("bad", lambda c: c.execute("SELECT * FROM missing"))

    def test_reprs_hide_contents(self, store: ProfileStore) -> None:
        add_message(store, "alice", "in", SECRET_TEXT, 0, None)
        (msg,) = conversation(store, "alice")
        assert repr(store) == "ProfileStore(profile.db, ..)"
        assert repr(msg) == f"StoredMessage(id={msg.id}, in, text, received, ..)"
        assert SECRET_TEXT.decode() not in repr(msg)


class TestProfile:
    def test_create_then_unlock(self, tmp_path: Path) -> None:
        d = tmp_path / "p"
        p = pf.create_profile(d, "pw", DeterministicRng(b"p"), params=CHEAP)
        p.store.put("k", b"v")
        p.close()
        assert d.stat().st_mode & 0o777 == 0o700
        with pytest.raises(ProfileExists):
            pf.create_profile(d, "pw", DeterministicRng(b"q"), params=CHEAP)
        again = pf.unlock(d, "pw")
        assert isinstance(again, pf.Profile)
        assert again.store.get("k") == b"v"
        assert repr(again) == "Profile(p, ..)"
        again.close()

    def test_wrong_passphrase_changes_nothing(self, tmp_path: Path) -> None:
        d = tmp_path / "p"
        pf.create_profile(d, "pw", DeterministicRng(b"p"), params=CHEAP).close()
        before = {p.name: p.read_bytes() for p in d.iterdir()}
        with pytest.raises(WrongPassphrase):
            pf.unlock(d, "nope")
        assert {p.name: p.read_bytes() for p in d.iterdir()} == before

    def test_duress_wipes_everything(self, tmp_path: Path) -> None:
        d = tmp_path / "p"
        rng = DeterministicRng(b"duress")
        p = pf.create_profile(d, "normal passphrase", rng, params=CHEAP)
        p.store.put("note", SECRET_TEXT)
        p.close()
        unlocked = pf.unlock(d, "normal passphrase")
        assert isinstance(unlocked, pf.Profile)
        info = PanicInfo("ws://127.0.0.1:8443", None, b"statement")
        pf.set_duress(unlocked, "normal passphrase", "duress passphrase", info, rng)
        unlocked.close()
        slots = ks.unlock(d / pf.KEYSLOTS_NAME, "normal passphrase")
        assert isinstance(slots, ks.Unlocked)
        profile_key = slots.profile_key
        assert SECRET_TEXT not in all_bytes(tmp_path)

        started = time.monotonic()
        assert pf.unlock(d, "duress passphrase") == pf.Wiped(info)
        assert time.monotonic() - started < 1.0
        assert not d.exists()
        remaining = all_bytes(tmp_path)
        for needle in (b"normal passphrase", b"duress passphrase", profile_key, SECRET_TEXT):
            assert needle not in remaining
        # A fresh install from here on.
        with pytest.raises(FileNotFoundError):
            pf.unlock(d, "normal passphrase")
        pf.create_profile(d, "new", DeterministicRng(b"new"), params=CHEAP).close()

    def test_duress_without_panic_info(self, tmp_path: Path) -> None:
        # Duress set on the key slots alone: the panic file is still the filler, so no info.
        d = tmp_path / "p"
        rng = DeterministicRng(b"d2")
        pf.create_profile(d, "pw", rng, params=CHEAP).close()
        ks.set_duress(d / pf.KEYSLOTS_NAME, "pw", "panic", rng)
        assert pf.unlock(d, "panic") == pf.Wiped(None)
        assert not d.exists()


def decrypted_pages(path: Path, key: bytes) -> list[bytes]:
    """Every page of a SQLCipher 4 database decrypted with its raw key (AES-256-CBC; the reserve at
    each page's end holds the IV and the HMAC; page 1 starts with the 16-byte salt), live or free:
    what someone holding the key and the file could read, whatever SQLite still links."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    raw, page_size, reserve = path.read_bytes(), 4096, 80
    pages = []
    for i in range(len(raw) // page_size):
        page = raw[i * page_size : (i + 1) * page_size]
        start = 16 if i == 0 else 0
        decryptor = Cipher(algorithms.AES(key), modes.CBC(page[page_size - reserve :][:16])).decryptor()
        pages.append(decryptor.update(page[start : page_size - reserve]) + decryptor.finalize())
    return pages


def test_expired_message_leaves_no_plaintext_in_any_page(tmp_path: Path) -> None:
    """secure_delete: once delete_expired commits, no page of the file (free pages included)
    decrypts to the message, and no journal is left beside it."""
    key = os.urandom(32)
    s = ProfileStore.open(tmp_path, key)
    marker = "the ferry leaves at 05:40 from pier 9"
    for i in range(50):  # enough rows to span several pages, so whole pages are freed too
        add_message(s, "alice", "in", f"{marker} #{i:02d}".encode(), 0, 10)
    add_message(s, "alice", "in", b"kept", 0, None)
    pages = decrypted_pages(tmp_path / DB_NAME, key)
    assert pages[0][:2] == b"\x10\x00"  # the decryption is right: page 1's header says 4096
    assert any(marker.encode() in p for p in pages)
    assert s.delete_expired(10) == 50
    s.close()
    pages = decrypted_pages(tmp_path / DB_NAME, key)
    assert not any(marker.encode() in p for p in pages)
    assert any(b"kept" in p for p in pages)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_NAME]
