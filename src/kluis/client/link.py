"""The client's connections to its relay: one HTTP session, the mailbox stream, the sending stream.

The mailbox stream has one reader (a task) that hands every server frame to the owner's callbacks
and answers the requests made on it (send pass, key upload), so deliveries pushed at any moment
never race a request. The sending stream is anonymous (sealed sender, DESIGN.md): it is opened with
the day's send pass, which every subscriber holds, so the server cannot tie it to the mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from kluis.client.errors import ServerRefused, ServerUnreachable
from kluis.client.transport import MailboxStream, RelayClientError, RelayHttp, SendStream
from kluis.protocol.keys import IdentityKeyPair
from kluis.relay import frames as f

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
NETWORK_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConnectionError)


def ssl_for(url: str, fingerprint: bytes | None) -> aiohttp.Fingerprint | bool:
    """Plain ``ws://`` only for loopback test servers; ``wss://`` is pinned when a fingerprint is known."""
    if url.startswith("ws://"):
        return False
    return aiohttp.Fingerprint(fingerprint) if fingerprint is not None else True


def refused(error: RelayClientError) -> ServerRefused:
    return ServerRefused(str(error), error.code)


class RelayLink:
    """Owns the HTTP session and streams of one relay. ``async with RelayLink(...)``."""

    def __init__(self, url: str, fingerprint: bytes | None) -> None:
        self.url = url.rstrip("/")
        self.ssl = ssl_for(url, fingerprint)
        self._session: aiohttp.ClientSession | None = None
        self.mailbox: MailboxStream | None = None
        self._sender: SendStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[type[f.Frame], list[asyncio.Future[f.Frame]]] = {}
        self.closed = asyncio.Event()
        """Set when the mailbox stream ends (server gone, error frame, or close())."""
        self.close_reason: Exception | None = None

    async def __aenter__(self) -> RelayLink:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
        self._session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RelayLink used outside `async with`")
        return self._session

    @property
    def http(self) -> RelayHttp:
        return RelayHttp(self.session, self.url, self.ssl)

    # -- the mailbox stream ---------------------------------------------------------------------

    async def open_mailbox(
        self,
        identity: IdentityKeyPair,
        account: bytes,
        on_frame: Callable[[f.Frame], Awaitable[None]],
    ) -> f.AuthOk:
        """Authenticates and starts the reader; ``on_frame`` gets every frame nobody waits for."""
        try:
            self.mailbox = await asyncio.wait_for(
                MailboxStream.connect(self.session, self.url, identity, account, self.ssl), CONNECT_TIMEOUT
            )
        except RelayClientError as error:
            raise refused(error) from None
        except NETWORK_ERRORS:
            raise ServerUnreachable() from None
        self.closed.clear()
        self._reader = asyncio.create_task(self._read(self.mailbox, on_frame))
        return self.mailbox.auth

    async def _read(self, stream: MailboxStream, on_frame: Callable[[f.Frame], Awaitable[None]]) -> None:
        try:
            while True:
                frame = await stream.receive(timeout=None)
                waiters = self._waiters.get(type(frame))
                if waiters:
                    waiter = waiters.pop(0)
                    if not waiter.done():
                        waiter.set_result(frame)
                    if not isinstance(frame, f.KeyStock):
                        continue
                # KEY_STOCK is both a reply (to UPLOAD_KEYS) and a push (stock low), and the two are
                # indistinguishable: the owner sees every one, in the order the server sent them.
                await on_frame(frame)
        except RelayClientError as error:
            self.close_reason = refused(error) if error.code != "closed" else ServerUnreachable()
        except NETWORK_ERRORS:
            self.close_reason = ServerUnreachable()
        except Exception as error:  # the owner's callback failed: end the link, report it
            self.close_reason = error
        finally:
            self.closed.set()
            for waiters in self._waiters.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(
                            ServerUnreachable() if self.close_reason is None else self.close_reason
                        )
            self._waiters.clear()

    async def request(self, frame: f.Frame, reply: type[f.Frame]) -> f.Frame:
        """Sends ``frame`` on the mailbox stream and waits for the next frame of type ``reply``."""
        if self.mailbox is None or self.closed.is_set():
            raise ServerUnreachable()
        waiter: asyncio.Future[f.Frame] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(reply, []).append(waiter)
        try:
            await self.mailbox.send(frame)
        except NETWORK_ERRORS:
            raise ServerUnreachable() from None
        try:
            return await asyncio.wait_for(waiter, REQUEST_TIMEOUT)
        except TimeoutError:
            raise ServerUnreachable() from None

    async def send_on_mailbox(self, frame: f.Frame) -> None:
        if self.mailbox is None or self.closed.is_set():
            raise ServerUnreachable()
        try:
            await self.mailbox.send(frame)
        except NETWORK_ERRORS:
            raise ServerUnreachable() from None

    # -- the anonymous sending stream -----------------------------------------------------------

    async def send_envelopes(
        self, envelopes: list[f.OutgoingEnvelope], send_pass: f.SendPass
    ) -> dict[bytes, f.SendStatus]:
        """Sends on the anonymous stream (opened on first use) and returns every envelope's status."""
        try:
            if self._sender is None:
                self._sender = await asyncio.wait_for(
                    SendStream.connect(self.session, self.url, send_pass, self.ssl), CONNECT_TIMEOUT
                )
            return await asyncio.wait_for(self._sender.send_envelopes(envelopes), REQUEST_TIMEOUT)
        except RelayClientError as error:
            await self._drop_sender()
            if error.code == "closed":
                raise ServerUnreachable() from None
            raise refused(error) from None
        except NETWORK_ERRORS:
            await self._drop_sender()
            raise ServerUnreachable() from None

    async def _drop_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            with contextlib.suppress(Exception):
                await sender.close()

    async def close_mailbox(self) -> None:
        reader, self._reader = self._reader, None
        mailbox, self.mailbox = self.mailbox, None
        if mailbox is not None:
            with contextlib.suppress(Exception):
                await mailbox.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        self.closed.set()

    async def close(self) -> None:
        await self._drop_sender()
        await self.close_mailbox()
        session, self._session = self._session, None
        if session is not None:
            await session.close()


__all__ = ["NETWORK_ERRORS", "RelayLink", "ssl_for"]
