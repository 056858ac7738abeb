"""Runs one relay node: storage, TLS, the aiohttp server, housekeeping, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
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
from kluis.server.tls import certificate_fingerprint, server_ssl_context

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
SECRET_FILE = "send-pass.key"  # noqa: S105 - a file name, not a secret


def load_secret(data_dir: Path) -> bytes:
    """The server's secret for send passes (32 random bytes, created once, mode 0600).

    Not user data: it derives the daily pass every subscriber shares (relay.py).
    """
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
    storage = await open_storage(config.database or database_path(config.data_dir), fsync=config.fsync)
    relay = Relay(
        storage,
        pass_secret=load_secret(config.data_dir),
        retention_days=config.retention_days,
        max_envelope_bytes=config.max_envelope_bytes,
        prekey_low_watermark=config.prekey_low_watermark,
        metrics=Metrics(),
        clock=time.time,
    )
    app = make_app(relay, config)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=config.shutdown_grace_s
    )
    await runner.setup()
    ssl_context = None if config.insecure_loopback else server_ssl_context(config.data_dir)
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
        await storage.close()  # commits whatever is pending


def run(config: ServerConfig, on_ready: Callable[[str, str | None], None] | None = None) -> None:
    """Blocking entry point for ``kluis server``: uvloop where available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-Linux platforms
        asyncio.run(serve(config, on_ready=on_ready))
    else:
        uvloop.run(serve(config, on_ready=on_ready))


__all__ = ["load_secret", "run", "serve"]
