"""The Kluis SDK: an unlocked profile that talks to its relay.

One :class:`Client` per profile. Every operation keeps the delivery semantics of DESIGN.md:

- Sending: the message is encrypted, sealed, and written together with the advanced session state
  and an outbox entry in one transaction *before* anything leaves the device (the ratchet uses a
  fixed AEAD nonce per key, so a session state must never be reused: issue 2's closing note). The
  outbox keeps the sealed bytes and envelope id, so a retry after a lost acknowledgement is stored
  once by the server. A message is "sent" once the server acknowledged it durably, "delivered" once
  the recipient's device confirms it stored it (a DELIVERED content message).
- Receiving: a delivery is opened, decrypted and stored with the new session state and its envelope
  id in one transaction; only then does the server get the receipt and delete it. A redelivery after
  a lost receipt is recognised by its envelope id and only acknowledged again.
- Display and disappearing: received messages wait, undisplayed, until :meth:`Client.take_new`
  shows them; their timer starts then. Our own messages' timers start when they are written.
  :meth:`Client.expire` deletes what is due (secure_delete zeroes the rows).

Use it with ``async with``: ``await Client.open(...)`` unlocks; ``sync()`` connects, uploads keys,
drains the mailbox and flushes the outbox; ``run()`` stays connected and reports events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kluis.client import content as ct
from kluis.client import durations, tables
from kluis.client.account import LocalAccount, Settings
from kluis.client.errors import (
    ClientError,
    ContactExists,
    ContactRevoked,
    IdentityChanged,
    InviteRefused,
    NoProfile,
    ProfileExists,
    ServerRefused,
    ServerUnreachable,
    UnknownContact,
)
from kluis.client.invite import Invite, check_server
from kluis.client.keyslots import DEFAULT_ARGON2, Argon2Params
from kluis.client.link import NETWORK_ERRORS, RelayLink
from kluis.client.profile import KEYSLOTS_NAME, Profile, Wiped, create_profile, unlock
from kluis.client.store import Contact, ProfileStore, StoredMessage, kv_put
from kluis.client.transport import RelayClientError
from kluis.protocol.bundle import PreKeyBundle
from kluis.protocol.envelope import EnvelopeKeyRing, seal
from kluis.protocol.errors import KluisProtocolError
from kluis.protocol.keys import IdentityKeyPair, IdentityPublicKey, KeyKind, SignedPublicKey
from kluis.protocol.peer import PeerSessions
from kluis.protocol.prekeys import LocalPreKeys
from kluis.protocol.revocation import RevocationStatement
from kluis.protocol.rng import Rng
from kluis.protocol.safety import SafetyNumber, safety_number
from kluis.protocol.session import SessionPayload
from kluis.relay import frames as f

log = logging.getLogger(__name__)

ONE_TIME_BATCH = 100
"""One-time prekeys of each kind made at a time (X25519 and ML-KEM)."""
LOW_STOCK = 25
"""Below this many one-time keys of a kind on the server, a new batch is uploaded."""
SIGNED_PREKEY_PERIOD = 7 * 86400
SIGNED_PREKEYS_KEPT = 2
SEEN_RETENTION = 14 * 86400
"""How long envelope ids are remembered: past the server's retention (7 days by default)."""
MAX_DELIVERED_IDS = 256
MAINTENANCE_PERIOD = 3600
"""How often a long-running client checks whether a key is due for rotation."""

MessageState = Literal["queued", "sent", "delivered", "failed", "received"]


@dataclass(frozen=True, slots=True)
class Message:
    """A message as the user sees it. Times are Unix seconds (float, millisecond precision)."""

    contact: str
    direction: Literal["in", "out"]
    kind: Literal["text", "timer"]
    id: str
    text: str
    sent_at: float
    timer: int
    state: MessageState
    expires_at: float | None

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON line: ``from`` is the contact for incoming messages, ``to`` for outgoing."""
        side = "from" if self.direction == "in" else "to"
        return {
            side: self.contact,
            "text": self.text,
            "id": self.id,
            "sent_at": self.sent_at,
            "kind": self.kind,
            "state": self.state,
            "timer": self.timer,
            "expires_at": self.expires_at,
        }

    def __repr__(self) -> str:
        return f"Message({self.direction}, {self.kind}, {self.state}, ..)"


@dataclass(frozen=True, slots=True)
class ContactInfo:
    name: str
    timer: int
    verified: bool
    identity_changed: bool
    revoked: bool
    unread: int


@dataclass(frozen=True, slots=True)
class SendOutcome:
    id: str
    state: MessageState


Event = Message | ContactInfo
"""What :meth:`Client.run` reports: a new or changed message, or a contact that appeared/changed."""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _message(contact: str, row: StoredMessage) -> Message:
    return Message(
        contact,
        row.direction,
        row.kind,
        row.message_id.hex(),
        row.body,
        row.sent_at / 1000,
        row.timer,
        row.state,
        None if row.expires_at is None else row.expires_at / 1000,
    )


def _timer_text(seconds: int) -> str:
    return f"disappearing messages: {durations.format_timer(seconds)}"


class Client:
    """An unlocked, registered profile. Not thread-safe; one event loop."""

    def __init__(
        self,
        profile: Profile,
        account: LocalAccount,
        *,
        rng: Rng = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.profile = profile
        self.store: ProfileStore = profile.store
        self.me = account
        self.rng = rng
        self.clock = clock
        self._link: RelayLink | None = None
        self._drained = asyncio.Event()
        self._send_pass: f.SendPass | None = None
        self._flush_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._keys_lock = asyncio.Lock()
        self._maintained_at = clock()
        self._listeners: list[Callable[[Event], None]] = []
        self.last_stock: tuple[int, int] | None = None

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        directory: Path,
        passphrase: str,
        server_url: str,
        code: str,
        fingerprint: bytes | None = None,
        *,
        argon2: Argon2Params = DEFAULT_ARGON2,
        rng: Rng = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> Client:
        """Creates the profile, registers with an activation code and publishes the keys.

        The keys are made here and never leave the device; the server gets public keys and the
        hash of the delivery token. Raises ServerUnreachable / ServerRefused (e.g. a used code:
        then nothing was written), ProfileExists (checked before the code is spent), ValueError
        (a server URL that is not wss:// with a fingerprint, or ws:// on loopback), or a
        ProfileError.
        """
        import hashlib

        server_url = server_url.rstrip("/")
        check_server(server_url, fingerprint)
        if (directory / KEYSLOTS_NAME).exists():
            raise ProfileExists()
        identity = IdentityKeyPair.generate(rng)
        token = rng(32)
        async with RelayLink(server_url, fingerprint) as link:
            # Register before anything is written, so a refused code leaves no profile behind.
            try:
                registration = await link.http.register(
                    code, identity.public.to_bytes(), hashlib.sha256(token).digest()
                )
            except RelayClientError as error:
                raise ServerRefused(str(error), error.code) from None
            except NETWORK_ERRORS:
                raise ServerUnreachable() from None
        now = int(clock())
        profile = create_profile(directory, passphrase, rng, params=argon2)
        account = LocalAccount(
            server_url,
            fingerprint,
            registration.account,
            token,
            identity,
            LocalPreKeys.create(identity, rng, one_time=ONE_TIME_BATCH, kem_one_time=ONE_TIME_BATCH),
            EnvelopeKeyRing.create(identity, rng, now),
            Settings(durations.DEFAULT_TIMER, now),
        )
        account.save_all(profile.store)
        client = cls(profile, account, rng=rng, clock=clock)
        client.store.put("keys_uploaded", b"0")
        with contextlib.suppress(ServerUnreachable):
            await client.sync()
        return client

    @classmethod
    def open(
        cls,
        directory: Path,
        passphrase: str,
        *,
        rng: Rng = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> Client | Wiped:
        """Unlocks the profile; the duress passphrase erases it and returns Wiped.

        Raises NoProfile, WrongPassphrase, KeySlotFormatError or StoreError.
        """
        try:
            result = unlock(directory, passphrase)
        except FileNotFoundError:
            raise NoProfile() from None
        if isinstance(result, Wiped):
            return result
        account = LocalAccount.load(result.store)
        if account is None:
            result.close()
            raise NoProfile()
        client = cls(result, account, rng=rng, clock=clock)
        client.expire()
        return client

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._link is not None:
            await self._link.close()
            self._link = None
        self.profile.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "Client(..)"

    # -- contacts -------------------------------------------------------------------------------

    def _contact(self, name: str) -> Contact:
        contact = self.store.contact_by_name(name)
        if contact is None:
            raise UnknownContact()
        return contact

    def contacts(self) -> list[ContactInfo]:
        unread = self.store.unread_counts()
        return [self._info(c, unread.get(c.id, 0)) for c in self.store.contacts()]

    @staticmethod
    def _info(c: Contact, unread: int = 0) -> ContactInfo:
        return ContactInfo(c.name, c.timer, c.verified, c.identity_changed, c.revoked, unread)

    def invite(self, name: str) -> Invite:
        """A single-use invite; whoever accepts it becomes the contact ``name``."""
        name = _check_name(name)
        if self.store.contact_by_name(name) is not None:
            raise ContactExists()
        invite = Invite(
            self.me.server_url,
            self.me.fingerprint,
            self.me.account,
            self.me.identity.public,
            self.me.token,
            self.rng(16),
        )
        now = int(self.clock())
        self.store.run_interaction(
            "invite",
            lambda c: c.execute(
                "INSERT INTO invites (invite_id, name, created_at) VALUES (?, ?, ?)",
                (invite.invite_id, name, now),
            ),
        )
        return invite

    async def accept(self, invite: Invite, name: str) -> None:
        """Adds the inviter as ``name`` and sends the first (PQXDH) message, which introduces us.

        Raises InviteRefused (another server, our own invite, keys that do not match the invite),
        ContactExists, ContactRevoked, ServerUnreachable, ServerRefused.
        """
        name = _check_name(name)
        if invite.server_url.rstrip("/") != self.me.server_url:
            raise InviteRefused("the invite is for another server than this profile's")
        if invite.account == self.me.account:
            raise InviteRefused("this is your own invite")
        existing = self.store.contact_by_name(name)
        if existing is not None and existing.identity == invite.identity.to_bytes():
            raise ContactExists()
        if self.store.contact_by_account(invite.account) is not None:
            raise InviteRefused("this account is already a contact")
        link = await self._connected_link(mailbox=False)
        try:
            raw = await link.http.bundle(invite.account, invite.token)
        except RelayClientError as error:
            if error.code == "revoked":
                raise ContactRevoked() from None
            raise ServerRefused(str(error), error.code) from None
        except (TimeoutError, OSError) as error:
            raise ServerUnreachable() from error
        try:
            bundle = PreKeyBundle.from_bytes(raw).verify()
        except KluisProtocolError:
            raise InviteRefused("the server returned keys that do not verify") from None
        if bundle.bundle.identity != invite.identity:
            raise InviteRefused("the server returned keys of another identity than the invite's")
        sessions = PeerSessions()
        now = self.clock()
        timer = self.me.settings.default_timer
        hello = ct.Hello(
            self.rng(16), _ms(now), invite.invite_id, self.me.token, self.me.ring.current_public(), timer
        )
        payload = sessions.encrypt(self.me.identity, bundle, ct.encode(hello), self.rng)
        envelope = seal(
            bundle.bundle.envelope_key,
            bundle.bundle.identity,
            self.me.account,
            self.me.identity.public,
            payload,
        )
        envelope_key = _signed_bytes(bundle.bundle.envelope_key)

        def write(c: Any) -> None:
            fields = tables.ContactKeys(
                invite.account,
                invite.identity.to_bytes(),
                invite.token,
                envelope_key,
                int(now),
                sessions.serialize(),
            )
            if existing is not None:
                # The same name with another identity: the contact re-installed (or someone else
                # claims the name). Keep the conversation; block sending until re-verified.
                tables.rekey_contact(c, existing.id, fields)
                contact_id = existing.id
            else:
                contact_id = tables.insert_contact(c, fields, name=name, timer=timer)
            tables.enqueue(c, contact_id, self.rng(16), envelope, None)

        self.store.run_interaction("accept", write)
        self._notify(self._info(self._contact(name)))
        await self.flush()

    def safety_number(self, name: str) -> SafetyNumber:
        contact = self._contact(name)
        return safety_number(
            self.me.identity.public,
            self.me.account,
            IdentityPublicKey.from_bytes(contact.identity),
            contact.account,
        )

    def mark_verified(self, name: str, verified: bool = True) -> None:
        contact = self._contact(name)
        self.store.run_interaction(
            "verify",
            lambda c: c.execute(
                "UPDATE contacts SET verified = ?, identity_changed = 0 WHERE id = ?",
                (int(verified), contact.id),
            ),
        )
        self._notify(self._info(self._contact(name)))

    # -- sending --------------------------------------------------------------------------------

    def _encrypt_to(self, contact: Contact, content: ct.Content) -> tuple[bytes, bytes]:
        """(new sessions snapshot, sealed envelope). The caller stores both before sending."""
        if contact.sessions is None or contact.envelope_key is None:
            raise ClientError("no session with this contact yet")
        sessions = PeerSessions.deserialize(contact.sessions)
        payload = sessions.encrypt(self.me.identity, None, ct.encode(content), self.rng)
        identity = IdentityPublicKey.from_bytes(contact.identity)
        envelope = seal(
            _read_signed(contact.envelope_key), identity, self.me.account, self.me.identity.public, payload
        )
        return sessions.serialize(), envelope

    def _invited(self, name: str) -> bool:
        row = self.store.read(lambda c: c.execute("SELECT 1 FROM invites WHERE name = ?", (name,)).fetchone())
        return row is not None

    async def _sendable(self, name: str) -> Contact:
        if self.store.contact_by_name(name) is None and self._invited(name):
            # Someone may have accepted our invite under this name: their first message says so.
            with contextlib.suppress(ServerUnreachable):
                await self.sync()
        contact = self._contact(name)
        if contact.revoked:
            raise ContactRevoked()
        if contact.identity_changed:
            raise IdentityChanged()
        return contact

    async def send(self, name: str, text: str) -> SendOutcome:
        """Sends a text. Returns once the server stored it ("sent") or, when the server cannot be
        reached, once it is queued for retry ("queued"). Raises UnknownContact, ContactRevoked (also
        when the server reports the revocation now; the message stays in the history as "failed"),
        IdentityChanged, ClientError if the server refused it, ValueError for an empty or oversized
        text."""
        contact = await self._sendable(name)
        message_id = self.rng(16)
        now_ms = _ms(self.clock())
        await self._send_shown(
            contact, ct.Text(message_id, now_ms, contact.timer, text), "text", text, contact.timer
        )
        state = self._message_state(contact.id, message_id)
        if state == "failed":
            latest = self.store.contact_by_id(contact.id)
            if latest is not None and latest.revoked:
                raise ContactRevoked()
            raise ClientError("the server refused the message (wrong delivery token or too large)")
        return SendOutcome(message_id.hex(), state)

    async def set_timer(self, name: str, seconds: int) -> None:
        """Sets the conversation's disappearing timer on both sides (announced in the conversation)."""
        if seconds and not ct.MIN_TIMER <= seconds <= ct.MAX_TIMER:
            raise ValueError("the timer must be off or between 5 seconds and 4 weeks")
        contact = await self._sendable(name)
        content = ct.TimerChange(self.rng(16), _ms(self.clock()), seconds)
        await self._send_shown(contact, content, "timer", _timer_text(seconds), seconds)
        self._notify(self._info(self._contact(name)))

    async def _send_shown(
        self, contact: Contact, content: ct.Text | ct.TimerChange, kind: str, body: str, timer: int
    ) -> None:
        """Sends a message that appears in the conversation: the advanced session, the message row
        (our copy's timer starts now) and the outbox entry in one transaction, then the flush."""
        sessions, envelope = self._encrypt_to(contact, content)
        sent = content.sent_at_ms

        def write(c: Any) -> None:
            c.execute("UPDATE contacts SET sessions = ? WHERE id = ?", (sessions, contact.id))
            if kind == "timer":
                c.execute("UPDATE contacts SET timer = ? WHERE id = ?", (timer, contact.id))
            tables.insert_message(
                c,
                contact.id,
                direction="out",
                kind=kind,
                message_id=content.message_id,
                body=body,
                timer=timer,
                sent_at=sent,
                displayed_at=sent,
                expires_at=sent + timer * 1000 if timer else None,
                state="queued",
            )
            tables.enqueue(c, contact.id, self.rng(16), envelope, content.message_id)

        self.store.run_interaction(f"send_{kind}", write)
        self._notify_message(contact.id, "out", content.message_id)
        await self.flush()

    def set_default_timer(self, seconds: int) -> None:
        """The timer new conversations start with (issue 4: default 30 s)."""
        if seconds and not ct.MIN_TIMER <= seconds <= ct.MAX_TIMER:
            raise ValueError("the timer must be off or between 5 seconds and 4 weeks")
        self.me.settings = Settings(seconds, self.me.settings.signed_prekey_at)
        self.store.put("settings", self.me.settings.to_json())

    def _message_state(self, contact_id: int, message_id: bytes) -> MessageState:
        row = self.store.read(
            lambda c: c.execute(
                "SELECT state FROM messages WHERE contact_id = ? AND direction = 'out' AND message_id = ?",
                (contact_id, message_id),
            ).fetchone()
        )
        state: MessageState = "sent" if row is None else row[0]
        return state

    def _enqueue_control(self, c: Any, contact: Contact, content: ct.Content) -> None:
        """Encrypts a control message (receipt, key update) inside the caller's transaction."""
        sessions, envelope = self._encrypt_to(contact, content)
        c.execute("UPDATE contacts SET sessions = ? WHERE id = ?", (sessions, contact.id))
        tables.enqueue(c, contact.id, self.rng(16), envelope, None)

    # -- the connection -------------------------------------------------------------------------

    async def _connected_link(self, *, mailbox: bool = True) -> RelayLink:
        if self._link is None:
            self._link = RelayLink(self.me.server_url, self.me.fingerprint)
            await self._link.__aenter__()
        link = self._link
        if mailbox and (link.mailbox is None or link.closed.is_set()):
            await link.close_mailbox()
            self._drained.clear()
            self._send_pass = None
            auth = await link.open_mailbox(self.me.identity, self.me.account, self._on_frame)
            self.last_stock = (auth.one_time_left, auth.kem_left)
            await self._maintain_keys()
        return link

    async def sync(self) -> None:
        """Connects, publishes keys if due, drains the mailbox and flushes the outbox.

        Raises ServerUnreachable / ServerRefused (e.g. revoked)."""
        link = await self._connected_link()
        await self._maintain_keys()  # a long-lived connection also rotates on time
        drained = asyncio.create_task(self._drained.wait())
        closed = asyncio.create_task(link.closed.wait())
        try:
            await asyncio.wait({drained, closed}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()
            closed.cancel()
        if link.closed.is_set():
            raise link.close_reason if isinstance(link.close_reason, ClientError) else ServerUnreachable()
        await self.flush()

    async def flush(self) -> None:
        """Sends everything in the outbox, in order. Leaves what the server could not take queued."""
        async with self._flush_lock:
            entries = self.store.outbox()
            if not entries:
                return
            try:
                link = await self._connected_link()
                send_pass = await self._pass(link)
                # One read for every entry's recipient (the outbox row's contact exists: ON DELETE CASCADE).
                to = {c.id: c for c in self.store.contacts()}
                results = await link.send_envelopes(
                    [
                        f.OutgoingEnvelope(
                            e.envelope_id, to[e.contact_id].account, to[e.contact_id].token, e.envelope
                        )
                        for e in entries
                    ],
                    send_pass,
                )
            except ServerUnreachable:
                return
            except ServerRefused as error:
                if error.code == "subscription_expired":
                    raise
                return
            self._apply_results(entries, results)

    async def _pass(self, link: RelayLink) -> f.SendPass:
        if self._send_pass is None:
            frame = await link.request(f.GetSendPass(), f.SendPass)
            assert isinstance(frame, f.SendPass)
            self._send_pass = frame
        return self._send_pass

    def _apply_results(self, entries: list[Any], results: dict[bytes, f.SendStatus]) -> None:
        revoked: set[int] = set()
        changed: list[tuple[int, bytes]] = []

        def write(c: Any) -> None:
            for entry in entries:
                status = results.get(entry.envelope_id)
                if status is None or status in (f.SendStatus.RATE_LIMITED, f.SendStatus.UNAVAILABLE):
                    continue  # stays queued
                c.execute("DELETE FROM outbox WHERE id = ?", (entry.id,))
                if status is f.SendStatus.REVOKED:
                    revoked.add(entry.contact_id)
                    c.execute("UPDATE contacts SET revoked = 1 WHERE id = ?", (entry.contact_id,))
                if entry.message_id is not None:
                    state = "sent" if status is f.SendStatus.OK else "failed"
                    c.execute(
                        "UPDATE messages SET state = ? WHERE contact_id = ? AND direction = 'out' "
                        "AND message_id = ? AND state = 'queued'",
                        (state, entry.contact_id, entry.message_id),
                    )
                    changed.append((entry.contact_id, entry.message_id))

        self.store.run_interaction("sent", write)
        for contact_id, message_id in changed:
            self._notify_message(contact_id, "out", message_id)
        for contact_id in revoked:
            contact = self.store.contact_by_id(contact_id)
            if contact is not None:
                self._notify(self._info(contact))

    async def _on_frame(self, frame: f.Frame) -> None:
        """The mailbox reader's callback. Never waits for a reply on the mailbox stream."""
        if isinstance(frame, f.Deliver):
            seqs = [self._receive(d) for d in frame.deliveries]
            await self._link_send(f.Receipt(tuple(seqs)))
            self._schedule_flush()
        elif isinstance(frame, f.Drained):
            self._drained.set()
        elif isinstance(frame, f.KeyStock):
            self.last_stock = (frame.one_time_left, frame.kem_left)
            if min(frame.one_time_left, frame.kem_left) < LOW_STOCK:
                # Another task: the reader must not wait for the upload's reply it has to read.
                _ = self._background(self._maintain_quietly())

    async def _link_send(self, frame: f.Frame) -> None:
        if self._link is not None:
            await self._link.send_on_mailbox(frame)

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = self._background(self._flush_quietly())

    def _background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task the client owns (kept referenced, cancelled by close())."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(ClientError):
            await self.flush()

    # -- keys -----------------------------------------------------------------------------------

    async def _maintain_keys(self) -> None:
        """Uploads what the directory lacks, rotates the signed prekey and the envelope key when due."""
        async with self._keys_lock:
            # last_stock follows every KEY_STOCK in arrival order (the reply to our upload too).
            one_time_left, kem_left = self.last_stock or (ONE_TIME_BATCH, ONE_TIME_BATCH)
            await self._maintain_keys_locked(one_time_left, kem_left)

    async def _maintain_keys_locked(self, one_time_left: int, kem_left: int) -> None:
        me, now = self.me, int(self.clock())
        upload_all = self.store.get("keys_uploaded") != b"1"
        signed = last_resort = None
        one_time: list[tuple[int, bytes]] = []
        kem: list[SignedPublicKey] = []
        if upload_all:
            signed, last_resort = me.prekeys.current_signed_prekey(), me.prekeys.last_resort_kem()
            one_time = [(p.key_id, p.public_bytes) for p in me.prekeys.one_time.values()]
            kem = [s for k, s in me.prekeys.kem.values() if not k.last_resort]
        else:
            if now - me.settings.signed_prekey_at >= SIGNED_PREKEY_PERIOD:
                signed = me.prekeys.new_signed_prekey(me.identity, self.rng)
                for old in sorted(me.prekeys.signed)[:-SIGNED_PREKEYS_KEPT]:
                    del me.prekeys.signed[old]
                me.settings = Settings(me.settings.default_timer, now)
            if one_time_left < LOW_STOCK:
                one_time = [
                    (p.key_id, p.public_bytes)
                    for p in me.prekeys.new_one_time_prekeys(self.rng, ONE_TIME_BATCH)
                ]
            if kem_left < LOW_STOCK:
                kem = [
                    me.prekeys.new_kem_prekey(me.identity, self.rng, last_resort=False)
                    for _ in range(ONE_TIME_BATCH)
                ]
        rotated = me.ring.rotate(me.identity, self.rng, now)
        if not (upload_all or signed or one_time or kem or rotated):
            return
        envelope_keys = tuple(me.ring.published()) if (upload_all or rotated) else ()

        def write(c: Any) -> None:
            for key, value in me.kv_items():
                kv_put(c, key, value)
            if rotated:
                update = ct.KeyUpdate(self.rng(16), _ms(now), me.ring.current_public())
                for contact in tables.active_contacts(c):
                    self._enqueue_control(c, contact, update)

        # Stored before the upload: a key the server holds must be a key we hold.
        self.store.run_interaction("keys", write)
        link = self._link
        assert link is not None
        await link.request(
            f.UploadKeys(signed, last_resort, tuple(one_time), tuple(kem), envelope_keys), f.KeyStock
        )
        if upload_all:
            self.store.put("keys_uploaded", b"1")

    async def _maintain_quietly(self) -> None:
        with contextlib.suppress(ClientError):
            await self._maintain_keys()

    # -- receiving ------------------------------------------------------------------------------

    def _receive(self, delivery: f.Delivery) -> int:
        """Stores one delivery (or recognises it); returns its seq for the receipt."""
        seen = self.store.read(
            lambda c: c.execute(
                "SELECT 1 FROM seen_envelopes WHERE envelope_id = ?", (delivery.envelope_id,)
            ).fetchone()
        )
        if seen is None:
            try:
                self._accept_delivery(delivery)
            except (KluisProtocolError, ValueError) as error:
                # Unreadable (forged, for a key long erased, from a stranger): nothing can ever
                # read it, so it is acknowledged and dropped. No detail is logged.
                log.debug("dropped an unreadable delivery (%s)", type(error).__name__)
                self._mark_seen(delivery.envelope_id)
        return delivery.seq

    def _mark_seen(self, envelope_id: bytes) -> None:
        forget = int(self.clock()) + SEEN_RETENTION
        self.store.run_interaction("seen", lambda c: tables.insert_seen(c, envelope_id, forget))

    def _accept_delivery(self, delivery: f.Delivery) -> None:
        me = self.me
        now = self.clock()
        sealed = me.ring.open(delivery.envelope, int(now))
        payload = SessionPayload.from_bytes(sealed.ratchet_message)
        contact = self.store.contact_by_account(sealed.sender_account)
        if contact is not None and contact.sessions is not None:
            if contact.identity != sealed.sender_identity.to_bytes():
                raise ValueError("sender identity differs from the contact's")
            sessions = PeerSessions.deserialize(contact.sessions)
            plaintext = sessions.decrypt(me.identity, me.prekeys, payload, sealed.sender_identity)
            content = ct.decode(plaintext)
            self._store_content(delivery.envelope_id, contact, sessions, content, payload.initial is not None)
            return
        # A stranger: only the first message of someone who accepted one of our invites is let in.
        sessions = PeerSessions()
        plaintext = sessions.decrypt(me.identity, me.prekeys, payload, sealed.sender_identity)
        content = ct.decode(plaintext)
        if not isinstance(content, ct.Hello):
            raise ValueError("a stranger's message that is not an invite acceptance")
        row = self.store.read(
            lambda c: c.execute(
                "SELECT name FROM invites WHERE invite_id = ?", (content.invite_id,)
            ).fetchone()
        )
        if row is None:
            raise ValueError("an acceptance of an unknown or used invite")
        self._add_invitee(
            delivery.envelope_id,
            str(row[0]),
            sealed.sender_account,
            sealed.sender_identity,
            sessions,
            content,
        )

    def _add_invitee(  # noqa: PLR0917 - the parts of one opened acceptance
        self,
        envelope_id: bytes,
        name: str,
        account: bytes,
        identity: IdentityPublicKey,
        sessions: PeerSessions,
        hello: ct.Hello,
    ) -> None:
        hello.envelope_key.verify(identity)
        if hello.envelope_key.kind is not KeyKind.ENVELOPE:
            raise ValueError("the acceptance carries no envelope key")
        now = int(self.clock())
        existing = self.store.contact_by_name(name)
        envelope_key = _signed_bytes(hello.envelope_key)

        def write(c: Any) -> None:
            c.execute("DELETE FROM invites WHERE invite_id = ?", (hello.invite_id,))
            fields = tables.ContactKeys(
                account, identity.to_bytes(), hello.token, envelope_key, now, sessions.serialize()
            )
            if existing is not None:
                tables.rekey_contact(c, existing.id, fields)
            else:
                tables.insert_contact(c, fields, name=name, timer=hello.timer_seconds)
            kv_put(c, "prekeys", self.me.prekeys.serialize())
            tables.insert_seen(c, envelope_id, now + SEEN_RETENTION)

        self.store.run_interaction("invitee", write)
        contact = self._contact(name)
        self._notify(self._info(contact))

    def _store_content(
        self,
        envelope_id: bytes,
        contact: Contact,
        sessions: PeerSessions,
        content: ct.Content,
        consumed_prekeys: bool,
    ) -> None:
        now = int(self.clock())
        notify: list[tuple[int, str, bytes]] = []
        contact_changed = False

        def write(c: Any) -> None:
            nonlocal contact_changed
            c.execute("UPDATE contacts SET sessions = ? WHERE id = ?", (sessions.serialize(), contact.id))
            if consumed_prekeys:
                kv_put(c, "prekeys", self.me.prekeys.serialize())
            tables.insert_seen(c, envelope_id, now + SEEN_RETENTION)
            identity = IdentityPublicKey.from_bytes(contact.identity)
            match content:
                case ct.Text():
                    if tables.insert_message(
                        c,
                        contact.id,
                        direction="in",
                        kind="text",
                        message_id=content.message_id,
                        body=content.text,
                        timer=content.timer_seconds,
                        sent_at=content.sent_at_ms,
                        displayed_at=None,
                        expires_at=None,
                        state="received",
                    ):
                        notify.append((contact.id, "in", content.message_id))
                        if content.timer_seconds != contact.timer:
                            c.execute(
                                "UPDATE contacts SET timer = ? WHERE id = ?",
                                (content.timer_seconds, contact.id),
                            )
                            contact_changed = True
                        self._enqueue_control(
                            c,
                            tables.contact(c, contact.id),
                            ct.Delivered(self.rng(16), now * 1000, (content.message_id,)),
                        )
                case ct.TimerChange():
                    c.execute(
                        "UPDATE contacts SET timer = ? WHERE id = ?", (content.timer_seconds, contact.id)
                    )
                    contact_changed = True
                    if tables.insert_message(
                        c,
                        contact.id,
                        direction="in",
                        kind="timer",
                        message_id=content.message_id,
                        body=_timer_text(content.timer_seconds),
                        timer=content.timer_seconds,
                        sent_at=content.sent_at_ms,
                        displayed_at=None,
                        expires_at=None,
                        state="received",
                    ):
                        notify.append((contact.id, "in", content.message_id))
                case ct.Hello() | ct.KeyUpdate():
                    content.envelope_key.verify(identity)
                    if content.envelope_key.kind is not KeyKind.ENVELOPE:
                        raise ValueError("not an envelope key")
                    c.execute(
                        "UPDATE contacts SET envelope_key = ?, envelope_key_at = ? WHERE id = ?",
                        (_signed_bytes(content.envelope_key), now, contact.id),
                    )
                    if isinstance(content, ct.Hello):
                        c.execute("UPDATE contacts SET token = ? WHERE id = ?", (content.token, contact.id))
                case ct.Delivered():
                    for message_id in content.ids:
                        updated = c.execute(
                            "UPDATE messages SET state = 'delivered' WHERE contact_id = ? "
                            "AND direction = 'out' AND message_id = ? AND state IN ('queued', 'sent')",
                            (contact.id, message_id),
                        ).rowcount
                        if updated:
                            notify.append((contact.id, "out", message_id))

        self.store.run_interaction("receive", write)
        if contact_changed:
            self._notify(self._info(self._contact(contact.name)))
        for contact_id, direction, message_id in notify:
            self._notify_message(contact_id, direction, message_id)

    # -- display and expiry ---------------------------------------------------------------------

    def take_new(self, name: str | None = None) -> list[Message]:
        """Received messages not shown yet (of the conversation ``name``, or all), oldest first;
        marks them shown and starts their timers."""
        rows = self.store.undisplayed(None if name is None else self._contact(name).id)
        if not rows:
            return []
        now = _ms(self.clock())

        def write(c: Any) -> None:
            for row in rows:
                expires = now + row.timer * 1000 if row.timer else None
                c.execute(
                    "UPDATE messages SET displayed_at = ?, expires_at = ? WHERE id = ?",
                    (now, expires, row.id),
                )

        self.store.run_interaction("display", write)
        names = {c.id: c.name for c in self.store.contacts()}
        shown = []
        for row in rows:
            expires = now + row.timer * 1000 if row.timer else None
            shown.append(_message(names.get(row.contact_id, "?"), _displayed(row, now, expires)))
        return shown

    def history(self, name: str) -> list[Message]:
        """The conversation's messages still kept (received ones count as shown from here)."""
        contact = self._contact(name)
        self.expire()
        return [_message(contact.name, row) for row in self.store.messages(contact.id)]

    def expire(self) -> int:
        """Deletes every message whose timer ran out (and forgets old envelope ids)."""
        now = self.clock()
        count = self.store.delete_expired(_ms(now))
        self.store.run_interaction(
            "forget_seen", lambda c: c.execute("DELETE FROM seen_envelopes WHERE forget_at <= ?", (int(now),))
        )
        return count

    # -- events ---------------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Calls ``listener`` for every new or changed message or contact; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, event: Event) -> None:
        for listener in list(self._listeners):
            listener(event)

    def _notify_message(self, contact_id: int, direction: str, message_id: bytes) -> None:
        if not self._listeners:
            return
        contact = self.store.contact_by_id(contact_id)
        row = self.store.read(
            lambda c: c.execute(
                "SELECT id FROM messages WHERE contact_id = ? AND direction = ? AND message_id = ?",
                (contact_id, direction, message_id),
            ).fetchone()
        )
        if contact is None or row is None:
            return
        for stored in self.store.messages(contact_id):
            if stored.id == row[0]:
                self._notify(_message(contact.name, stored))

    async def run(self, *, stop: asyncio.Event | None = None, reconnect_delay: float = 1.0) -> None:
        """Stays connected until ``stop`` is set: receives as messages arrive, flushes the outbox,
        expires messages on time, reconnects after a network failure (bounded backoff)."""
        stop = stop or asyncio.Event()
        delay = reconnect_delay
        while not stop.is_set():
            try:
                await self.sync()
                delay = reconnect_delay
                assert self._link is not None
                closed = asyncio.create_task(self._link.closed.wait())
                stopped = asyncio.create_task(stop.wait())
                try:
                    while not (closed.done() or stopped.done()):
                        await asyncio.wait(
                            {closed, stopped}, timeout=self._tick(), return_when=asyncio.FIRST_COMPLETED
                        )
                        self.expire()
                        if self.clock() - self._maintained_at > MAINTENANCE_PERIOD:
                            self._maintained_at = self.clock()
                            _ = self._background(self._maintain_quietly())
                        if self.store.outbox():
                            self._schedule_flush()  # the server asked us to retry (busy, storage)
                finally:
                    closed.cancel()
                    stopped.cancel()
            except ServerUnreachable:
                pass
            except ServerRefused as error:
                if error.code in ("revoked", "auth_failed"):
                    raise
            # Disconnected: wait before the next attempt, still expiring messages on time.
            deadline = self.clock() + delay
            while not stop.is_set() and self.clock() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(self._tick(), max(0.0, deadline - self.clock())))
                self.expire()
            delay = min(delay * 2, 30.0)
            if self._link is not None:
                await self._link.close_mailbox()

    def _tick(self) -> float:
        next_expiry = self.store.next_expiry()
        if next_expiry is None:
            return 1.0
        return max(0.05, min(1.0, next_expiry / 1000 - self.clock()))

    # -- revocation -----------------------------------------------------------------------------

    def revocation_statement(self) -> RevocationStatement:
        return RevocationStatement.sign(self.me.identity, self.me.account)

    async def revoke(self) -> None:
        """Revokes this account at the server now (the profile stays; the caller usually erases it)."""
        link = await self._connected_link(mailbox=False)
        try:
            await link.http.revoke(self.revocation_statement().to_bytes())
        except RelayClientError as error:
            raise ServerRefused(str(error), error.code) from None


# -- helpers used inside transactions -----------------------------------------------------------


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or any(ch in name for ch in "\r\n\t"):
        raise ClientError("a contact name must be 1 to 64 characters on one line")
    return name


def _signed_bytes(key: SignedPublicKey) -> bytes:
    from kluis.protocol._codec import Writer

    w = Writer()
    key.write(w)
    return w.getvalue()


def _read_signed(data: bytes) -> SignedPublicKey:
    from kluis.protocol._codec import Reader

    r = Reader(data, "envelope key")
    key = SignedPublicKey.read(r)
    r.done()
    return key


def _displayed(row: StoredMessage, now: int, expires: int | None) -> StoredMessage:
    from dataclasses import replace

    return replace(row, displayed_at=now, expires_at=expires)


__all__ = ["Client", "ContactInfo", "Event", "Message", "SendOutcome"]
