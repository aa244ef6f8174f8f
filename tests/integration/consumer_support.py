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
from consumer.worker import Worker
from streamcore import envelope
from streamcore.keys import Keys
from streamcore.streams import Scripts, append_order
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
HANDLER = "tests.handlers:scripted"


def keys_for(names) -> Keys:
    return Keys(stream=names.stream, group=names.group, dlq=names.dlq)


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
    values = dict(redis_url=url, stream_name=names.stream, group_name=names.group, dlq_stream=names.dlq,
                  pod_name=name, handler=HANDLER, claim_idle_ms=200, block_ms=500, health_port=0,
                  drain_timeout_seconds=5)
    values.update(overrides)
    return ConsumerSettings(**values)


class RunningWorker:
    """A :class:`Worker` running as an asyncio task with its own client and stop event."""

    def __init__(self, settings: ConsumerSettings, handler=None) -> None:
        self.settings = settings
        self.client = aioredis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True, encoding_errors="surrogateescape",
                                              socket_timeout=settings.redis_socket_timeout_s, **settings.tls_files)
        self.worker = Worker(settings, self.client, handler=handler)
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.worker.run(self.stop_event))

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
    """An in-process :class:`reclaimer.reclaim.Reclaimer` on the given client."""
    from reclaimer.reclaim import Reclaimer
    from reclaimer.settings import ReclaimerSettings

    values = dict(stream_name=names.stream, group_name=names.group, dlq_stream=names.dlq, handler=HANDLER,
                  claim_idle_ms=200)
    if not isinstance(url_or_client, str):  # a client made by the test: the TLS settings are not used
        values.update(redis_tls_ca_file=None, redis_tls_cert_file=None, redis_tls_key_file=None)
    values.update(overrides)
    return Reclaimer(ReclaimerSettings(**values), url_or_client)


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
