"""``kluis bench client``: the device-side figures of issue 4, each beside its floor.

- ``unlock``: opening a profile with the real Argon2id parameters (256 MiB, t=3, p=4), against one
  bare pyca Argon2id derivation with the same parameters (the floor: the cost we chose on purpose).
- ``duress_erase``: entering the duress passphrase until the profile is gone (target: < 1 s), against
  the same floor.
- ``message``: one text through the SDK to a real relay on loopback and into the recipient's store
  (send: encrypt, seal, persist, server acknowledgement; receive: drain, open, decrypt, persist,
  receipt), against the protocol's own full path (seal + open + ratchet both ways) measured in the
  same run: the ratio is what storage, the network and the SDK add.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kluis.client import keyslots
from kluis.client import profile as pf
from kluis.client.panic import PanicInfo

PASS = "bench passphrase"  # noqa: S105 - throwaway profiles of the benchmark
DURESS = "bench duress"


def _floor_s(params: keyslots.Argon2Params) -> float:
    salt = os.urandom(16)
    start = time.perf_counter()
    params.derive(PASS, salt)
    return time.perf_counter() - start


def _unlock_and_duress(root: Path, samples: int) -> dict[str, Any]:
    params = keyslots.DEFAULT_ARGON2
    unlocks, erases, floors = [], [], []
    for i in range(samples):
        directory = root / f"p{i}"
        pf.create_profile(directory, PASS, os.urandom).close()
        profile = pf.unlock(directory, PASS)
        assert isinstance(profile, pf.Profile)
        pf.set_duress(profile, PASS, DURESS, PanicInfo("ws://127.0.0.1:1", None, bytes(81)), os.urandom)
        profile.close()
        floors.append(_floor_s(params))
        start = time.perf_counter()
        opened = pf.unlock(directory, PASS)
        unlocks.append(time.perf_counter() - start)
        assert isinstance(opened, pf.Profile)
        opened.close()
        start = time.perf_counter()
        wiped = pf.unlock(directory, DURESS)
        erases.append(time.perf_counter() - start)
        assert isinstance(wiped, pf.Wiped)
        assert not directory.exists()
    floor = statistics.median(floors)
    unlock, erase = statistics.median(unlocks), statistics.median(erases)
    return {
        "argon2id": {
            "memory_kib": params.memory_kib,
            "iterations": params.iterations,
            "lanes": params.lanes,
            "floor_ms": round(floor * 1000, 1),
        },
        "unlock": {"median_ms": round(unlock * 1000, 1), "ratio": round(unlock / floor, 3)},
        "duress_erase": {
            "median_ms": round(erase * 1000, 1),
            "max_ms": round(max(erases) * 1000, 1),
            "ratio": round(erase / floor, 3),
            "target_ms": 1000,
            "met": max(erases) < 1.0,
        },
    }


async def _messages(root: Path, count: int) -> dict[str, Any]:
    from kluis.bench.crypto import full_path_floor_us
    from kluis.client.client import Client
    from kluis.server.codes import hash_code, new_code
    from kluis.server.config import load_config
    from kluis.server.runner import serve
    from kluis.server.storage import database_path, open_storage

    data = root / "relay"
    data.mkdir()
    codes = [new_code() for _ in range(2)]
    storage = await open_storage(database_path(data), fsync=False)
    try:
        await storage.codes.add_codes([hash_code(c) for c in codes], 30)
    finally:
        await storage.close()
    config = load_config(None, {"data_dir": data, "host": "127.0.0.1", "port": 0, "insecure_loopback": True})
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, on_ready=lambda url, _fp: ready.set_result(url), stop=stop))
    url = await asyncio.wait_for(ready, 20)
    light = keyslots.Argon2Params(memory_kib=8, iterations=1, lanes=1)
    try:
        alice = await Client.create(root / "alice", PASS, url, codes[0], None, argon2=light)
        bob = await Client.create(root / "bob", PASS, url, codes[1], None, argon2=light)
        await bob.accept(alice.invite("bob"), "alice")
        await alice.sync()
        await alice.send("bob", "warm-up")
        await bob.sync()
        bob.take_new()
        send_s, receive_s = [], []
        for i in range(count):
            start = time.perf_counter()
            await alice.send("bob", f"message {i}")
            sent = time.perf_counter()
            await bob.sync()
            received = time.perf_counter()
            assert len(bob.take_new()) == 1
            send_s.append(sent - start)
            receive_s.append(received - sent)
        await alice.close()
        await bob.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    send_ms = statistics.median(send_s) * 1000
    receive_ms = statistics.median(receive_s) * 1000
    floor_ms = full_path_floor_us() / 1000
    return {
        "message": {
            "send_ms": round(send_ms, 2),
            "receive_ms": round(receive_ms, 2),
            "protocol_floor_ms": round(floor_ms, 3),
            "ratio": round((send_ms + receive_ms) / floor_ms, 1),
            "count": count,
        }
    }


def run(*, samples: int = 5, messages: int = 50) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="kluis-bench-client-"))
    try:
        result = _unlock_and_duress(root, samples)
        result.update(asyncio.run(_messages(root, messages)))
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


__all__ = ["run"]
