"""Redis Sentinel failover under a steady flow of orders (issue 13).

One primary, two replicas and three Sentinels on loopback (down after 1 s). The producer and a
consumer run as processes on ``REDIS_SENTINELS``/``REDIS_SENTINEL_MASTER`` with
``REDIS_WAIT_REPLICAS=1``; a client posts orders (each with its Idempotency-Key, retried on 503
or a dropped connection as clients are told to) while the primary is SIGKILLed. Then: neither
process restarted, the Sentinels promoted a replica, every order answered 201 was applied once
(handler marker) on the new primary, and orders accepted after the promotion were processed too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import Names
from tests.handlers import applied_key
from tests.integration.consumer_support import HANDLER, ROOT, ConsumerProcess, wait_for
from tests.integration.test_wait_replicas import wait_in_sync
from tests.servers import RedisServer, SentinelServer, free_port, server_binary

MASTER = "orders-primary"


@pytest.fixture
def sentinel_setup(tmp_path):
    """(primary, [replica, replica], [sentinel x3]) in sync, the Sentinels aware of each other."""
    binary = server_binary("redis")
    if binary is None:
        pytest.skip("redis-server not found")
    started: list = []
    try:
        primary = RedisServer("redis", binary, tmp_path / "primary", appendonly=False,
                              extra_args=("--repl-diskless-sync-delay", "0"))
        primary.start()
        started.append(primary)
        replicas = []
        for i in (1, 2):
            replica = RedisServer("redis", binary, tmp_path / f"replica{i}", appendonly=False,
                                  extra_args=("--replicaof", "127.0.0.1", str(primary.port),
                                              "--repl-diskless-sync-delay", "0"))
            replica.start()
            started.append(replica)
            replicas.append(replica)
        for replica in replicas:
            wait_in_sync(replica)
        sentinels = []
        for i in (1, 2, 3):
            sentinel = SentinelServer(binary, tmp_path / f"sentinel{i}", MASTER, primary.port)
            sentinel.start()
            started.append(sentinel)
            sentinels.append(sentinel)
        deadline = time.monotonic() + 20
        while not all(int(s.master(MASTER)["num-other-sentinels"]) == 2 and int(s.master(MASTER)["num-slaves"]) == 2
                      for s in sentinels):
            assert time.monotonic() < deadline, "the Sentinels did not find each other and the replicas"
            time.sleep(0.1)
        yield primary, replicas, sentinels
    finally:
        for process in reversed(started):
            process.stop(**({"kill": True} if isinstance(process, RedisServer) else {}))


def stack_env(sentinels, names: Names) -> dict[str, str]:
    return {**names.env(), "REDIS_URL": "redis://sentinel-managed:6379/0",
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in sentinels), "REDIS_SENTINEL_MASTER": MASTER,
            "REDIS_SOCKET_TIMEOUT_S": "3", "BLOCK_MS": "1000", "REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "1000"}


class ProducerProcess:
    """``python -m producer`` on a free port; ended by its PID."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        full = {**os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1", "LOG_LEVEL": "INFO"}
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "producer"], cwd=ROOT, env=full, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, http: aiohttp.ClientSession, timeout_s: float = 20) -> None:
        """Poll ``/readyz`` until it answers 200 (the producer reached Redis and loaded its state).

        Raises:
            AssertionError: not ready within ``timeout_s`` seconds.
        """
        async def ready():
            try:
                async with http.get(f"{self.base}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False
        await wait_for(ready, timeout=timeout_s, what="producer ready")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


async def test_failover_keeps_every_accepted_order_and_nothing_restarts(sentinel_setup, names: Names):
    primary, replicas, sentinels = sentinel_setup
    env = stack_env(sentinels, names)
    producer = ProducerProcess(env)
    consumer = ConsumerProcess("redis://sentinel-managed:6379/0", names, "pod-a", **{k: v for k, v in env.items()
                                                                                    if k != "REDIS_URL"})
    producer_pid, consumer_pid = producer.proc.pid, consumer.proc.pid
    accepted: dict[int, float] = {}  # orderId -> when its 201 came (monotonic)
    refused = 0
    stop_flow = asyncio.Event()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await producer.wait_ready(http)

            async def post_until_accepted(order_id: int) -> None:
                nonlocal refused
                order = {"orderId": order_id, "product": "Laptop", "quantity": 1, "userId": 3}
                while True:
                    try:
                        async with http.post(f"{producer.base}/orders", json=order,
                                             headers={"Idempotency-Key": f"order-{order_id}"}) as resp:
                            if resp.status in (201, 202):
                                accepted[order_id] = time.monotonic()
                                return
                            assert resp.status == 503, (resp.status, await resp.text())
                            refused += 1
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        refused += 1
                    if stop_flow.is_set() and order_id not in accepted:
                        return
                    await asyncio.sleep(0.2)

            async def flow() -> None:
                order_id = 0
                tasks = []
                while not stop_flow.is_set():
                    order_id += 1
                    tasks.append(asyncio.create_task(post_until_accepted(order_id)))
                    await asyncio.sleep(0.02)
                await asyncio.gather(*tasks)

            flowing = asyncio.create_task(flow())
            async def accepted_since(t: float, n: int):
                return sum(1 for when in accepted.values() if when > t) >= n

            await wait_for(lambda: accepted_since(0, 30), timeout=20, what="30 orders accepted before the kill")
            primary.stop(kill=True)
            killed_at = time.monotonic()

            async def promoted():
                address = sentinels[0].master(MASTER)
                return int(address["port"]) != primary.port and "s_down" not in address["flags"] and address
            new = await wait_for(promoted, timeout=30, what="a replica promoted")
            promoted_at = time.monotonic()
            new_port = int(new["port"])
            await wait_for(lambda: accepted_since(promoted_at, 30), timeout=30, what="30 orders accepted after the promotion")
            stop_flow.set()
            await asyncio.wait_for(flowing, 30)

        r = aioredis.Redis(host="127.0.0.1", port=new_port, decode_responses=True, socket_timeout=5)
        try:
            async def all_applied():
                values = await r.mget([applied_key(names.stream, oid) for oid in sorted(accepted)])
                return all(values) and values
            applied = await wait_for(all_applied, timeout=30, what="every accepted order applied")
            assert set(applied) == {"1"}, "an accepted order was applied more than once"
            # Acks follow the handler in batches, and acks the old primary took but never replicated
            # come back as pending entries: the consumer's claim pass redelivers them, the marker
            # makes that a no-op, and they are acked on the new primary.
            async def nothing_pending():
                return (await r.xpending(names.stream, names.group))["pending"] == 0
            await wait_for(nothing_pending, timeout=30, what="the PEL empty on the new primary")
            in_stream = await r.xlen(names.stream)
            # Each order at most once in the stream: a 503'd append retried with its key replays.
            assert len(accepted) <= in_stream <= max(accepted)
        finally:
            await r.aclose()
        assert producer.proc.poll() is None and consumer.proc.poll() is None, "a service exited"
        assert (producer.proc.pid, consumer.proc.pid) == (producer_pid, consumer_pid)
        print(f"accepted {len(accepted)}, refused answers {refused}, promoted after "
              f"{promoted_at - killed_at:.1f}s, new primary :{new_port}, stream entries {in_stream}")
    finally:
        stop_flow.set()
        print("producer log tail:", producer.output()[-3000:])
        print("consumer log tail:", consumer.output()[-3000:])
        producer.close()
        consumer.close()


def test_an_unknown_master_name_exits_2_with_one_line(sentinel_setup, names: Names):
    _, _, sentinels = sentinel_setup
    env = {**os.environ, **stack_env(sentinels, names), "REDIS_SENTINEL_MASTER": "no-such-master", "HANDLER": HANDLER,
           "HEALTH_PORT": "0"}
    for command in ("consumer", "producer"):
        proc = subprocess.run([sys.executable, "-m", command], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=30)
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr == (f"python -m {command}: invalid setting REDIS_SENTINEL_MASTER='no-such-master': "
                               "no Sentinel of REDIS_SENTINELS monitors a master of that name\n")


async def test_a_primary_demoted_with_its_clients_connected_is_left_for_the_new_one(sentinel_setup, names: Names):
    """``FAILOVER`` (or ``REPLICAOF``) demotes the primary without killing its clients, so the
    producer's pooled connections stay open on what is now a replica. Its appends must get the
    ``READONLY`` reply as the reply to their command, which redis-py's Sentinel connection turns
    into a reconnect to the new primary. (Found by a breaker: with the append script answering
    ``READONLY`` inside its per-order reply array, every append stayed 503 until the producer was
    restarted.)"""
    primary, replicas, sentinels = sentinel_setup
    env = {k: v for k, v in stack_env(sentinels, names).items() if not k.startswith("REDIS_WAIT_")}
    producer = ProducerProcess(env)
    old = aioredis.Redis(host="127.0.0.1", port=primary.port, decode_responses=True, socket_timeout=5)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async def post(order_id: int) -> int:
                order = {"orderId": order_id, "product": "Laptop", "quantity": 1, "userId": 3}
                async with http.post(f"{producer.base}/orders", json=order) as resp:
                    return resp.status

            await producer.wait_ready(http)
            assert await post(1) == 201
            assert await old.execute_command("FAILOVER") == "OK"

            async def switched():
                address = sentinels[0].master(MASTER)
                return int(address["port"]) != primary.port and address
            new_port = int((await wait_for(switched, timeout=30, what="the Sentinels naming the new primary"))["port"])
            assert (await old.info("replication"))["role"] == "slave"
            statuses: list[int] = []

            async def accepted_again():
                statuses.append(await post(100 + len(statuses)))
                return statuses[-1] == 201
            await wait_for(accepted_again, timeout=5, interval=0.2, what="an order accepted by the new primary")
        new = aioredis.Redis(host="127.0.0.1", port=new_port, decode_responses=True, socket_timeout=5)
        try:
            last = [json.loads(fields["data"])["orderId"] for _, fields in await new.xrevrange(names.stream, count=1)]
        finally:
            await new.aclose()
        assert last == [99 + len(statuses)], statuses
        assert set(statuses[:-1]) <= {503}, statuses
        assert producer.proc.poll() is None, "the producer exited"
        print("statuses after the switch:", statuses)
    finally:
        await old.aclose()
        print("producer log tail:", producer.output()[-3000:])
        producer.close()
