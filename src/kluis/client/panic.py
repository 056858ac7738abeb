"""The panic file: what the duress passphrase needs to revoke the account once the profile is gone.

The duress passphrase erases the profile (profile.py); afterwards the client should still tell the
relay to revoke the account, which takes the relay's address and the signed revocation statement.
Both live in the database, whose key the duress passphrase must never reach, so a copy is kept in
``<profile>/panic``, readable with the duress key alone (keyslots.Duress.duress_key).

The file must not reveal whether a duress passphrase exists. It is always there and always
:data:`PANIC_FILE_SIZE` bytes: without a duress passphrase it is random bytes (the *filler*), with
one it is ``nonce (12) || AES-256-GCM ciphertext and tag (500)``, which looks the same without the
key. Layout (PROTOCOL.md §10.3)::

    K         = HKDF-SHA256(duress_key, salt=None, info=b"kluis panic file v1", length=32)
    file      = nonce (12) || AES-256-GCM(K, nonce, plaintext, aad=b"kluis panic v1")
    plaintext = u8 version (1) | var16 server_url | u8 fp_len (0 or 32) | fingerprint
                | var16 revocation statement, zero-padded to PLAINTEXT_SIZE (484) bytes

The HKDF step keeps the Argon2id key from being used directly by two different ciphers (the key
slots and this file).

Writes are atomic and mode 0600 (keyslots.atomic_write). :func:`read` never raises for what it
finds: during a duress unlock nothing may stop the erase.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kluis.client.invite import FINGERPRINT_LEN, MAX_URL_LEN, check_server
from kluis.client.keyslots import KEY_SIZE, atomic_write
from kluis.protocol._codec import Reader, Writer
from kluis.protocol.errors import DecodeError, UnsupportedVersion
from kluis.protocol.rng import Rng

PANIC_NAME = "panic"
PANIC_FILE_SIZE = 512
PANIC_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
PLAINTEXT_SIZE = PANIC_FILE_SIZE - NONCE_SIZE - TAG_SIZE
_HKDF_INFO = b"kluis panic file v1"
_AAD = b"kluis panic v1"
_FIXED = 1 + 2 + 1 + 2
MAX_STATEMENT_LEN = PLAINTEXT_SIZE - _FIXED - MAX_URL_LEN - FINGERPRINT_LEN
"""What fits beside the longest URL and a fingerprint (191 bytes; a v1 statement is 81)."""


@dataclass(frozen=True, repr=False)
class PanicInfo:
    """What the duress path sends after the erase: where the relay is, and the revocation statement.

    Raises:
        ValueError: a malformed relay address (invite.check_server) or an empty or oversized
            statement (on construction).
    """

    server_url: str
    fingerprint: bytes | None
    statement: bytes

    def __post_init__(self) -> None:
        check_server(self.server_url, self.fingerprint)
        if not isinstance(self.statement, bytes) or not 1 <= len(self.statement) <= MAX_STATEMENT_LEN:
            raise ValueError(f"revocation statement must be 1..{MAX_STATEMENT_LEN} bytes")

    def _plaintext(self) -> bytes:
        fingerprint = self.fingerprint or b""
        w = Writer().u8(PANIC_VERSION).var16(self.server_url.encode("ascii"))
        w.u8(len(fingerprint)).raw(fingerprint).var16(self.statement)
        return w.getvalue().ljust(PLAINTEXT_SIZE, b"\0")

    @classmethod
    def _parse(cls, plaintext: bytes) -> PanicInfo | None:
        try:
            r = Reader(plaintext, "panic file")
            r.expect_version(PANIC_VERSION)
            url = r.var16(MAX_URL_LEN).decode("ascii")
            fp_len = r.u8()
            if fp_len not in (0, FINGERPRINT_LEN):
                return None
            fingerprint = r.raw(fp_len) if fp_len else None
            statement = r.var16(MAX_STATEMENT_LEN)
            if r.rest().strip(b"\0"):
                return None
            return cls(url, fingerprint, statement)
        except (DecodeError, UnsupportedVersion, ValueError):
            # ValueError covers both a non-ASCII URL and the constructor's checks.
            return None

    def __repr__(self) -> str:
        return "PanicInfo(..)"


def _key(duress_key: bytes) -> bytes:
    if len(duress_key) != KEY_SIZE:
        raise ValueError(f"duress key must be {KEY_SIZE} bytes")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(duress_key)


def write_filler(directory: Path, rng: Rng) -> None:
    """Writes the file as random bytes: the state without a duress passphrase.

    Raises:
        OSError: the file cannot be written.
    """
    atomic_write(directory / PANIC_NAME, rng(PANIC_FILE_SIZE))


def write(directory: Path, duress_key: bytes, info: PanicInfo, rng: Rng) -> None:
    """Writes ``info`` encrypted for ``duress_key``, with a fresh nonce.

    Raises:
        ValueError: ``duress_key`` is not 32 bytes.
        OSError: the file cannot be written.
    """
    nonce = rng(NONCE_SIZE)
    sealed = nonce + AESGCM(_key(duress_key)).encrypt(nonce, info._plaintext(), _AAD)
    atomic_write(directory / PANIC_NAME, sealed)


def read(directory: Path, duress_key: bytes) -> PanicInfo | None:
    """The info ``duress_key`` opens, or None: missing, unreadable, filler, another key, malformed.

    Never raises.
    """
    try:
        key = _key(duress_key)
        with (directory / PANIC_NAME).open("rb") as file:
            # One byte more than the size tells an oversized file apart without reading all of it.
            data = file.read(PANIC_FILE_SIZE + 1)
    except (OSError, ValueError):
        return None
    if len(data) != PANIC_FILE_SIZE:
        return None
    try:
        plaintext = AESGCM(key).decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], _AAD)
    except InvalidTag:
        return None
    return PanicInfo._parse(plaintext)


__all__ = [
    "MAX_STATEMENT_LEN",
    "PANIC_FILE_SIZE",
    "PANIC_NAME",
    "PanicInfo",
    "read",
    "write",
    "write_filler",
]
