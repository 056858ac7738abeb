"""The key-slot file: the profile key, wrapped under Argon2id(passphrase), with room for a duress slot.

A profile has one random 32-byte *profile key*, the raw SQLCipher key of ``profile.db``. The file
``keyslots`` wraps it so that only the normal passphrase recovers it, and so that nobody holding the
file can tell whether a duress passphrase exists: it always has :data:`SLOT_COUNT` slots of
:data:`SLOT_SIZE` bytes, and an unused slot is random bytes, indistinguishable from an AES-GCM
ciphertext (nonce || ciphertext || tag) without the key.

Layout (big-endian, :data:`FILE_SIZE` = 548 bytes)::

    offset  size  field
    0       4     magic b"KLKS"
    4       1     version (1)
    5       1     slot count (4)
    6       2     slot size (128)
    8       4     Argon2id memory, KiB
    12      4     Argon2id iterations
    16      4     Argon2id lanes
    20      16    salt (random, fixed for the life of the file)
    36      4x128 slots; each slot = nonce (12) || AES-256-GCM ciphertext (100) || tag (16)

Slot plaintext (100 bytes)::

    kind (1: normal, 2: duress) || has_duress (1) || profile key (32) || duress key (32) || zeros (34)

A duress slot carries kind 2 and zeros. The associated data of slot ``i`` is the 36-byte header
followed by the byte ``i``, so the header (parameters, salt) cannot be altered without every slot
failing.

Keys and cost: a passphrase yields one key, ``K = Argon2id(passphrase, salt)`` (32 bytes); the slot of
that passphrase is encrypted under ``K``. Unlocking runs Argon2id exactly once and then tries
AES-GCM on every slot, without stopping at a match, so unlocking costs the same (one Argon2id + four
AES-GCM opens) whether the passphrase is the normal one, the duress one, or wrong.

The duress key ``K`` itself is also handed out: to the duress unlock (:class:`Duress`), and to the
normal unlock from the normal slot (:class:`Unlocked`), so that the panic file (panic.py), which
only the duress passphrase must open, can be kept up to date by the normal user.

Rewrites (:func:`set_duress`, :func:`change_passphrase`) need the normal passphrase. The normal slot
holds the duress key, so every rewrite re-encrypts *every* used slot with fresh nonces at freshly
shuffled positions and refills the unused ones: two copies of the file taken at different times
differ in every slot, whatever was changed. The salt stays (re-deriving the duress key under a new
salt would need the duress passphrase).

Writes are atomic (temporary file, fsync, rename, fsync of the directory), mode 0600.
:func:`wipe` overwrites the file with random bytes in place, fsyncs, then deletes it: without the
slots, the profile key is gone, and with it everything SQLCipher encrypted (crypto-erase).
"""

from __future__ import annotations

import contextlib
import os
import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from kluis.client.errors import (
    KeySlotFormatError,
    PassphraseRejected,
    ProfileExists,
    RejectReason,
    WrongPassphrase,
)
from kluis.protocol.rng import Rng

MAGIC = b"KLKS"
VERSION = 1
SLOT_COUNT = 4
"""Normal + duress + two spares: the count never changes, so it says nothing."""
SLOT_SIZE = 128
NONCE_SIZE = 12
TAG_SIZE = 16
PLAINTEXT_SIZE = SLOT_SIZE - NONCE_SIZE - TAG_SIZE
SALT_SIZE = 16
KEY_SIZE = 32
PROFILE_KEY_SIZE = 32
_HEADER = struct.Struct(">4sBBHIII16s")
HEADER_SIZE = _HEADER.size
FILE_SIZE = HEADER_SIZE + SLOT_COUNT * SLOT_SIZE

KIND_NORMAL = 1
KIND_DURESS = 2
_PLAIN = struct.Struct(f">BB{PROFILE_KEY_SIZE}s{KEY_SIZE}s")

# Argon2id defaults (RFC 9106 §4 second recommended option is 64 MiB, t=3; we spend more memory).
# Measured on the development machine (2 shared cores, cryptography 50 / OpenSSL): one derivation with
# 256 MiB, t=3, p=4 takes 0.37 s idle (64 MiB: 0.09 s; 128 MiB: 0.18 s); a whole unlock took 0.61 s for
# normal, duress and wrong passphrases alike while the test suite loaded both cores.
ARGON2_MEMORY_KIB = 256 * 1024
ARGON2_ITERATIONS = 3
ARGON2_LANES = 4

# Bounds the parser accepts: a tampered header must not make an unlock allocate gigabytes or spin
# for minutes. (Lower bounds: Argon2 itself needs memory >= 8 * lanes KiB.)
MAX_MEMORY_KIB = 4 * 1024 * 1024
MAX_ITERATIONS = 64
MAX_LANES = 64


@dataclass(frozen=True)
class Argon2Params:
    memory_kib: int
    iterations: int
    lanes: int

    def __post_init__(self) -> None:
        if not 1 <= self.lanes <= MAX_LANES:
            raise KeySlotFormatError("Argon2id lanes out of range")
        if not 8 * self.lanes <= self.memory_kib <= MAX_MEMORY_KIB:
            raise KeySlotFormatError("Argon2id memory out of range")
        if not 1 <= self.iterations <= MAX_ITERATIONS:
            raise KeySlotFormatError("Argon2id iterations out of range")

    def derive(self, passphrase: str, salt: bytes) -> bytes:
        kdf = Argon2id(
            salt=salt,
            length=KEY_SIZE,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        )
        return kdf.derive(_encode(passphrase))


DEFAULT_ARGON2 = Argon2Params(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES)


@dataclass(frozen=True, repr=False)
class KeySlotFile:
    """The parsed file: parameters, salt and the opaque slots."""

    params: Argon2Params
    salt: bytes
    slots: tuple[bytes, ...]

    @property
    def header(self) -> bytes:
        p = self.params
        return _HEADER.pack(
            MAGIC, VERSION, SLOT_COUNT, SLOT_SIZE, p.memory_kib, p.iterations, p.lanes, self.salt
        )

    def serialize(self) -> bytes:
        return self.header + b"".join(self.slots)

    @classmethod
    def parse(cls, data: bytes) -> KeySlotFile:
        """Parses the file, or raises KeySlotFormatError."""
        if len(data) != FILE_SIZE:
            raise KeySlotFormatError("key-slot file has the wrong size")
        magic, version, count, size, memory, iterations, lanes, salt = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise KeySlotFormatError("not a key-slot file")
        if version != VERSION:
            raise KeySlotFormatError(f"unsupported key-slot file version {version}")
        if count != SLOT_COUNT or size != SLOT_SIZE:
            raise KeySlotFormatError("unsupported slot geometry")
        params = Argon2Params(memory, iterations, lanes)
        slots = tuple(
            data[HEADER_SIZE + i * SLOT_SIZE : HEADER_SIZE + (i + 1) * SLOT_SIZE] for i in range(SLOT_COUNT)
        )
        return cls(params, salt, slots)

    def __repr__(self) -> str:
        return f"KeySlotFile(v{VERSION}, {self.params}, ..)"


@dataclass(frozen=True, repr=False)
class Unlocked:
    """The normal passphrase: the profile key, and the duress key if a duress passphrase is set.

    The duress key lets the normal user keep the panic file (panic.py) readable by the duress
    passphrase without knowing that passphrase.
    """

    profile_key: bytes
    duress_key: bytes | None

    def __repr__(self) -> str:
        return "Unlocked(..)"


@dataclass(frozen=True, repr=False)
class Duress:
    """The duress passphrase: the caller must erase the profile.

    ``duress_key`` is the Argon2id key of the passphrase just entered; it opens the panic file.
    """

    duress_key: bytes

    def __repr__(self) -> str:
        return "Duress(..)"


@dataclass(frozen=True, repr=False)
class _Normal:
    profile_key: bytes
    duress_key: bytes | None


def _encode(passphrase: str) -> bytes:
    # NFC: the same passphrase typed on two keyboards (composed or decomposed accents) is one key.
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _check_new(passphrase: str) -> None:
    if not passphrase:
        raise PassphraseRejected(RejectReason.EMPTY)


def _aad(header: bytes, index: int) -> bytes:
    return header + bytes([index])


def _open_all(file: KeySlotFile, key: bytes) -> tuple[_Normal | None, bool]:
    """Tries every slot (no early exit: constant work). Returns (normal slot, duress slot seen)."""
    aead = AESGCM(key)
    header = file.header
    normal: _Normal | None = None
    duress = False
    for index, slot in enumerate(file.slots):
        try:
            plain = aead.decrypt(slot[:NONCE_SIZE], slot[NONCE_SIZE:], _aad(header, index))
        except InvalidTag:
            continue
        kind, has_duress, profile_key, duress_key = _PLAIN.unpack_from(plain)
        if kind == KIND_NORMAL:
            normal = _Normal(profile_key, duress_key if has_duress else None)
        elif kind == KIND_DURESS:
            duress = True
    return normal, duress


def _seal_file(
    params: Argon2Params, salt: bytes, normal_key: bytes, normal: _Normal, rng: Rng
) -> KeySlotFile:
    """A fresh file: used slots at shuffled positions with fresh nonces, spares random."""
    header = KeySlotFile(params, salt, ()).header
    contents: list[tuple[bytes, bytes]] = []
    has_duress = normal.duress_key is not None
    plain = _PLAIN.pack(KIND_NORMAL, has_duress, normal.profile_key, normal.duress_key or bytes(KEY_SIZE))
    contents.append((normal_key, plain.ljust(PLAINTEXT_SIZE, b"\0")))
    if normal.duress_key is not None:
        plain = _PLAIN.pack(KIND_DURESS, 0, bytes(PROFILE_KEY_SIZE), bytes(KEY_SIZE))
        contents.append((normal.duress_key, plain.ljust(PLAINTEXT_SIZE, b"\0")))
    # Positions: sort slot indices by random 64-bit tags (ties are negligible and harmless).
    order = sorted(range(SLOT_COUNT), key=lambda _: rng(8))
    slots = [b""] * SLOT_COUNT
    for index in order[len(contents) :]:
        slots[index] = rng(SLOT_SIZE)
    for index, (key, plaintext) in zip(order, contents, strict=False):
        nonce = rng(NONCE_SIZE)
        slots[index] = nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(header, index))
    return KeySlotFile(params, salt, tuple(slots))


def read(path: Path) -> KeySlotFile:
    """Reads and parses the file (KeySlotFormatError if malformed; OSError if unreadable)."""
    return KeySlotFile.parse(path.read_bytes())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replaces ``path`` with ``data``: all or nothing, even across a crash. Mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover from an interrupted write
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def create(path: Path, passphrase: str, rng: Rng, *, params: Argon2Params = DEFAULT_ARGON2) -> bytes:
    """Creates the key-slot file with a new random profile key, and returns that key.

    Args:
        path: where the file goes (must not exist).
        passphrase: the normal passphrase (non-empty).
        rng: the randomness source (``os.urandom`` in production).
        params: Argon2id parameters; tests pass cheap ones.

    Raises:
        ProfileExists: the file exists already.
        PassphraseRejected: the passphrase is empty.
    """
    _check_new(passphrase)
    if path.exists():
        raise ProfileExists
    salt = rng(SALT_SIZE)
    profile_key = rng(PROFILE_KEY_SIZE)
    key = params.derive(passphrase, salt)
    atomic_write(path, _seal_file(params, salt, key, _Normal(profile_key, None), rng).serialize())
    return profile_key


def unlock(path: Path, passphrase: str) -> Unlocked | Duress:
    """Opens the file with a passphrase; reads only, never writes.

    Cost: one Argon2id derivation (parameters from the file) and an AES-GCM open of every slot,
    the same for a normal, a duress or a wrong passphrase.

    Raises:
        WrongPassphrase: no slot opens.
        KeySlotFormatError: the file is malformed.
    """
    file = read(path)
    key = file.params.derive(passphrase, file.salt)
    normal, duress = _open_all(file, key)
    if normal is not None:
        return Unlocked(normal.profile_key, normal.duress_key)
    if duress:
        return Duress(key)
    raise WrongPassphrase


def _unlock_normal(file: KeySlotFile, passphrase: str) -> tuple[bytes, _Normal]:
    key = file.params.derive(passphrase, file.salt)
    normal, _ = _open_all(file, key)
    if normal is None:
        # The duress passphrase is refused here like a wrong one: changing settings needs the normal one.
        raise WrongPassphrase
    return key, normal


def set_duress(
    path: Path,
    passphrase: str,
    duress_passphrase: str,
    rng: Rng,
    *,
    before_write: Callable[[bytes], None] | None = None,
) -> bytes:
    """Adds (or replaces) the duress passphrase and returns its key; the file keeps its size and layout.

    Args:
        before_write: called with the new duress key once both passphrases are checked and before
            the file is replaced; if it raises, the file is left as it was. profile.py writes the
            panic file here, so the duress passphrase never exists without a panic file it can read.

    Raises:
        WrongPassphrase: ``passphrase`` is not the normal passphrase.
        PassphraseRejected: the duress passphrase is empty or equals the normal one.
    """
    _check_new(duress_passphrase)
    file = read(path)
    key, normal = _unlock_normal(file, passphrase)
    duress_key = file.params.derive(duress_passphrase, file.salt)
    if duress_key == key:
        raise PassphraseRejected(RejectReason.SAME_AS_NORMAL)
    new = _seal_file(file.params, file.salt, key, _Normal(normal.profile_key, duress_key), rng)
    if before_write is not None:
        before_write(duress_key)
    atomic_write(path, new.serialize())
    return duress_key


def change_passphrase(path: Path, passphrase: str, new_passphrase: str, rng: Rng) -> None:
    """Changes the normal passphrase; the profile key (and the duress passphrase) stay.

    Raises:
        WrongPassphrase: ``passphrase`` is not the normal passphrase.
        PassphraseRejected: the new passphrase is empty or equals the duress passphrase.
    """
    _check_new(new_passphrase)
    file = read(path)
    _, normal = _unlock_normal(file, passphrase)
    new_key = file.params.derive(new_passphrase, file.salt)
    if new_key == normal.duress_key:
        raise PassphraseRejected(RejectReason.SAME_AS_DURESS)
    atomic_write(path, _seal_file(file.params, file.salt, new_key, normal, rng).serialize())


def wipe(path: Path, rng: Rng = os.urandom) -> None:
    """Overwrites the whole file with random bytes in place, fsyncs, deletes it, fsyncs the directory.

    A missing file is not an error (wiping is idempotent).
    """
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        os.write(fd, rng(max(size, FILE_SIZE)))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    _fsync_dir(path.parent)


__all__ = [
    "DEFAULT_ARGON2",
    "FILE_SIZE",
    "SLOT_COUNT",
    "SLOT_SIZE",
    "Argon2Params",
    "Duress",
    "KeySlotFile",
    "Unlocked",
    "atomic_write",
    "change_passphrase",
    "create",
    "read",
    "set_duress",
    "unlock",
    "wipe",
]
