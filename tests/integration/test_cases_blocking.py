"""Cases C12-C14 and C22: blocking reads, SIGTERM, Redis restarts, idle read rate — both servers."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from consumer.settings import ConsumerSettings
from tests.handlers import applied_key, calls_key
from tests.integration.consumer_support import (ConsumerProcess, keys_for, pending_rows, post, reclaimer_for, running,
                                                wait_for)


async def test_c12_block_shorter_than_socket_timeout_returns_empty_and_wakes_on_an_order(r, redis_url, names):
    keys = keys_for(names)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    try:
        await client.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
        started = time.monotonic()
        assert await client.xreadgroup(keys.group, "probe", {keys.stream: ">"}, count=1, block=1000) == []
        assert 0.9 <= time.monotonic() - started < 1.9
    finally:
        await client.aclose()
    async with running(redis_url, names, "pod-a", block_ms=1000) as (w,):
        await wait_for(lambda: _reads_at_least(w.worker, 2), what="two empty blocking reads")
        assert w.worker.last_error == ""
        await asyncio.sleep(0.4)  # mid-block
        posted = time.monotonic()
        await post(r, keys, 1)
        await wait_for(lambda: r.get(applied_key(keys.stream, 1)), what="order processed", interval=0.01)
        latency = time.monotonic() - posted
    assert latency < 0.5  # the blocked read returned with the order, not at the end of its BLOCK
    assert w.worker.last_error == ""


def test_c12_block_must_be_shorter_than_the_socket_timeout():
    with pytest.raises(ValidationError, match="BLOCK_MS"):
        ConsumerSettings(block_ms=15_000, redis_socket_timeout_s=15)
    assert ConsumerSettings().block_ms == 5000 and ConsumerSettings().redis_socket_timeout_s == 15


async def sigterm_and_wait(proc, timeout_s: float = 8) -> tuple[int, float]:
    """Send SIGTERM; return the exit code and the seconds it took to exit."""
    proc.signal(signal.SIGTERM)
    started = time.monotonic()
    code = await proc.wait(timeout=timeout_s)
    return code, time.monotonic() - started


async def test_c13_sigterm_mid_handler_finishes_and_acks_then_exits_0(r, redis_url, names):
    keys = keys_for(names)
    proc = ConsumerProcess(redis_url, names, "pod-term", DRAIN_TIMEOUT_SECONDS=5)
    try:
        entry = await post(r, keys, 7, sleep_s=1.0)
        await wait_for(lambda: r.get(calls_key(keys.stream, 7)), timeout=15, what="handler started")
        code, took = await sigterm_and_wait(proc)
        output = proc.output()
        assert code == 0, output
    finally:
        proc.close()
    assert took < 5
    assert await r.get(applied_key(keys.stream, 7)) == "1"
    assert await pending_rows(r, keys) == {}  # finished, then acked
    assert (await r.hgetall(keys.processed("7")))["entry_id"] == entry
    # Its PEL empty, it deleted its consumer (and heartbeat) from the group: issue 11 item 3.
    assert await r.xinfo_consumers(keys.stream, keys.group) == []
    assert await r.exists(keys.heartbeat("pod-term")) == 0
    assert "deleted its consumer from the group (PEL empty)" in output


async def test_c13_sigterm_past_the_drain_deadline_leaves_the_order_pending_unacked(r, redis_url, names):
    keys = keys_for(names)
    proc = ConsumerProcess(redis_url, names, "pod-term", DRAIN_TIMEOUT_SECONDS=0.5)
    try:
        entry = await post(r, keys, 8, sleep_s=30)
        await post(r, keys, 9)
        await wait_for(lambda: r.get(calls_key(keys.stream, 8)), timeout=15, what="slow handler started")
        await wait_for(lambda: r.get(applied_key(keys.stream, 9)), timeout=5, what="quick order done")
        code, took = await sigterm_and_wait(proc)
        output = proc.output()
        assert code == 0, output
    finally:
        proc.close()
    assert took < 3
    assert await r.get(applied_key(keys.stream, 8)) is None  # never applied ...
    assert await pending_rows(r, keys) == {entry: ("pod-term", 1)}  # ... and never acked
    # It owns an entry: it stays a member, so the entry keeps its owner until reclaimed (C08).
    assert [(c["name"], c["pending"]) for c in await r.xinfo_consumers(keys.stream, keys.group)] == [("pod-term", 1)]
    assert "its consumer stays in the group: its PEL still holds entries" in output


async def test_c13_sigterm_while_blocked_exits_promptly(r, redis_url, names):
    proc = ConsumerProcess(redis_url, names, "pod-idle", BLOCK_MS=5000)
    try:
        await wait_for(lambda: r.exists(keys_for(names).heartbeat("pod-idle")), timeout=15, what="worker up")
        await asyncio.sleep(0.3)
        code, took = await sigterm_and_wait(proc)
        assert code == 0, proc.output()
    finally:
        proc.close()
    assert took < 2  # the 5 s BLOCK is cancelled, not waited out


async def test_c14_read_loop_survives_a_redis_restart_and_liveness_tracks_it(own_redis_server, names):
    url = own_redis_server.url
    keys = keys_for(names)
    async with running(url, names, "pod-a", block_ms=300) as (w,):
        await wait_for(lambda: _reads_at_least(w.worker, 2), what="worker blocked")
        own_redis_server.restart()  # with AOF: the group survives
        r = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=15)
        try:
            await post(r, keys, 1)
            await wait_for(lambda: r.get(applied_key(keys.stream, 1)), timeout=10, what="order after restart")
            reads = w.worker.reads
            await wait_for(lambda: _reads_at_least(w.worker, reads + 2), what="blocked reads resumed")
            await wait_for(lambda: _blocked_clients(r), what="the worker blocked in XREADGROUP again")
            assert w.worker.live()[0] is True
            await r.aclose()
            own_redis_server.stop()
            await wait_for(lambda: _not_live(w.worker), timeout=10, what="liveness failing while Redis is down")
            assert w.worker.ready()[0] is False
            own_redis_server.start()
            r = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=15)
            await wait_for(lambda: _live(w.worker), timeout=15, what="liveness back")
            await post(r, keys, 2)
            await wait_for(lambda: r.get(applied_key(keys.stream, 2)), timeout=10, what="order after the outage")
        finally:
            await r.aclose()


async def test_c22_idle_worker_reads_once_per_block_and_reclaimer_sweeps_once(own_redis_server, names):
    url = own_redis_server.url
    keys = keys_for(names)
    r = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=15)
    try:
        async with running(url, names, "pod-a", block_ms=500, claim_interval_ms=1000) as (w,):
            await wait_for(lambda: _reads_at_least(w.worker, 1), what="worker idle in its read loop")
            await r.config_resetstat()
            await asyncio.sleep(3.0)
            stats = await r.info("commandstats")
        reads = stats["cmdstat_xreadgroup"]["calls"]
        assert 5 <= reads <= 8, reads  # 3 s / 500 ms = 6
        assert stats.get("cmdstat_xpending", {}).get("calls", 0) <= 4  # claim pass once a second
        await r.config_resetstat()
        summary = await reclaimer_for(r, names).run_once()
        stats = await r.info("commandstats")
    finally:
        await r.aclose()
    assert summary.claimed == 0
    assert stats["cmdstat_xautoclaim"]["calls"] == 1  # nothing to claim: one call, cursor 0-0


async def test_c22_a_permanently_failing_entry_never_stops_new_orders(r, redis_url, names):
    keys = keys_for(names)
    async with running(redis_url, names, "pod-a", max_deliveries=1000, claim_idle_ms=50, claim_interval_ms=50):
        await post(r, keys, 1, poison=True)
        await wait_for(lambda: _calls_at_least(r, keys, 1, 3), what="poison retried")
        for i in range(2, 22):
            await post(r, keys, i)
        await wait_for(lambda: _all_applied(r, keys, range(2, 22)), what="20 new orders while the poison retries")
        calls = int(await r.get(calls_key(keys.stream, 1)))
    assert calls >= 3
    rows = await pending_rows(r, keys)
    assert list(rows) == [await _first_id(r, keys)]


async def _first_id(r, keys):
    return (await r.xrange(keys.stream, count=1))[0][0]


async def _calls_at_least(r, keys, oid, n):
    return int(await r.get(calls_key(keys.stream, oid)) or 0) >= n


async def _all_applied(r, keys, order_ids):
    return all([await r.get(applied_key(keys.stream, i)) == "1" for i in order_ids])


async def _reads_at_least(worker, n):
    return worker.reads >= n


async def _blocked_clients(r):
    return (await r.info("clients"))["blocked_clients"] >= 1


async def _not_live(worker):
    return not worker.live()[0]


async def _live(worker):
    return worker.live()[0] and worker.state == "reading"
