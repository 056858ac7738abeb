"""Durability under SIGKILL, on the real server process (DESIGN.md "Delivery semantics").

Several anonymous senders send continuously to several offline recipients, each envelope with a
unique id. The server is killed with SIGKILL at a random moment three times and restarted on the same
data directory; senders reconnect and resend everything not yet acknowledged with OK (same ids). At
the end the recipients drain their mailboxes. Proven:

- no acknowledged envelope is lost: every id whose SEND_RESULT was OK is delivered;
- resends are de-duplicated: no id is delivered twice, and every id ever sent is delivered once
  (each was resent until acknowledged);
- receipts are durable: after the drain (and a clean stop) the mailbox table is empty, and a new
  connection gets nothing but DRAINED.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from kluis.client.transport import MailboxStream, RelayClientError, SendStream
from kluis.relay import frames as f
from tests.server_process import ServerProcess, admin_codes
from tests.server_support import Remote, User, new_user

SENDERS = 3
RECIPIENTS = 3
KILLS = 3
BATCH = 16
IO_TIMEOUT_S = 5.0
FINAL_ROUNDS = 20


@dataclass
class Sender:
    number: int
    send_pass: f.SendPass
    unacked: dict[bytes, f.OutgoingEnvelope] = field(default_factory=dict)
    """Sent (maybe more than once) but never acknowledged with OK; resent after each restart."""
    acked: set[bytes] = field(default_factory=set)
    sent: dict[bytes, f.OutgoingEnvelope] = field(default_factory=dict)
    made: int = 0


def new_envelopes(sender: Sender, recipients: list[User], rng: random.Random, n: int) -> None:
    for _ in range(n):
        sender.made += 1
        to = rng.choice(recipients)
        envelope_id = os.urandom(16)
        body = b"sender %d envelope %d " % (sender.number, sender.made) + os.urandom(rng.randint(16, 600))
        envelope = f.OutgoingEnvelope(envelope_id, to.account, to.token, body)
        sender.unacked[envelope_id] = sender.sent[envelope_id] = envelope


async def send_round(stream: SendStream, sender: Sender, envelopes: list[f.OutgoingEnvelope]) -> None:
    """One frame, waiting for its results; OK moves an id from unacked to acked."""
    statuses = await asyncio.wait_for(stream.send_envelopes(envelopes), IO_TIMEOUT_S)
    for envelope_id, status in statuses.items():
        if status is f.SendStatus.OK:
            sender.acked.add(envelope_id)
            sender.unacked.pop(envelope_id, None)
        else:  # only storage trouble, or the per-connection rate limit, may refuse (resent later)
            assert status in {f.SendStatus.UNAVAILABLE, f.SendStatus.RATE_LIMITED}, status


async def sender_loop(
    url: str,
    session: aiohttp.ClientSession,
    sender: Sender,
    recipients: list[User],
    rng: random.Random,
    *,
    load: bool,
) -> None:
    """Resends what is unacknowledged; with ``load``, keeps making new envelopes until the
    connection dies (the server was killed). Without it, returns once nothing is left."""
    try:
        stream = await asyncio.wait_for(
            SendStream.connect(session, url, sender.send_pass, False), IO_TIMEOUT_S
        )
    except (RelayClientError, aiohttp.ClientError, OSError, TimeoutError):
        return
    try:
        for _ in range(10_000):
            if load and len(sender.unacked) < BATCH:
                new_envelopes(sender, recipients, rng, BATCH)
            if not sender.unacked:
                return
            await send_round(stream, sender, list(sender.unacked.values())[: f.MAX_BATCH])
    except (RelayClientError, aiohttp.ClientError, OSError, TimeoutError):
        return  # killed mid-frame: whatever was not acknowledged stays unacked
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stream.close(), 1)


async def drain(url: str, session: aiohttp.ClientSession, user: User) -> Counter[bytes]:
    mailbox = await MailboxStream.connect(session, url, user.identity, user.account, False)
    received: Counter[bytes] = Counter()
    try:
        for _ in range(100_000):
            frame = await mailbox.receive(timeout=IO_TIMEOUT_S)
            if isinstance(frame, f.Deliver):
                received.update(d.envelope_id for d in frame.deliveries)
                await mailbox.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))
            elif isinstance(frame, f.Drained):
                return received
        raise AssertionError("no DRAINED")
    finally:
        await mailbox.close()


async def device_loop(url: str, session: aiohttp.ClientSession, user: User, store: Counter[bytes]) -> None:
    """A connected recipient's device: stores what is delivered (``store``, its durable store, which
    keeps each envelope id once as the client does) and only then receipts; reconnects whenever the
    server goes away. Runs until cancelled."""
    while True:
        try:
            mailbox = await asyncio.wait_for(
                MailboxStream.connect(session, url, user.identity, user.account, False), IO_TIMEOUT_S
            )
        except (RelayClientError, aiohttp.ClientError, OSError, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        try:
            while True:
                frame = await mailbox.receive(timeout=None)
                if isinstance(frame, f.Deliver):
                    store.update(d.envelope_id for d in frame.deliveries)
                    await mailbox.send(f.Receipt(tuple(d.seq for d in frame.deliveries)))
        except (RelayClientError, aiohttp.ClientError, OSError):
            continue
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(mailbox.close(), 1)


async def senders_and_recipients(
    server: ServerProcess, session: aiohttp.ClientSession, codes: list[str]
) -> tuple[list[Sender], list[User]]:
    """Registers the users; the first SENDERS fetch the day's pass (it outlives restarts: its secret
    is in the data directory), the others are the recipients."""
    remote = Remote(server.url, session)
    users = [await new_user(remote, code) for code in codes]
    senders = []
    for number, user in enumerate(users[:SENDERS]):
        mailbox = await user.connect()
        senders.append(Sender(number, await mailbox.send_pass()))
        await mailbox.close()
    return senders, users[SENDERS:]


async def kill_under_load(
    server: ServerProcess,
    session: aiohttp.ClientSession,
    senders: list[Sender],
    recipients: list[User],
    rng: random.Random,
    kills_at: list[float],
) -> None:
    """KILLS times: senders send until the server is SIGKILLed at a random moment, then it restarts.
    Then everything not acknowledged is resent until it is."""
    for _ in range(KILLS):
        loops = [
            asyncio.create_task(sender_loop(server.url, session, s, recipients, rng, load=True))
            for s in senders
        ]
        delay = rng.uniform(0.3, 1.5)
        kills_at.append(round(delay, 2))
        await asyncio.sleep(delay)
        server.kill()
        await asyncio.wait_for(asyncio.gather(*loops), 2 * IO_TIMEOUT_S)
        server.start()
    for _ in range(FINAL_ROUNDS):
        if not any(s.unacked for s in senders):
            break
        await asyncio.gather(
            *(sender_loop(server.url, session, s, recipients, rng, load=False) for s in senders)
        )
    assert not any(s.unacked for s in senders)


def scene(tmp_path: Path) -> tuple[int, random.Random, Path, list[str], ServerProcess]:
    """A random seed (printed on failure) and its generator, the data directory with codes for
    every user, and the server process on it (not started)."""
    seed = int.from_bytes(os.urandom(4), "big")
    data_dir = tmp_path / "data"
    codes = admin_codes(data_dir, SENDERS + RECIPIENTS)
    return seed, random.Random(seed), data_dir, codes, ServerProcess(data_dir)


def acknowledged(senders: list[Sender], stopped: int, context: str) -> set[bytes]:
    """Every envelope id acknowledged OK, once the server stopped cleanly and real load went through."""
    assert stopped == 0, context
    acked: set[bytes] = set().union(*(s.acked for s in senders))
    assert sum(s.made for s in senders) == len(acked), context  # every id made was acknowledged once
    assert len(acked) > 3 * BATCH, context
    return acked


def assert_all_acknowledged_reached_their_mailbox(
    senders: list[Sender], acked: set[bytes], received: dict[bytes, Counter[bytes]], context: str
) -> None:
    """Every acknowledged envelope was received, and only by the account it was addressed to."""
    lost = acked - set().union(*received.values())
    assert not lost, (context, f"{len(lost)} acknowledged envelopes lost")
    addressed = {e.envelope_id: e.recipient for s in senders for e in s.sent.values()}
    for account, counts in received.items():
        assert all(addressed[eid] == account for eid in counts), (context, "delivered to the wrong mailbox")


def test_no_acknowledged_envelope_is_lost_or_doubled_across_sigkill(tmp_path: Path) -> None:
    seed, rng, data_dir, codes, server = scene(tmp_path)
    kills_at: list[float] = []

    async def scenario() -> tuple[list[Sender], dict[bytes, Counter[bytes]]]:
        async with aiohttp.ClientSession() as session:
            server.start()
            senders, recipients = await senders_and_recipients(server, session, codes)
            await kill_under_load(server, session, senders, recipients, rng, kills_at)
            received = {user.account: await drain(server.url, session, user) for user in recipients}
            # Receipts are durable: reconnecting finds nothing.
            for user in recipients:
                assert not await drain(server.url, session, user)
            return senders, received

    try:
        senders, received = asyncio.run(scenario())
    finally:
        stopped = server.stop()
    context = f"seed={seed} kills at {kills_at} s"
    acked = acknowledged(senders, stopped, context)
    delivered: Counter[bytes] = Counter()
    for counts in received.values():
        delivered.update(counts)
    doubled = [eid.hex()[:8] for eid, n in delivered.items() if n > 1]
    assert not doubled, (context, "delivered twice", doubled[:5])
    assert_all_acknowledged_reached_their_mailbox(senders, acked, received, context)
    assert set(delivered) == acked, context
    conn = sqlite3.connect(f"file:{data_dir / 'kluis.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT count(*) FROM mailbox").fetchone() == (0,), context
    finally:
        conn.close()


def test_no_envelope_acknowledged_to_a_connected_recipient_is_lost_across_sigkill(tmp_path: Path) -> None:
    """As above, but the recipients are connected and receipting throughout, so most envelopes are
    held for their receipt and never written (the sender's OK then rests on the recipient's store):
    every acknowledged envelope is in its recipient's store at the end, whatever the kills cut."""
    seed, rng, _, codes, server = scene(tmp_path)
    kills_at: list[float] = []

    async def scenario() -> tuple[list[Sender], dict[bytes, Counter[bytes]]]:
        async with aiohttp.ClientSession() as session:
            server.start()
            senders, recipients = await senders_and_recipients(server, session, codes)
            stores: dict[bytes, Counter[bytes]] = {user.account: Counter() for user in recipients}
            devices = [
                asyncio.create_task(device_loop(server.url, session, user, stores[user.account]))
                for user in recipients
            ]
            try:
                await asyncio.sleep(0.3)  # connected and caught up before the load begins
                await kill_under_load(server, session, senders, recipients, rng, kills_at)
                await asyncio.sleep(0.5)
            finally:
                for device in devices:
                    device.cancel()
                await asyncio.gather(*devices, return_exceptions=True)
            for user in recipients:  # whatever a killed connection left unreceipted
                stores[user.account].update(await drain(server.url, session, user))
            for user in recipients:
                assert not await drain(server.url, session, user)
            return senders, stores

    try:
        senders, stores = asyncio.run(scenario())
    finally:
        stopped = server.stop()
    context = f"seed={seed} kills at {kills_at} s"
    acked = acknowledged(senders, stopped, context)
    assert_all_acknowledged_reached_their_mailbox(senders, acked, stores, context)
