"""Processing hardening found by attacking a running stack (kill -9, SIGSTOP, Redis restarts,
poison subsets, hung handlers) — both servers.

* A worker whose lease was taken while it handled an order (SIGSTOP, GC pause, slow handler past
  CLAIM_IDLE_MS) must not dead-letter that order on its stale delivery count: the new owner may
  be about to succeed, which would leave a processed order in the DLQ too.
* The claim pass must not dead-letter an entry whose owner renewed its lease after the scan.
* A hung handler must not hold its order (and a concurrency slot) forever: HANDLER_TIMEOUT_SECONDS
  fails the delivery, so the order is retried and finally dead-lettered like any failure.
* The default handler's marker script is sent by SHA (EVALSHA), not as script text per order.
"""

from __future__ import annotations

import asyncio

from streamcore.claiming import claim_due
from streamcore.envelope import Envelope
from streamcore.handling import DEAD_LETTERED, FAILED, EntryRunner, HandlerContext
from streamcore.metrics import stream_metrics
from streamcore.streams import Scripts, ensure_group
from prometheus_client import CollectorRegistry
from tests.handlers import applied_key, calls_key, scripted
from tests.integration.consumer_support import (RunningWorker, keys_for, pending_rows, post, running, settings_for,
                                                wait_for)

#: Also against Redis over mutual TLS with the ACL user of streamcore.acl, and against a Redis Cluster
#: with 6 partitions (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl", "cluster")


def _runner(r, keys, handler, **kw) -> EntryRunner:
    return EntryRunner(r, keys, handler, scripts=Scripts(r), metrics=stream_metrics(CollectorRegistry()),
                       component="consumer", **kw)


async def test_worker_that_lost_its_lease_does_not_dead_letter_the_new_owners_order(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    entry = await post(r, keys, 7, poison=True)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=1)
    # pod-a is on its last delivery (count 3 of 3) when it stalls; pod-b claims the entry meanwhile.
    await r.xclaim(keys.stream, keys.group, "pod-a", 0, [entry], retrycount=3, justid=True)
    await r.xclaim(keys.stream, keys.group, "pod-b", 0, [entry], justid=True)
    runner = _runner(r, keys, scripted, max_deliveries=3)
    fields = (await r.xrange(keys.stream, entry, entry))[0][1]
    outcome = await runner.run(entry, fields, 3, "pod-a")  # pod-a wakes up and its handler fails
    assert outcome == FAILED
    assert await r.xlen(keys.dlq) == 0, "a stale owner dead-lettered an order another consumer holds"
    assert (await pending_rows(r, keys))[entry][0] == "pod-b"


async def test_owner_still_dead_letters_its_own_last_delivery(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    entry = await post(r, keys, 8, poison=True)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=1)
    await r.xclaim(keys.stream, keys.group, "pod-a", 0, [entry], retrycount=3, justid=True)
    runner = _runner(r, keys, scripted, max_deliveries=3)
    fields = (await r.xrange(keys.stream, entry, entry))[0][1]
    assert await runner.run(entry, fields, 3, "pod-a") == DEAD_LETTERED
    assert await r.xlen(keys.dlq) == 1
    assert await pending_rows(r, keys) == {}


async def test_claim_pass_does_not_dead_letter_an_entry_whose_lease_was_renewed_after_the_scan(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    entry = await post(r, keys, 9)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=1)
    await r.xclaim(keys.stream, keys.group, "pod-a", 0, [entry], retrycount=3, justid=True)
    await asyncio.sleep(0.6)  # past the back-off of delivery 3 (4 x 100 ms)
    scripts = Scripts(r)
    real = scripts.dead_letter

    async def renew_then_dead_letter(*args, **kwargs):
        # pod-a renews its lease (XCLAIM JUSTID to itself) between the scan and the dead-lettering.
        await r.xclaim(keys.stream, keys.group, "pod-a", 0, [entry], justid=True)
        return await real(*args, **kwargs)

    scripts.dead_letter = renew_then_dead_letter
    out = await claim_due(r, keys, "pod-b", scripts=scripts, base_ms=100, max_deliveries=3,
                          rand=lambda: 0.5)
    assert out.dead_lettered == []
    assert await r.xlen(keys.dlq) == 0, "dead-lettered an order its live owner is still handling"
    assert (await pending_rows(r, keys))[entry][0] == "pod-a"


async def _hang(order: Envelope, ctx: HandlerContext) -> None:
    await ctx.redis.incr(calls_key(ctx.keys.stream, order.order_id))
    if order.order.get("hang"):
        await asyncio.sleep(3600)
    await scripted(order, ctx)


async def test_hung_handler_times_out_is_retried_then_dead_lettered_while_others_flow(r, redis_url, names):
    keys = keys_for(names)
    async with running(redis_url, names, "pod-a", handler=_hang, max_deliveries=2, claim_idle_ms=200,
                       claim_interval_ms=100, handler_timeout_seconds=0.5, concurrency=1, read_count=1):
        hung = await post(r, keys, 1, hang=True)
        normal = [await post(r, keys, 2)]
        await wait_for(lambda: r.xlen(keys.dlq), timeout=15, what="the hung order dead-lettered")
        normal.append(await post(r, keys, 3))
        await wait_for(lambda: _applied(r, keys, [2, 3]), timeout=10, what="the other orders applied")
    dlq = await r.xrange(keys.dlq)
    assert [(f["source_id"], f["deliveries"]) for _, f in dlq] == [(hung, "2")]
    assert "timed out" in dlq[0][1]["error"]
    assert await pending_rows(r, keys) == {}


async def _applied(r, keys, ids) -> bool:
    return [await r.get(applied_key(keys.stream, i)) for i in ids] == ["1"] * len(ids)


async def test_default_handler_sends_the_marker_script_by_sha(own_redis_server, names):
    # A server of its own: INFO commandstats counts every client's EVALs, and workers of other
    # tests on the shared server would add theirs.
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(own_redis_server.url, decode_responses=True)
    keys = keys_for(names)
    before = await _evals(r)
    w = RunningWorker(settings_for(own_redis_server.url, names, "pod-a", handler="consumer.handler:process_order"))
    try:
        for i in range(20):
            await post(r, keys, 500 + i)
        await wait_for(lambda: _all_marked(r, keys, range(500, 520)), what="20 orders marked")
    finally:
        await w.stop()
    after = await _evals(r)
    await r.aclose()
    assert after["eval"] - before["eval"] == 0, f"EVAL sent with the script text per order: {after} vs {before}"


async def _evals(r) -> dict:
    stats = await r.info("commandstats")
    return {"eval": int(stats.get("cmdstat_eval", {}).get("calls", 0)),
            "evalsha": int(stats.get("cmdstat_evalsha", {}).get("calls", 0))}


async def _all_marked(r, keys, ids) -> bool:
    return all([await r.exists(keys.processed(str(i))) for i in ids])


async def test_shutdown_cancel_of_a_handler_under_a_deadline_still_cancels(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    entry = await post(r, keys, 11, hang=True)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=1)
    fields = (await r.xrange(keys.stream, entry, entry))[0][1]
    runner = _runner(r, keys, _hang, max_deliveries=1, handler_timeout_s=5.0)
    task = asyncio.create_task(runner.run(entry, fields, 1, "pod-a"))
    await asyncio.sleep(0.2)
    task.cancel()  # the drain deadline passed: the order must stay pending, not count as a failure
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled()
    assert await r.xlen(keys.dlq) == 0
    assert list(await pending_rows(r, keys)) == [entry]


async def test_handler_deadline_fails_only_the_slow_call(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    slow = await post(r, keys, 12, sleep_s=1.0)
    fast = await post(r, keys, 13)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=2)
    runner = _runner(r, keys, scripted, max_deliveries=5, handler_timeout_s=0.3)
    rows = dict(await r.xrange(keys.stream, slow, fast))
    outcomes = await asyncio.gather(runner.run(slow, rows[slow], 1, "pod-a"), runner.run(fast, rows[fast], 1, "pod-a"))
    assert outcomes == [FAILED, "ok"]
    assert await r.get(applied_key(keys.stream, 12)) is None
    assert await r.get(applied_key(keys.stream, 13)) == "1"


async def test_own_pel_reread_does_not_redeliver_entries_claimed_meanwhile_with_a_wrong_count(r, redis_url, names):
    """On restart the worker re-reads its own PEL with ID 0. An entry its claim pass takes during
    that phase (another consumer's due entry, with a larger ID) must not be re-read and handed to
    the handler again with delivery number 1 (it was not in the PEL snapshot): the real count is
    higher, and the dead-letter decision depends on it."""
    keys = keys_for(names)
    await ensure_group(r, keys)
    own = [await post(r, keys, 1), await post(r, keys, 2, sleep_s=0.5), await post(r, keys, 3)]
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=3)  # pod-a was killed holding these
    other = await post(r, keys, 4, fail_until=1)
    await r.xreadgroup(keys.group, "pod-b", {keys.stream: ">"}, count=1)  # pod-b's entry, soon due
    await asyncio.sleep(0.3)
    seen: list[tuple[str, int]] = []
    holder: list = []

    async def handler(order: Envelope, ctx: HandlerContext) -> None:
        seen.append((order.order_id, ctx.deliveries))
        if order.order_id == "1":
            await holder[0].home._claim()  # the timer's claim pass fires during the own-PEL phase
        await scripted(order, ctx)

    w = RunningWorker(settings_for(redis_url, names, "pod-a", read_count=1, concurrency=2, claim_idle_ms=200,
                                   claim_interval_ms=60_000), handler)
    holder.append(w)
    try:
        await wait_for(lambda: _applied(r, keys, [1, 2, 3]), timeout=10, what="own orders applied")
        await asyncio.sleep(0.5)
    finally:
        await w.stop()
    own_calls = sorted(oid for oid, _ in seen if oid in ("1", "2", "3"))
    assert own_calls == ["1", "2", "3"], f"own-PEL orders handed over more than once: {seen}"
    counts = [d for oid, d in seen if oid == "4"]
    assert counts == sorted(set(counts)) and 1 not in counts, f"order 4 handed over with deliveries {counts}"
    assert len(own) == 3 and other
