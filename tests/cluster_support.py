"""Several relay nodes on one PostgreSQL database and one Redis, for the fan-out tests: in-process
nodes (``serve()``, like tests/server_support.py) and clients that pick the node they talk to."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from kluis.client.transport import MailboxStream, SendStream
from kluis.relay import frames as f
from kluis.server.codes import hash_code, new_code
from kluis.server.storage import open_storage
from tests.server_support import Endpoint, Server, User, running_server


async def database_codes(database: str, count: int, days: int = 30) -> list[str]:
    """Activation codes stored in the service's database (what ``kluis admin --database`` does)."""
    codes = [new_code() for _ in range(count)]
    storage = await open_storage(database, fsync=False)
    try:
        await storage.codes.add_codes([hash_code(c) for c in codes], days)
    finally:
        await storage.close()
    return codes


@asynccontextmanager
async def running_nodes(
    data_dir: Path, database: str, redis: str, count: int = 2, **settings: object
) -> AsyncIterator[list[Server]]:
    """``count`` in-process nodes sharing one data directory (send-pass secret), database and Redis."""
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                running_server(data_dir, database=database, redis=redis, **settings)
            )
            for _ in range(count)
        ]
        await wait_fanout_ready(nodes)
        yield nodes


async def wait_fanout_ready(nodes: list[Server], timeout: float = 10.0) -> None:
    """Until every node is subscribed to Redis (``kluis_fanout_degraded`` 0)."""
    async with asyncio.timeout(timeout):
        while True:
            degraded = [await fanout_degraded(n) for n in nodes]
            if not any(degraded):
                return
            await asyncio.sleep(0.05)


async def metric(node: Endpoint, name: str) -> float:
    """One sample of a node's /metrics, by its full name with labels, e.g. ``kluis_x_total{a="b"}``."""
    async with node.session.get(node.url.replace("ws://", "http://") + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def fanout_degraded(node: Endpoint) -> bool:
    return await metric(node, "kluis_fanout_degraded") == 1.0


async def connect(user: User, node: Endpoint) -> MailboxStream:
    """The user's mailbox stream on ``node`` (whichever node registered the account)."""
    user.mailbox = await MailboxStream.connect(node.session, node.url, user.identity, user.account, False)
    return user.mailbox


async def sender_on(user: User, node: Endpoint) -> SendStream:
    """A sending stream on ``node`` with a send pass the user fetched on its own mailbox stream."""
    assert user.mailbox is not None
    send_pass = await user.mailbox.send_pass()
    return await SendStream.connect(node.session, node.url, send_pass, False)


def envelope_to(user: User, n: int) -> f.OutgoingEnvelope:
    return f.OutgoingEnvelope(os.urandom(16), user.account, user.token, b"envelope %d" % n)


async def deliveries(mailbox: MailboxStream, count: int, timeout: float = 10.0) -> list[f.Delivery]:
    """The next ``count`` deliveries, each receipted as it comes (other frames are skipped)."""
    got: list[f.Delivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            frame = await mailbox.receive(timeout=None)
            if isinstance(frame, f.Deliver):
                got += frame.deliveries
                await mailbox.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))
    return got
