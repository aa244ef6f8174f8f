"""The consumer's read-ahead (issue 12): a second XREADGROUP in flight only while there is a
backlog, one blocking read when idle, and nothing lost or handled twice when it stops mid-backlog.
"""

from __future__ import annotations

import asyncio

from tests.handlers import applied_key, call_log_key
from tests.integration.consumer_support import RunningWorker, keys_for, post, settings_for, wait_for


def _count_reads(worker) -> dict:
    """Wrap the worker's client's XREADGROUP to record how many calls were in flight at once."""
    seen = {"now": 0, "peak": 0, "calls": 0}
    original = worker.r.xreadgroup

    async def counting(*args, **kwargs):
        seen["now"] += 1
        seen["calls"] += 1
        seen["peak"] = max(seen["peak"], seen["now"])
        try:
            return await original(*args, **kwargs)
        finally:
            seen["now"] -= 1

    worker.r.xreadgroup = counting
    return seen


async def test_two_reads_in_flight_with_a_backlog_one_when_idle(r, redis_url, names):
    keys = keys_for(names)
    await r.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    async with r.pipeline(transaction=False) as pipe:
        for i in range(3000):
            pipe.xadd(keys.stream, {"data": f'{{"orderId":{i}}}', "order_id": str(i), "v": "1"})
        await pipe.execute()
    w = RunningWorker(settings_for(redis_url, names, "pod-a", handler="bench.noop:handle", block_ms=300))
    seen = _count_reads(w.worker)
    try:
        await wait_for(lambda: _drained(r, keys, 3000), timeout=30, what="3000 entries read and acked")
        assert seen["peak"] == 2, seen  # the backlog kept a second read in flight
        # Idle: only one blocking read at a time, about one per BLOCK interval.
        seen.update(peak=0, calls=0)
        await asyncio.sleep(1.5)
        assert seen["peak"] == 1, seen
        assert 2 <= seen["calls"] <= 7, seen
    finally:
        await w.stop()


async def test_a_stop_in_the_middle_of_a_backlog_loses_nothing_and_handles_nothing_twice(r, redis_url, names):
    keys = keys_for(names)
    for i in range(400):
        await post(r, keys, i, sleep_s=0.002)
    first = RunningWorker(settings_for(redis_url, names, "pod-a", concurrency=8, read_count=50))
    await wait_for(lambda: _applied_at_least(r, keys, 60), timeout=20, what="some orders applied")
    await first.stop()
    assert first.worker.left_group in ("left", "pending"), first.worker.left_group
    # What the first worker read ahead and did not finish is pending under its name; the same
    # pod name (a restart) re-reads its PEL first.
    second = RunningWorker(settings_for(redis_url, names, "pod-a", concurrency=8, read_count=50))
    try:
        await wait_for(lambda: _applied_at_least(r, keys, 400), timeout=30, what="all 400 orders applied")
        await wait_for(lambda: _drained(r, keys, 400), timeout=10, what="nothing pending")
    finally:
        await second.stop()
    applied = [await r.get(applied_key(keys.stream, i)) for i in range(400)]
    assert applied == ["1"] * 400
    calls = await r.lrange(call_log_key(keys.stream), 0, -1)
    assert sorted(calls, key=int) == [str(i) for i in range(400)]  # each handled exactly once


async def _drained(r, keys, n: int) -> bool:
    groups = await r.xinfo_groups(keys.stream)
    return bool(groups) and groups[0]["entries-read"] == n and groups[0]["pending"] == 0


async def _applied_at_least(r, keys, n: int) -> bool:
    return await r.llen(call_log_key(keys.stream)) >= n


async def test_a_stop_while_re_reading_the_own_pel_leaves_the_rest_pending(r, redis_url, names):
    """A restart finds 500 orders in its own PEL and is stopped after a few: it drains what it
    had taken, and leaves the rest pending for the next start instead of taking the whole PEL up
    as lost replies during the drain (a breaker finding of issue 11)."""
    keys = keys_for(names)
    await r.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    for i in range(500):
        await post(r, keys, i, sleep_s=0.01)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=500)  # the PEL of a pod that died
    w = RunningWorker(settings_for(redis_url, names, "pod-a", concurrency=4, read_count=10, drain_timeout_seconds=10))
    await wait_for(lambda: _applied_at_least(r, keys, 5), timeout=20, what="the re-read under way")
    await w.stop()
    handled = await r.llen(call_log_key(keys.stream))
    assert handled <= 60, handled  # what it held when stopped (capacity 30), not the whole PEL
    pending = await r.xpending(keys.stream, keys.group)
    assert pending["pending"] == 500 - handled
    assert w.worker.drained[1] == 0  # nothing cut short: everything it took was finished


async def test_the_drain_counts_orders_cut_at_its_deadline_as_left_not_drained(r, redis_url, names):
    """Breaker finding: orders cancelled at the drain deadline left ``held`` and were counted as
    drained. Ten slow orders, a 0.5 s drain: 0 drained, 10 left, all 10 still pending."""
    keys = keys_for(names)
    for i in range(10):
        await post(r, keys, i, sleep_s=30)
    w = RunningWorker(settings_for(redis_url, names, "pod-a", concurrency=10, read_count=10,
                                   drain_timeout_seconds=0.5))
    await wait_for(lambda: _applied_at_least(r, keys, 10), timeout=20, what="10 handler calls started")
    await w.stop()
    assert w.worker.drained == (0, 10)
    assert (await r.xpending(keys.stream, keys.group))["pending"] == 10
