"""The relay service's logic, independent of HTTP and WebSocket: accounts, authentication, the
prekey directory, sealed mailboxes and revocation. The transports (http.py, ws.py) only parse,
call these methods and map errors.

It holds no key that decrypts anything: it checks signatures on public keys, compares hashes of
delivery tokens, and stores ciphertext it cannot open.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import Protocol

from kluis.protocol._codec import Writer
from kluis.protocol.errors import KluisProtocolError
from kluis.protocol.keys import IdentityPublicKey, SignedPublicKey
from kluis.protocol.revocation import RevocationStatement
from kluis.relay import frames as f
from kluis.server.codes import hash_code
from kluis.server.errors import (
    AuthFailed,
    BadRequest,
    CodeInvalid,
    NoBundle,
    Rejected,
    Revoked,
    SubscriptionExpired,
    Unavailable,
)
from kluis.server.metrics import Metrics
from kluis.server.storage.base import (
    SECONDS_PER_DAY,
    Account,
    AccountId,
    AlreadyExists,
    MailboxItem,
    StagedAppend,
    Storage,
    StorageError,
    StoredEnvelope,
    epoch_day,
)

ACCOUNT_CACHE = 200_000
"""Accounts kept in memory for the token check on every send (about 400 bytes each: 80 MB at most,
and Sky ECC's 171,000 users fit)."""

PASS_LABEL = b"Kluis send pass v1\x00"
SendResults = list[tuple[bytes, f.SendStatus]]


class MailboxSink(Protocol):
    """A connected mailbox (one per account): the relay pushes to it without waiting."""

    def offer(self, items: list[MailboxItem]) -> None:
        """New envelopes were stored for this account (in seq order)."""

    def offer_early(self, items: list[MailboxItem]) -> bool:
        """New envelopes, numbered but not yet written: deliver them now if nothing can come between
        them and what this mailbox has already been sent (it is caught up and their seqs follow its
        last one), and return True; else return False (they are offered again once written)."""

    def key_stock(self, one_time_left: int, kem_left: int) -> None:
        """The directory's stock of this account's one-time prekeys is low."""

    def replaced(self) -> None:
        """Another connection authenticated as this account; this one must close."""

    def notice(self) -> None:
        """Envelopes may have been stored for this account (by another relay node): fetch them."""


class FanOut(Protocol):
    """Who is connected where: :class:`LocalFanOut` in one process, or
    :class:`kluis.server.fanout.RedisFanOut` between relay nodes that share one database.

    ``get`` returns the account's sink if it may be connected: a connection in this process, or with
    Redis a stand-in that forwards the call to the node holding the connection (if any).
    """

    shared: bool
    """True when other relay nodes store into the same mailboxes (ws.Connection then keeps its
    mailbox cursor in a way that does not depend on this node's sequence numbers alone)."""

    def attach(self, account: AccountId, sink: MailboxSink) -> None: ...
    def detach(self, account: AccountId, sink: MailboxSink) -> None: ...
    def get(self, account: AccountId) -> MailboxSink | None: ...


class LocalFanOut:
    """One relay process: connections are in a dict, a second one of an account replaces the first."""

    shared = False

    def __init__(self) -> None:
        self._sinks: dict[AccountId, MailboxSink] = {}

    def attach(self, account: AccountId, sink: MailboxSink) -> None:
        old = self._sinks.get(account)
        self._sinks[account] = sink
        if old is not None and old is not sink:
            old.replaced()

    def detach(self, account: AccountId, sink: MailboxSink) -> None:
        if self._sinks.get(account) is sink:
            del self._sinks[account]

    def get(self, account: AccountId) -> MailboxSink | None:
        return self._sinks.get(account)

    def __len__(self) -> int:
        return len(self._sinks)


@dataclass(slots=True)
class Screened:
    """Envelopes checked by :meth:`Relay.screen`: a status for each, and those to store."""

    results: SendResults
    accepted: list[tuple[int, StoredEnvelope]]
    size: int
    """Bytes of the accepted envelopes' ciphertexts (what storing them holds in memory)."""
    frames: int = 1
    """SEND frames they came in (a connection stores a read's frames together)."""

    @classmethod
    def merge(cls, parts: list[Screened]) -> Screened:
        """Several frames' envelopes as one: one append, one group-commit item."""
        if len(parts) == 1:
            return parts[0]
        results: SendResults = []
        accepted: list[tuple[int, StoredEnvelope]] = []
        for part in parts:
            offset = len(results)
            results += part.results
            accepted += [(index + offset, envelope) for index, envelope in part.accepted]
        return cls(results, accepted, sum(part.size for part in parts), sum(part.frames for part in parts))


class _Known:
    """A cached account. Its identity key is parsed each time it is used (authentication,
    revocation, a key upload: once per connection or rarer), not kept: parsed, it is about 0.7 KiB
    per account (an Ed25519 key object and the sliced fields), and every connected account is
    cached. Its binding was verified at registration, so it is not verified again here."""

    __slots__ = ("account",)

    def __init__(self, account: Account) -> None:
        self.account = account

    @property
    def identity(self) -> IdentityPublicKey:
        return IdentityPublicKey.from_stored_bytes(self.account.identity)


class Relay:
    """One relay node's service logic over a :class:`Storage` and a :class:`FanOut`."""

    def __init__(
        self,
        storage: Storage,
        *,
        pass_secret: bytes,
        retention_days: int = 7,
        max_envelope_bytes: int = 140_000,
        prekey_low_watermark: int = 10,
        fanout: FanOut | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.storage = storage
        self.fanout: FanOut = LocalFanOut() if fanout is None else fanout
        self._pass_secret = pass_secret
        self.retention_days = retention_days
        self.max_envelope_bytes = max_envelope_bytes
        self.low_watermark = prekey_low_watermark
        self._clock = clock
        self.metrics = metrics or Metrics(process=False)
        self._cache: OrderedDict[AccountId, _Known] = OrderedDict()
        self._day_start = -1.0
        self._today_value = 0

    def today(self) -> int:
        return epoch_day(self._clock())

    def _today_cached(self) -> int:
        """today() for every SEND frame: the clock is read, the day recomputed only when it ends."""
        now = self._clock()
        if not self._day_start <= now < self._day_start + SECONDS_PER_DAY:
            self._today_value = epoch_day(now)
            self._day_start = self._today_value * SECONDS_PER_DAY
        return self._today_value

    # -- accounts -------------------------------------------------------------------------------

    async def _known(self, account_id: AccountId) -> _Known | None:
        known = self._cache.get(account_id)
        if known is not None:
            self._cache.move_to_end(account_id)
            return known
        account = await self.storage.accounts.get(account_id)
        if account is None:
            return None
        known = _Known(account)
        self._cache[account_id] = known
        if len(self._cache) > ACCOUNT_CACHE:
            self._cache.popitem(last=False)
        return known

    def _forget(self, account_id: AccountId) -> None:
        self._cache.pop(account_id, None)

    async def register(self, code: str, identity: bytes, token_hash: bytes) -> tuple[AccountId, int]:
        """Creates an account paid by ``code``; returns (account id, expiry day).

        The code is redeemed first and forgotten: nothing links it to the account.
        """
        try:
            IdentityPublicKey.from_bytes(identity)
        except KluisProtocolError:
            raise BadRequest("identity is not a valid identity key") from None
        if len(token_hash) != 32:
            raise BadRequest("token_hash must be 32 bytes")
        days = await self.storage.codes.redeem(hash_code(code))
        if days is None:
            raise CodeInvalid()
        expires = self.today() + days
        while True:
            account_id = AccountId(os.urandom(16))
            try:
                await self.storage.accounts.create(Account(account_id, identity, token_hash, expires))
            except AlreadyExists:  # 2**-128; loop rather than lose the redeemed code
                continue
            self.metrics.accounts_registered.inc()
            return account_id, expires

    async def extend(self, account_id: AccountId, code: str) -> int:
        known = await self._known(account_id)
        if known is None:
            raise Rejected()
        if known.account.revoked:
            raise Revoked(known.account.revocation)
        days = await self.storage.codes.redeem(hash_code(code))
        if days is None:
            raise CodeInvalid()
        expires = await self.storage.accounts.extend(account_id, days, self.today())
        self._forget(account_id)
        return expires

    async def revoke(self, statement_bytes: bytes) -> None:
        """Revokes the account a valid signed statement names: keys and mailbox deleted at once."""
        try:
            statement = RevocationStatement.from_bytes(statement_bytes)
        except KluisProtocolError:
            raise BadRequest("not a revocation statement") from None
        known = await self._known(AccountId(statement.account))
        if known is None:
            raise Rejected()
        try:
            statement.verify(known.identity)
        except KluisProtocolError:
            raise AuthFailed() from None
        if not known.account.revoked:
            await self.storage.accounts.revoke(known.account.account_id, statement_bytes)
            self.metrics.accounts_revoked.inc()
        self._forget(known.account.account_id)
        sink = self.fanout.get(known.account.account_id)
        if sink is not None:
            sink.replaced()

    async def _check_token(self, account_id: AccountId, token: bytes) -> _Known:
        known = await self._known(account_id)
        if known is None or not hmac.compare_digest(hashlib.sha256(token).digest(), known.account.token_hash):
            raise Rejected()
        if known.account.revoked:
            raise Revoked(known.account.revocation)
        return known

    # -- directory ------------------------------------------------------------------------------

    async def bundle(self, account_id: AccountId, token: bytes) -> bytes:
        """A prekey bundle (bundle.py wire form), consuming one one-time key of each kind."""
        known = await self._check_token(account_id, token)
        entry = await self.storage.directory.take_bundle(account_id)
        if entry is None:
            raise NoBundle()
        self.metrics.bundles_fetched.inc()
        if min(entry.one_time_left, entry.kem_one_time_left) < self.low_watermark:
            self.metrics.prekeys_low.inc()
            sink = self.fanout.get(account_id)
            if sink is not None:
                sink.key_stock(entry.one_time_left, entry.kem_one_time_left)
        otk = b"\x00" if entry.one_time_prekey is None else b"\x01" + entry.one_time_prekey
        # PreKeyBundle wire form (docs/PROTOCOL.md §3): the stored encodings are its fields.
        return b"".join(
            (b"\x01", known.account.identity, entry.signed_prekey, entry.kem_prekey, entry.envelope_key, otk)
        )

    async def upload_keys(self, account_id: AccountId, keys: f.UploadKeys) -> tuple[int, int]:
        """Stores the uploaded keys after checking every signature; returns the stock counts."""
        known = await self._known(account_id)
        if known is None or known.account.revoked:
            raise Rejected()
        signed: list[SignedPublicKey] = [*keys.kem, *keys.envelope_keys]
        signed += [k for k in (keys.signed_prekey, keys.last_resort) if k is not None]
        try:
            for key in signed:
                key.verify(known.identity)
        except KluisProtocolError:
            raise BadRequest("a key's signature does not verify") from None
        directory = self.storage.directory
        if keys.signed_prekey is not None:
            await directory.set_signed_prekey(account_id, _encode(keys.signed_prekey))
        if keys.last_resort is not None:
            await directory.set_last_resort_kem(account_id, _encode(keys.last_resort))
        if keys.one_time:
            await directory.add_one_time_prekeys(
                account_id, [(key_id, key_id.to_bytes(4, "big") + public) for key_id, public in keys.one_time]
            )
        if keys.kem:
            await directory.add_kem_prekeys(account_id, [(k.key_id, _encode(k)) for k in keys.kem])
        if keys.envelope_keys:
            await directory.set_envelope_keys(account_id, [_encode(k) for k in keys.envelope_keys])
        return await directory.counts(account_id)

    # -- authentication and the send pass -------------------------------------------------------

    async def authenticate(self, nonce: bytes, auth: f.Auth) -> Account:
        """Checks AUTH against the challenge ``nonce``; returns the account."""
        known = await self._known(AccountId(auth.account))
        if known is None:
            raise AuthFailed()
        try:
            known.identity.verify(auth.signature, f.auth_message(nonce, auth.account), "auth")
        except KluisProtocolError:
            raise AuthFailed() from None
        if known.account.revoked:
            raise Revoked(known.account.revocation)
        return known.account

    def send_pass(self, day: int) -> bytes:
        """The day's send pass: the same for every subscriber, so presenting it says only
        "some paying account", never which (DESIGN.md: the server cannot tie a send to an account)."""
        return hmac.digest(self._pass_secret, PASS_LABEL + day.to_bytes(4, "big"), "sha256")

    async def send_pass_for(self, account_id: AccountId) -> tuple[int, bytes]:
        known = await self._known(account_id)
        if known is None or known.account.revoked:
            raise Rejected()
        today = self.today()
        if known.account.expires_day < today:
            raise SubscriptionExpired()
        return today, self.send_pass(today)

    def check_pass(self, day: int, send_pass: bytes) -> bool:
        """Accepts today's and yesterday's pass (a client fetched it just before midnight)."""
        today = self.today()
        return day in (today, today - 1) and hmac.compare_digest(send_pass, self.send_pass(day))

    # -- mailboxes ------------------------------------------------------------------------------

    async def screen(self, envelopes: tuple[f.OutgoingEnvelope, ...]) -> Screened:
        """Checks size, recipient, token and revocation; nothing is stored yet.

        Split from :meth:`store` so a connection can screen frames in arrival order and let their
        commits overlap, while the rows still reach storage in arrival order.
        """
        cache = self._cache
        for e in envelopes:
            if e.recipient not in cache:
                await self._known(AccountId(e.recipient))  # loads it into the cache, if it exists
        return self.screen_cached(envelopes)

    def screen_cached(self, envelopes: Sequence[f.OutgoingEnvelope]) -> Screened:
        """:meth:`screen` without awaiting: a recipient not in the account cache is refused, so
        call it only when every recipient is cached (:meth:`all_cached`)."""
        results: SendResults = []
        accepted: list[tuple[int, StoredEnvelope]] = []
        expiry = self._today_cached() + self.retention_days
        metrics = self.metrics
        cache = self._cache
        sha256 = hashlib.sha256
        compare = hmac.compare_digest
        limit = self.max_envelope_bytes
        size = 0
        # The last recipient and token that passed the check: a sender's envelopes to one recipient
        # (a frame, or frames stored together) carry the same token, checked once. Bytes compare
        # by value, so only exactly that recipient and token skip the hash.
        checked_to = checked_token = b""
        checked: _Known | None = None
        for e in envelopes:
            if len(e.envelope) > limit:
                results.append((e.envelope_id, f.SendStatus.TOO_LARGE))
                metrics.send_rejected("too_large")
                continue
            if checked is not None and e.recipient == checked_to and e.token == checked_token:
                known = checked
            else:
                # The token check of _check_token, inlined: this runs for every envelope. (A
                # recipient is looked up as the bytes it is: AccountId(...) would cost a call.)
                known = cache.get(e.recipient)  # type: ignore[call-overload]
                if known is None or not compare(sha256(e.token).digest(), known.account.token_hash):
                    results.append((e.envelope_id, f.SendStatus.REJECTED))
                    metrics.send_rejected("bad_token")
                    continue
                checked_to, checked_token, checked = e.recipient, e.token, known
            if known.account.revoked:
                results.append((e.envelope_id, f.SendStatus.REVOKED))
                metrics.send_rejected("revoked")
                continue
            accepted.append((len(results), StoredEnvelope(e.recipient, e.envelope_id, e.envelope, expiry)))  # type: ignore[arg-type]
            results.append((e.envelope_id, f.SendStatus.OK))
            size += len(e.envelope)
        return Screened(results, accepted, size)

    def all_cached(self, envelopes: tuple[f.OutgoingEnvelope, ...]) -> bool:
        cache = self._cache
        if len(envelopes) == 1:  # most frames: no generator
            return envelopes[0].recipient in cache
        return all(e.recipient in cache for e in envelopes)

    def store_soon(self, screened: Screened, done: Callable[[Screened], None]) -> bool:
        """Stores the screened envelopes and calls ``done`` with them (their statuses now final) once
        each is durable;
        False (nothing done) if the storage numbers envelopes only when it writes them: then use
        :meth:`store`.

        The envelopes are numbered at once (MailboxStore.stage), so those for a connected mailbox
        that is caught up are pushed now and held for the recipient's receipt; one receipted in time
        is never written. The rest are pushed once written. ``done`` may be called before this
        returns, or later from inside another connection's receipt: it must only take note.
        """
        envelopes = [s for _, s in screened.accepted]
        if not envelopes:
            done(screened)
            return True
        try:
            staged = self.storage.mailbox.stage(envelopes)
        except StorageError:
            self._unavailable(screened)
            done(screened)
            return True
        if staged is None:
            return False
        job = _StoreJob(self, screened, envelopes, staged, done)
        job.early = self._push_early(envelopes, staged)
        try:
            staged.submit(job.written)
        except StorageError:
            job.written(False)
        return True

    async def store(self, screened: Screened) -> SendResults:
        """Commits the screened envelopes (group commit), then pushes them to connected recipients:
        for storage that numbers envelopes only as it writes them (else :meth:`store_soon`)."""
        results, accepted = screened.results, screened.accepted
        if not accepted:
            return results
        metrics = self.metrics
        envelopes = [s for _, s in accepted]
        started = time.perf_counter()
        try:
            stored = await self.storage.mailbox.append(envelopes)
        except StorageError:
            self._unavailable(screened)
            return results
        metrics.commit(time.perf_counter() - started, len(accepted))
        items = [
            MailboxItem(seq, e.envelope_id, e.ciphertext)
            for e, (seq, _) in zip(envelopes, stored, strict=True)
        ]
        duplicates = {i: seq for i, (seq, new) in enumerate(stored) if not new}
        self._offer_written(envelopes, items, duplicates, ())
        return results

    def _unavailable(self, screened: Screened) -> None:
        results = screened.results
        for index, _ in screened.accepted:
            results[index] = (results[index][0], f.SendStatus.UNAVAILABLE)
        self.metrics.send_rejected("unavailable", len(screened.accepted))

    def _offer_written(
        self,
        envelopes: list[StoredEnvelope],
        items: list[MailboxItem],
        duplicates: dict[int, int],
        early: Sequence[tuple[int, int]],
    ) -> None:
        """Counts the envelopes stored, and offers to their recipients those not pushed ``early``
        (ranges of indexes) and not ``duplicates`` (resends of stored envelopes)."""
        metrics = self.metrics
        if duplicates:
            metrics.envelopes("duplicate", len(duplicates))
            metrics.envelopes_accepted(
                [len(e.ciphertext) for index, e in enumerate(envelopes) if index not in duplicates]
            )
        else:
            metrics.envelopes_accepted([len(e.ciphertext) for e in envelopes])
        if len(early) == 1 and early[0] == (0, len(items)):  # all pushed already: the usual case
            return
        pushed: set[int] = set()
        for start, end in early:
            pushed.update(range(start, end))
        fresh = [
            (e.recipient, item)
            for index, (e, item) in enumerate(zip(envelopes, items, strict=True))
            if index not in pushed and index not in duplicates
        ]
        # One offer per run of envelopes to the same recipient (a frame, or a sender's frames merged
        # into one commit, usually goes to one recipient): the sink's checks run once per run.
        for recipient, run in groupby(fresh, key=itemgetter(0)):
            sink = self.fanout.get(recipient)
            if sink is not None:
                sink.offer([item for _, item in run])

    def _push_early(self, envelopes: list[StoredEnvelope], staged: StagedAppend) -> list[tuple[int, int]]:
        """Pushes runs of staged envelopes to their connected, caught-up recipients and holds them
        for the receipts; returns (start, end) of each run pushed."""
        n = len(envelopes)
        first = envelopes[0].recipient
        runs: list[tuple[AccountId, int, int]] = []
        if n == 1 or all(e.recipient == first for e in envelopes):  # one run: most frames
            runs.append((first, 0, n))
        else:
            start = 0
            for recipient, run in groupby(envelopes, key=itemgetter(0)):
                runs.append((recipient, start, start + sum(1 for _ in run)))
                start = runs[-1][2]
        pushed = []
        for recipient, start, end in runs:
            sink = self.fanout.get(recipient)
            if sink is not None and sink.offer_early(
                staged.items if end - start == n else staged.items[start:end]
            ):
                staged.hold(start, end)
                pushed.append((start, end))
        return pushed

    async def fetch(self, account_id: AccountId, after_seq: int, limit: int) -> list[MailboxItem]:
        return await self.storage.mailbox.fetch(account_id, after_seq, limit)

    async def receipt(
        self, account_id: AccountId, seqs: list[int], envelope_ids: list[bytes] | None = None
    ) -> int:
        """Deletes receipted envelopes (by seq, and by envelope id too when given); returns how many
        were still there."""
        try:
            return await self.storage.mailbox.delete(account_id, seqs, envelope_ids)
        except StorageError:
            raise Unavailable() from None

    def discard(self, account_id: AccountId, seqs: list[int]) -> None:
        """Deletes receipted envelopes with the next group commit, without waiting (a receipt's
        delete is not acknowledged to anyone; one that is lost means a second delivery)."""
        self.storage.mailbox.discard(account_id, seqs)

    async def counts(self, account_id: AccountId) -> tuple[int, int]:
        return await self.storage.directory.counts(account_id)

    async def expire(self) -> int:
        expired = await self.storage.mailbox.expire(self.today())
        self.metrics.envelopes("expired", expired)
        return expired


class _StoreJob:
    """One :meth:`Relay.store_soon`: what is needed once its envelopes are durable."""

    __slots__ = ("done", "early", "envelopes", "relay", "screened", "staged", "started")

    def __init__(
        self,
        relay: Relay,
        screened: Screened,
        envelopes: list[StoredEnvelope],
        staged: StagedAppend,
        done: Callable[[Screened], None],
    ) -> None:
        self.relay = relay
        self.screened = screened
        self.envelopes = envelopes
        self.staged = staged
        self.done = done
        self.early: list[tuple[int, int]] = []
        self.started = time.perf_counter()

    def written(self, ok: bool) -> None:
        relay = self.relay
        if not ok:
            relay._unavailable(self.screened)
        else:
            if not self.early:  # a commit, not a wait for receipts: worth its histogram
                relay.metrics.commit(time.perf_counter() - self.started, len(self.envelopes))
            # Those pushed early are not offered again. (Should the mailbox have reconnected
            # meanwhile, its new connection's drain found them: a fetch writes its mailbox's held
            # envelopes first.)
            relay._offer_written(self.envelopes, self.staged.items, self.staged.duplicates, self.early)
            if self.staged.elided:
                relay.metrics.envelopes("unwritten", len(self.staged.elided))
        relay.metrics.send_acknowledged(time.perf_counter() - self.started)
        self.done(self.screened)


def _encode(key: SignedPublicKey) -> bytes:
    w = Writer()
    key.write(w)
    return w.getvalue()


__all__ = ["FanOut", "LocalFanOut", "MailboxSink", "Relay"]
