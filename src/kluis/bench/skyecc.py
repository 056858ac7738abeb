"""``kluis bench skyecc``: Sky ECC's day (3,000,000 envelopes among 171,000 accounts) through a real
relay on loopback, on SQLite or PostgreSQL, with one or more relay nodes.

The workload (docs/OPERATING.md, "Benchmarks"):

- All ``accounts`` are registered. They are written straight into the storage through its
  ``AccountStore.create`` before any node starts, not registered over HTTP (which would take longer
  than the day itself): the same rows registration writes (random 16-byte id, a real identity key,
  the SHA-256 of a random delivery token, a 30-day expiry), with keys derived from a random per-run
  secret so the generator process can re-derive the ones it authenticates as.
- ``connected`` accounts (10,000, or a fifth of the accounts if fewer) hold an authenticated mailbox
  stream at any moment. The day is ``hours`` steps of equal message counts; at each step
  ``rotate_share`` of the connected accounts leave and as many offline ones connect and drain what
  was stored for them. The accounts online at the start connected "yesterday" (before the clock);
  every later connection, authentication and drain is inside the timed part.
- Each envelope goes to an account online at that hour, or (``offline_share``) to an account that
  comes online later in the day, so the relay stores it and delivers it on that account's connect.
- Sealed sender: the relay never learns who sent an envelope (every subscriber presents the same
  day's send pass), so the generator sends over ``streams`` anonymous send streams, up to 32
  envelopes per SEND frame, as a busy client may.
- Envelopes are ``envelope_bytes`` (1,397: the smallest sealed envelope, a short text in the
  256-byte padding bucket) of opaque bytes: the relay never opens one.

The timed part ends when every envelope is acknowledged and delivered. ``lost`` counts acknowledged
envelopes that never reached their recipient; every delivery is checked by envelope id against the
account it was addressed to.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from kluis.bench.relay import machine_busy_seconds, run_workers
from kluis.bench.relay_load import raise_nofile
from kluis.bench.services import BenchError, Deployment, exit_on_sigterm
from kluis.bench.skyecc_load import worker_main

SKY_ECC_MESSAGES = 3_000_000
SKY_ECC_ACCOUNTS = 171_000
SEALED_TEXT_BYTES = 1_397
"""A sealed envelope of the smallest padding bucket (256 bytes): 1,141 bytes of header, hybrid KEM
ciphertext and tag around it (docs/PROTOCOL.md)."""
PROVISION_CHUNK = 2_000
SUBSCRIPTION_DAYS = 30


@dataclass(frozen=True)
class Options:
    messages: int = SKY_ECC_MESSAGES
    accounts: int = SKY_ECC_ACCOUNTS
    connected: int | None = None
    """Mailboxes connected at once; None: 10,000 or a fifth of the accounts, whichever is smaller."""
    hours: int = 24
    rotate_share: float = 0.1
    """Share of the connected accounts replaced at each hour."""
    offline_share: float = 0.1
    """Share of envelopes addressed to an account that connects later in the day."""
    envelope_bytes: int = SEALED_TEXT_BYTES
    streams: int = 32
    frames_in_flight: int = 2
    backend: str = "sqlite"
    database: str | None = None
    nodes: int = 1
    redis: str | None = None
    seed: int | None = None
    pin: bool = False
    """Each node on a CPU of its own, the generators on the others (kluis.bench.affinity). Off by
    default here: the day's relay uses more than one core's worth of the machine (its checkpoint
    thread, the kernel's work for 10,000 sockets), and pinned to one it took 182 s instead of 154."""


@dataclass(frozen=True)
class Plan:
    """The derived shape of a run."""

    connected: int
    rotate: int
    active: int
    """Accounts that connect at some point of the day (the rest stay offline and get nothing)."""

    @classmethod
    def of(cls, opts: Options) -> Plan:
        connected = opts.connected if opts.connected is not None else min(10_000, max(1, opts.accounts // 5))
        if connected > opts.accounts:
            raise BenchError(f"--connected {connected} is more than --accounts {opts.accounts}")
        rotate = round(connected * opts.rotate_share)
        if opts.hours > 1:
            rotate = min(rotate, (opts.accounts - connected) // (opts.hours - 1))
        return cls(connected, rotate, connected + (opts.hours - 1) * rotate)


def log(text: str) -> None:
    print(f"kluis bench skyecc: {text}", file=sys.stderr, flush=True)


def derive(secret: bytes, index: int, label: bytes, size: int) -> bytes:
    """``size`` bytes for account ``index`` and purpose ``label``, from the run's random secret."""
    return hashlib.blake2b(index.to_bytes(4, "big") + label, key=secret, digest_size=size).digest()


# -- provisioning -------------------------------------------------------------------------------


def _identities(secret: bytes, start: int, stop: int) -> list[bytes]:
    """The public identity keys of accounts ``start..stop`` (in a worker process)."""
    from kluis.protocol.keys import IdentityKeyPair

    return [
        IdentityKeyPair(derive(secret, i, b"sign", 32), derive(secret, i, b"dh", 32)).public.to_bytes()
        for i in range(start, stop)
    ]


async def _store_accounts(target: str, secret: bytes, identities: list[bytes], postgres: bool) -> None:
    from kluis.server.storage import Account, AccountId, epoch_day, open_storage

    expires = epoch_day(time.time()) + SUBSCRIPTION_DAYS
    storage = await open_storage(target, fsync=False)

    async def create(start: int, stop: int) -> None:
        for i in range(start, stop):
            token_hash = hashlib.sha256(derive(secret, i, b"token", 32)).digest()
            account = Account(AccountId(derive(secret, i, b"id", 16)), identities[i], token_hash, expires)
            await storage.accounts.create(account)

    try:
        if postgres:  # one round trip per account: keep the pool's connections busy
            parts = 8
            step = -(-len(identities) // parts)
            await asyncio.gather(
                *(create(k, min(k + step, len(identities))) for k in range(0, len(identities), step))
            )
        else:  # inline on SQLite: concurrency would not help
            await create(0, len(identities))
    finally:
        await storage.close()


def provision(target: str, secret: bytes, accounts: int, postgres: bool) -> dict[str, float]:
    """Writes ``accounts`` accounts into the storage at ``target``; returns how long each part took."""
    started = time.monotonic()
    workers = max(1, min(os.cpu_count() or 1, 8))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        chunks = [(k, min(k + PROVISION_CHUNK, accounts)) for k in range(0, accounts, PROVISION_CHUNK)]
        futures = [pool.submit(_identities, secret, a, b) for a, b in chunks]
        identities = [key for fut in futures for key in fut.result()]
    keys_s = time.monotonic() - started
    started = time.monotonic()
    asyncio.run(_store_accounts(target, secret, identities, postgres))
    return {"keys_s": round(keys_s, 2), "store_s": round(time.monotonic() - started, 2)}


async def _still_stored(target: str, recipients: list[bytes]) -> int:
    """Envelopes left in the mailboxes of ``recipients`` after the nodes stopped: ``lost`` envelopes
    that are still stored were never pushed to their connected recipient (they would be delivered on
    its next connection); the others are gone."""
    from kluis.server.storage import AccountId, open_storage

    storage = await open_storage(target, fsync=False)
    try:
        return sum([await storage.mailbox.count(AccountId(r)) for r in recipients])
    finally:
        await storage.close()


# -- the run ------------------------------------------------------------------------------------


def _pct(cpu_s: float, wall_s: float) -> float:
    return round(cpu_s / wall_s * 100, 1)


def run(opts: Options) -> dict[str, Any]:
    """Provisions, starts the nodes, replays the day; returns the JSON object the command prints."""
    with exit_on_sigterm():
        return _run(opts)


def _run(opts: Options) -> dict[str, Any]:
    if opts.messages < 1 or opts.accounts < 2 or opts.hours < 1:
        raise BenchError("--messages, --accounts and --hours must be positive (at least 2 accounts)")
    if opts.envelope_bytes < 8:
        raise BenchError("--envelope-bytes must be at least 8 (the send timestamp)")
    plan = Plan.of(opts)
    nofile = raise_nofile()
    need = plan.connected + plan.rotate + opts.streams + 100
    if need > nofile - 100:
        raise BenchError(f"{need} connections need more than this machine's open-file limit ({nofile})")
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**32)
    secret = os.urandom(32)
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="kluis-bench-skyecc-"))
    deployment = Deployment(
        tmp,
        backend=opts.backend,
        database=opts.database,
        nodes=opts.nodes,
        redis=opts.redis,
        max_connections=need + 1000,
        pin=opts.pin,
    )
    samples: dict[str, tuple[float, float | None, float | None, float]] = {}
    try:
        target = deployment.prepare()
        log(f"provisioning {opts.accounts:,} accounts into the storage ({opts.backend}) ...")
        provisioned = provision(target, secret, opts.accounts, opts.backend == "postgres")
        log(f"provisioned in {provisioned['keys_s'] + provisioned['store_s']:.1f} s: {provisioned}")
        nodes = deployment.start_nodes()
        log(f"server pid(s) {' '.join(map(str, nodes.pids))} at {' '.join(nodes.urls)}")
        schedule = random.Random(seed)  # noqa: S311 - a reproducible schedule, not a secret
        active = schedule.sample(range(opts.accounts), plan.active)
        spec = {
            "messages": opts.messages,
            "connected": plan.connected,
            "rotate": plan.rotate,
            "hours": opts.hours,
            "offline_share": opts.offline_share,
            "envelope_bytes": opts.envelope_bytes,
            "streams": opts.streams,
            "frames_in_flight": opts.frames_in_flight,
            "active": active,
            "secret": secret,
            "seed": seed,
        }

        def mark(message: tuple[Any, ...]) -> None:
            samples[message[0]] = (
                nodes.cpu_seconds(),
                deployment.database_cpu_seconds(),
                deployment.redis_cpu_seconds(),
                machine_busy_seconds(),
            )
            if message[0] == "start":
                log(f"connected {plan.connected:,} mailboxes; the day begins")

        log(f"connecting {plan.connected:,} mailboxes and {opts.streams} send streams ...")
        (r,) = run_workers(nodes, [spec], on_mark=mark, timeout=6 * 3600, target=worker_main).results
        nodes.stop()
        still_stored = asyncio.run(_still_stored(target, r["lost_recipients"])) if r["lost"] else 0
    finally:
        deployment.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = r["seconds"]
    (s0, d0, x0, m0), (s1, d1, x1, m1) = samples["start"], samples["end"]
    server_cpu, generator_cpu = s1 - s0, r["cpu_s"]
    database_cpu = None if d0 is None or d1 is None else d1 - d0
    redis_cpu = None if x0 is None or x1 is None else x1 - x0
    other = (m1 - m0) - server_cpu - generator_cpu - (database_cpu or 0.0) - (redis_cpu or 0.0)
    out: dict[str, Any] = {
        "messages": opts.messages,
        "accounts": opts.accounts,
        "seconds": round(seconds, 2),
        "msgs_per_s": round(r["delivered"] / seconds, 1),
        "p99_ms": r["latency"]["p99_ms"],
        "lost": r["lost"],
        "lost_still_stored": still_stored,
        "p50_ms": r["latency"]["p50_ms"],
        "p999_ms": r["latency"]["p999_ms"],
        "max_ms": r["latency"]["max_ms"],
        "ack_p50_ms": r["ack_latency"]["p50_ms"],
        "ack_p99_ms": r["ack_latency"]["p99_ms"],
        "acknowledged": r["acked"],
        "delivered": r["delivered"],
        "delivered_live": r["live"],
        "delivered_from_storage": r["stored"],
        "redelivered": r["redelivered"],
        "misrouted": r["misrouted"],
        "resent": r["resent"],
        "resent_unanswered": r["resent_unanswered"],
        "refused": r["refused"],
        "connected": plan.connected,
        "active_accounts": plan.active,
        "joined": r["joined"],
        "left": r["left"],
        "join_p99_ms": r["join_latency"]["p99_ms"],
        "sends_waited_for_joins_s": round(r["stalled_s"], 2),
        "backend": opts.backend,
        "nodes": opts.nodes,
        "server_cpu_pct": _pct(server_cpu, seconds),
        "generator_cpu_pct": _pct(generator_cpu, seconds),
        "database_cpu_pct": None if database_cpu is None else _pct(database_cpu, seconds),
        "redis_cpu_pct": None if redis_cpu is None else _pct(redis_cpu, seconds),
        "other_cpu_pct": _pct(other, seconds),
        "errors": r["errors"],
        "provisioning": {
            "how": "accounts written straight into the storage (AccountStore.create) before the nodes "
            "start; not timed",
            **provisioned,
        },
        "untimed": {
            "generator_prepare_s": round(r["prepare_s"], 2),
            "initial_connect_s": round(r["connect_s"], 2),
        },
        "config": {
            **{k: v for k, v in asdict(opts).items() if k not in ("database", "redis", "connected")},
            "seed": seed,
            "rotate_per_hour": plan.rotate,
            **deployment.describe(),
            "server": "kluis server --insecure-loopback (separate process per node, default config)",
            "generator": "one process (uvloop, lean WebSocket client), "
            f"{opts.streams} send streams x {opts.frames_in_flight} SEND frames of up to 32 in flight",
            "latency": "p*_ms: send to delivery of envelopes sent while their recipient was connected; "
            "ack_*: send to acknowledgement, per envelope",
            "resent": "envelopes the relay answered RATE_LIMITED or UNAVAILABLE, sent again",
            "lost_still_stored": "envelopes left in the lost envelopes' recipients' mailboxes once the "
            "nodes stopped (stored, never pushed)",
            "resent_unanswered": "envelopes not answered within 10 s, sent again with the same id "
            "(a relay that answers every SEND frame has 0)",
            "cpu_count": os.cpu_count(),
            "nofile_limit": nofile,
        },
        "load_average": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    return out


__all__ = ["Options", "Plan", "derive", "provision", "run"]
