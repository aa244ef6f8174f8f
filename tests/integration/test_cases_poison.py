"""C21 and the poison scenario of issue 2: exactly MAX_DELIVERIES deliveries, then the DLQ, while
other orders keep flowing; and a consumer killed with SIGKILL loses nothing — both servers."""

from __future__ import annotations

import asyncio
import json
import signal

from streamcore.streams import ensure_group
from tests.handlers import applied_key, calls_key, safe
from tests.integration.consumer_support import (ConsumerProcess, keys_for, pending_rows, post, reclaimer_for, running,
                                                wait_for)

#: Also against Redis over mutual TLS with the ACL user of streamcore.acl, and against a Redis Cluster
#: with 6 partitions (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl", "cluster")


async def test_poison_order_reaches_the_dlq_after_exactly_max_deliveries_while_others_flow(r, redis_url, names):
    keys = keys_for(names)
    async with running(redis_url, names, "consumer-1", "consumer-2", max_deliveries=3, claim_idle_ms=100,
                       claim_interval_ms=50):
        poison = await post(r, keys, 13, poison=True, items=[{"sku": "x", "note": None}])
        normal = []
        poison_calls = []  # the poison's delivery count as each normal order was posted
        while not await r.xlen(keys.dlq):
            normal.append(len(normal) + 100)
            await post(r, keys, normal[-1])
            poison_calls.append(await r.get(calls_key(keys.stream, 13)))
            await asyncio.sleep(0.02)
            assert len(normal) < 500, "poison order never dead-lettered"
        await wait_for(lambda: _all_applied(r, keys, normal), what="every normal order applied")
        await wait_for(lambda: _no_pending(r, keys), what="all acked")
    assert await r.get(calls_key(keys.stream, 13)) == "3"
    dlq = await r.xrange(keys.dlq)
    assert len(dlq) == 1
    f = dlq[0][1]
    assert (f["source_id"], f["deliveries"], f["order_id"], f["source_stream"]) == (poison, "3", "13", keys.stream)
    assert json.loads(f["data"]) == {"orderId": 13, "product": "Laptop", "quantity": 2, "userId": 42, "poison": True,
                                     "items": [{"sku": "x", "note": None}]}
    # Orders kept arriving during the retries (each wait for a retry lasts at least CLAIM_IDLE_MS,
    # 100 ms, five posting periods), and all were applied once.
    assert {"1", "2"} <= set(poison_calls), poison_calls
    assert [await r.get(applied_key(keys.stream, i)) for i in normal] == ["1"] * len(normal)


async def test_c21_poison_that_kills_the_worker_gets_exactly_n_attempts(r, redis_url, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    env = dict(MAX_DELIVERIES=3, CONCURRENCY=1, READ_COUNT=1, CLAIM_IDLE_MS=60_000)
    starts = 1
    pod_a = ConsumerProcess(redis_url, names, "pod-a", **env)
    try:
        poison = await post(r, keys, 21, crash=True)
        assert await pod_a.wait(timeout=20) == 3  # the first attempt killed it
        async with running(redis_url, names, "pod-b", handler=safe, claim_idle_ms=60_000) as (b,):
            await wait_for(lambda: _state(b.home, "reading"), what="pod-b reading")
            flowing = []
            while not await r.xlen(keys.dlq):
                flowing.append(1000 + len(flowing))
                await post(r, keys, flowing[-1])
                if pod_a.proc.poll() is not None:  # the Deployment restarts the pod under the same name
                    pod_a.close()
                    assert starts < 6, "poison never dead-lettered"
                    pod_a = ConsumerProcess(redis_url, names, "pod-a", **env)
                    starts += 1
                await asyncio.sleep(0.1)
            await wait_for(lambda: _all_applied(r, keys, flowing), timeout=15, what="other orders kept flowing")
        pod_a.signal(signal.SIGTERM)
        assert await pod_a.wait(timeout=10) == 0
    finally:
        pod_a.close()
    assert starts == 4  # 3 crashing attempts, then a start that dead-letters without a 4th delivery
    assert await r.get(calls_key(keys.stream, 21)) == "3"
    (dlq_id, f), = await r.xrange(keys.dlq)
    assert (f["source_id"], f["deliveries"], f["order_id"]) == (poison, "3", "21")
    assert json.loads(f["data"])["crash"] is True
    assert poison not in await pending_rows(r, keys)
    assert await r.get(keys.dlq_index("21")) == dlq_id


async def test_consumer_killed_with_sigkill_loses_nothing(r, redis_url, names):
    keys = keys_for(names)
    pod_a = ConsumerProcess(redis_url, names, "pod-a", CLAIM_IDLE_MS=300)
    try:
        quick = [await post(r, keys, i) for i in range(5)]
        await wait_for(lambda: _all_applied(r, keys, range(5)), timeout=20, what="pod-a processed 5 orders")
        slow = [await post(r, keys, 10 + i, sleep_s=3) for i in range(10)]
        await wait_for(lambda: _all_called(r, keys, range(10, 20)), what="pod-a holding 10 orders")
        pod_a.signal(signal.SIGKILL)
        assert await pod_a.wait(timeout=5) == -signal.SIGKILL
    finally:
        pod_a.close()
    rows = await pending_rows(r, keys)
    # The slow ones were in flight; quick ones may have been applied but not yet acked (acks are batched).
    assert set(slow) <= set(rows) <= set(quick + slow) and {owner for owner, _ in rows.values()} == {"pod-a"}
    async with running(redis_url, names, "pod-b", claim_idle_ms=300, claim_interval_ms=100):
        await wait_for(lambda: _all_applied(r, keys, range(10, 20)), timeout=20, what="pod-b took over")
        await wait_for(lambda: _no_pending(r, keys), what="all acked")
    ids = quick + slow
    order_ids = list(range(5)) + list(range(10, 20))
    assert [await r.get(applied_key(keys.stream, i)) for i in order_ids] == ["1"] * 15
    markers = [await r.hgetall(keys.processed(str(i))) for i in order_ids]
    assert [m["entry_id"] for m in markers] == ids
    assert {m["consumer"] for m in markers[:5]} == {"pod-a"} and {m["consumer"] for m in markers[5:]} == {"pod-b"}
    assert await r.xlen(keys.dlq) == 0


async def test_orders_of_a_killed_consumer_are_finished_by_the_reclaimer(r, redis_url, names):
    keys = keys_for(names)
    pod_a = ConsumerProcess(redis_url, names, "pod-a", CLAIM_IDLE_MS=300)
    try:
        slow = [await post(r, keys, i, sleep_s=3) for i in range(4)]
        await wait_for(lambda: _all_called(r, keys, range(4)), timeout=20, what="pod-a holding 4 orders")
        pod_a.signal(signal.SIGKILL)
        await pod_a.wait(timeout=5)
    finally:
        pod_a.close()
    rec = reclaimer_for(r, names, claim_idle_ms=300, consumer_inactive_ttl_ms=0)
    summaries = []

    async def pass_done():
        summaries.append(await rec.run_once())
        return sum(x.processed for x in summaries) == 4
    await wait_for(pass_done, timeout=15, interval=0.2, what="reclaimer processed pod-a's orders")
    assert await pending_rows(r, keys) == {}
    assert sum(x.claimed for x in summaries) == 4 and sum(x.failed for x in summaries) == 0
    assert [await r.get(applied_key(keys.stream, i)) for i in range(4)] == ["1"] * 4
    assert [(await r.hgetall(keys.processed(str(i))))["entry_id"] for i in range(4)] == slow
    # pod-a's heartbeat expires (3 x BLOCK_MS) and once it owns nothing a pass removes it, once.
    await wait_for(lambda: _no_heartbeat(r, keys, "pod-a"), timeout=5, what="pod-a heartbeat expired")
    summaries.append(await rec.run_once())
    # pod-a is a consumer of every partition's group it read (all of them on the cluster kind).
    assert sum(x.consumers_removed for x in summaries) == names.partitions
    assert "pod-a" not in {c["name"] for c in await r.xinfo_consumers(keys.stream, keys.group)}


async def _state(worker, state):
    return worker.state == state


async def _all_applied(r, keys, order_ids):
    return all([await r.get(applied_key(keys.stream, i)) == "1" for i in order_ids])


async def _all_called(r, keys, order_ids):
    return all([await r.get(calls_key(keys.stream, i)) for i in order_ids])


async def _no_pending(r, keys):
    return (await r.xpending(keys.stream, keys.group))["pending"] == 0


async def _no_heartbeat(r, keys, name):
    return not await r.exists(keys.heartbeat(name))
