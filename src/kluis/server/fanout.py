"""Fan-out between relay nodes through Redis: several ``kluis server --database postgresql://...
--redis redis://...`` processes form one service.

Every envelope travels through the shared PostgreSQL mailbox, never through Redis. When node A stores
an envelope for an account whose connection is on node B, A publishes a tiny notice ("mailbox T has
new envelopes") on B's channel, and B's connection fetches from the mailbox at once (its usual drain).

What Redis holds (docs/SECURITY.md, the seizure profile):

- presence entries ``kluis:p:<tag>`` -> ``<node>:<connection>``, one per connected account, expiring
  after PRESENCE_TTL_S unless the node holding the connection refreshes them (HEARTBEAT_S): a crashed
  node's entries are gone within PRESENCE_TTL_S. ``tag`` is a keyed hash of the account id (the key is
  derived from the send-pass secret, which only the nodes hold), ``node`` a random id each node process
  draws when it starts, ``connection`` a random id per connection: no account id, no address;
- notices, published and forgotten (pub/sub keeps nothing): ``N`` + tags (new envelopes), ``K`` + tag +
  the prekey stock (KEY_STOCK), ``R`` + tag + connection (close it: replaced by a newer connection of
  the account on another node, or revoked);
- ``kluis:service``, a keyed hash of the send-pass secret and the TLS certificate, so a node started
  with other files than the rest refuses to start instead of handing out passes the others reject.

Redis persistence is not needed (run it with ``--save '' --appendonly no``): after a restart the nodes
claim their connections again.

While Redis is unreachable the service keeps delivering: each node's connections poll their mailbox
every POLL_S (``kluis_fanout_degraded`` is 1), and notices that could not be published are kept and
sent once it is back. When the node is subscribed again it claims its connections anew and has every
connection fetch once, which picks up whatever was stored meanwhile.

Presence routing is done by Lua scripts inside Redis (one round trip per event-loop pass, whatever the
number of recipients), which touch keys not declared to Redis: use a standalone Redis (or a primary
with replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import struct
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from kluis.server.errors import FanOutError
from kluis.server.metrics import Metrics
from kluis.server.relay import MailboxSink
from kluis.server.storage.base import AccountId, MailboxItem

log = logging.getLogger("kluis.server.fanout")

PRESENCE_TTL_S = 30
"""A presence entry not refreshed for this long expires: a crashed node's connections are forgotten."""
HEARTBEAT_S = 10.0
"""How often a node refreshes the presence entries of its connections (a third of the TTL)."""
POLL_S = 2.0
"""While Redis is unreachable, every connection fetches from its mailbox this often."""
RETRY_S = 1.0
"""Pause between attempts to reach Redis again."""
PING_S = 5.0
"""A subscription silent for this long is pinged; one silent for three times this is reconnected."""
COMMAND_TIMEOUT_S = 5.0
"""A Redis command that takes longer fails (and is retried by the caller's own logic)."""
MAX_PENDING = 100_000
"""Notices kept while Redis is unreachable; beyond it they are dropped (the receiving nodes poll)."""
CHUNK = 1_000
"""Accounts per script call when a node claims or refreshes all of its connections."""

_PREFIX = "kluis:"
_SERVICE_KEY = _PREFIX + "service"
_TAG_LABEL = b"Kluis presence tag v1\x00"
_SERVICE_LABEL = b"Kluis service check v1\x00"
_HEX_TAG = 32
_HEX_ID = 32
_HEX_TOKEN = 16

# ARGV: own node, kind, then one item per account: 32 hex digits of its tag, and for kind K the
# 8-byte stock. Items go to the nodes holding the accounts' connections, one message per node.
_NOTIFY = """
local me = ARGV[1]
local kind = ARGV[2]
local groups = {}
for i = 3, #ARGV do
  local item = ARGV[i]
  local owner = redis.call('GET', 'kluis:p:' .. string.sub(item, 1, 32))
  if owner then
    local node = string.sub(owner, 1, 32)
    if node ~= me then
      local g = groups[node]
      if not g then g = {kind}; groups[node] = g end
      if kind == 'R' then item = item .. string.sub(owner, 34) end
      g[#g + 1] = item
    end
  end
end
local sent = 0
for node, parts in pairs(groups) do
  redis.call('PUBLISH', 'kluis:n:' .. node, table.concat(parts))
  sent = sent + #parts - 1
end
return sent
"""

# ARGV: ttl, then pairs (tag, value). Takes each entry; tells the node that held it to close that
# connection (a newer one of the same account has authenticated here).
_CLAIM = """
local ttl = ARGV[1]
for i = 2, #ARGV, 2 do
  local key = 'kluis:p:' .. ARGV[i]
  local old = redis.call('SET', key, ARGV[i + 1], 'EX', ttl, 'GET')
  if old and old ~= ARGV[i + 1] then
    local node = string.sub(old, 1, 32)
    if node ~= string.sub(ARGV[i + 1], 1, 32) then
      redis.call('PUBLISH', 'kluis:n:' .. node, 'R' .. ARGV[i] .. string.sub(old, 34))
    end
  end
end
return 1
"""

# ARGV: ttl, then pairs (tag, value). Renews entries still ours, takes back lost ones (a restarted
# Redis), and returns the tags another connection holds now (ours must close: we missed the notice).
_REFRESH = """
local ttl = ARGV[1]
local taken = {}
for i = 2, #ARGV, 2 do
  local key = 'kluis:p:' .. ARGV[i]
  local now = redis.call('GET', key)
  if (not now) or now == ARGV[i + 1] then
    redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
  else
    taken[#taken + 1] = ARGV[i]
  end
end
return taken
"""

# ARGV: pairs (tag, value). Removes the entries that are still ours.
_RELEASE = """
for i = 1, #ARGV, 2 do
  local key = 'kluis:p:' .. ARGV[i]
  if redis.call('GET', key) == ARGV[i + 1] then redis.call('DEL', key) end
end
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def service_digest(pass_secret: bytes, certificate: bytes) -> str:
    """What every node of one service must agree on: its send-pass secret and TLS certificate."""
    return hmac.digest(pass_secret, _SERVICE_LABEL + certificate, "sha256").hex()


class _Remote:
    """The stand-in :meth:`RedisFanOut.get` returns for an account with no connection on this node."""

    __slots__ = ("_account", "_fanout")

    def __init__(self, fanout: RedisFanOut, account: AccountId) -> None:
        self._fanout = fanout
        self._account = account

    def offer(self, items: list[MailboxItem]) -> None:
        self._fanout._queue("N", self._fanout.tag(self._account))

    def offer_early(self, items: list[MailboxItem]) -> bool:
        return False  # another node's connection fetches from the shared database once written

    def notice(self) -> None:
        self._fanout._queue("N", self._fanout.tag(self._account))

    def key_stock(self, one_time_left: int, kem_left: int) -> None:
        stock = struct.pack(">II", min(one_time_left, 2**32 - 1), min(kem_left, 2**32 - 1))
        self._fanout._queue("K", self._fanout.tag(self._account), stock)

    def replaced(self) -> None:
        self._fanout._queue("R", self._fanout.tag(self._account))


class _Local:
    __slots__ = ("account", "sink", "tag", "value")

    def __init__(self, account: AccountId, sink: MailboxSink, tag: str, value: str) -> None:
        self.account = account
        self.sink = sink
        self.tag = tag
        self.value = value


class RedisFanOut:
    """The :class:`~kluis.server.relay.FanOut` of a relay node that shares its database with others.

    Args:
        url: the Redis URL (``redis://``, ``rediss://`` or ``unix://``).
        pass_secret: the service's send-pass secret (the presence tags are keyed by it).
        service: :func:`service_digest` of this node's secret and certificate.
        metrics: where ``kluis_fanout_*`` are counted.
    """

    shared = True

    def __init__(self, url: str, *, pass_secret: bytes, service: str, metrics: Metrics) -> None:
        self._url = url
        self._tag_key = hmac.digest(pass_secret, _TAG_LABEL, "sha256")
        self._service = service
        self._metrics = metrics
        self.node = os.urandom(_HEX_ID // 2).hex()
        self._channel = f"{_PREFIX}n:{self.node}"
        self._local: dict[AccountId, _Local] = {}
        self._by_tag: dict[str, _Local] = {}
        self._pending: dict[str, list[bytes]] = {"N": [], "K": [], "R": []}
        self._pending_n: dict[bytes, None] = {}
        self._claims: dict[str, str] = {}
        self._releases: dict[str, str] = {}
        self._flush_scheduled = False
        self._sender: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._poller: asyncio.Task[None] | None = None
        self.degraded = True
        self._redis: Redis | None = None
        self._sub_redis: Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._closed = False

    # -- FanOut ---------------------------------------------------------------------------------

    def tag(self, account: AccountId) -> str:
        return hmac.digest(self._tag_key, account, "sha256")[:16].hex()

    def attach(self, account: AccountId, sink: MailboxSink) -> None:
        old = self._local.get(account)
        tag = self.tag(account)
        local = _Local(account, sink, tag, f"{self.node}:{os.urandom(_HEX_TOKEN // 2).hex()}")
        self._local[account] = local
        self._by_tag[tag] = local
        self._claims[tag] = local.value
        self._releases.pop(tag, None)
        self._schedule()
        if old is not None and old.sink is not sink:
            old.sink.replaced()

    def detach(self, account: AccountId, sink: MailboxSink) -> None:
        local = self._local.get(account)
        if local is None or local.sink is not sink:
            return
        del self._local[account]
        del self._by_tag[local.tag]
        if self._claims.get(local.tag) == local.value:
            del self._claims[local.tag]
        self._releases[local.tag] = local.value
        self._schedule()

    def get(self, account: AccountId) -> MailboxSink | None:
        local = self._local.get(account)
        if local is not None:
            return local.sink
        return _Remote(self, account)

    def __len__(self) -> int:
        return len(self._local)

    # -- life -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connects (checking that this node's secret and certificate match the service's) and
        starts listening. If Redis cannot be reached, the node starts degraded (polling) and keeps
        trying.

        Raises:
            FanOutError: Redis holds another service's digest (the nodes' files differ).
        """
        retry = Retry(NoBackoff(), 0)  # failures are handled here, not retried blindly underneath
        options: dict[str, Any] = {
            "retry": retry,
            "socket_timeout": COMMAND_TIMEOUT_S,
            "socket_connect_timeout": COMMAND_TIMEOUT_S,
        }
        self._redis = Redis.from_url(self._url, **options)
        self._sub_redis = Redis.from_url(self._url, retry=retry, socket_connect_timeout=COMMAND_TIMEOUT_S)
        for name, source in (("N", _NOTIFY), ("C", _CLAIM), ("F", _REFRESH), ("D", _RELEASE)):
            self._scripts[name] = self._redis.register_script(source)
        try:
            await self._check_service()
        except (RedisError, OSError) as exc:
            log.warning(
                "Redis unreachable at start (%s); connections poll their mailboxes", type(exc).__name__
            )
        self._set_degraded(True)
        self._tasks = [
            asyncio.create_task(self._supervise()),
            asyncio.create_task(self._heartbeat()),
        ]

    async def close(self) -> None:
        """Releases this node's presence entries (best effort) and disconnects."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._poller is not None:
            self._poller.cancel()
        for local in self._local.values():
            self._releases[local.tag] = local.value
        self._claims.clear()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                if self._sender is not None and not self._sender.done():
                    await self._sender
                await self._send_once()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in (self._redis, self._sub_redis):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _check_service(self) -> None:
        assert self._redis is not None
        await self._redis.set(_SERVICE_KEY, self._service, nx=True)
        found = await self._redis.get(_SERVICE_KEY)
        if found is not None and _text(found) != self._service:
            raise FanOutError(
                "this node's send-pass.key or TLS certificate differs from the other nodes' of this"
                " Redis: give every node the same data directory files (docs/OPERATING.md)"
            )

    def _set_degraded(self, degraded: bool) -> None:
        self.degraded = degraded
        self._metrics.fanout_degraded.set(1 if degraded else 0)
        if degraded and (self._poller is None or self._poller.done()) and not self._closed:
            self._poller = asyncio.create_task(self._poll())
        elif not degraded and self._poller is not None:
            self._poller.cancel()
            self._poller = None

    async def _poll(self) -> None:
        """While Redis is unreachable: every connection fetches from its mailbox every POLL_S."""
        while True:
            await asyncio.sleep(POLL_S)
            self._notice_all()

    def _notice_all(self) -> None:
        for local in list(self._local.values()):
            local.sink.notice()

    async def _supervise(self) -> None:
        """Keeps the subscription to this node's channel; every (re)subscription is followed by a
        claim of all connections and a fetch by each, which covers notices lost meanwhile."""
        assert self._sub_redis is not None
        while True:
            pubsub = self._sub_redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                with contextlib.suppress(FanOutError):  # logged; this node keeps working
                    await self._check_service_logged()
                await self._refresh(list(self._local.values()))
                if self.degraded:
                    log.info("Redis reachable: fan-out between relay nodes resumed")
                self._set_degraded(False)
                self._notice_all()
                self._schedule()  # notices kept while Redis was unreachable
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                if not self.degraded:
                    log.warning(
                        "Redis unreachable (%s): connections poll their mailboxes every %.0f s",
                        type(exc).__name__,
                        POLL_S,
                    )
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            self._set_degraded(True)
            await asyncio.sleep(RETRY_S)

    async def _check_service_logged(self) -> None:
        try:
            await self._check_service()
        except FanOutError as exc:
            log.error("%s", exc)
            raise

    async def _listen(self, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            message = await pubsub.get_message(timeout=PING_S)
            now = loop.time()
            if message is None:
                if now - last > 3 * PING_S:
                    raise TimeoutError("subscription silent")
                await pubsub.ping()
                continue
            last = now
            if message.get("type") == "message":
                self._receive(message["data"])

    def _receive(self, data: bytes) -> None:
        if not data:
            return
        kind, body = data[:1], data[1:]
        if kind == b"N":
            size = _HEX_TAG
        elif kind == b"K":
            size = _HEX_TAG + 8
        elif kind == b"R":
            size = _HEX_TAG + _HEX_TOKEN
        else:
            return
        self._metrics.fanout_notices("received", len(body) // size)
        for i in range(0, len(body) - size + 1, size):
            item = body[i : i + size]
            local = self._by_tag.get(item[:_HEX_TAG].decode("ascii", "replace"))
            if local is None:
                continue
            if kind == b"N":
                local.sink.notice()
            elif kind == b"K":
                one_time, kem = struct.unpack(">II", item[_HEX_TAG:])
                local.sink.key_stock(one_time, kem)
            elif local.value.endswith(":" + item[_HEX_TAG:].decode("ascii", "replace")):
                local.sink.replaced()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if not self.degraded:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await self._refresh(list(self._local.values()))

    async def _refresh(self, locals_: list[_Local]) -> None:
        """Claims (again) every entry in ``locals_``; closes the connections another node took."""
        script = self._scripts["F"]
        for start in range(0, len(locals_), CHUNK):
            chunk = locals_[start : start + CHUNK]
            args: list[str | int] = [PRESENCE_TTL_S]
            for local in chunk:
                args += [local.tag, local.value]
            taken = await script(args=args)
            for tag in taken:
                mine = self._by_tag.get(_text(tag))
                if mine is not None:
                    mine.sink.replaced()

    # -- sending --------------------------------------------------------------------------------

    def _queue(self, kind: str, tag: str, extra: bytes = b"") -> None:
        if kind == "N":
            pending_n = self._pending_n
            if len(pending_n) < MAX_PENDING:
                pending_n[tag.encode()] = None
        else:
            pending = self._pending[kind]
            if len(pending) < MAX_PENDING:
                pending.append(tag.encode() + extra)
        self._schedule()

    def _schedule(self) -> None:
        """Everything queued during one event-loop pass goes out together, in one script call each."""
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())

    def _has_work(self) -> bool:
        return bool(
            self._pending_n or self._pending["K"] or self._pending["R"] or self._claims or self._releases
        )

    async def _send(self) -> None:
        while self._has_work() and self._redis is not None:
            try:
                await self._send_once()
            except (RedisError, OSError, TimeoutError):
                # Everything is kept and sent once Redis answers (meanwhile the receivers poll; a
                # new subscription claims every connection anyway).
                await asyncio.sleep(RETRY_S)
                if self.degraded:
                    return  # the subscription's comeback calls _schedule

    async def _send_once(self) -> None:
        """Claims, releases, then notices: each kind in one script call (kept if the call fails)."""
        if self._claims:
            await self._send_claims()
        if self._releases:
            releases, self._releases = self._releases, {}
            try:
                await self._scripts["D"](args=[x for pair in releases.items() for x in pair])
            except BaseException:
                # Kept; a release only removes an entry that still holds its own value.
                self._releases = {**releases, **self._releases}
                raise
        if self._pending_n:
            # Taken out before the call: a notice queued while it runs goes in the next call.
            pending, self._pending_n = self._pending_n, {}
            try:
                await self._scripts["N"](args=[self.node, "N", *pending])
            except BaseException:
                pending.update(self._pending_n)  # not sent: kept for the next attempt
                self._pending_n = pending
                raise
            self._metrics.fanout_notices("sent", len(pending))
        for kind in ("K", "R"):
            if self._pending[kind]:
                items = self._pending[kind]
                self._pending[kind] = []
                try:
                    await self._scripts["N"](args=[self.node, kind, *items])
                except BaseException:
                    self._pending[kind] = items + self._pending[kind]
                    raise
                self._metrics.fanout_notices("sent", len(items))

    async def _send_claims(self) -> None:
        claims, self._claims = self._claims, {}
        try:
            await self._scripts["C"](args=[PRESENCE_TTL_S, *(x for pair in claims.items() for x in pair)])
        except BaseException:
            self._claims = {**claims, **self._claims}  # a newer claim of a tag wins
            raise
        # Envelopes stored elsewhere between the connection's first fetch and this claim were
        # announced to no one (or to the node it replaced): fetch once more.
        for tag, value in claims.items():
            local = self._by_tag.get(tag)
            if local is not None and local.value == value:
                local.sink.notice()


__all__ = ["FanOutError", "RedisFanOut", "service_digest"]
