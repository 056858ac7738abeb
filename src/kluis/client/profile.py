"""A profile directory: the key-slot file plus the SQLCipher database, and the duress wipe.

``<profile>/keyslots`` wraps the profile key (keyslots.py); ``<profile>/profile.db`` is encrypted under
it (store.py). The duress passphrase crypto-erases: the key slots are overwritten and deleted first
(from then on the database is unreadable whatever happens next), then every file of the profile and
the directory itself are removed, and the caller behaves like a fresh install.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kluis.client import keyslots
from kluis.client.errors import ProfileExists
from kluis.client.store import ProfileStore
from kluis.protocol.rng import Rng

KEYSLOTS_NAME = "keyslots"
log = logging.getLogger(__name__)


@dataclass(repr=False)
class Profile:
    """An unlocked profile: its directory and its open store."""

    directory: Path
    store: ProfileStore

    def close(self) -> None:
        self.store.close()

    def __repr__(self) -> str:
        return f"Profile({self.directory.name}, ..)"


@dataclass(frozen=True)
class Wiped:
    """The duress passphrase was entered: the profile is gone; act like a fresh install."""


def create_profile(
    directory: Path,
    passphrase: str,
    rng: Rng,
    *,
    params: keyslots.Argon2Params = keyslots.DEFAULT_ARGON2,
) -> Profile:
    """Creates the profile: a new profile key, its key-slot file and an empty database.

    Raises:
        ProfileExists: ``directory`` already holds a profile.
        PassphraseRejected: the passphrase is empty.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (directory / KEYSLOTS_NAME).exists():
        raise ProfileExists
    key = keyslots.create(directory / KEYSLOTS_NAME, passphrase, rng, params=params)
    return Profile(directory, ProfileStore.open(directory, key))


def unlock(
    directory: Path, passphrase: str, *, on_duress: Callable[[], None] | None = None
) -> Profile | Wiped:
    """Unlocks the profile, or erases it when ``passphrase`` is the duress passphrase.

    Args:
        directory: the profile directory.
        passphrase: as typed by the user.
        on_duress: called after the key slots are erased and before this returns ``Wiped``
            (e.g. the best-effort revocation send). Its exceptions are swallowed.

    Raises:
        WrongPassphrase: neither passphrase; nothing changed.
        KeySlotFormatError: the key-slot file is damaged.
        FileNotFoundError: there is no profile here.
    """
    result = keyslots.unlock(directory / KEYSLOTS_NAME, passphrase)
    if isinstance(result, keyslots.Unlocked):
        return Profile(directory, ProfileStore.open(directory, result.profile_key))
    erase(directory, on_duress=on_duress)
    return Wiped()


def erase(directory: Path, *, on_duress: Callable[[], None] | None = None) -> None:
    """Crypto-erases the profile: key slots first, then every file, then the directory."""
    keyslots.wipe(directory / KEYSLOTS_NAME)
    if on_duress is not None:
        try:
            on_duress()
        except Exception:  # the wipe must complete whatever the hook does
            log.debug("on_duress hook failed")
    # The database is unreadable now; deleting is enough (overwriting a large file would not fit in
    # the one-second budget, and SSDs remap writes anyway).
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        fd = os.open(directory.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["KEYSLOTS_NAME", "Profile", "Wiped", "create_profile", "erase", "unlock"]
