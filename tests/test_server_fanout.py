"""Fan-out between relay nodes through Redis (kluis.server.fanout): two in-process nodes on one
PostgreSQL database and one Redis, both started by the tests (tests/pg_support.py,
tests/redis_support.py).

Delivery across nodes at once, a second connection on another node closing the first, KEY_STOCK across
nodes, sequence numbers another node reuses, presence entries that expire, and Redis going away
(connections poll their mailboxes, nothing is lost) and coming back.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from kluis.client.transport import RelayClientError
from kluis.relay import frames as f
from kluis.server import fanout as fanout_module
from kluis.server.cluster import NodeError, start_nodes, stop_nodes
from kluis.server.fanout import PRESENCE_TTL_S, RedisFanOut, service_digest
from kluis.server.metrics import Metrics
from kluis.server.relay import Relay
from kluis.server.storage.base import AccountId, MailboxItem
from tests.cluster_support import (
    connect,
    database_codes,
    deliveries,
    envelope_to,
    fanout_degraded,
    metric,
    running_nodes,
    sender_on,
    wait_fanout_ready,
)
from tests.redis_support import RedisServer
from tests.server_support import new_user


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_envelope_accepted_by_one_node_reaches_a_recipient_on_another_at_once(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        codes = await database_codes(postgres_url, 2)
        async with running_nodes(tmp_path, postgres_url, redis_server.url) as (a, b):
            alice, bob = await new_user(a, codes[0]), await new_user(b, codes[1])
            await connect(alice, a)
            mailbox = await connect(bob, b)
            await mailbox.expect(f.Drained)
            sender = await sender_on(alice, a)
            latencies = []
            for n in range(5):
                started = time.perf_counter()
                envelope = envelope_to(bob, n)
                assert await sender.send_envelopes([envelope]) == {envelope.envelope_id: f.SendStatus.OK}
                (got,) = await deliveries(mailbox, 1)
                latencies.append(time.perf_counter() - started)
                assert got.envelope_id == envelope.envelope_id
            # Pushed, not found by a poll (which runs only while Redis is unreachable, every 2 s).
            assert max(latencies) < fanout_module.POLL_S / 2, latencies
            assert await metric(b, 'kluis_fanout_notices_total{direction="received"}') >= 5
            assert await metric(a, 'kluis_fanout_notices_total{direction="sent"}') >= 5
            await redis_holds_nothing_identifying(redis_server, [alice.account, bob.account, bob.token])

    run(scenario())


async def redis_holds_nothing_identifying(server: RedisServer, secrets: list[bytes]) -> None:
    """Redis holds presence entries (keyed hashes -> random ids) and the service check, nothing else."""
    client = Redis.from_url(server.url)
    try:
        dump = b""
        async for key in client.scan_iter():
            assert key.startswith(b"kluis:p:") or key == b"kluis:service", key
            value = await client.get(key)
            assert isinstance(value, bytes)
            if key.startswith(b"kluis:p:"):
                assert 0 < await client.ttl(key) <= PRESENCE_TTL_S
            dump += key + value
        assert dump.count(b"kluis:p:") == 2  # the two connected accounts
        for secret in secrets:
            assert secret not in dump
            assert secret.hex().encode() not in dump
    finally:
        await client.aclose()


def test_a_node_whose_files_differ_from_the_service_refuses_to_start(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> None:
    first = start_nodes(1, data_dir=tmp_path / "one", database=postgres_url, redis=redis_server.url)
    try:
        with pytest.raises(NodeError, match=r"send-pass\.key or TLS certificate differs"):
            start_nodes(1, data_dir=tmp_path / "other", database=postgres_url, redis=redis_server.url)
    finally:
        stop_nodes(first)


def test_second_connection_on_another_node_closes_the_first_and_key_stock_follows(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        codes = await database_codes(postgres_url, 2)
        async with running_nodes(tmp_path, postgres_url, redis_server.url) as (a, b):
            alice, bob = await new_user(a, codes[0]), await new_user(a, codes[1])
            first = await connect(bob, a)
            await bob.upload()  # 5 one-time keys: below the watermark (10) after one bundle
            second = await connect(bob, b)
            with pytest.raises(RelayClientError) as closed:
                await first.expect(f.Deliver, timeout=5)
            assert closed.value.code == "auth_failed"
            # A bundle fetched from node A: Bob, now on node B, is told his stock is low.
            await a.http.bundle(bob.account, bob.token)
            stock = await second.expect(f.KeyStock, timeout=5)
            assert (stock.one_time_left, stock.kem_left) == (4, 4)
            # And envelopes still reach the second connection.
            await connect(alice, a)
            envelope = envelope_to(bob, 1)
            await (await sender_on(alice, a)).send_envelopes([envelope])
            (got,) = await deliveries(second, 1)
            assert got.envelope_id == envelope.envelope_id

    run(scenario())


def test_no_envelope_is_skipped_when_nodes_number_a_mailbox_in_turn(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> None:
    """Each node numbers above the highest seq stored and the highest it handed out itself; once the
    mailbox is emptied, node A may number a new envelope below seqs node B handed out. The recipient
    must get every envelope, with seqs that still increase on its connection."""

    async def scenario() -> None:
        codes = await database_codes(postgres_url, 2)
        async with running_nodes(tmp_path, postgres_url, redis_server.url) as (a, b):
            alice, bob = await new_user(a, codes[0]), await new_user(b, codes[1])
            await connect(alice, a)
            senders = [await sender_on(alice, a), await sender_on(alice, b)]
            mailbox = await connect(bob, b)
            await mailbox.expect(f.Drained)
            seen: list[int] = []
            for n, node in enumerate([0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 0] * 3):
                envelope = envelope_to(bob, n)
                await senders[node].send_envelopes([envelope])
                (got,) = await deliveries(mailbox, 1)
                assert got.envelope_id == envelope.envelope_id
                seen.append(got.seq)
                await asyncio.sleep(0.02)  # the receipt's delete commits: the mailbox is empty again
            assert seen == sorted(seen)
            assert len(set(seen)) == len(seen)
            # Nothing left behind for a later connection either.
            await mailbox.close()
            again = await connect(bob, a)
            assert isinstance(await again.receive(), f.Drained)

    run(scenario())


def test_an_envelope_numbered_below_the_cursor_while_a_receipt_commits_is_still_delivered(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by ``kluis bench skyecc --nodes 2`` (acknowledged envelopes left stored, never pushed).
    Node B's connection has sent seq 4 and its receipt's delete has committed, but the connection
    has not yet learnt so (its cursor is still 4). Node A, whose counter is behind, numbers a new
    envelope 1 (the mailbox is empty) and tells B, whose fetch asks for seqs above 4 and finds
    nothing. Once the delete is known the cursor drops to 0: the connection must fetch again."""
    gate: list[asyncio.Event] = []
    real_receipt = Relay.receipt

    async def receipt(self: Relay, *args: Any, **kwargs: Any) -> int:
        deleted = await real_receipt(self, *args, **kwargs)
        if gate:
            await gate[0].wait()  # committed, not yet known to the connection
        return deleted

    monkeypatch.setattr(Relay, "receipt", receipt)

    async def scenario() -> None:
        codes = await database_codes(postgres_url, 2)
        async with running_nodes(tmp_path, postgres_url, redis_server.url) as (a, b):
            alice, bob = await new_user(a, codes[0]), await new_user(b, codes[1])
            await connect(alice, a)
            on_a, on_b = await sender_on(alice, a), await sender_on(alice, b)
            mailbox = await connect(bob, b)
            await mailbox.expect(f.Drained)
            for n in range(3):  # node B's counter moves ahead; each is deleted at once
                await on_b.send_envelopes([envelope_to(bob, n)])
                await deliveries(mailbox, 1)
            await asyncio.sleep(0.1)
            gate.append(asyncio.Event())
            await on_b.send_envelopes([envelope_to(bob, 3)])
            await deliveries(mailbox, 1)  # its receipt's delete commits, then waits at the gate
            await asyncio.sleep(0.1)
            notices = await metric(b, 'kluis_fanout_notices_total{direction="received"}')
            late = envelope_to(bob, 4)
            assert await on_a.send_envelopes([late]) == {late.envelope_id: f.SendStatus.OK}
            async with asyncio.timeout(5):  # B heard of it and fetched above its stale cursor
                while await metric(b, 'kluis_fanout_notices_total{direction="received"}') == notices:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            gate[0].set()
            # Well within the 2 s poll interval, which does not run anyway while Redis is up.
            (got,) = await deliveries(mailbox, 1, timeout=fanout_module.POLL_S / 2)
            assert got.envelope_id == late.envelope_id

    run(scenario())


def test_presence_entries_expire_when_a_node_stops_refreshing_them(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Sink:
        def offer(self, items: list[MailboxItem]) -> None: ...
        def offer_early(self, items: list[MailboxItem]) -> bool:
            return False

        def key_stock(self, one_time_left: int, kem_left: int) -> None: ...
        def replaced(self) -> None: ...
        def notice(self) -> None: ...

    async def scenario() -> None:
        monkeypatch.setattr(fanout_module, "PRESENCE_TTL_S", 1)
        secret = os.urandom(32)
        node = RedisFanOut(
            redis_server.url, pass_secret=secret, service=service_digest(secret, b""), metrics=Metrics()
        )
        await node.start()
        account = AccountId(os.urandom(16))
        node.attach(account, Sink())
        client = Redis.from_url(redis_server.url)
        key = f"kluis:p:{node.tag(account)}"
        try:
            async with asyncio.timeout(5):
                while not await client.exists(key):
                    await asyncio.sleep(0.02)
            raw = await client.get(key)
            assert isinstance(raw, bytes)
            value = raw.decode()
            assert value.startswith(node.node + ":")
            # Nothing in Redis names the account: the key is a keyed hash, the value random ids.
            assert account.hex() not in key + value
            assert 0 < await client.ttl(key) <= 1
            # A crash: the node's tasks stop without releasing anything.
            for task in node._tasks:
                task.cancel()
            await asyncio.sleep(1.6)
            assert not await client.exists(key)
        finally:
            node._closed = True
            await client.aclose()

    run(scenario())
    assert PRESENCE_TTL_S == 30  # the module's value, restored


def test_redis_restart_degrades_to_polling_without_loss(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        codes = await database_codes(postgres_url, 2)
        async with running_nodes(tmp_path, postgres_url, redis_server.url) as (a, b):
            alice, bob = await new_user(a, codes[0]), await new_user(b, codes[1])
            await connect(alice, a)
            sender = await sender_on(alice, a)
            mailbox = await connect(bob, b)
            await mailbox.expect(f.Drained)

            redis_server.kill()
            async with asyncio.timeout(5):
                while not (await fanout_degraded(a) and await fanout_degraded(b)):
                    await asyncio.sleep(0.05)
            sent = [envelope_to(bob, n) for n in range(20)]
            statuses = await sender.send_envelopes(sent)
            assert set(statuses.values()) == {f.SendStatus.OK}
            got = await deliveries(mailbox, 20, timeout=fanout_module.POLL_S * 3)
            assert {d.envelope_id for d in got} == {e.envelope_id for e in sent}

            redis_server.restart()  # empty: the nodes claim their connections again
            await wait_fanout_ready([a, b])
            started = time.perf_counter()
            envelope = envelope_to(bob, 99)
            await sender.send_envelopes([envelope])
            (last,) = await deliveries(mailbox, 1)
            assert last.envelope_id == envelope.envelope_id
            assert time.perf_counter() - started < fanout_module.POLL_S / 2  # pushed again

    run(scenario())
