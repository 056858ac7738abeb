"""A real relay server on loopback for tests: ``serve()`` on port 0, plus client-side helpers."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

from kluis.client.transport import MailboxStream, RelayHttp, SendStream
from kluis.protocol.envelope import EnvelopeKeyRing
from kluis.protocol.keys import IdentityKeyPair
from kluis.protocol.prekeys import LocalPreKeys
from kluis.relay import frames as f
from kluis.server.codes import hash_code, new_code
from kluis.server.config import load_config
from kluis.server.runner import serve
from kluis.server.storage import database_path, open_storage

NOW = 1_800_000_000


async def add_codes(data_dir: Path, count: int, days: int = 30) -> list[str]:
    codes = [new_code() for _ in range(count)]
    data_dir.mkdir(parents=True, exist_ok=True)
    storage = await open_storage(database_path(data_dir), fsync=False)
    try:
        await storage.codes.add_codes([hash_code(c) for c in codes], days)
    finally:
        await storage.close()
    return codes


@dataclass
class Server:
    url: str
    data_dir: Path
    session: aiohttp.ClientSession
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def http(self) -> RelayHttp:
        return RelayHttp(self.session, self.url, False)


class Endpoint(Protocol):
    """What clients need of a server: its URL and an HTTP session (in-process or a child process)."""

    url: str
    session: aiohttp.ClientSession

    @property
    def http(self) -> RelayHttp: ...


@dataclass
class Remote:
    """A server reached only by URL (e.g. tests/server_process.py's child process)."""

    url: str
    session: aiohttp.ClientSession

    @property
    def http(self) -> RelayHttp:
        return RelayHttp(self.session, self.url, False)


@asynccontextmanager
async def running_server(data_dir: Path, **settings: object) -> AsyncIterator[Server]:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = load_config(
        None, {"data_dir": data_dir, "host": "127.0.0.1", "port": 0, "insecure_loopback": True, **settings}
    )
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, on_ready=lambda url, _fp: ready.set_result(url), stop=stop))
    url = await asyncio.wait_for(ready, 10)
    async with aiohttp.ClientSession() as session:
        try:
            yield Server(url, data_dir, session, stop, task)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


@dataclass
class User:
    """A registered account with its device-side keys."""

    server: Endpoint
    identity: IdentityKeyPair
    account: bytes
    token: bytes
    prekeys: LocalPreKeys
    ring: EnvelopeKeyRing
    mailbox: MailboxStream | None = None
    streams: list[object] = field(default_factory=list)

    async def connect(self) -> MailboxStream:
        self.mailbox = await MailboxStream.connect(
            self.server.session, self.server.url, self.identity, self.account, False
        )
        return self.mailbox

    async def upload(self) -> f.KeyStock:
        assert self.mailbox is not None
        one_time = tuple((p.key_id, p.public_bytes) for p in self.prekeys.one_time.values())
        kem = tuple(s for k, s in self.prekeys.kem.values() if not k.last_resort)
        await self.mailbox.send(
            f.UploadKeys(
                self.prekeys.current_signed_prekey(),
                self.prekeys.last_resort_kem(),
                one_time,
                kem,
                (self.ring.current_public(),),
            )
        )
        return await self.mailbox.expect(f.KeyStock)

    async def sender(self) -> SendStream:
        assert self.mailbox is not None
        send_pass = await self.mailbox.send_pass()
        return await SendStream.connect(self.server.session, self.server.url, send_pass, False)


async def new_user(server: Endpoint, code: str, *, one_time: int = 5, kem_one_time: int = 5) -> User:
    identity = IdentityKeyPair.generate(os.urandom)
    token = os.urandom(32)
    registration = await server.http.register(
        code, identity.public.to_bytes(), hashlib.sha256(token).digest()
    )
    prekeys = LocalPreKeys.create(identity, os.urandom, one_time=one_time, kem_one_time=kem_one_time)
    ring = EnvelopeKeyRing.create(identity, os.urandom, NOW)
    return User(server, identity, registration.account, token, prekeys, ring)
