"""Orders per second with 1 and with 3 partitions on a local 3-master Redis Cluster (issue 13).

Starts three cluster nodes (``redis-server --cluster-enabled yes`` from PATH on free loopback
ports, AOF ``appendfsync everysec``, no replicas) and makes them one cluster with
``redis-cli --cluster create``. Then, for STREAM_PARTITIONS=1 and =3 (REDIS_CLUSTER=true, a
stream name of its own each):

* **ingest**: ``python -m producer``, and ``--orders`` orders posted through
  ``POST /orders/batch`` (100 an request, 8 in flight: :func:`streamcore.burst.post_burst`);
  orders/s = accepted ÷ seconds;
* **consume**: one ``python -m consumer`` with the no-op handler (``bench.noop:handle``) started
  on the filled stream; orders/s = orders ÷ seconds until every partition's group has nothing
  pending and no lag (``XINFO GROUPS``, polled every 50 ms).

Prints a table and, with ``--json FILE``, writes it. Run: ``.venv/bin/python bench/partitions.py``
(about a minute; ``--orders`` sets the size). Every process shares the machine's cores: with 3
partitions the three masters are three Redis processes, which is what lets them use more than
one core; on a 2-core machine the load generator and the producer compete with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.environ import clean_environ  # noqa: E402
from streamcore.burst import post_burst  # noqa: E402
from streamcore.keys import partition_keys  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def start_cluster(tmp: Path, masters: int = 3) -> tuple[list[subprocess.Popen], list[int]]:
    """``masters`` cluster nodes made one cluster; returns (processes, ports) once it is ok."""
    procs, ports = [], []
    for i in range(masters):
        port = free_cluster_port()
        data = tmp / f"node-{i}"
        data.mkdir()
        procs.append(subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--dir", str(data), "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL))
        ports.append(port)
    for port in ports:
        wait_ping(port)
    subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
                    *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"],
                   check=True, stdout=subprocess.DEVNULL, timeout=60)
    deadline = time.monotonic() + 30
    while True:
        states = [redis.Redis(port=p, decode_responses=True).cluster("info")["cluster_state"] for p in ports]
        if all(s == "ok" for s in states):
            return procs, ports
        if time.monotonic() > deadline:
            raise SystemExit(f"cluster not ok after 30 s: {states}")
        time.sleep(0.1)


def wait_ping(port: int, timeout_s: float = 10.0) -> None:
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            client.close()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def component(module: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env={**clean_environ(), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def backlog(client: redis.RedisCluster, stream: str, group: str, partitions: int) -> int:
    """Lag + pending over every partition (XINFO GROUPS)."""
    total = 0
    for keys in partition_keys(stream, group, f"{stream}:dlq", partitions, cluster=True):
        for g in client.xinfo_groups(keys.stream):
            if g["name"] == group:
                total += int(g["pending"]) + int(g.get("lag") or 0)
    return total


async def wait_http(url: str, timeout_s: float = 20.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer 200 within {timeout_s} s")
            await asyncio.sleep(0.1)


async def measure(seed_port: int, partitions: int, orders: int) -> dict:
    stream, group = f"bench-p{partitions}", "g"
    url = f"redis://127.0.0.1:{seed_port}/0"
    env = {"REDIS_URL": url, "REDIS_CLUSTER": "true", "STREAM_PARTITIONS": str(partitions), "STREAM_NAME": stream,
           "GROUP_NAME": group, "DLQ_STREAM": f"{stream}:dlq", "LOG_LEVEL": "WARNING", "STREAM_MAXLEN": str(orders * 2)}
    port = free_port()
    producer = component("producer", {**env, "PORT": str(port), "HOST": "127.0.0.1"})
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz")
        burst = await post_burst(f"http://127.0.0.1:{port}", orders, batch=100, concurrency=8, prefix=f"p{partitions}")
    finally:
        stop(producer)
    if burst.rejected:
        raise SystemExit(f"{len(burst.rejected)} batches refused with {partitions} partitions: {burst.rejected[:2]}")
    client = redis.RedisCluster(host="127.0.0.1", port=seed_port, decode_responses=True)
    started = time.monotonic()
    consumer = component("consumer", {**env, "POD_NAME": "c1", "HANDLER": "bench.noop:handle", "HEALTH_PORT": "0",
                                      "BLOCK_MS": "200"})
    try:
        while backlog(client, stream, group, partitions) > 0:
            if time.monotonic() - started > 300:
                raise SystemExit("the consumer did not drain within 300 s")
            time.sleep(0.05)
        consume_s = time.monotonic() - started
    finally:
        stop(consumer)
        client.close()
    return {"partitions": partitions, "orders": len(burst.accepted), "ingest_orders_per_s": round(burst.rate),
            "consume_orders_per_s": round(len(burst.accepted) / consume_s)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=50_000, help="orders per measurement (50000)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-partitions-") as tmp:
        procs, ports = start_cluster(Path(tmp))
        try:
            rows = [asyncio.run(measure(ports[0], n, args.orders)) for n in (1, 3)]
        finally:
            for proc in procs:
                stop(proc)
    print("| partitions (3-master cluster) | ingest, POST /orders/batch (orders/s) | consume, 1 consumer, no-op (orders/s) |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['partitions']} | {row['ingest_orders_per_s']:,} | {row['consume_orders_per_s']:,} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
