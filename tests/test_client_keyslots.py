"""The key-slot file (kluis.client.keyslots): wrapping, duress, atomic rewrites, wipe."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from kluis.client import keyslots as ks
from kluis.client.errors import (
    KeySlotFormatError,
    PassphraseRejected,
    ProfileExists,
    RejectReason,
    WrongPassphrase,
)
from kluis.protocol.rng import DeterministicRng

CHEAP = ks.Argon2Params(memory_kib=8, iterations=1, lanes=1)
"""Tests never pay for the real parameters."""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keyslots"


def make(path: Path, seed: bytes = b"ks") -> tuple[bytes, DeterministicRng]:
    rng = DeterministicRng(seed)
    return ks.create(path, "correct horse", rng, params=CHEAP), rng


class TestDefaults:
    def test_argon2_defaults_are_the_stated_ones(self) -> None:
        assert ks.Argon2Params(memory_kib=256 * 1024, iterations=3, lanes=4) == ks.DEFAULT_ARGON2
        assert (ks.SLOT_COUNT, ks.SLOT_SIZE, ks.FILE_SIZE) == (4, 128, 548)

    def test_create_uses_the_defaults_unless_told(self) -> None:
        import inspect

        assert inspect.signature(ks.create).parameters["params"].default is ks.DEFAULT_ARGON2


class TestRoundTrip:
    def test_create_then_unlock(self, path: Path) -> None:
        key, _ = make(path)
        assert len(key) == 32
        assert ks.unlock(path, "correct horse") == ks.Unlocked(key, None)
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.stat().st_size == ks.FILE_SIZE

    def test_unicode_normalisation(self, path: Path) -> None:
        rng = DeterministicRng(b"nfc")
        key = ks.create(path, "caf\u00e9", rng, params=CHEAP)
        assert ks.unlock(path, "cafe\u0301") == ks.Unlocked(key, None)

    def test_create_refuses_existing_and_empty(self, path: Path) -> None:
        make(path)
        with pytest.raises(ProfileExists):
            make(path)
        with pytest.raises(PassphraseRejected) as info:
            ks.create(path.with_name("other"), "", DeterministicRng(b"e"), params=CHEAP)
        assert info.value.reason is RejectReason.EMPTY

    def test_change_passphrase_keeps_key_and_duress(self, path: Path) -> None:
        key, rng = make(path)
        duress_key = ks.set_duress(path, "correct horse", "panic", rng)
        ks.change_passphrase(path, "correct horse", "battery staple", rng)
        assert ks.unlock(path, "battery staple") == ks.Unlocked(key, duress_key)
        assert ks.unlock(path, "panic") == ks.Duress(duress_key)
        with pytest.raises(WrongPassphrase):
            ks.unlock(path, "correct horse")

    def test_settings_need_the_normal_passphrase(self, path: Path) -> None:
        _, rng = make(path)
        ks.set_duress(path, "correct horse", "panic", rng)
        before = path.read_bytes()
        for wrong in ("panic", "nope"):
            with pytest.raises(WrongPassphrase):
                ks.set_duress(path, wrong, "other", rng)
            with pytest.raises(WrongPassphrase):
                ks.change_passphrase(path, wrong, "other", rng)
        assert path.read_bytes() == before

    def test_passphrases_must_differ(self, path: Path) -> None:
        _, rng = make(path)
        with pytest.raises(PassphraseRejected) as info:
            ks.set_duress(path, "correct horse", "correct horse", rng)
        assert info.value.reason is RejectReason.SAME_AS_NORMAL
        ks.set_duress(path, "correct horse", "panic", rng)
        with pytest.raises(PassphraseRejected) as info:
            ks.change_passphrase(path, "correct horse", "panic", rng)
        assert info.value.reason is RejectReason.SAME_AS_DURESS
        with pytest.raises(PassphraseRejected):
            ks.change_passphrase(path, "correct horse", "", rng)

    def test_duress_can_be_replaced(self, path: Path) -> None:
        _, rng = make(path)
        first = ks.set_duress(path, "correct horse", "panic", rng)
        second = ks.set_duress(path, "correct horse", "panic2", rng)
        assert first != second
        assert ks.unlock(path, "panic2") == ks.Duress(second)
        with pytest.raises(WrongPassphrase):
            ks.unlock(path, "panic")


class TestDuressKey:
    """The duress key: handed to the duress unlock and, from the normal slot, to the normal unlock."""

    def test_is_the_argon2_key_of_the_duress_passphrase(self, path: Path) -> None:
        key, rng = make(path)
        duress_key = ks.set_duress(path, "correct horse", "panic", rng)
        file = ks.read(path)
        assert duress_key == file.params.derive("panic", file.salt)
        assert ks.unlock(path, "correct horse") == ks.Unlocked(key, duress_key)
        assert ks.unlock(path, "panic") == ks.Duress(duress_key)

    def test_before_write_sees_the_key_before_the_file_changes(self, path: Path) -> None:
        _, rng = make(path)
        before = path.read_bytes()
        seen: list[tuple[bytes, bytes]] = []
        duress_key = ks.set_duress(
            path, "correct horse", "panic", rng, before_write=lambda k: seen.append((k, path.read_bytes()))
        )
        assert seen == [(duress_key, before)]

    def test_before_write_failing_leaves_the_file(self, path: Path) -> None:
        _, rng = make(path)
        before = path.read_bytes()

        def fail(key: bytes) -> None:
            raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            ks.set_duress(path, "correct horse", "panic", rng, before_write=fail)
        assert path.read_bytes() == before
        with pytest.raises(WrongPassphrase):
            ks.unlock(path, "panic")

    def test_not_called_when_the_passphrases_are_refused(self, path: Path) -> None:
        _, rng = make(path)
        calls: list[bytes] = []
        with pytest.raises(WrongPassphrase):
            ks.set_duress(path, "wrong", "panic", rng, before_write=calls.append)
        with pytest.raises(PassphraseRejected):
            ks.set_duress(path, "correct horse", "correct horse", rng, before_write=calls.append)
        assert calls == []


class TestWrongPassphrase:
    def test_raises_typed_error_and_changes_nothing(self, path: Path) -> None:
        make(path)
        before = path.read_bytes()
        with pytest.raises(WrongPassphrase, match=r"^wrong passphrase$") as info:
            ks.unlock(path, "wrong")
        assert info.value.title == "Wrong passphrase"
        assert path.read_bytes() == before
        assert sorted(p.name for p in path.parent.iterdir()) == ["keyslots"]

    def test_tampered_header_fails_every_slot(self, path: Path) -> None:
        make(path)
        data = bytearray(path.read_bytes())
        data[25] ^= 1  # in the salt
        path.write_bytes(bytes(data))
        with pytest.raises(WrongPassphrase):
            ks.unlock(path, "correct horse")


class TestIndistinguishable:
    def test_same_size_and_structure_with_and_without_duress(self, tmp_path: Path) -> None:
        plain, duress = tmp_path / "a", tmp_path / "b"
        ks.create(plain, "pw", DeterministicRng(b"a"), params=CHEAP)
        rng = DeterministicRng(b"b")
        ks.create(duress, "pw", rng, params=CHEAP)
        ks.set_duress(duress, "pw", "panic", rng)
        a, b = ks.read(plain), ks.read(duress)
        assert plain.stat().st_size == duress.stat().st_size == ks.FILE_SIZE
        assert a.header[:20] == b.header[:20]  # magic, version, geometry, parameters
        assert [len(s) for s in a.slots] == [len(s) for s in b.slots] == [ks.SLOT_SIZE] * ks.SLOT_COUNT

    def test_every_rewrite_changes_every_slot(self, path: Path) -> None:
        _, rng = make(path)
        before = ks.read(path)
        ks.set_duress(path, "correct horse", "panic", rng)
        after = ks.read(path)
        assert before.header == after.header
        assert all(x != y for x, y in zip(before.slots, after.slots, strict=True))

    def test_slots_look_random(self, tmp_path: Path) -> None:
        # Sanity check over many files: byte frequencies of the slot area (used and unused slots
        # together) pass a chi-squared test, and no slot compresses.
        counts = [0] * 256
        for i in range(40):
            path = tmp_path / f"k{i}"
            rng = DeterministicRng(b"stat%d" % i)
            ks.create(path, "pw", rng, params=CHEAP)
            if i % 2:
                ks.set_duress(path, "pw", "panic", rng)
            file = ks.read(path)
            for slot in file.slots:
                assert len(zlib.compress(slot, 9)) > len(slot)
                for byte in slot:
                    counts[byte] += 1
        n = sum(counts)
        expected = n / 256
        chi2 = sum((c - expected) ** 2 / expected for c in counts)
        assert chi2 < 350  # 255 degrees of freedom: p ~ 1e-4

    def test_unlock_cost_is_one_kdf_whatever_the_passphrase(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _, rng = make(path)
        ks.set_duress(path, "correct horse", "panic", rng)
        calls: list[str] = []
        real = ks.Argon2Params.derive

        def counting(self: ks.Argon2Params, passphrase: str, salt: bytes) -> bytes:
            calls.append("kdf")
            return real(self, passphrase, salt)

        monkeypatch.setattr(ks.Argon2Params, "derive", counting)
        for passphrase in ("correct horse", "panic", "wrong"):
            calls.clear()
            with pytest.raises(WrongPassphrase) if passphrase == "wrong" else _nothing():
                ks.unlock(path, passphrase)
            assert calls == ["kdf"]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


class TestAtomicWrite:
    def test_interrupted_rewrite_keeps_the_old_file(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        key, rng = make(path)
        before = path.read_bytes()

        def crash(src: object, dst: object) -> None:
            raise OSError("simulated crash before rename")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="simulated"):
            ks.set_duress(path, "correct horse", "panic", rng)
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert sorted(p.name for p in path.parent.iterdir()) == ["keyslots"]
        assert ks.unlock(path, "correct horse") == ks.Unlocked(key, None)

    def test_leftover_tmp_is_replaced(self, path: Path) -> None:
        path.with_name("keyslots.tmp").write_bytes(b"junk")
        make(path)
        assert sorted(p.name for p in path.parent.iterdir()) == ["keyslots"]


class TestWipe:
    def test_wipe_deletes_and_is_idempotent(self, path: Path) -> None:
        make(path)
        ks.wipe(path)
        assert not path.exists()
        ks.wipe(path)

    def test_wipe_overwrites_before_deleting(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        make(path)
        before = path.read_bytes()
        monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)
        ks.wipe(path)
        after = path.read_bytes()
        assert len(after) == len(before)
        assert all(after[i : i + 16] != before[i : i + 16] for i in range(0, len(before) - 16, 16))


class TestParser:
    @pytest.mark.parametrize(
        ("mutate", "message"),
        [
            (lambda d: d[:-1], "wrong size"),
            (lambda d: b"XXXX" + d[4:], "not a key-slot file"),
            (lambda d: d[:4] + b"\x02" + d[5:], "version 2"),
            (lambda d: d[:5] + b"\x05" + d[6:], "geometry"),
            (lambda d: d[:8] + (0).to_bytes(4, "big") + d[12:], "memory"),
            (lambda d: d[:8] + (2**31).to_bytes(4, "big") + d[12:], "memory"),
            (lambda d: d[:12] + (0).to_bytes(4, "big") + d[16:], "iterations"),
            (lambda d: d[:16] + (0).to_bytes(4, "big") + d[20:], "lanes"),
        ],
    )
    def test_rejects(self, path: Path, mutate: object, message: str) -> None:
        make(path)
        data = path.read_bytes()
        assert callable(mutate)
        with pytest.raises(KeySlotFormatError, match=message):
            ks.KeySlotFile.parse(mutate(data))
        path.write_bytes(mutate(data))
        with pytest.raises(KeySlotFormatError):
            ks.unlock(path, "correct horse")

    def test_serialize_round_trip(self, path: Path) -> None:
        make(path)
        data = path.read_bytes()
        assert ks.KeySlotFile.parse(data).serialize() == data


class TestReprs:
    def test_reprs_hide_keys(self, path: Path) -> None:
        key, rng = make(path)
        duress_key = ks.set_duress(path, "correct horse", "panic", rng)
        assert repr(ks.Unlocked(key, duress_key)) == "Unlocked(..)"
        assert repr(ks.Duress(duress_key)) == "Duress(..)"
        text = repr(ks.read(path))
        assert text.endswith("..)")
        assert key.hex() not in text
        assert "salt" not in text
