"""Writes to the profile database inside a running transaction (``ProfileStore.run_interaction``).

The SDK composes these so that each user-visible step is one transaction: e.g. a send writes the
advanced session, the message and the outbox entry together, or none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kluis.client.store import CONTACT_COLUMNS, Contact, contact_from_row


@dataclass(frozen=True, slots=True)
class ContactKeys:
    """What an invite (or its acceptance) tells about a contact, and the session begun with it."""

    account: bytes
    identity: bytes
    token: bytes
    envelope_key: bytes
    now: int
    sessions: bytes

    def __repr__(self) -> str:
        return "ContactKeys(..)"


def insert_contact(c: Any, keys: ContactKeys, *, name: str, timer: int) -> int:
    k = keys
    cur = c.execute(
        "INSERT INTO contacts (name, account, identity, token, envelope_key, envelope_key_at, sessions, "
        "timer, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (name, k.account, k.identity, k.token, k.envelope_key, k.now, k.sessions, timer, k.now),
    )
    return int(cur.lastrowid)


def rekey_contact(c: Any, contact_id: int, keys: ContactKeys) -> None:
    """The contact's name now belongs to another identity (a re-install): keep the conversation,
    forget the verification, and block sending until the user verifies again."""
    c.execute(
        "UPDATE contacts SET account = ?, identity = ?, token = ?, envelope_key = ?, envelope_key_at = ?, "
        "sessions = ?, verified = 0, identity_changed = 1, revoked = 0 WHERE id = ?",
        (keys.account, keys.identity, keys.token, keys.envelope_key, keys.now, keys.sessions, contact_id),
    )


def insert_message(
    c: Any,
    contact_id: int,
    *,
    direction: str,
    kind: str,
    message_id: bytes,
    body: str,
    timer: int,
    sent_at: int,
    displayed_at: int | None,
    expires_at: int | None,
    state: str,
) -> bool:
    """Inserts unless this message was stored before (exactly-once); returns whether it was new."""
    cur = c.execute(
        "INSERT OR IGNORE INTO messages (contact_id, direction, kind, message_id, body, timer, sent_at, "
        "displayed_at, expires_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (contact_id, direction, kind, message_id, body, timer, sent_at, displayed_at, expires_at, state),
    )
    return bool(cur.rowcount)


def enqueue(c: Any, contact_id: int, envelope_id: bytes, envelope: bytes, message_id: bytes | None) -> None:
    c.execute(
        "INSERT INTO outbox (contact_id, envelope_id, envelope, message_id) VALUES (?, ?, ?, ?)",
        (contact_id, envelope_id, envelope, message_id),
    )


def insert_seen(c: Any, envelope_id: bytes, forget_at: int) -> None:
    c.execute(
        "INSERT OR IGNORE INTO seen_envelopes (envelope_id, forget_at) VALUES (?, ?)",
        (envelope_id, forget_at),
    )


def contact(c: Any, contact_id: int) -> Contact:
    """The contact as this transaction sees it."""
    row = c.execute(f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE id = ?", (contact_id,)).fetchone()  # noqa: S608 - constant column list
    return contact_from_row(row)


def active_contacts(c: Any) -> list[Contact]:
    """Contacts that can be written to (a session, not revoked)."""
    rows = c.execute(
        f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE revoked = 0 AND sessions IS NOT NULL"  # noqa: S608 - constant column list
    ).fetchall()
    return [contact_from_row(r) for r in rows]


__all__ = [
    "active_contacts",
    "contact",
    "enqueue",
    "insert_contact",
    "insert_message",
    "insert_seen",
    "rekey_contact",
]
