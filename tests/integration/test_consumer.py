"""The consumer worker against real servers: processing, sharing the load, retries, acks."""

from __future__ import annotations

from tests.handlers import call_log_key, calls_key, done_key
from tests.integration.consumer_support import keys_for, post, running, wait_for


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
    async with running(redis_url, names, "consumer-1", "consumer-2", concurrency=4, read_count=5):
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
