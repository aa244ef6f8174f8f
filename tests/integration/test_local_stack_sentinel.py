"""``orderstream up --sentinel``: a primary, two replicas and three Sentinels under the local stack;
orders are processed, the primary is killed, a replica is promoted, and the stack goes on without
a restart (issue 13, item 8)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import redis

from streamcore.cli import SENTINEL_MASTER, SENTINEL_PORT_OFFSET, port_free
from tests.integration.test_local_stack import end_up, wait_processed, wait_ready
from tests.servers import free_port

pytestmark = pytest.mark.timeout(180)


def redis_port_block() -> int:
    """A port P with P..P+2 and the Sentinel ports P+20000..P+20002 free."""
    for _ in range(200):
        port = free_port()
        wanted = [port + i for i in range(3)] + [port + SENTINEL_PORT_OFFSET + i for i in range(3)]
        if port + SENTINEL_PORT_OFFSET + 2 < 65536 and all(port_free(p) for p in wanted):
            return port
    raise RuntimeError("no free port block")


async def post(session: aiohttp.ClientSession, base: str, order_id: int, deadline_s: float = 60) -> None:
    """POST one order with its Idempotency-Key until it is accepted (503 while there is no primary)."""
    body = {"orderId": order_id, "product": "Item", "quantity": 1, "userId": 1}
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            async with session.post(f"{base}/orders", json=body, headers={"Idempotency-Key": f"k{order_id}"}) as resp:
                if resp.status == 201:
                    return
                assert resp.status == 503, await resp.text()
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"order {order_id} never accepted"
        await asyncio.sleep(0.3)


async def test_up_sentinel_follows_a_failover(tmp_path: Path):
    port, redis_port = free_port(), redis_port_block()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PORT=str(port), FAILURE_RATE="0", PYTHONUNBUFFERED="1", REDIS_SOCKET_TIMEOUT_S="3",
               BLOCK_MS="1000")
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcore.cli", "up", "--sentinel", "--fixed", "--consumers", "1", "--redis-port",
         str(redis_port), "--data-dir", str(tmp_path / "data"), "--consumer-health-port", "0", "--grace", "10"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    async def collect() -> None:
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, proc.stdout.readline):
            lines.append(line.rstrip("\n"))
    reader = asyncio.create_task(collect())
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await wait_ready(session, base)
            for i in range(1, 6):
                await post(session, base, i)
            await wait_processed(session, base, range(1, 6))
            primary = redis.Redis(port=redis_port, socket_timeout=2)
            pid = int(primary.info("server")["process_id"])
            primary.close()
            os.kill(pid, signal.SIGKILL)  # a child of `up`, started by this test through it
            sentinel = redis.Redis(port=redis_port + SENTINEL_PORT_OFFSET, socket_timeout=2, decode_responses=True)
            deadline = time.monotonic() + 60
            while int(sentinel.sentinel_get_master_addr_by_name(SENTINEL_MASTER)[1]) == redis_port:
                assert time.monotonic() < deadline, "no promotion"
                await asyncio.sleep(0.2)
            sentinel.close()
            for i in range(6, 11):
                await post(session, base, i)
            await wait_processed(session, base, range(1, 11))
        assert not [line for line in lines if re.search(r"^(producer|consumer-1)\s*\| (exited|restarting)", line)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        end_up(proc)
        await reader
        proc.stdout.close()
        print("\n".join(lines[-40:]))
