"""``kluis bench relay``: issue 3's relay workloads against a real server process on loopback.

The orchestrator (this module) creates activation codes in a fresh data directory with the storage
API, starts ``kluis server --insecure-loopback`` on port 0 as a separate process, reads its URL from
the announced stderr line, and runs each workload in load-generator processes (relay_load.py) that it
starts, synchronises and times. It samples the server's CPU time (/proc/<pid>/stat) and memory
(/proc/<pid>/status VmRSS) itself; each generator reports its own CPU time (getrusage), so
``cpu_pct = cpu seconds / wall seconds * 100`` for both sides of the same window.

- W1: ``pairs`` senders on anonymous send streams (each opened with the day's send pass fetched on
  the sender's own mailbox stream) to ``pairs`` receivers on mailbox streams; each sender keeps 32
  envelopes of 256 bytes in flight; receivers acknowledge each DELIVER frame with one RECEIPT.
  ``w1``: one envelope per SEND frame; ``w1_batched``: all free slots in one SEND frame.
- W2: the same shape paced at a fixed total rate (each sender on its own staggered schedule).
- W3: envelopes to offline accounts (store rate), then the accounts connect and drain.
- W4: authenticated connections held idle; server RSS growth per connection.

The bench stops on its own: every wait is bounded, the server is stopped by its PID (SIGTERM, then
SIGKILL), the generator processes are joined or terminated, the temporary directory is removed.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from kluis.bench.affinity import pin
from kluis.bench.relay_load import PAYLOAD_BYTES, raise_nofile, worker_main
from kluis.bench.services import BenchError, Deployment, Nodes, exit_on_sigterm

WORKLOADS = ("w1", "w1_batched", "w2", "w3", "w4")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True)
class Options:
    pairs: int = 50
    seconds: float = 20.0
    warmup: float = 5.0
    workers: int = 2
    w2_rate: float = 500.0
    w3_envelopes: int = 20_000
    w3_recipients: int = 20
    w3_streams: int = 20
    w3_rounds: int = 5
    """W3 runs this many times, each with its own fresh offline accounts; the median round is
    reported. One round stores 20,000 envelopes in about 0.2 s, a window where one stall of the
    machine moves the figure by a third (the same code gave 71-110k/s in twenty runs of one round)."""
    w4_connections: int = 10_000
    w4_seconds: float = 60.0
    workloads: tuple[str, ...] = WORKLOADS
    backend: str = "sqlite"
    database: str | None = None
    """An existing PostgreSQL database (``--database URL``); None starts a throwaway cluster."""
    nodes: int = 1
    redis: str | None = None
    """Redis for several nodes (``--redis URL``); None starts a throwaway redis-server."""
    pin: bool = True
    """Each node on a CPU of its own, the generators on the others (kluis.bench.affinity)."""


QUICK = Options(
    pairs=2,
    seconds=1.0,
    warmup=0.5,
    workers=1,
    w2_rate=40.0,
    w3_envelopes=200,
    w3_recipients=4,
    w3_streams=2,
    w3_rounds=2,
    w4_connections=50,
    w4_seconds=1.0,
)


def log(text: str) -> None:
    print(f"kluis bench relay: {text}", file=sys.stderr, flush=True)


async def _make_codes(target: str | Path, count: int) -> list[str]:
    """``count`` activation codes written straight into the storage (SQLite file or PostgreSQL URL)."""
    from kluis.server.codes import hash_code, new_code
    from kluis.server.storage import open_storage

    codes = [new_code() for _ in range(count)]
    storage = await open_storage(target, fsync=False)
    try:
        await storage.codes.add_codes([hash_code(c) for c in codes], 30)
    finally:
        await storage.close()
    return codes


# -- generator processes ------------------------------------------------------------------------


@dataclass
class Run:
    results: list[dict[str, Any]]
    server_cpu_s: float = 0.0
    services_cpu_s: float | None = None
    machine_cpu_s: float = 0.0
    marks: dict[str, int] | None = None


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine used (all cores; /proc/stat without idle and iowait)."""
    with Path("/proc/stat").open() as stat:
        ticks = [int(x) for x in stat.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLK_TCK


def _sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.monotonic()))


Target = Callable[[Connection, dict[str, Any]], None]


def _spawn(
    specs: list[dict[str, Any]], urls: list[str], target: Target, cpus: set[int] | None
) -> tuple[list[Any], list[Connection]]:
    ctx = multiprocessing.get_context("spawn")
    procs, conns = [], []
    for spec in specs:
        parent, child = ctx.Pipe()
        args = (child, {**spec, "url": urls[0], "urls": urls})
        proc = ctx.Process(target=target, args=args, daemon=True)
        proc.start()
        if cpus is not None and proc.pid is not None:
            pin(proc.pid, cpus)
        child.close()
        procs.append(proc)
        conns.append(parent)
    return procs, conns


def run_workers(
    server: Nodes,
    specs: list[dict[str, Any]],
    *,
    window: tuple[float, float] | None = None,
    on_mark: Callable[[tuple[Any, ...]], Any] | None = None,
    timeout: float,
    target: Target = worker_main,
) -> Run:
    """Starts one generator process per spec and serves their pipes until each reports.

    Each spec gets the nodes' ``urls`` (and ``url``, the first). With ``window`` = (warm-up, seconds),
    every generator starts at one shared instant, and the nodes' CPU time is sampled at the start and
    end of the measured window.
    """
    procs, conns = _spawn(specs, server.urls, target, server.generator_cpus)
    run = Run([])
    results: dict[Connection, dict[str, Any]] = {}
    ready: set[Connection] = set()
    try:
        deadline = time.monotonic() + timeout
        while len(results) < len(conns):
            if time.monotonic() > deadline:
                raise BenchError(f"generators did not finish within {timeout:.0f} s")
            for conn in wait([c for c in conns if c not in results], timeout=1.0):
                assert isinstance(conn, Connection)
                try:
                    message = conn.recv()
                except EOFError:
                    raise BenchError("a generator process exited without a result") from None
                if message[0] == "ready":
                    ready.add(conn)
                    if len(ready) == len(conns):
                        _start(conns, window, server, run)
                elif message[0] == "mark":
                    conn.send(on_mark(message[1:]) if on_mark else None)
                elif message[0] == "result":
                    results[conn] = message[1]
                else:
                    raise BenchError(f"generator failed: {message[1]}")
        run.results = [results[c] for c in conns]
        return run
    finally:
        finished = len(results) == len(conns)  # else a failure, a timeout or SIGTERM: no waiting
        for proc in procs:
            proc.join(timeout=10 if finished else 0.1)
            if proc.is_alive():
                proc.terminate()  # our own child, by its handle
                proc.join(timeout=5)


def _start(conns: list[Connection], window: tuple[float, float] | None, server: Nodes, run: Run) -> None:
    start = time.monotonic() + 0.5
    for conn in conns:
        conn.send(start)
    if window is not None:
        warmup, seconds = window
        _sleep_until(start + warmup)
        before, services, machine = server.cpu_seconds(), server.services_cpu(), machine_busy_seconds()
        _sleep_until(start + warmup + seconds)
        run.server_cpu_s = server.cpu_seconds() - before
        after = server.services_cpu()
        if services is not None and after is not None:
            run.services_cpu_s = after - services
        run.machine_cpu_s = machine_busy_seconds() - machine


def percentile_ms(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted seconds, in milliseconds (0 when there is no sample)."""
    if not ordered:
        return 0.0
    return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000, 3)


def _latencies(results: list[dict[str, Any]]) -> list[float]:
    merged = array("d")
    for r in results:
        merged.frombytes(r["latencies"])
    return sorted(merged)


def _pct(cpu_s: float, wall_s: float) -> float:
    return round(cpu_s / wall_s * 100, 1)


def _split(n: int, parts: int) -> list[int]:
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# -- workloads ----------------------------------------------------------------------------------


def _pairs(server: Nodes, opts: Options, codes: Iterator[str], mode: str, workers: int) -> dict[str, Any]:
    specs = []
    for share in _split(opts.pairs, workers):
        specs.append(
            {
                "kind": "pairs",
                "mode": mode,
                "codes": [next(codes) for _ in range(2 * share)],
                "warmup": opts.warmup,
                "seconds": opts.seconds,
                "rate": opts.w2_rate * share / opts.pairs,
            }
        )
    timeout = opts.warmup + opts.seconds + 120
    run = run_workers(server, specs, window=(opts.warmup, opts.seconds), timeout=timeout)
    ordered = _latencies(run.results)
    generator_cpu_s = sum(r["cpu_s"] for r in run.results)
    received = sum(r["received"] for r in run.results)
    acked = sum(r["acked"] for r in run.results)
    services_cpu_s = run.services_cpu_s or 0.0
    return {
        "msgs_per_s": round(sum(r["in_window"] for r in run.results) / opts.seconds, 1),
        "p50_ms": percentile_ms(ordered, 50),
        "p99_ms": percentile_ms(ordered, 99),
        "max_ms": percentile_ms(ordered, 100),
        "server_cpu_pct": _pct(run.server_cpu_s, opts.seconds),
        "generator_cpu_pct": _pct(generator_cpu_s, opts.seconds),
        "generator_processes": len(specs),
        # PostgreSQL and Redis, when the bench started them (None on SQLite: it runs inside the node).
        "database_cpu_pct": None if run.services_cpu_s is None else _pct(services_cpu_s, opts.seconds),
        # Everything else that ran meanwhile (another engineer's tests?): machine - ours.
        "other_cpu_pct": _pct(
            run.machine_cpu_s - run.server_cpu_s - generator_cpu_s - services_cpu_s, opts.seconds
        ),
        "sent": sum(r["sent"] for r in run.results),
        "acked": acked,
        "rejected": sum(r["rejected"] for r in run.results),
        "received": received,
        "lost": acked - received,
    }


def w1(server: Nodes, opts: Options, codes: Iterator[str], batched: bool) -> dict[str, Any]:
    result = _pairs(server, opts, codes, "batched" if batched else "single", opts.workers)
    del result["max_ms"]
    return result


def w2(server: Nodes, opts: Options, codes: Iterator[str]) -> dict[str, Any]:
    return _pairs(server, opts, codes, "paced", 1)  # one generator carries 500 msg/s easily


def _w3_round(server: Nodes, opts: Options, codes: Iterator[str]) -> dict[str, Any]:
    spec = {
        "kind": "store",
        "codes": [next(codes) for _ in range(1 + opts.w3_recipients)],
        "envelopes": opts.w3_envelopes,
        "streams": opts.w3_streams,
    }
    (r,) = run_workers(server, [spec], timeout=300).results
    return {
        "store_per_s": round(r["acked"] / r["store_s"], 1),
        "drain_per_s": round(r["received"] / r["drain_s"], 1),
        "lost": r["lost"],
        "stored": r["acked"],
        "received": r["received"],
        "duplicates": r["duplicates"],
        "store_s": round(r["store_s"], 3),
        "drain_s": round(r["drain_s"], 3),
    }


def w3(server: Nodes, opts: Options, codes: Iterator[str]) -> dict[str, Any]:
    """``w3_rounds`` rounds of W3; the store and drain rates are each the median round's, the counts
    are summed over the rounds, and every round is listed under ``rounds``."""
    rounds = [_w3_round(server, opts, codes) for _ in range(opts.w3_rounds)]
    return {
        "store_per_s": statistics.median_low(r["store_per_s"] for r in rounds),
        "drain_per_s": statistics.median_low(r["drain_per_s"] for r in rounds),
        **{key: sum(r[key] for r in rounds) for key in ("lost", "stored", "received", "duplicates")},
        "rounds": rounds,
    }


def w4(server: Nodes, opts: Options, codes: Iterator[str]) -> dict[str, Any]:
    spec = {
        "kind": "idle",
        "codes": [next(codes) for _ in range(opts.w4_connections)],
        "seconds": opts.w4_seconds,
    }
    rss: dict[str, int] = {}

    def mark(message: tuple[Any, ...]) -> None:
        rss[message[0]] = server.rss_kib()

    timeout = opts.w4_seconds + 600
    (r,) = run_workers(server, [spec], on_mark=mark, timeout=timeout).results
    growth = rss["after"] - rss["before"]
    return {
        "held": r["held"],
        "kib_per_conn": round(growth / r["held"], 2) if r["held"] else None,
        "connections": opts.w4_connections,
        "opened": r["opened"],
        "seconds": opts.w4_seconds,
        "rss_before_kib": rss["before"],
        "rss_after_kib": rss["after"],
        "register_s": round(r["register_s"], 2),
        "connect_s": round(r["connect_s"], 2),
    }


def _codes_needed(opts: Options) -> int:
    per = {"w1": 2 * opts.pairs, "w1_batched": 2 * opts.pairs, "w2": 2 * opts.pairs}
    per |= {"w3": opts.w3_rounds * (1 + opts.w3_recipients), "w4": opts.w4_connections}
    return sum(per[w] for w in opts.workloads)


def run(opts: Options) -> dict[str, Any]:
    """Runs the selected workloads; returns the JSON object ``kluis bench relay`` prints."""
    with exit_on_sigterm():
        return _run(opts)


def _run(opts: Options) -> dict[str, Any]:
    unknown = set(opts.workloads) - set(WORKLOADS)
    if unknown:
        raise BenchError(f"unknown workloads: {', '.join(sorted(unknown))}")
    nofile = raise_nofile()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="kluis-bench-relay-"))
    deployment = Deployment(
        tmp,
        backend=opts.backend,
        database=opts.database,
        nodes=opts.nodes,
        redis=opts.redis,
        max_connections=opts.w4_connections + 1000,
        pin=opts.pin,
    )
    out: dict[str, Any] = {}
    try:
        target = deployment.prepare()
        codes = iter(asyncio.run(_make_codes(target, _codes_needed(opts))))
        server = deployment.start_nodes()
        log(f"server pid(s) {' '.join(map(str, server.pids))} at {' '.join(server.urls)} ({opts.backend})")
        for name in WORKLOADS:
            if name not in opts.workloads:
                continue
            log(f"{name} ...")
            started = time.monotonic()
            if name in ("w1", "w1_batched"):
                out[name] = w1(server, opts, codes, batched=name == "w1_batched")
            elif name == "w2":
                out[name] = w2(server, opts, codes)
            elif name == "w3":
                out[name] = w3(server, opts, codes)
            else:
                out[name] = w4(server, opts, codes)
            log(f"{name} done in {time.monotonic() - started:.1f} s: {out[name]}")
    finally:
        deployment.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out["config"] = {
        **{
            k: v
            for k, v in asdict(replace(opts, workloads=())).items()
            if k not in ("workloads", "database", "redis")  # a URL may carry a password
        },
        **deployment.describe(),
        "workloads": list(opts.workloads),
        "payload_bytes": PAYLOAD_BYTES,
        "payload": "opaque bytes (send timestamp + filler), not sealed envelopes: the relay never opens them",
        "in_flight_per_sender": 32,
        "w1_connections": "each pair: receiver mailbox stream + anonymous send stream "
        "(the sender's own mailbox stream fetched the day's pass, then closed)",
        "server": "kluis server --insecure-loopback (separate process per node, default config, no fsync; "
        "KLUIS_SERVER_MAX_CONNECTIONS = w4_connections + 1000)",
        "registration": "over HTTP, concurrently, by the generator processes",
        "cpu_count": os.cpu_count(),
        "nofile_limit": nofile,
        "generator_cpu_s": "getrusage of each generator process, summed",
    }
    out["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    return out


__all__ = ["QUICK", "BenchError", "Options", "run", "run_workers"]
