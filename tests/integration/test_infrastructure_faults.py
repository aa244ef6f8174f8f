"""Issue 9, items 3, 4 and 11: infrastructure faults are not the orders' fault — both servers.

* Item 3: CONCURRENCY far above the old fixed pool of 64 connections. Handlers used to fail with
  "Too many connections", which counted as deliveries and dead-lettered good orders.
* Item 4: Redis restarts while handlers run. A transient Redis error is waited out and the handler
  called again under the same delivery: no failure is counted, no delivery is added, and the
  outage shows in /healthz and /metrics while it lasts; consumers and the reclaimer loop recover
  without a restart.
* Item 11: SIGTERM under load. Every entry already read is finished and acknowledged within the
  drain deadline, then the process exits; repeated 50 times.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import redis.asyncio as aioredis

from streamcore import envelope
from streamcore.streams import ensure_group
from tests.handlers import applied_key, deliveries_key
from tests.integration.consumer_support import ROOT, ConsumerProcess, keys_for, post, wait_for


def _http_json(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? ([0-9.e+-]+)", line)
        if m and all(part in (m.group(1) or "") for part in want.split(",") if part):
            total += float(m.group(2))
    return total


async def _add_orders(r, keys, ids, **extra) -> None:
    async with r.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.xadd(keys.stream, envelope.encode({"orderId": i, "product": "x", "quantity": 1, "userId": 1, **extra}))
        await pipe.execute()


async def _all_applied(r, keys, ids) -> bool:
    async with r.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.get(applied_key(keys.stream, i))
        return all(v == "1" for v in await pipe.execute())


async def test_item3_concurrency_200_waits_for_connections_and_burns_no_delivery(r, redis_url, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    ids = list(range(400))
    await _add_orders(r, keys, ids, hold_s=0.3)
    proc = ConsumerProcess(redis_url, names, "pod-wide", HANDLER="tests.handlers:holds_connection",
                           CONCURRENCY=200, READ_COUNT=200, MAX_DELIVERIES=2, CLAIM_IDLE_MS=5000)
    try:
        await wait_for(lambda: _all_applied(r, keys, ids), timeout=40, what="all 400 orders applied")
        assert _metric(proc.health_port, "orderstream_orders_failed_total") == 0, proc.output()
        assert "Too many connections" not in proc.output()
    finally:
        proc.close()
    assert await r.xlen(keys.dlq) == 0
    assert set((await r.hgetall(deliveries_key(keys.stream))).values()) == {"1"}


async def test_item4_redis_restarts_cost_no_delivery_and_everyone_recovers(own_redis_server, names):
    url = own_redis_server.url
    keys = keys_for(names)
    r = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=15)
    consumer = ConsumerProcess(url, names, "pod-r", HANDLER="tests.handlers:redis_heavy", CONCURRENCY=50,
                               CLAIM_IDLE_MS=20_000, MAX_DELIVERIES=2, BLOCK_MS=300)
    reclaimer_log = tempfile.TemporaryFile()
    env = {**os.environ, **names.env(), "REDIS_URL": url, "HANDLER": "tests.handlers:redis_heavy",
           "CLAIM_IDLE_MS": "20000", "RECLAIM_INTERVAL_SECONDS": "0.2", "LOG_LEVEL": "INFO"}
    reclaimer = subprocess.Popen([sys.executable, "-m", "reclaimer", "--loop"], cwd=ROOT, env=env,
                                 stdout=reclaimer_log, stderr=subprocess.STDOUT)
    try:
        await ensure_group(r, keys)
        batches = []
        for round_ in range(3):
            ids = list(range(round_ * 300, round_ * 300 + 300))
            batches += ids
            await _add_orders(r, keys, ids, sleep_s=0.05)
            await wait_for(lambda: r.exists(applied_key(keys.stream, ids[0])), timeout=15, what="handlers running")
            await r.aclose()
            own_redis_server.stop(kill=True)  # mid-handler, mid-XREADGROUP; AOF fsync always: nothing lost
            await wait_for(lambda: _redis_down_reported(consumer.health_port), timeout=10,
                           what="/healthz reporting the outage")
            assert _metric(consumer.health_port, "orderstream_redis_up", component="consumer") == 0
            own_redis_server.start()
            r = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=15)
        await wait_for(lambda: _all_applied(r, keys, batches), timeout=60, what="every order applied after 3 restarts")
        await wait_for(lambda: _pending_zero(r, keys), timeout=20, what="everything acknowledged")
        status, health = _http_json(consumer.health_port, "/healthz")
        assert (status, health["redis_ok"]) == (200, True), health
        assert _metric(consumer.health_port, "orderstream_orders_failed_total") == 0, consumer.output()
        assert _metric(consumer.health_port, "orderstream_redis_errors_total") > 0
        passes_before = _reclaim_lines(reclaimer_log)
        await wait_for(lambda: _more_passes(reclaimer_log, passes_before + 2), timeout=10,
                       what="the reclaimer loop completing passes after the restarts")
        assert reclaimer.poll() is None
    finally:
        consumer.close()
        if reclaimer.poll() is None:
            reclaimer.kill()
        reclaimer.wait(10)
        reclaimer_log.close()
    try:
        assert await r.xlen(keys.dlq) == 0
        assert set((await r.hgetall(deliveries_key(keys.stream))).values()) == {"1"}, \
            "a Redis restart was counted as a delivery"
    finally:
        await r.aclose()


@pytest.mark.timeout(300)  # a hang guard for 50 process lifecycles (~1 s each idle, more on a loaded machine)
async def test_item11_sigterm_under_load_finishes_what_was_read_50_times(r, redis_url, names):
    """5,000 orders XADDed, SIGTERM 30 ms later, 50 times: every run exits 0 within the drain
    deadline, having handled and acknowledged every entry it read (its PEL is empty)."""
    keys = keys_for(names)
    await ensure_group(r, keys)
    drain_s = 10.0
    left_total = 0
    for run in range(50):
        proc = ConsumerProcess(redis_url, names, f"pod-{run}", DRAIN_TIMEOUT_SECONDS=drain_s, CLAIM_IDLE_MS=60_000,
                               HANDLER="consumer.handler:process_order", LOG_LEVEL="WARNING")
        try:
            await wait_for(lambda: r.exists(keys.heartbeat(f"pod-{run}")), timeout=20, what="worker up")
            await _add_orders(r, keys, range(run * 5000, run * 5000 + 5000))
            await asyncio.sleep(0.03)
            proc.signal(signal.SIGTERM)
            started = time.monotonic()
            code = await proc.wait(timeout=drain_s + 5)
            took = time.monotonic() - started
            assert code == 0, proc.output()
            assert took < drain_s + 2.5, f"run {run}: exit took {took:.1f}s"
            info = {c["name"]: c["pending"] for c in await r.xinfo_consumers(keys.stream, keys.group)}
            left_total += info.get(f"pod-{run}", 0)
        finally:
            proc.close()
    assert left_total == 0, "entries read before SIGTERM were left unprocessed"


async def _redis_down_reported(port: int) -> bool:
    status, health = _http_json(port, "/healthz")
    return health.get("redis_ok") is False and health.get("redis_down_seconds", 0) > 0


async def _pending_zero(r, keys) -> bool:
    return (await r.xpending(keys.stream, keys.group))["pending"] == 0


def _reclaim_lines(log) -> int:
    log.seek(0)
    return log.read().decode(errors="replace").count("reclaim: claimed=")


async def _more_passes(log, n: int) -> bool:
    return _reclaim_lines(log) >= n


async def test_cancelling_a_task_that_waits_for_redis_ends_the_task(redis_url):
    """A Redis client that loses a task cancellation leaves the task running for ever. redis-py
    8.0 to 8.2 do, now and then, even on a client with no socket timeout: a task cancelled while
    its EVALSHA is in flight goes on as if nothing happened, hence ``redis<8`` in pyproject.toml.
    (With a socket timeout, Python 3.11 itself loses some, with every redis-py: the components
    do not count on cancelling a task in the middle of a command to stop it; the reclaimer's
    lease renewer stops on an event, the consumer's reads and lanes are awaited with a bound.)

    200 tasks calling a script in a loop, each cancelled after 1 to 7 ms: each must end,
    cancelled, within 2 s.
    """
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    ping = r.register_script("return redis.call('PING')")

    async def calls() -> None:
        while True:
            await ping(keys=[], args=[], client=r)

    try:
        for trial in range(200):
            task = asyncio.create_task(calls())
            await asyncio.sleep(0.001 * (trial % 7 + 1))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2)
            assert done, f"task {trial} still running 2 s after cancel(): {task!r}"
            assert task.cancelled()
    finally:
        await r.aclose()



def test_a_write_uvloop_refuses_after_a_reset_is_a_transient_redis_error(redis_url):
    """The components run on uvloop, which closes a transport as soon as it reads a connection
    reset and answers the next write on it with ``RuntimeError: ... the handler is closed``, where
    asyncio's loop drops the write and lets the read fail with ConnectionError. redis-py passes the
    RuntimeError on unchanged, so a Redis restart between two writes of one command sequence (the
    CLIENT SETINFO pair redis-py sends on connect, each write in its own task when a socket timeout
    is set) counted as a failed delivery: seen once in test_item4 on a slow run. Here the reset is
    made on purpose: the client's transport is aborted as uvloop does on reading the RST."""
    import uvloop

    from streamcore.connection import is_transient

    async def write_after_a_reset() -> BaseException:
        r = aioredis.Redis.from_url(redis_url, single_connection_client=True, socket_timeout=5)
        try:
            assert await r.ping() is True
            r.connection._writer.transport.abort()
            with pytest.raises(RuntimeError, match="the handler is closed") as caught:
                await r.ping()
            assert await r.ping() is True  # redis-py dropped that connection and made a new one
            return caught.value
        finally:
            await r.aclose()

    loop = uvloop.new_event_loop()
    try:
        refused = loop.run_until_complete(write_after_a_reset())
    finally:
        loop.close()
    assert is_transient(refused)
    assert not is_transient(RuntimeError("unable to perform operation on <TCPTransport closed=True>; "
                                         "the handler is closed"))  # not through redis-py: the handler's own


class _LoseOneReply:
    """A TCP proxy on loopback in front of Redis that, once, lets a command that ``matches`` run
    and then cuts the client's connection instead of passing on its reply (when the reply is not
    nil): what a Redis restart or a network cut at that moment does. redis-py's retry then sends
    the command again on a new connection and succeeds, so the caller sees no error."""

    def __init__(self, target_port: int, matches) -> None:
        self.target_port = target_port
        self.matches = matches
        self.cut = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        sent = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self.matches(data):
                    sent.set()
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                delivers = not data.startswith((b"*-1", b"_", b"*0"))  # nil or empty: nothing lost
                if sent.is_set() and delivers and not self.cut.is_set():
                    self.cut.set()
                    client_w.transport.abort()  # Redis ran it; its reply is gone
                    return
                sent.clear()
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            server_w.close()
            client_w.close()


def _read_new(data: bytes) -> bool:
    return b"XREADGROUP" in data and b"\r\n>\r\n" in data


def _claim_not_renew(data: bytes) -> bool:
    return b"XCLAIM" in data and b"JUSTID" not in data


@contextlib.asynccontextmanager
async def _worker_behind(proxy: _LoseOneReply, names, name: str, **overrides):
    """A consumer (our client: create_redis, with its CountingRetry) reaching Redis through ``proxy``."""
    from consumer.worker import Worker
    from streamcore.connection import create_redis
    from tests.integration.consumer_support import settings_for

    url = await proxy.start()
    client = create_redis(url, socket_timeout_s=5)
    worker = Worker(settings_for(url, names, name, handler="tests.handlers:redis_heavy", **overrides), client)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_for(lambda: _true(worker.state == "reading"), timeout=10, what="the consumer reading")
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await client.aclose()
        await proxy.close()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def test_a_read_reply_lost_and_retried_by_redis_py_is_taken_up_at_once_as_delivery_1(r, redis_url, names):
    """An XREADGROUP that Redis ran but whose reply was lost, then retried by redis-py on a new
    connection without an error reaching the consumer: its entries sat in the consumer's PEL with
    no handler until the claim pass took them CLAIM_IDLE_MS later as delivery 2 (a breaker saw
    it with Redis killed and restarted within redis-py's retry window). The consumer now notices
    the retry (streamcore.connection.CountingRetry) and takes them up at once, as delivery 1."""
    keys = keys_for(names)
    await ensure_group(r, keys)
    proxy = _LoseOneReply(_port(redis_url), _read_new)
    async with _worker_behind(proxy, names, "pod-cut", claim_idle_ms=30_000, block_ms=300) as worker:
        await _add_orders(r, keys, [1, 2, 3])
        await wait_for(lambda: _true(proxy.cut.is_set()), timeout=10, what="a read reply cut")
        await wait_for(lambda: _all_applied(r, keys, [1, 2, 3]), timeout=10,
                       what="the orders of the lost reply applied long before CLAIM_IDLE_MS (30 s)")
        await wait_for(lambda: _pending_zero(r, keys), timeout=10, what="everything acknowledged")
    assert await r.hgetall(deliveries_key(keys.stream)) == {"1": "1", "2": "1", "3": "1"}
    assert worker.metrics.claimed.labels("consumer")._value.get() == 0


async def _true(value: bool) -> bool:
    return value


async def test_a_claim_reply_lost_and_retried_by_redis_py_is_handled_not_dead_lettered(r, redis_url, names):
    """An XCLAIM that Redis ran but whose reply was lost, then retried by redis-py: the retry
    returns nothing (the first attempt reset the entry's idle time), which the claim pass takes
    for a claim race lost to another consumer, so the entry sat in our PEL at its new delivery
    count with no handler, and the next claim pass dead-lettered it at MAX_DELIVERIES without its
    handler ever having run (a breaker's finding). It is now taken up and handled."""
    keys = keys_for(names)
    await ensure_group(r, keys)
    await _add_orders(r, keys, [1])
    await r.xreadgroup(keys.group, "pod-gone", {keys.stream: ">"})  # delivery 1, then pod-gone died
    proxy = _LoseOneReply(_port(redis_url), _claim_not_renew)
    async with _worker_behind(proxy, names, "pod-claim", claim_idle_ms=300, claim_interval_ms=100, block_ms=300,
                              max_deliveries=2):
        await wait_for(lambda: _true(proxy.cut.is_set()), timeout=10, what="a claim reply cut")
        await wait_for(lambda: _all_applied(r, keys, [1]), timeout=10, what="the claimed order handled")
        await wait_for(lambda: _pending_zero(r, keys), timeout=10, what="acknowledged")
    assert await r.xlen(keys.dlq) == 0
    assert await r.hgetall(deliveries_key(keys.stream)) == {"1": "2"}  # pod-gone's delivery, then ours
