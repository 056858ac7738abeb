"""``kluis demo`` end to end (about 7 s): a real relay on loopback, two SDK profiles, the checks of what
the relay and the profiles hold, and nothing left behind."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from kluis.cli import demo
from kluis.cli.main import cli


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo's temporary directory is made here, so the test can see that it is removed."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_demo_runs_the_whole_story_and_cleans_up(temp_root: Path) -> None:
    threads = set(threading.enumerate())
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 0, result.output
    out = result.output
    for step in (
        "relay listening on ws://127.0.0.1:",
        "light",  # it says the demo's Argon2id settings are light
        "real profiles use 256 MiB",
        "kluis:invite/",
        "runs PQXDH (X25519 + ML-KEM-768)",
        f"Bob -> Alice  {demo.TEXTS[0]!r}",
        "delivered (Alice's device confirmed it)",
        "disappears in 30 s",
        f"Alice -> Bob  {demo.TEXTS[1]!r}",
        # What the relay holds while Bob is offline: one envelope, no plaintext anywhere.
        "accounts 2, activation_codes 0",
        "mailbox 1",
        "No sender, no name",
        "Checked: no text, name or passphrase in the relay's",
        "they are encrypted (no SQLite header, no plaintext)",
        f"Bob reads {demo.TEXTS[2]!r}; the relay's mailbox is empty again",
        # The 5 s message is erased from both databases.
        "2 copies, erased in",
        "0 copies left.",
        "Done in",
    ):
        assert step in out
    # Both sides show the same safety number.
    alice = [line.split("Alice sees ")[1] for line in out.splitlines() if "Alice sees " in line]
    bob = [line.split("Bob sees ")[1].strip() for line in out.splitlines() if "Bob sees " in line]
    assert alice == bob
    assert len(alice[0].replace(" ", "")) == 60
    assert list(temp_root.iterdir()) == []  # the temporary directory is gone
    assert set(threading.enumerate()) <= threads  # no thread left running


def test_a_failed_check_stops_the_demo_and_still_cleans_up(
    temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the relay's files held a message text: the demo must say so, exit 1, and clean up.
    monkeypatch.setattr(demo, "_files_holding", lambda root, needles: (1, 1, ["kluis.db holds 'x'"]))
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 1
    assert "demo check failed: the relay's files hold plaintext" in result.output
    assert "Done in" not in result.output
    assert list(temp_root.iterdir()) == []


def test_the_plaintext_scan_finds_a_text_in_any_file(tmp_path: Path) -> None:
    (tmp_path / "relay").mkdir()
    (tmp_path / "relay" / "kluis.db").write_bytes(b"..." + demo.TEXTS[0].encode() + b"...")
    files, size, found = demo._files_holding(tmp_path, [demo.TEXTS[0].encode(), b"absent"])
    assert (files, found) == (1, [f"kluis.db holds {demo.TEXTS[0]!r}"])
    assert size > len(demo.TEXTS[0])
