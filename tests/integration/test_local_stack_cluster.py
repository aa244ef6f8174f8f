"""``orderstream up --cluster``: a local Redis Cluster of 3 masters and 3 replicas under the stack
(REDIS_CLUSTER=true, STREAM_PARTITIONS 3 by default); orders are spread over the partitions and
processed, a second ``up`` rejoins the same cluster from its ``nodes.conf`` and keeps them."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import redis

from streamcore.cli import CLUSTER_BUS_OFFSET, CLUSTER_NODES, port_free
from streamcore.keys import partition_keys, partition_of
from tests.integration.test_local_stack import end_up, wait_acked, wait_processed, wait_ready
from tests.integration.test_local_stack_sentinel import post
from tests.servers import free_cluster_port, free_port

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                                 reason="redis-server/redis-cli not found on PATH")]


def cluster_port_block() -> int:
    """A port P with P..P+5 and their cluster bus ports (+10000) free, P + 10005 below 65536."""
    for _ in range(200):
        port = free_cluster_port()
        wanted = [port + i for i in range(CLUSTER_NODES)]
        if wanted[-1] + CLUSTER_BUS_OFFSET < 65536 and all(
                port_free(p) and port_free(p + CLUSTER_BUS_OFFSET) for p in wanted):
            return port
    raise RuntimeError("no free port block")


class Up:
    """One ``orderstream up --cluster`` subprocess with its output collected in ``lines``."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, self.proc.stdout.readline):
            self.lines.append(line.rstrip("\n"))

    async def stop(self) -> int:
        """SIGTERM, wait (90 s), return the exit code; SIGKILL if it did not end."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            return await asyncio.to_thread(self.proc.wait, 90)
        finally:
            end_up(self.proc)
            await self.reader
            self.proc.stdout.close()
            print("\n".join(self.lines[-40:]))


async def test_up_cluster_spreads_orders_over_partitions_and_restarts_on_the_same_cluster(tmp_path: Path):
    port, redis_port = free_port(), cluster_port_block()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PORT=str(port), FAILURE_RATE="0", PYTHONUNBUFFERED="1", BLOCK_MS="1000",
               STREAM_NAME="ls-orders", GROUP_NAME="ls-group", DLQ_STREAM="ls-orders:dlq")
    for var in ("REDIS_URL", "STREAM_PARTITIONS", "REDIS_CLUSTER"):
        env.pop(var, None)
    argv = [sys.executable, "-m", "streamcore.cli", "up", "--cluster", "--fixed", "--consumers", "1", "--redis-port",
            str(redis_port), "--data-dir", str(tmp_path / "data"), "--consumer-health-port", "0", "--grace", "10"]
    up = Up(argv, env)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await wait_ready(session, base, deadline_s=90)
            for i in range(1, 13):
                await post(session, base, i)
            await wait_processed(session, base, range(1, 13))
            # The processed marker is written before the XACK (acks go in batches): wait for them.
            assert (await wait_acked(session, base))["count"] == 0
            info = await (await session.get(f"{base}/stream/info")).json()
        by_partition = [sum(1 for i in range(1, 13) if partition_of(str(i), 3) == p) for p in range(3)]
        assert (info["length"], [p["length"] for p in info["partitions"]]) == (12, by_partition)
        assert (info["groups"][0]["lag"], info["groups"][0]["pending"]) == (0, 0)
        assert any(re.search(rf"Redis Cluster ready on ports {redis_port}\.\.{redis_port + 5} .*STREAM_PARTITIONS=3", line)
                   for line in up.lines)
        # A real cluster: 3 masters, 3 replicas; each partition's stream on the master of its slot.
        node = redis.Redis(port=redis_port, socket_timeout=2, decode_responses=True)
        try:
            slots = node.cluster("SLOTS")
        finally:
            node.close()
        roles = []
        for p in range(redis_port, redis_port + CLUSTER_NODES):
            one = redis.Redis(port=p, socket_timeout=2, decode_responses=True)
            try:
                roles.append(one.info("replication")["role"])
            finally:
                one.close()
        assert (len(slots), sorted(roles)) == (3, ["master"] * 3 + ["slave"] * 3)
        for keys in partition_keys("ls-orders", "ls-group", "ls-orders:dlq", 3, cluster=True):
            owner = _owner(slots, keys.stream)
            direct = redis.Redis(port=owner, socket_timeout=2)
            try:
                assert direct.xlen(keys.stream) == by_partition[keys.partition]
            finally:
                direct.close()
        assert not [line for line in up.lines if re.search(r"^(producer|consumer-1)\s*\| (exited|restarting)", line)]
    finally:
        code = await up.stop()
    assert code == 0

    # The second start rejoins the cluster from nodes.conf (no create) and finds the orders.
    again = Up(argv, env)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await wait_ready(session, base, deadline_s=90)
            info = await (await session.get(f"{base}/stream/info")).json()
            assert (info["length"], info["groups"][0]["lag"]) == (12, 0)
            await post(session, base, 13)
            await wait_processed(session, base, [13])
    finally:
        code = await again.stop()
    assert code == 0


def _owner(slots, key: str) -> int:
    from redis.crc import key_slot

    slot = key_slot(key.encode())
    return next(int(entry[2][1]) for entry in slots if entry[0] <= slot <= entry[1])


@pytest.mark.parametrize(("flags", "env_extra", "message"), [
    (["--cluster"], {"REDIS_URL": "redis://127.0.0.1:1/0"},
     "orderstream up: --cluster starts its own Redis Cluster; unset REDIS_URL\n"),
    (["--cluster", "--sentinel"], {}, "orderstream up: --sentinel and --cluster exclude each other\n"),
    (["--cluster", "--redis-port", "55600"], {},
     "orderstream up: --cluster needs --redis-port (LOCAL_REDIS_PORT) at most 55530 (cluster bus ports are +10000)\n"),
])
def test_up_cluster_refuses_what_it_cannot_run_with_exit_2(tmp_path: Path, flags, env_extra, message):
    env = dict(os.environ, PORT=str(free_port()), CONSUMER_HEALTH_PORT="0", **env_extra)
    if "REDIS_URL" not in env_extra:
        env.pop("REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "streamcore.cli", "up", *flags, "--data-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (2, message, "")
