"""A profile directory: the key-slot file, the SQLCipher database, the panic file, and the duress wipe.

``<profile>/keyslots`` wraps the profile key (keyslots.py); ``<profile>/profile.db`` is encrypted under
it (store.py); ``<profile>/panic`` (panic.py) holds what the duress passphrase needs to revoke the
account, readable with the duress key alone, and is random filler while no duress passphrase is set.

The duress passphrase crypto-erases: the panic info is read into memory, the key slots are
overwritten and deleted (from then on the database is unreadable whatever happens next), the panic
file likewise, then every file of the profile and the directory itself are removed. :func:`unlock`
returns :class:`Wiped` with the panic info; the caller sends the revocation (best effort) and
behaves like a fresh install.

Both files change together in :func:`create_profile`, :func:`set_duress` and
:func:`change_passphrase`, and the panic file alone in :func:`update_panic`, whether or not a duress
passphrase exists: the times the files were written do not tell either.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kluis.client import keyslots, panic
from kluis.client.errors import ProfileExists
from kluis.client.panic import PanicInfo
from kluis.client.store import ProfileStore
from kluis.protocol.rng import Rng

KEYSLOTS_NAME = "keyslots"


@dataclass(repr=False)
class Profile:
    """An unlocked profile: its directory, its open store, and the duress key if one is set.

    ``duress_key`` (from the normal key slot) lets :func:`update_panic` keep the panic file readable
    by the duress passphrase; it is None when no duress passphrase is set.
    """

    directory: Path
    store: ProfileStore
    duress_key: bytes | None = None

    def close(self) -> None:
        self.store.close()

    def __repr__(self) -> str:
        return f"Profile({self.directory.name}, ..)"


@dataclass(frozen=True)
class Wiped:
    """The duress passphrase was entered: the profile is gone; act like a fresh install.

    ``panic`` is what the panic file held (None if it could not be read): send the revocation
    statement to that relay, then forget it.
    """

    panic: PanicInfo | None


def create_profile(
    directory: Path,
    passphrase: str,
    rng: Rng,
    *,
    params: keyslots.Argon2Params = keyslots.DEFAULT_ARGON2,
) -> Profile:
    """Creates the profile: a new profile key, its key-slot file, the panic filler and an empty database.

    Raises:
        ProfileExists: ``directory`` already holds a profile.
        PassphraseRejected: the passphrase is empty.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (directory / KEYSLOTS_NAME).exists():
        raise ProfileExists
    key = keyslots.create(directory / KEYSLOTS_NAME, passphrase, rng, params=params)
    # After the key slots: keyslots.create is what refuses an existing profile, whose panic file
    # must not be overwritten. A crash in between leaves no panic file, which read() treats as
    # filler and the next set_duress/update_panic writes.
    panic.write_filler(directory, rng)
    return Profile(directory, ProfileStore.open(directory, key))


def unlock(directory: Path, passphrase: str) -> Profile | Wiped:
    """Unlocks the profile, or erases it when ``passphrase`` is the duress passphrase.

    On the duress passphrase the panic file is read first, then the profile is erased (:func:`erase`)
    and ``Wiped(panic)`` returned: the revocation is the caller's to send, after the erase, so that a
    slow or absent network can never delay it. Cost: one Argon2id derivation either way, plus the
    erase (one second is the budget for the duress path).

    Raises:
        WrongPassphrase: neither passphrase; nothing changed.
        KeySlotFormatError: the key-slot file is damaged.
        FileNotFoundError: there is no profile here.
    """
    result = keyslots.unlock(directory / KEYSLOTS_NAME, passphrase)
    if isinstance(result, keyslots.Unlocked):
        store = ProfileStore.open(directory, result.profile_key)
        return Profile(directory, store, result.duress_key)
    info = panic.read(directory, result.duress_key)
    erase(directory)
    return Wiped(info)


def erase(directory: Path) -> None:
    """Crypto-erases the profile: key slots first, then the panic file, every file, the directory.

    Raises:
        OSError: the key-slot file exists but cannot be overwritten (nothing else was touched).
    """
    keyslots.wipe(directory / KEYSLOTS_NAME)
    # Overwritten too: it names the relay and proves a duress passphrase existed. Best effort, as
    # the key slots (what protects the data) are already gone.
    with contextlib.suppress(OSError):
        keyslots.wipe(directory / panic.PANIC_NAME)
    # The database is unreadable now; deleting is enough (overwriting a large file would not fit in
    # the one-second budget, and SSDs remap writes anyway).
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        fd = os.open(directory.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def set_duress(profile: Profile, passphrase: str, duress_passphrase: str, info: PanicInfo, rng: Rng) -> None:
    """Sets (or replaces) the duress passphrase, with ``info`` in the panic file for it.

    Order: both passphrases are checked, the panic file is written for the new duress key, then the
    key-slot file is replaced, so the duress passphrase never exists without a panic file it can
    read. Crash window: a crash between the two writes leaves the old key slots with a panic file
    for the new key; the old duress passphrase (if any) then still erases, but without the info to
    revoke. A write error (as opposed to a crash) puts the old panic file back.

    Raises:
        WrongPassphrase: ``passphrase`` is not the normal passphrase; nothing changed.
        PassphraseRejected: the duress passphrase is empty or equals the normal one; nothing changed.
        OSError: a file cannot be written.
    """
    old_info = panic.read(profile.directory, profile.duress_key) if profile.duress_key else None
    try:
        profile.duress_key = keyslots.set_duress(
            profile.directory / KEYSLOTS_NAME,
            passphrase,
            duress_passphrase,
            rng,
            before_write=lambda key: panic.write(profile.directory, key, info, rng),
        )
    except OSError:
        with contextlib.suppress(OSError):
            _write_panic(profile.directory, profile.duress_key, old_info, rng)
        raise


def update_panic(profile: Profile, info: PanicInfo, rng: Rng) -> None:
    """Rewrites the panic file with ``info`` (e.g. a new relay address or statement).

    Without a duress passphrase the filler is rewritten instead, so the file changes the same way
    whether or not one exists.

    Raises:
        OSError: the file cannot be written.
    """
    _write_panic(profile.directory, profile.duress_key, info, rng)


def change_passphrase(profile: Profile, passphrase: str, new_passphrase: str, rng: Rng) -> None:
    """Changes the normal passphrase (keyslots.change_passphrase) and refreshes the panic file.

    The panic file is rewritten (fresh nonce, same info; or fresh filler) so that, as with
    :func:`set_duress`, both files change together: on disk the two operations look alike.

    Raises:
        WrongPassphrase: ``passphrase`` is not the normal passphrase; nothing changed.
        PassphraseRejected: the new passphrase is empty or equals the duress passphrase.
        OSError: a file cannot be written.
    """
    keyslots.change_passphrase(profile.directory / KEYSLOTS_NAME, passphrase, new_passphrase, rng)
    info = panic.read(profile.directory, profile.duress_key) if profile.duress_key else None
    _write_panic(profile.directory, profile.duress_key, info, rng)


def _write_panic(directory: Path, duress_key: bytes | None, info: PanicInfo | None, rng: Rng) -> None:
    if duress_key is not None and info is not None:
        panic.write(directory, duress_key, info, rng)
    else:
        panic.write_filler(directory, rng)


__all__ = [
    "KEYSLOTS_NAME",
    "Profile",
    "Wiped",
    "change_passphrase",
    "create_profile",
    "erase",
    "set_duress",
    "unlock",
    "update_panic",
]
