"""What REDIS_WAIT_REPLICAS=1 costs POST /orders (issue 13).

Starts a primary and one replica (``redis-server`` from PATH, loopback, free ports, AOF
``appendfsync everysec``), then ``python -m producer`` twice: with ``REDIS_WAIT_REPLICAS=0``
and ``=1``. Each is driven by ``--clients`` concurrent aiohttp clients (1 and 16 by default),
each posting one order after the other for ``--seconds``; every request's latency is recorded
(send to full answer). Prints one line per (K, clients): requests/s, p50 and p99 in ms; all
must be 201. Run: ``.venv/bin/python bench/wait_cost.py`` (about 1 minute).
"""

from __future__ import annotations

import argparse
import asyncio
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.environ import clean_environ  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(data: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    """A ``redis-server`` on a free loopback port; returns (process, port) once it answers PING."""
    port = free_port()
    data.mkdir(parents=True)
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(data), "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                             "--repl-diskless-sync-delay", "0", "--loglevel", "warning", *extra],
                            stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    return proc, port


def wait_replica_up(port: int) -> None:
    client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
    deadline = time.monotonic() + 20
    while client.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise TimeoutError("replica did not sync")
        time.sleep(0.05)
    client.close()


async def drive(base: str, clients: int, seconds: float) -> tuple[int, list[float]]:
    """``clients`` loops posting orders for ``seconds``; (requests, latencies in ms)."""
    latencies: list[float] = []
    end = time.monotonic() + seconds
    counter = 0

    async def one_client(session: aiohttp.ClientSession) -> None:
        nonlocal counter
        while time.monotonic() < end:
            counter += 1
            order = {"orderId": counter, "product": "Laptop", "quantity": 1, "userId": 1}
            started = time.perf_counter()
            async with session.post(f"{base}/orders", json=order) as resp:
                await resp.read()
                assert resp.status == 201, resp.status
            latencies.append((time.perf_counter() - started) * 1000)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(20):  # warm-up: connections, script load
            async with session.post(f"{base}/orders", json={"orderId": 0, "product": "w", "quantity": 1, "userId": 1}) as r:
                await r.read()
        await asyncio.gather(*(one_client(session) for _ in range(clients)))
    return len(latencies), latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


async def measure(redis_port: int, k: int, clients_list: list[int], seconds: float) -> list[dict]:
    port = free_port()
    env = {**clean_environ(), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "PORT": str(port), "HOST": "127.0.0.1",
           "REDIS_WAIT_REPLICAS": str(k), "REDIS_WAIT_TIMEOUT_MS": "1000", "LOG_LEVEL": "WARNING",
           "STREAM_NAME": f"bench-wait-{k}", "DLQ_STREAM": f"bench-wait-{k}:dlq"}
    proc = subprocess.Popen([sys.executable, "-m", "producer"], cwd=ROOT, env=env)
    rows = []
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with session.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("producer not ready")
                await asyncio.sleep(0.05)
        for clients in clients_list:
            count, lat = await drive(base, clients, seconds)
            rows.append({"k": k, "clients": clients, "rps": count / seconds, "p50": percentile(lat, 50),
                         "p99": percentile(lat, 99)})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="how long each (K, clients) runs")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16], help="concurrent clients")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        primary, pport = start_redis(Path(tmp) / "primary")
        replica, rport = start_redis(Path(tmp) / "replica", "--replicaof", "127.0.0.1", str(pport))
        try:
            wait_replica_up(rport)
            rows = []
            for k in (0, 1):
                rows += asyncio.run(measure(pport, k, args.clients, args.seconds))
        finally:
            for p in (replica, primary):
                p.terminate()
                p.wait(10)
    print("| REDIS_WAIT_REPLICAS | clients | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['k']} | {row['clients']} | {row['rps']:.0f} | {row['p50']:.2f} | {row['p99']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
