"""The consumer worker against real servers: processing, sharing the load, retries, acks."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from consumer.health import start_health_server
from tests.handlers import call_log_key, calls_key, done_key
from tests.integration.consumer_support import keys_for, post, running, wait_for
from tests.servers import free_port

#: Also run against Redis over mutual TLS as the least-privilege ACL user, and against a Redis
#: Cluster with 6 partitions (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl", "cluster")


async def test_seed_orders_are_processed_once_and_acked(r, redis_url, names):
    keys = keys_for(names)
    async with running(redis_url, names, "consumer-1"):
        ids = [await post(r, keys, 1000 + i) for i in range(10)]

        async def all_acked():
            pend = await r.xpending(keys.stream, keys.group)
            markers = [await r.hgetall(keys.processed(str(1000 + i))) for i in range(10)]
            return pend["pending"] == 0 and all(markers) and markers
        markers = await wait_for(all_acked, what="10 orders processed and acked")
    assert [m["entry_id"] for m in markers] == ids
    assert {m["consumer"] for m in markers} == {"consumer-1"}
    assert [await r.get(calls_key(keys.stream, 1000 + i)) for i in range(10)] == ["1"] * 10
    group = (await r.xinfo_groups(keys.stream))[0]
    assert (group["pending"], group["last-delivered-id"]) == (0, ids[-1])


async def test_two_consumers_share_the_load(r, redis_url, names):
    keys = keys_for(names)
    # claim_idle_ms 2 s, not 200 ms: this test counts handler calls, and over TLS a delivery that
    # waits for a new pooled connection (handshake + AUTH on a busy machine) can sit idle past
    # 200 ms and be retried by the other consumer, an at-least-once redelivery, not a fault.
    async with running(redis_url, names, "consumer-1", "consumer-2", concurrency=4, read_count=5, claim_idle_ms=2000):
        for i in range(200):
            await post(r, keys, i, sleep_s=0.01)

        async def done():
            return (await r.xpending(keys.stream, keys.group))["pending"] == 0 and await r.llen(call_log_key(keys.stream)) == 200
        await wait_for(done, timeout=20, what="200 orders processed")
    owners = [(await r.hget(keys.processed(str(i)), "consumer")) for i in range(200)]
    counts = {name: owners.count(name) for name in ("consumer-1", "consumer-2")}
    assert sum(counts.values()) == 200
    assert counts["consumer-1"] >= 20 and counts["consumer-2"] >= 20, counts
    assert await r.llen(call_log_key(keys.stream)) == 200  # each handled once


async def test_failed_order_is_retried_after_its_backoff_then_acked(r, redis_url, names):
    keys = keys_for(names)
    async with running(redis_url, names, "consumer-1", claim_idle_ms=300, claim_interval_ms=100):
        entry = await post(r, keys, 7, fail_until=2)
        await wait_for(lambda: r.get(done_key(keys.stream, 7)), timeout=10, what="order 7 applied")
        await wait_for(lambda: _pending_is(r, keys, 0), what="order 7 acked")
    assert await r.get(calls_key(keys.stream, 7)) == "3"
    marker = await r.hgetall(keys.processed("7"))
    assert (marker["entry_id"], marker["consumer"]) == (entry, "consumer-1")
    assert await r.xlen(keys.dlq) == 0


async def _pending_is(r, keys, n):
    return (await r.xpending(keys.stream, keys.group))["pending"] == n


async def test_retry_waits_for_the_backoff_of_its_delivery_count(r, redis_url, names):
    keys = keys_for(names)
    async with running(redis_url, names, "consumer-1", claim_idle_ms=400, claim_interval_ms=20):
        await post(r, keys, 8, fail_until=2)
        await wait_for(lambda: _calls(r, keys, 8, 1), interval=0.01, what="first delivery")
        t1 = time.monotonic()
        await wait_for(lambda: _calls(r, keys, 8, 2), interval=0.01, what="second delivery")
        t2 = time.monotonic()
        await wait_for(lambda: _calls(r, keys, 8, 3), interval=0.01, what="third delivery")
        t3 = time.monotonic()
        await wait_for(lambda: r.get(done_key(keys.stream, 8)), what="applied")
    assert 0.36 <= t2 - t1 < 1.2   # 400 ms +-10 % after delivery 1
    assert 0.72 <= t3 - t2 < 1.8   # 800 ms +-10 % after delivery 2


async def test_probe_server_reports_health_readiness_and_metrics(r, redis_url, names):
    keys = keys_for(names)
    port = free_port()
    async with running(redis_url, names, "consumer-1", health_port=port, health_host="127.0.0.1") as (w,):
        runner = await start_health_server(w.worker, w.settings)
        try:
            await post(r, keys, 1)
            await wait_for(lambda: r.get(done_key(keys.stream, 1)), what="processed")
            await wait_for(lambda: _acked_metric(w.worker, 1), what="ack counted")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    live = (resp.status, await resp.json())
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    ready = resp.status
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    metrics = await resp.text()
                w.stop_event.set()  # shutdown begins: readiness goes false first
                await asyncio.sleep(0)
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    ready_after = resp.status
        finally:
            await runner.cleanup()
    assert live[0] == 200 and live[1]["consumer"] == "consumer-1"
    # Partitioned (the cluster kind): one entry per partition's worker under "partitions".
    per_worker = live[1]["partitions"] if names.cluster else [live[1]]
    assert [d["nogroup_incidents"] for d in per_worker] == [0] * names.partitions
    assert (ready, ready_after) == (200, 503)
    assert 'orderstream_orders_processed_total{component="consumer"} 1.0' in metrics
    assert 'orderstream_entries_acked_total{component="consumer"} 1.0' in metrics
    # Accepted -> processed: one observation, under a minute (it is one order on an idle stream).
    assert 'orderstream_order_latency_seconds_count{component="consumer"} 1.0' in metrics
    assert 'orderstream_order_latency_seconds_bucket{component="consumer",le="60.0"} 1.0' in metrics


async def _calls(r, keys, oid, n):
    return int(await r.get(calls_key(keys.stream, oid)) or 0) >= n


async def _acked_metric(worker, n):
    return worker.registry.get_sample_value("orderstream_entries_acked_total", {"component": "consumer"}) == n
