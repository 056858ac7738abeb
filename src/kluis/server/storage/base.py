"""Storage interfaces of the relay: one small Protocol per concern (STYLE.md §3).

The relay stores exactly the *seizure profile* and nothing else: account id, public keys,
delivery-token hash, subscription expiry (day granularity), revocation flag and statement, prekeys,
mailbox envelopes (recipient, envelope id, ciphertext, expiry day, sequence) and activation-code
hashes. No sender, no IP address, no timestamp finer than a day, no contact list, no log line with an
id. Every value is opaque bytes that the server layer has already validated (signatures, sizes);
storage only stores them.

Every method is ``async`` so that a networked engine (PostgreSQL) fits behind the same interfaces; the
SQLite implementation runs inline on the event loop.

Errors::

    StorageError
    ├── AlreadyExists     create() of an account id that is taken
    ├── UnknownAccount    a write that names an account that does not exist
    └── SchemaTooNew      the database was written by a newer release this code cannot read

Days are ``int`` days since the Unix epoch, UTC (:func:`epoch_day`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, NewType, Protocol

AccountId = NewType("AccountId", bytes)
"""16 random bytes chosen at registration; the only name an account has."""

ACCOUNT_ID_LEN = 16
ENVELOPE_ID_LEN = 16
SECONDS_PER_DAY = 86_400


def epoch_day(unix_seconds: float) -> int:
    """The day (since 1970-01-01, UTC) that contains ``unix_seconds``; the only clock granularity stored."""
    return int(unix_seconds // SECONDS_PER_DAY)


class StorageError(Exception):
    """Base of every error raised by ``kluis.server.storage``. Messages never contain ids or key bytes."""


class AlreadyExists(StorageError):
    """An account with this id exists already."""

    def __init__(self) -> None:
        super().__init__("account id already taken")


class UnknownAccount(StorageError):
    """The operation names an account that does not exist."""

    def __init__(self, op: str) -> None:
        super().__init__(f"{op}: unknown account")
        self.op = op


class SchemaTooNew(StorageError):
    """The database needs a newer release (its compat version is above what this code understands)."""

    def __init__(self, database_compat: int, code_version: int) -> None:
        super().__init__(
            f"database schema needs compat version {database_compat}, this release understands up to "
            f"{code_version}: upgrade kluis or restore a backup made by this release"
        )
        self.database_compat = database_compat
        self.code_version = code_version


@dataclass(frozen=True, slots=True)
class Account:
    account_id: AccountId
    identity: bytes
    """IdentityPublicKey encoding (129 bytes)."""
    token_hash: bytes
    """SHA-256 of the delivery token (32 bytes); senders prove they know the token."""
    expires_day: int
    revoked: bool = False
    revocation: bytes | None = None
    """The owner's signed revocation statement, kept so contacts can verify it."""

    def __repr__(self) -> str:
        # No ids or keys in logs (seizure profile: no log line with an id).
        return f"Account(.., expires_day={self.expires_day}, revoked={self.revoked})"


class StoredEnvelope(NamedTuple):
    """An envelope to store. A NamedTuple: one is built for every envelope the relay accepts, and
    tuples are several times cheaper to build than frozen dataclasses."""

    recipient: AccountId
    envelope_id: bytes
    """16 bytes chosen by the sender; (recipient, envelope_id) de-duplicates resends."""
    ciphertext: bytes
    expiry_day: int

    def __repr__(self) -> str:
        return f"StoredEnvelope(.., {len(self.ciphertext)} bytes, expiry_day={self.expiry_day})"


class MailboxItem(NamedTuple):
    """An envelope handed to a mailbox: built for every envelope delivered (a NamedTuple, as
    StoredEnvelope)."""

    seq: int
    envelope_id: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"MailboxItem(seq={self.seq}, .., {len(self.ciphertext)} bytes)"


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """What :meth:`DirectoryStore.take_bundle` hands out; each bytes field is the uploaded encoding."""

    signed_prekey: bytes
    kem_prekey: bytes
    kem_is_last_resort: bool
    one_time_prekey: bytes | None
    """u32 key_id | 32-byte X25519 public, or None when the stock is empty."""
    envelope_key: bytes
    """The current envelope key (the newest of the published set)."""
    one_time_left: int
    kem_one_time_left: int


class CodeStore(Protocol):
    """Activation codes, stored as SHA-256 hashes only and never linked to the account they paid for."""

    async def add_codes(self, code_hashes: list[bytes], days: int) -> None:
        """Adds codes worth ``days`` each; a hash already present keeps its first value."""

    async def redeem(self, code_hash: bytes) -> int | None:
        """Atomically deletes the code and returns its days; None if unknown or already used."""


class AccountStore(Protocol):
    async def create(self, account: Account) -> None:
        """Raises AlreadyExists if the id is taken."""

    async def get(self, account_id: AccountId) -> Account | None: ...

    async def extend(self, account_id: AccountId, days: int, today: int) -> int:
        """Sets expiry to ``max(expires_day, today) + days`` and returns it. Raises UnknownAccount."""

    async def revoke(self, account_id: AccountId, statement: bytes) -> None:
        """Atomically marks the account revoked with ``statement`` and deletes its prekeys, envelope
        keys and mailbox. Raises UnknownAccount."""


class DirectoryStore(Protocol):
    """Prekeys and envelope keys. Writes raise UnknownAccount for an account that does not exist."""

    async def set_signed_prekey(self, account_id: AccountId, signed: bytes) -> None: ...

    async def set_last_resort_kem(self, account_id: AccountId, signed: bytes) -> None: ...

    async def add_one_time_prekeys(self, account_id: AccountId, items: list[tuple[int, bytes]]) -> None:
        """Adds (key id, encoding) pairs; an id already stored keeps its first encoding."""

    async def add_kem_prekeys(self, account_id: AccountId, items: list[tuple[int, bytes]]) -> None:
        """Adds (key id, signed encoding) pairs; an id already stored keeps its first encoding."""

    async def set_envelope_keys(self, account_id: AccountId, keys: list[bytes]) -> None:
        """Replaces the published envelope keys: the current one first, then those in grace, newest first."""

    async def envelope_keys(self, account_id: AccountId) -> list[bytes]:
        """The published envelope keys in the order they were set (empty if none)."""

    async def take_bundle(self, account_id: AccountId) -> DirectoryEntry | None:
        """Atomically removes and returns the lowest-id one-time X25519 and one-time KEM prekeys (the
        last-resort KEM key when no one-time KEM key is left). None, consuming nothing, when the
        account lacks a signed prekey, a last-resort KEM key or an envelope key. No one-time key is
        ever handed to two callers."""

    async def counts(self, account_id: AccountId) -> tuple[int, int]:
        """(one-time X25519 prekeys left, one-time KEM prekeys left)."""


class StagedAppend(Protocol):
    """Envelopes numbered before they are written (:meth:`MailboxStore.stage`)."""

    items: list[MailboxItem]
    """The envelopes with their seqs, in the order they were staged."""
    duplicates: dict[int, int]
    """Once they are durable: index -> the seq an earlier copy is stored under, for each envelope
    that was a resend of a stored one (not stored again)."""
    elided: set[int] | None
    """Indexes of the envelopes receipted before they were written (never written), if any."""

    def hold(self, start: int, end: int) -> None:
        """Envelopes ``start:end``, all to one recipient, were pushed to it: let them wait a little
        for its receipt before they are written (receipted, they never are)."""

    def submit(self, done: Callable[[bool], None]) -> None:
        """Queues them all. ``done(True)`` once each envelope is durable: written, or receipted by
        its recipient, whose receipt says its own store committed it (such an envelope is never
        written); ``done(False)`` if they could not be written. It is called from inside the
        storage's work (a commit, a receipt's :meth:`MailboxStore.discard`): it must only take note
        and schedule. Raises StorageError (nothing queued) if the storage is closed."""


class MailboxStore(Protocol):
    def stage(self, envelopes: list[StoredEnvelope]) -> StagedAppend | None:
        """Numbers non-empty ``envelopes`` now, so the relay can push them to connected recipients
        before they are written; None if the backend numbers them only when it writes them
        (PostgreSQL: several nodes share the counters), then use :meth:`append`. Raises
        UnknownAccount (numbering none) if a recipient does not exist."""

    async def append(self, envelopes: list[StoredEnvelope]) -> list[tuple[int, bool]]:
        """Stores envelopes; returns (seq, newly_stored) for each, once the rows are durable.

        A resend of a stored (recipient, envelope_id) is not stored again: it returns the stored seq
        and False. Sequence numbers increase per recipient. Raises UnknownAccount (storing none of
        them) if a recipient does not exist.
        """

    async def fetch(self, recipient: AccountId, after_seq: int, limit: int) -> list[MailboxItem]:
        """Up to ``limit`` envelopes with seq > after_seq, in seq order."""

    async def delete(
        self, recipient: AccountId, seqs: list[int], envelope_ids: list[bytes] | None = None
    ) -> int:
        """Deletes the given seqs (durably); returns how many existed.

        With ``envelope_ids`` (one per seq), a row goes only if its envelope id matches too. Relay nodes
        that share a database may number a new envelope with the seq of one just deleted (each node
        keeps its own counter, see postgres.py); a receipt that names the old envelope must not take
        the new one with it.
        """

    def discard(self, recipient: AccountId, seqs: list[int]) -> None:
        """Deletes the given seqs with the next group commit (on SQLite, the next that writes
        envelopes, or one a moment later), without waiting for it: what a receipt does, which
        nobody awaits (an envelope whose delete is lost is delivered again and
        the client drops it by id). Costs no future and no task per receipt, which matters when
        every delivery is a receipt of its own. A failure is logged, never raised."""

    async def expire(self, today: int) -> int:
        """Deletes every envelope whose expiry_day < today; returns how many."""

    async def count(self, recipient: AccountId) -> int: ...


class Storage(Protocol):
    """The four stores of one backend, and its lifecycle."""

    @property
    def codes(self) -> CodeStore: ...
    @property
    def accounts(self) -> AccountStore: ...
    @property
    def directory(self) -> DirectoryStore: ...
    @property
    def mailbox(self) -> MailboxStore: ...

    async def checkpoint(self, *, truncate: bool = True) -> None:
        """Housekeeping off the hot path (SQLite: a PASSIVE WAL checkpoint, then with ``truncate``
        emptying the WAL so deleted data leaves it too); call it from a timer."""

    async def close(self) -> None:
        """Commits anything pending and releases the backend."""
