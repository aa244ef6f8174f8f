"""Helpers for consumer/reclaimer tests: post orders, run workers in-process or as processes, poll."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

from consumer.settings import ConsumerSettings
from consumer.worker import PartitionedWorker, Worker
from streamcore import envelope
from streamcore.connection import create_redis
from streamcore.keys import Keys, partition_keys, partition_of
from streamcore.streams import Scripts, append_order
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
HANDLER = "tests.handlers:scripted"


def keys_for(names) -> Keys:
    """The key names a test's own entries use: the names themselves, or on the ``cluster`` kind
    the keys of the test's home partition (``names.home``) of the partitioned layout."""
    if names.cluster:
        return partition_keys(names.stream, names.group, names.dlq, names.partitions, cluster=True)[names.home]
    return Keys(stream=names.stream, group=names.group, dlq=names.dlq)


def order_keys(names, order_id: object) -> Keys:
    """The keys of the partition the producer routes ``order_id`` to (``partition_of``): on the
    ``cluster`` kind, where an order the test sends through the API lands; else the test's keys."""
    if names.cluster:
        parts = partition_keys(names.stream, names.group, names.dlq, names.partitions, cluster=True)
        return parts[partition_of(str(order_id), names.partitions)]
    return keys_for(names)


async def post(r: aioredis.Redis, keys: Keys, order_id: int, **extra) -> str:
    """Append one order the way the producer does; returns its entry ID."""
    order = {"orderId": order_id, "product": "Laptop", "quantity": 2, "userId": 42, **extra}
    res = await append_order(r, keys, envelope.encode(order), str(order_id), scripts=Scripts(r))
    return res.entry_id


async def wait_for(check: Callable[[], Awaitable[object]], *, timeout: float = 10.0, interval: float = 0.05,
                   what: str = "condition"):
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value {last!r})")


def settings_for(url: str, names, name: str, **overrides) -> ConsumerSettings:
    values = dict(redis_url=url, **names.settings(),
                  pod_name=name, handler=HANDLER, claim_idle_ms=200, block_ms=500, health_port=0,
                  drain_timeout_seconds=5)
    values.update(overrides)
    return ConsumerSettings(**values)


class RunningWorker:
    """A :class:`Worker` running as an asyncio task with its own client and stop event."""

    def __init__(self, settings: ConsumerSettings, handler=None) -> None:
        self.settings = settings
        url = settings.redis_url.get_secret_value()
        if settings.redis_cluster:  # every partition, as python -m consumer runs them
            self.client = create_redis(url, cluster=True, socket_timeout_s=settings.redis_socket_timeout_s)
            self.worker = PartitionedWorker(settings, self.client, parts=settings.partitions, handler=handler)
        else:
            self.client = aioredis.Redis.from_url(url, decode_responses=True, encoding_errors="surrogateescape",
                                                  socket_timeout=settings.redis_socket_timeout_s, **settings.tls_files)
            self.worker = Worker(settings, self.client, handler=handler)
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.worker.run(self.stop_event))

    @property
    def home(self) -> Worker:
        """The :class:`Worker` that reads the test's own entries: the worker itself, or on the
        ``cluster`` kind the one of the test's home partition (``names.home``)."""
        if isinstance(self.worker, PartitionedWorker):
            return self.worker.workers[partition_of(self.settings.stream_name, self.settings.stream_partitions)]
        return self.worker

    async def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        try:
            await asyncio.wait_for(self.task, timeout)
        finally:
            await self.client.aclose()


@contextlib.asynccontextmanager
async def running(url: str, names, *consumer_names: str, handler=None, **overrides):
    """Run one in-process worker per name; stop and drain them all at the end."""
    workers = [RunningWorker(settings_for(url, names, n, **overrides), handler) for n in consumer_names or ("pod-a",)]
    try:
        yield workers
    finally:
        for w in workers:
            if not w.task.done():
                await w.stop()
            else:
                await w.client.aclose()
                w.task.result()


class ConsumerProcess:
    """``python -m consumer`` as a child process (for SIGKILL/SIGTERM/crash cases); ended by its PID."""

    def __init__(self, url: str, names, name: str, **env: object) -> None:
        self.health_port = free_port()
        full = dict(os.environ)
        full.update(names.env())
        full.update({"REDIS_URL": url, "POD_NAME": name, "HANDLER": HANDLER, "CLAIM_IDLE_MS": "200",
                     "BLOCK_MS": "500", "HEALTH_PORT": str(self.health_port), "HEALTH_HOST": "127.0.0.1",
                     "LOG_LEVEL": "INFO"})
        full.update({k: str(v) for k, v in env.items()})
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "consumer"], cwd=ROOT, env=full,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"consumer pid {self.proc.pid} still running after {timeout}s")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


def reclaimer_for(url_or_client, names, **overrides):
    """An in-process :class:`reclaimer.reclaim.Reclaimer` on the given client; on the ``cluster``
    kind a :class:`~reclaimer.reclaim.PartitionedReclaimer` over every partition, as
    ``python -m reclaimer`` runs there."""
    from reclaimer.reclaim import PartitionedReclaimer, Reclaimer
    from reclaimer.settings import ReclaimerSettings

    values = dict(**names.settings(), handler=HANDLER, claim_idle_ms=200)
    if not isinstance(url_or_client, str):  # a client made by the test: the TLS settings are not used
        values.update(redis_tls_ca_file=None, redis_tls_cert_file=None, redis_tls_key_file=None)
    values.update(overrides)
    settings = ReclaimerSettings(**values)
    if names.cluster:
        return PartitionedReclaimer(settings, url_or_client, parts=settings.partitions)
    return Reclaimer(settings, url_or_client)


def per_partition(reclaimer) -> list:
    """The one-stream :class:`~reclaimer.reclaim.Reclaimer` s of a reclaimer made by
    :func:`reclaimer_for`: itself, or on the ``cluster`` kind one per partition."""
    return getattr(reclaimer, "reclaimers", [reclaimer])


async def pending_ids(r, keys, consumer=None) -> list[str]:
    rows = await r.xpending_range(keys.stream, keys.group, "-", "+", 1000, consumername=consumer)
    return [row["message_id"] for row in rows]


async def pending_rows(r, keys) -> dict[str, tuple[str, int]]:
    """entry ID -> (owner, deliveries) from XPENDING."""
    rows = await r.xpending_range(keys.stream, keys.group, "-", "+", 1000)
    return {row["message_id"]: (row["consumer"], row["times_delivered"]) for row in rows}


async def wait_idle(r, keys, ms: int, count: int) -> None:
    """Wait until ``count`` pending entries have been idle at least ``ms``."""
    async def check():
        return len(await r.xpending_range(keys.stream, keys.group, "-", "+", 1000, idle=ms)) >= count
    await wait_for(check, what=f"{count} entries idle {ms}ms")
