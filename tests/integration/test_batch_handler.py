"""Batch handlers (issue 12): a read's orders in one call, with the per-order guarantees unchanged.

Against real servers: every order applied once and acknowledged only after its call returned,
per-order failures retried after their back-off and dead-lettered on the last delivery, a call
that raises fails all its orders, poison never reaches the handler, and the reclaimer runs the
same batch handler on what it claims.
"""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from streamcore.settings import HandlingSettings
from tests.handlers import (applied_key, batch_deliveries_key, batch_sizes_key, calls_key, consuming_batch, done_key,
                            keyed_by_order_id, scripted_batch)
from tests.integration.consumer_support import keys_for, pending_ids, post, reclaimer_for, running, wait_for

#: Also against Redis over mutual TLS with the ACL user of streamcore.acl, and against a Redis Cluster
#: with 6 partitions (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl", "cluster")

BATCH = "tests.handlers:scripted_batch"


async def _applied_and_acked(r, keys, count: int) -> list[str] | None:
    """The applied markers of orders 0..count-1 once every one is set and the PEL is empty, else
    None. (The PEL is empty before the worker reads anything too, so it cannot be the only test.)"""
    applied = [await r.get(applied_key(keys.stream, i)) for i in range(count)]
    if None in applied or await _pending(r, keys) != 0:
        return None
    return applied


async def _pending(r, keys) -> int:
    """Entries in the group's PEL; -1 until the worker has created the group."""
    try:
        return (await r.xpending(keys.stream, keys.group))["pending"]
    except ResponseError as exc:
        if "NOGROUP" in str(exc):
            return -1
        raise


async def test_a_backlog_is_handled_in_calls_of_at_most_read_count_and_applied_once(r, redis_url, names):
    keys = keys_for(names)
    ids = [await post(r, keys, i) for i in range(250)]
    async with running(redis_url, names, "pod-a", handler=scripted_batch, read_count=100):
        async def done():
            return all([await r.get(done_key(keys.stream, i)) for i in range(250)]) and await _pending(r, keys) == 0
        await wait_for(done, timeout=20, what="250 orders handled in batches and acked")
    sizes = [int(n) for n in await r.lrange(batch_sizes_key(keys.stream), 0, -1)]
    assert sum(sizes) == 250 and max(sizes) <= 100, sizes
    assert len(sizes) <= 6, sizes  # whole reads, not one call per order
    assert [await r.get(applied_key(keys.stream, i)) for i in range(250)] == ["1"] * 250
    assert [await r.get(calls_key(keys.stream, i)) for i in range(250)] == ["1"] * 250
    markers = [await r.hget(keys.processed(str(i)), "entry_id") for i in range(250)]
    assert markers == ids
    group = (await r.xinfo_groups(keys.stream))[0]
    assert (group["pending"], group["last-delivered-id"]) == (0, ids[-1])


async def test_failed_orders_of_a_call_are_retried_and_dead_lettered_alone(r, redis_url, names):
    keys = keys_for(names)
    await post(r, keys, 1)
    await post(r, keys, 2, fail_until=1)       # fails once, then succeeds
    poison = await post(r, keys, 3, poison=True)  # fails every time
    await post(r, keys, 4)
    async with running(redis_url, names, "pod-a", handler=scripted_batch, max_deliveries=3, claim_idle_ms=200,
                       claim_interval_ms=100):
        async def settled():
            return await _pending(r, keys) == 0 and await r.xlen(keys.dlq) == 1
        await wait_for(settled, timeout=20, what="order 2 retried and order 3 dead-lettered")
    assert [await r.get(applied_key(keys.stream, i)) for i in (1, 2, 3, 4)] == ["1", "1", None, "1"]
    assert [await r.get(calls_key(keys.stream, i)) for i in (1, 2, 3, 4)] == ["1", "2", "3", "1"]
    assert await r.hget(batch_deliveries_key(keys.stream), "3") == "3"
    (dlq_id, fields), = await r.xrange(keys.dlq)
    assert (fields["source_id"], fields["reason"], fields["deliveries"]) == (poison, "max_deliveries", "3")
    assert fields["error"] == "RuntimeError: poison order 3"


async def test_a_call_that_raises_fails_every_order_of_it(r, redis_url, names):
    keys = keys_for(names)
    await post(r, keys, 1, raise_batch=1)  # the first call fails as a whole
    await post(r, keys, 2)
    async with running(redis_url, names, "pod-a", handler=scripted_batch, claim_idle_ms=200, claim_interval_ms=100):
        async def applied():  # [None, None] is truthy: wait for both counters, not for a list
            found = [await r.get(applied_key(keys.stream, i)) for i in (1, 2)]
            return found if all(found) and await _pending(r, keys) == 0 else None
        assert await wait_for(applied, timeout=20, what="both orders applied after the failed call") == ["1", "1"]
    # Both orders were in the failed first call, so both were delivered twice.
    assert [await r.get(calls_key(keys.stream, i)) for i in (1, 2)] == ["2", "2"]
    assert await r.xlen(keys.dlq) == 0


async def test_poison_is_dead_lettered_and_never_reaches_the_batch_handler(r, redis_url, names):
    keys = keys_for(names)
    await post(r, keys, 1)
    bad = await r.xadd(keys.stream, {"data": "{not json", "order_id": "x"})
    await post(r, keys, 2)
    async with running(redis_url, names, "pod-a", handler=scripted_batch):
        async def settled():
            return await _pending(r, keys) == 0 and await r.xlen(keys.dlq) == 1 and await r.get(
                done_key(keys.stream, 2))
        await wait_for(settled, timeout=20, what="poison dead-lettered, the others applied")
    (_, fields), = await r.xrange(keys.dlq)
    assert (fields["source_id"], fields["reason"]) == (bad, "not_json")
    sizes = [int(n) for n in await r.lrange(batch_sizes_key(keys.stream), 0, -1)]
    assert sum(sizes) == 2, sizes  # orders 1 and 2 only


async def test_the_reclaimer_runs_the_batch_handler_on_what_it_claims(r, redis_url, names):
    keys = keys_for(names)
    await r.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    ids = [await post(r, keys, i) for i in range(5)]
    await r.xreadgroup(keys.group, "pod-gone", {keys.stream: ">"})  # delivered, never acked
    await wait_for(lambda: _idle_at_least(r, keys, 250), what="entries idle past CLAIM_IDLE_MS")
    reclaimer = reclaimer_for(r, names, handler=BATCH, claim_idle_ms=200)
    summary = await reclaimer.run_once()
    assert (summary.claimed, summary.processed) == (5, 5), summary
    assert await pending_ids(r, keys) == []
    assert [await r.get(applied_key(keys.stream, i)) for i in range(5)] == ["1"] * 5
    assert [await r.hget(keys.processed(str(i)), "consumer") for i in range(5)] == ["reclaimer"] * 5
    assert sorted(await r.hgetall(batch_deliveries_key(keys.stream))) == [str(i) for i in range(5)]
    assert ids


async def _idle_at_least(r, keys, ms: int) -> bool:
    rows = await r.xpending_range(keys.stream, keys.group, "-", "+", 100)
    return bool(rows) and all(row["time_since_delivered"] >= ms for row in rows)


@pytest.mark.parametrize("spec, says", [
    ("tests.handlers:sync_handler", "must be an async function"),
    ("tests.no_such_module:handle", "cannot import"),
])
def test_handler_setting_refuses_what_cannot_be_awaited(spec, says):
    with pytest.raises(ValueError, match=says):
        HandlingSettings(handler=spec)


async def test_failures_keyed_by_order_id_fail_the_whole_call_instead_of_acking_it(r, redis_url, names):
    """Breaker finding: ``{orderId: error}`` used to be ignored (unknown keys) and every order acked
    as done, unapplied. Now the call fails: each order is delivered again and applied."""
    keys = keys_for(names)
    for i in range(5):
        await post(r, keys, i)
    async with running(redis_url, names, "pod-a", handler=keyed_by_order_id, claim_idle_ms=200,
                       claim_interval_ms=100):
        async def applied():
            return await _applied_and_acked(r, keys, 5)
        assert await wait_for(applied, timeout=20, what="all applied after the failed call") == ["1"] * 5
    assert [await r.get(calls_key(keys.stream, i)) for i in range(5)] == ["2"] * 5
    assert await r.xlen(keys.dlq) == 0


async def test_a_handler_that_empties_its_list_still_gets_every_order_acked(r, redis_url, names):
    """Breaker finding: the outcomes followed the handler's own list, so emptying it made every
    order of the call a failure (retried, then dead-lettered although applied)."""
    keys = keys_for(names)
    for i in range(20):
        await post(r, keys, i)
    async with running(redis_url, names, "pod-a", handler=consuming_batch, max_deliveries=2):
        async def done():
            return await _applied_and_acked(r, keys, 20)
        assert await wait_for(done, timeout=20, what="20 orders applied and acked") == ["1"] * 20
    assert [await r.get(calls_key(keys.stream, i)) for i in range(20)] == ["1"] * 20
    assert await r.xlen(keys.dlq) == 0
