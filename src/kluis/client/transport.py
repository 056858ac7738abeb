"""Client side of the relay protocol over aiohttp: HTTP calls and the two kinds of stream.

- :class:`MailboxStream`: authenticated as the account (signed challenge); receives deliveries,
  sends receipts, uploads keys, fetches the day's send pass.
- :class:`SendStream`: anonymous, opened with the send pass; only sends (sealed sender).

TLS is pinned to the server certificate's fingerprint (``aiohttp.Fingerprint``); plain ``ws://``
URLs are for loopback test servers only.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp

from kluis.protocol.keys import IdentityKeyPair
from kluis.relay import frames as f

DEFAULT_TIMEOUT = 30.0
_F = TypeVar("_F", bound=f.Frame)


class RelayClientError(Exception):
    """The server refused a request or the stream failed; ``code`` names why (no details)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _http_url(url: str) -> str:
    return "http" + url.removeprefix("ws") if url.startswith("ws") else url


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class Registration:
    account: bytes
    expires_day: int

    def __repr__(self) -> str:
        return f"Registration(.., expires_day={self.expires_day})"


class RelayHttp:
    """The relay's HTTP API."""

    def __init__(self, session: aiohttp.ClientSession, url: str, ssl: aiohttp.Fingerprint | bool) -> None:
        self._session = session
        self._base = _http_url(url).rstrip("/")
        self._ssl = ssl

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._session.post(self._base + path, json=body, ssl=self._ssl) as response:
            payload: dict[str, Any] = await response.json(content_type=None)
            if response.status >= 400:
                raise RelayClientError(str(payload.get("error", "request failed")), str(payload.get("code")))
            return payload

    async def register(self, code: str, identity: bytes, token_hash: bytes) -> Registration:
        body = {"code": code, "identity": _b64(identity), "token_hash": _b64(token_hash)}
        payload = await self._post("/v1/accounts", body)
        return Registration(base64.b64decode(payload["account"]), int(payload["expires_day"]))

    async def extend(self, account: bytes, code: str) -> int:
        payload = await self._post("/v1/accounts/extend", {"account": _b64(account), "code": code})
        return int(payload["expires_day"])

    async def bundle(self, account: bytes, token: bytes) -> bytes:
        payload = await self._post("/v1/bundle", {"account": _b64(account), "token": _b64(token)})
        return base64.b64decode(payload["bundle"])

    async def revoke(self, statement: bytes) -> None:
        await self._post("/v1/revoke", {"statement": _b64(statement)})


class _Stream:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pending: list[f.Frame] = []
        """Frames that arrived while :meth:`expect` waited for another kind; receive() returns them first."""

    async def send(self, frame: f.Frame) -> None:
        await self.ws.send_bytes(f.serialize(frame))

    async def receive(self, timeout: float | None = DEFAULT_TIMEOUT) -> f.Frame:
        """The next frame. Raises RelayClientError on an ERROR frame or a closed stream."""
        if self.pending:
            return self.pending.pop(0)
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise RelayClientError("stream closed", "closed")
        frame = f.parse(msg.data)
        if isinstance(frame, f.Error) and frame.code is not f.ErrorCode.SUBSCRIPTION_EXPIRED:
            raise RelayClientError(frame.text, frame.code.name.lower())
        return frame

    async def expect(self, kind: type[_F], timeout: float | None = DEFAULT_TIMEOUT) -> _F:
        """Waits for the next frame of ``kind``; others are kept in :attr:`pending`."""
        kept: list[f.Frame] = []
        try:
            while True:
                msg = await self.ws.receive(timeout=timeout)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    raise RelayClientError("stream closed", "closed")
                frame = f.parse(msg.data)
                if isinstance(frame, kind):
                    return frame
                if isinstance(frame, f.Error):
                    raise RelayClientError(frame.text, frame.code.name.lower())
                kept.append(frame)
        finally:
            self.pending.extend(kept)

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def _open(
    session: aiohttp.ClientSession, url: str, ssl: aiohttp.Fingerprint | bool
) -> tuple[aiohttp.ClientWebSocketResponse, f.Challenge]:
    ws = await session.ws_connect(url.rstrip("/") + "/v1/stream", ssl=ssl, max_msg_size=0, autoping=True)
    msg = await ws.receive(timeout=DEFAULT_TIMEOUT)
    challenge = f.parse(msg.data) if msg.type == aiohttp.WSMsgType.BINARY else None
    if not isinstance(challenge, f.Challenge):
        await ws.close()
        raise RelayClientError("server did not send a challenge", "protocol")
    return ws, challenge


class MailboxStream(_Stream):
    """An authenticated stream. ``auth`` holds the server's AUTH_OK (expiry, prekey stock)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(ws)
        self.auth = f.AuthOk(0, 0, 0)

    @classmethod
    async def connect(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        identity: IdentityKeyPair,
        account: bytes,
        ssl: aiohttp.Fingerprint | bool = True,
    ) -> MailboxStream:
        ws, challenge = await _open(session, url, ssl)
        stream = cls(ws)
        signature = identity.sign(f.auth_message(challenge.nonce, account))
        await stream.send(f.Auth(account, signature))
        first = await stream.receive()
        if not isinstance(first, f.AuthOk):
            await stream.close()
            raise RelayClientError("unexpected reply to AUTH", "protocol")
        stream.auth = first
        return stream

    async def send_pass(self) -> f.SendPass:
        """The day's send pass; RelayClientError('subscription_expired') when the account may not send."""
        await self.send(f.GetSendPass())
        return await self.expect(f.SendPass)


class SendStream(_Stream):
    """An anonymous stream that only sends."""

    @classmethod
    async def connect(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        send_pass: f.SendPass,
        ssl: aiohttp.Fingerprint | bool = True,
    ) -> SendStream:
        ws, _ = await _open(session, url, ssl)
        stream = cls(ws)
        await stream.send(f.OpenSend(send_pass.day, send_pass.send_pass))
        return stream

    async def send_envelopes(self, envelopes: list[f.OutgoingEnvelope]) -> dict[bytes, f.SendStatus]:
        """Sends and waits for every envelope's status (batches of MAX_BATCH)."""
        for i in range(0, len(envelopes), f.MAX_BATCH):
            await self.send(f.Send(tuple(envelopes[i : i + f.MAX_BATCH])))
        statuses: dict[bytes, f.SendStatus] = {}
        while len(statuses) < len(envelopes):
            statuses.update((await self.expect(f.SendResult)).results)
        return statuses


__all__ = ["MailboxStream", "Registration", "RelayClientError", "RelayHttp", "SendStream"]
