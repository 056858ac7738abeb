"""Two relay nodes (``kluis server`` child processes with TLS, kluis.server.cluster) on one PostgreSQL
database and one Redis, behind HAProxy run with the example configuration of docs/OPERATING.md
(tests/haproxy_support.py): what OPERATING.md "Several nodes" promises, on loopback.

- clients through the balancer land on both nodes, pin the nodes' one fingerprint and exchange
  messages;
- a node killed with SIGKILL under load loses no acknowledged envelope; its clients reconnect through
  the balancer (to the other node) and drain;
- PostgreSQL stopped: sends are answered UNAVAILABLE (nothing acknowledged); started again on the same
  port: the nodes recover by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from kluis.client.transport import MailboxStream, RelayClientError, RelayHttp, SendStream
from kluis.relay import frames as f
from kluis.server.cluster import NodeProcess, start_nodes, stop_nodes
from kluis.server.tls import client_ssl, parse_fingerprint
from tests.cluster_support import database_codes, envelope_to
from tests.haproxy_support import HAProxy
from tests.pg_support import PostgresCluster
from tests.redis_support import RedisServer
from tests.server_support import User, new_user

NETWORK_ERRORS = (RelayClientError, aiohttp.ClientError, ConnectionError, TimeoutError, OSError)


@dataclass
class Cluster:
    nodes: list[NodeProcess]
    balancer: HAProxy
    pin: bytes


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, redis_server: RedisServer) -> Iterator[Cluster]:
    nodes = start_nodes(
        2,
        data_dir=tmp_path / "data",
        database=postgres_url,
        redis=redis_server.url,
        tls=True,
        env={"KLUIS_SERVER_LOG_LEVEL": "WARNING"},
    )
    balancer = HAProxy(tmp_path, [n.port for n in nodes])
    try:
        balancer.start()
        fingerprints = {n.fingerprint for n in nodes}
        assert len(fingerprints) == 1
        assert None not in fingerprints
        yield Cluster(nodes, balancer, parse_fingerprint(fingerprints.pop() or ""))
    finally:
        balancer.stop()
        stop_nodes(nodes)
        for i, n in enumerate(nodes):  # shown when a test fails
            print(f"--- node {i}", *n.lines[-30:], sep="\n")


@dataclass
class Via:
    """A TLS endpoint with the pinned certificate (the balancer, or one node directly)."""

    url: str
    session: aiohttp.ClientSession
    pin: bytes

    @property
    def http(self) -> RelayHttp:
        return RelayHttp(self.session, self.url, client_ssl(self.pin))

    async def mailbox(self, user: User) -> MailboxStream:
        return await MailboxStream.connect(
            self.session, self.url, user.identity, user.account, client_ssl(self.pin)
        )

    async def sender(self, send_pass: f.SendPass) -> SendStream:
        return await SendStream.connect(self.session, self.url, send_pass, client_ssl(self.pin))

    async def metric(self, name: str) -> float:
        async with self.session.get(
            self.url.replace("wss://", "https://") + "/metrics", ssl=client_ssl(self.pin)
        ) as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0


AUTHENTICATED = 'kluis_connections{kind="authenticated"}'
DELIVERED = 'kluis_envelopes_total{event="delivered"}'


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_clients_through_haproxy_land_on_both_nodes_and_exchange_messages(
    cluster: Cluster, postgres_url: str
) -> None:
    async def scenario() -> None:
        codes = await database_codes(postgres_url, 2)
        async with aiohttp.ClientSession() as session:
            lb = Via(cluster.balancer.url, session, cluster.pin)
            direct = [Via(n.url, session, cluster.pin) for n in cluster.nodes]
            alice, bob = await new_user(lb, codes[0]), await new_user(lb, codes[1])
            boxes = {}
            for user in (alice, bob):
                boxes[user.account] = box = await lb.mailbox(user)
                await box.expect(f.Drained)
            # leastconn: the second long-lived connection goes to the node without one.
            assert [await d.metric(AUTHENTICATED) for d in direct] == [1.0, 1.0]
            for sender, recipient in ((alice, bob), (bob, alice), (alice, bob)):
                stream = await lb.sender(await boxes[sender.account].send_pass())
                envelope = envelope_to(recipient, 1)
                assert await stream.send_envelopes([envelope]) == {envelope.envelope_id: f.SendStatus.OK}
                await stream.close()
                (got,) = (await boxes[recipient.account].expect(f.Deliver, timeout=5)).deliveries
                assert got.envelope_id == envelope.envelope_id
                await boxes[recipient.account].send(f.Receipt((got.seq,)))
            # Both nodes delivered: each holds one of the two mailboxes.
            assert [await d.metric(DELIVERED) >= 1 for d in direct] == [True, True]

    run(scenario())


class Load:
    """Users in a ring, each sending to the next through the balancer and receiving from the one before;
    every stream reconnects (through the balancer) when its node goes away."""

    def __init__(self, lb: Via, users: list[User]) -> None:
        self.lb = lb
        self.users = users
        self.acknowledged: set[bytes] = set()
        self.delivered: set[bytes] = set()
        self.reconnects = 0
        self.sending = True

    async def receive(self, user: User, box: MailboxStream) -> None:
        while True:
            try:
                while True:
                    frame = await box.receive(timeout=None)
                    if isinstance(frame, f.Deliver):
                        self.delivered.update(d.envelope_id for d in frame.deliveries)
                        await box.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))
            except NETWORK_ERRORS:
                self.reconnects += 1
            while True:
                await asyncio.sleep(0.1)
                with contextlib.suppress(*NETWORK_ERRORS):
                    box = await self.lb.mailbox(user)
                    break

    async def send(self, send_pass: f.SendPass, recipient: User) -> None:
        stream: SendStream | None = None
        n = 0
        while self.sending:
            batch = [envelope_to(recipient, n + i) for i in range(8)]
            n += 8
            while True:  # until the whole batch is acknowledged (a resend is stored once)
                try:
                    if stream is None:
                        stream = await self.lb.sender(send_pass)
                    statuses = await asyncio.wait_for(stream.send_envelopes(batch), 10)
                except NETWORK_ERRORS:
                    self.reconnects += 1
                    stream = None
                    await asyncio.sleep(0.1)
                    continue
                self.acknowledged.update(i for i, s in statuses.items() if s is f.SendStatus.OK)
                batch = [e for e in batch if statuses[e.envelope_id] is not f.SendStatus.OK]
                if not batch:
                    break
                await asyncio.sleep(0.1)
        if stream is not None:
            await stream.close()


def test_a_node_killed_under_load_loses_no_acknowledged_envelope(cluster: Cluster, postgres_url: str) -> None:
    async def scenario() -> None:
        codes = await database_codes(postgres_url, 4)
        async with aiohttp.ClientSession() as session:
            lb = Via(cluster.balancer.url, session, cluster.pin)
            users = [await new_user(lb, code) for code in codes]
            boxes, passes = [], []
            for user in users:
                box = await lb.mailbox(user)
                passes.append(await box.send_pass())
                boxes.append(box)
            load = Load(lb, users)
            tasks = [asyncio.create_task(load.receive(u, b)) for u, b in zip(users, boxes, strict=True)]
            tasks += [
                asyncio.create_task(load.send(passes[i], users[(i + 1) % len(users)]))
                for i in range(len(users))
            ]
            await asyncio.sleep(1.5)
            before = len(load.acknowledged)
            assert before > 0
            cluster.nodes[0].kill()  # SIGKILL, under load
            await asyncio.sleep(2.5)
            load.sending = False
            await asyncio.gather(*tasks[len(users) :])  # every batch in flight finished
            assert len(load.acknowledged) > before  # sending went on through the surviving node
            async with asyncio.timeout(20):
                while not load.acknowledged <= load.delivered:
                    await asyncio.sleep(0.1)
            assert load.reconnects > 0
            # Every mailbox is now on the surviving node (its clients came back through the balancer).
            survivor = Via(cluster.nodes[1].url, session, cluster.pin)
            assert await survivor.metric(AUTHENTICATED) == len(users)
            acked = len(load.acknowledged)
            print(f"acknowledged {acked} ({before} before the kill), reconnects {load.reconnects}")
            for task in tasks[: len(users)]:
                task.cancel()
            await asyncio.gather(*tasks[: len(users)], return_exceptions=True)
            for box in boxes:
                with contextlib.suppress(Exception):
                    await box.close()

    run(scenario())


def _stop_postgres(pg: PostgresCluster) -> None:
    done = pg.stop_server()
    assert done.returncode == 0, done.stderr


def _start_postgres(pg: PostgresCluster) -> None:
    """Starts it again on the same port, with its settings."""
    done = pg.start_server()
    assert done.returncode == 0, done.stderr


def test_postgres_down_makes_sends_fail_cleanly_and_the_service_recovers_by_itself(
    cluster: Cluster, postgres_url: str, postgres_cluster: PostgresCluster
) -> None:
    async def scenario() -> None:
        codes = await database_codes(postgres_url, 2)
        async with aiohttp.ClientSession() as session:
            lb = Via(cluster.balancer.url, session, cluster.pin)
            alice, bob = await new_user(lb, codes[0]), await new_user(lb, codes[1])
            alice_box, bob_box = await lb.mailbox(alice), await lb.mailbox(bob)
            stream = await lb.sender(await alice_box.send_pass())
            await bob_box.expect(f.Drained)
            acknowledged: set[bytes] = set()
            envelope = envelope_to(bob, 0)
            assert await stream.send_envelopes([envelope]) == {envelope.envelope_id: f.SendStatus.OK}
            acknowledged.add(envelope.envelope_id)

            await asyncio.to_thread(_stop_postgres, postgres_cluster)
            try:
                refused = envelope_to(bob, 1)
                started = time.monotonic()
                statuses = await asyncio.wait_for(stream.send_envelopes([refused]), 20)
                assert statuses == {refused.envelope_id: f.SendStatus.UNAVAILABLE}  # not acknowledged
                assert time.monotonic() - started < 10
            finally:
                await asyncio.to_thread(_start_postgres, postgres_cluster)

            # No node restarted: the same streams work again once PostgreSQL answers.
            n = 2
            async with asyncio.timeout(30):
                while True:
                    envelope = envelope_to(bob, n)
                    n += 1
                    statuses = await stream.send_envelopes([envelope])
                    if statuses[envelope.envelope_id] is f.SendStatus.OK:
                        acknowledged.add(envelope.envelope_id)
                        break
                    await asyncio.sleep(0.2)
            # Bob gets every acknowledged envelope (the first, and the one after the outage).
            delivered: set[bytes] = set()
            async with asyncio.timeout(20):
                while not acknowledged <= delivered:
                    try:
                        frame = await bob_box.receive(timeout=None)
                    except NETWORK_ERRORS:  # his connection may have failed with the database
                        bob_box = await lb.mailbox(bob)
                        continue
                    if isinstance(frame, f.Deliver):
                        delivered.update(d.envelope_id for d in frame.deliveries)
                        await bob_box.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))
            await stream.close()

    run(scenario())
