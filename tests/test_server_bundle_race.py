"""Concurrent bundle fetches through the real HTTP API of the real server process: no one-time prekey
(X25519 or ML-KEM) is ever handed to two fetchers, exactly the stock is handed out, and then every
bundle falls back to the last-resort KEM key with no one-time X25519 key."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp

from kluis.protocol.bundle import PreKeyBundle
from kluis.protocol.keys import KeyKind
from tests.server_process import ServerProcess, admin_codes
from tests.server_support import Remote, new_user

STOCK = 40
FETCHERS = 64


def test_concurrent_bundle_fetches_never_share_a_one_time_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    codes = admin_codes(data_dir, 1)
    server = ServerProcess(data_dir)
    server.start()

    async def scenario() -> list[PreKeyBundle]:
        connector = aiohttp.TCPConnector(limit=FETCHERS)
        async with aiohttp.ClientSession(connector=connector) as session:
            remote = Remote(server.url, session)
            bob = await new_user(remote, codes[0], one_time=STOCK, kem_one_time=STOCK)
            await bob.connect()
            stock = await bob.upload()
            assert (stock.one_time_left, stock.kem_left) == (STOCK, STOCK)
            raw = await asyncio.wait_for(
                asyncio.gather(*(remote.http.bundle(bob.account, bob.token) for _ in range(FETCHERS))), 30
            )
            bundles = [PreKeyBundle.from_bytes(b) for b in raw]
            assert bob.mailbox is not None
            await bob.mailbox.close()
            return bundles

    try:
        bundles = asyncio.run(scenario())
    finally:
        assert server.stop() == 0
    for bundle in bundles:
        bundle.verify()
    one_time = Counter(b.one_time_prekey.key_id for b in bundles if b.one_time_prekey is not None)
    kem = Counter(b.kem_prekey.key_id for b in bundles if b.kem_prekey.kind is KeyKind.KEM_ONE_TIME)
    assert max(one_time.values()) == 1, "a one-time X25519 prekey went to two fetchers"
    assert max(kem.values()) == 1, "a one-time KEM prekey went to two fetchers"
    assert len(one_time) == len(kem) == STOCK
    fallback = [b for b in bundles if b.kem_prekey.kind is KeyKind.KEM_LAST_RESORT]
    assert len(fallback) == FETCHERS - STOCK
    assert all(b.one_time_prekey is None for b in fallback)
    assert len({b.kem_prekey.key_id for b in fallback}) == 1
