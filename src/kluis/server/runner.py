"""Runs one relay node: storage, TLS, the aiohttp server, housekeeping, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from kluis.server.app import make_app
from kluis.server.config import ServerConfig
from kluis.server.metrics import Metrics
from kluis.server.relay import Relay
from kluis.server.storage import database_path, open_storage
from kluis.server.tls import certificate_digest, certificate_fingerprint, server_ssl_context

log = logging.getLogger("kluis.server")

EXPIRE_EVERY_S = 3600.0
"""Undelivered envelopes past their expiry day are deleted hourly (expiry is day-granular)."""
CHECKPOINT_EVERY_S = 1.0
"""WAL checkpoints run on a timer in a worker thread, off the send path (PERFORMANCE.md: checkpoints
on the loop blocked acknowledgements); every second keeps each one short and the WAL small."""
TRUNCATE_EVERY_TICKS = 5
"""Every fifth checkpoint also empties the WAL, so page images of delivered envelopes and handed-out
prekeys leave it within about 5 s (docs/SECURITY.md); truncating every second cost latency
(storage Checkpointer.run)."""
GC_THRESHOLDS = (100_000, 50, 1_000)
"""The cyclic collector's thresholds in a server process (CPython's default is 700, 10, 10). With
10,000 connections each collection of the older generations walks every connection's objects: with
the defaults that was over a third of the relay's CPU in ``kluis bench skyecc`` (py-spy). The relay
makes few reference cycles (reference counting frees nearly everything at once), so collecting
rarely costs little memory."""
SECRET_FILE = "send-pass.key"  # noqa: S105 - a file name, not a secret


def load_secret(data_dir: Path) -> bytes:
    """The server's secret for send passes (32 random bytes, created once, mode 0600).

    Not user data: it derives the daily pass every subscriber shares (relay.py). Every node of one
    service must hold the same file (a pass fetched from one node is presented to another); nodes
    started at once on one data directory agree on it, since it is linked into place, never replaced.
    """
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another node made it first: theirs counts
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    secret = path.read_bytes()
    if len(secret) != 32:
        raise RuntimeError(f"{SECRET_FILE} is damaged (expected 32 bytes)")
    return secret


async def _housekeeping(relay: Relay) -> None:
    last_expire = 0.0
    ticks = 0
    while True:
        await asyncio.sleep(CHECKPOINT_EVERY_S)
        ticks += 1
        with contextlib.suppress(Exception):
            await relay.storage.checkpoint(truncate=ticks % TRUNCATE_EVERY_TICKS == 0)
        if time.monotonic() - last_expire >= EXPIRE_EVERY_S:
            last_expire = time.monotonic()
            with contextlib.suppress(Exception):
                expired = await relay.expire()
                if expired:
                    log.info("expired %d undelivered envelopes", expired)


async def serve(
    config: ServerConfig,
    *,
    on_ready: Callable[[str, str | None], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT (or ``stop``), then shuts down gracefully.

    ``on_ready(url, fingerprint)`` is called once listening, with the real port (``--listen
    HOST:0`` picks a free one) and the TLS certificate fingerprint (None in insecure mode).
    """
    config.data_dir.mkdir(parents=True, exist_ok=True)
    secret = load_secret(config.data_dir)
    ssl_context = None if config.insecure_loopback else server_ssl_context(config.data_dir)
    metrics = Metrics()
    fanout = None
    if config.redis:
        from kluis.server.fanout import RedisFanOut, service_digest

        certificate = b"" if ssl_context is None else certificate_digest(config.data_dir)
        fanout = RedisFanOut(
            config.redis, pass_secret=secret, service=service_digest(secret, certificate), metrics=metrics
        )
        await fanout.start()  # FanOutError: this node's files differ from the service's
    try:
        storage = await open_storage(
            config.database or database_path(config.data_dir),
            fsync=config.fsync,
            sqlite_cache_mib=config.sqlite_cache_mib,
            receipt_wait_s=config.receipt_wait_s,
        )
    except BaseException:
        if fanout is not None:
            await fanout.close()
        raise
    relay = Relay(
        storage,
        pass_secret=secret,
        retention_days=config.retention_days,
        max_envelope_bytes=config.max_envelope_bytes,
        prekey_low_watermark=config.prekey_low_watermark,
        fanout=fanout,
        metrics=metrics,
        clock=time.time,
    )
    app = make_app(relay, config)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=config.shutdown_grace_s
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context, backlog=1024)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    housekeeping = asyncio.create_task(_housekeeping(relay))
    try:
        await site.start()
        host, port = runner.addresses[0][:2]
        scheme = "ws" if ssl_context is None else "wss"
        shown_host = f"[{host}]" if ":" in host else host
        fingerprint = None if ssl_context is None else certificate_fingerprint(config.data_dir)
        if on_ready is not None:
            on_ready(f"{scheme}://{shown_host}:{port}", fingerprint)
        await stop.wait()
        log.info("shutting down")
    finally:
        housekeeping.cancel()
        await runner.cleanup()  # stops accepting, closes connections gracefully (app.on_shutdown)
        if fanout is not None:
            await fanout.close()  # its connections' presence entries go now, not after their TTL
        await storage.close()  # commits whatever is pending


def run(config: ServerConfig, on_ready: Callable[[str, str | None], None] | None = None) -> None:
    """Blocking entry point for ``kluis server``: uvloop where available, and the collector tuned
    for a process that holds many connections (GC_THRESHOLDS)."""

    def ready(url: str, fingerprint: str | None) -> None:
        # What exists once listening (modules, the app, caches) lives as long as the process: moved
        # out of the collector's sight, so no collection walks it again.
        gc.freeze()
        if on_ready is not None:
            on_ready(url, fingerprint)

    gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-Linux platforms
        asyncio.run(serve(config, on_ready=ready))
    else:
        uvloop.run(serve(config, on_ready=ready))


__all__ = ["load_secret", "run", "serve"]
