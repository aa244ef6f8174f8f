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
