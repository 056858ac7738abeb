"""The two ways the app erases a profile: the panic key and the duress passphrase.

Both end the same way as a fresh install: no profile, no trace in the UI. The revocation that tells
the relay (and through it every contact) that the account is gone is best effort and silent: it
never delays the erase and never reports a failure, since a message would show that something
was there.
"""

from __future__ import annotations

import asyncio
import contextlib

from kluis.client.link import RelayLink

DURESS_REVOKE_TIMEOUT = 3.0
"""Seconds the revocation may take after a duress unlock (the profile is already erased by then)."""
PANIC_REVOKE_TIMEOUT = 2.0
"""Seconds the revocation may take after the panic key; it runs beside the erase, never before it."""


async def send_revocation(url: str, fingerprint: bytes | None, statement: bytes, timeout: float) -> None:
    """Posts the signed revocation statement to the relay; gives up silently on any error or timeout."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout), RelayLink(url, fingerprint) as link:
            await link.http.revoke(statement)


__all__ = ["DURESS_REVOKE_TIMEOUT", "PANIC_REVOKE_TIMEOUT", "send_revocation"]
