"""Cases C01-C05, C07, C08 (claiming, delivery counts, liveness, consumer hygiene) on both servers."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import CollectorRegistry

from streamcore.claiming import ClaimScripts, autoclaim_sweep, claim_due, delete_consumer_if_dead, renew_leases
from redis.exceptions import ResponseError

from streamcore.streams import Scripts, dead_letter, ensure_group
from tests.handlers import applied_key, calls_key
from tests.integration.consumer_support import (keys_for, pending_ids, pending_rows, post, reclaimer_for, running,
                                                wait_for, wait_idle)

#: Also against Redis over mutual TLS with the ACL user of streamcore.acl, and against a Redis Cluster
#: with 6 partitions (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl", "cluster")


def sample(registry: CollectorRegistry, name: str, component: str) -> float:
    return registry.get_sample_value(name, {"component": component}) or 0.0


async def test_c01_claiming_entries_deleted_while_pending(r, names, caplog):
    keys = keys_for(names)
    await ensure_group(r, keys)
    ids = [await post(r, keys, i) for i in range(3)]
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=2)
    assert await r.xdel(keys.stream, ids[0], ids[1]) == 2
    await wait_idle(r, keys, 60, 2)
    rec = reclaimer_for(r, names, claim_idle_ms=50)
    with caplog.at_level(logging.WARNING):
        summary = await rec.run_once()
    assert (summary.claimed, summary.processed, summary.gone, summary.dead_lettered) == (0, 0, 2, 0)
    assert sample(rec.registry, "orderstream_entries_gone_total", "reclaimer") == 2
    assert ids[0] in caplog.text and ids[1] in caplog.text and "gone" in caplog.text
    assert await pending_ids(r, keys) == []
    assert await r.xlen(keys.dlq) == 0
    assert await r.get(calls_key(keys.stream, 0)) is None and await r.get(calls_key(keys.stream, 1)) is None
    # The third entry was never read: still waiting for a consumer, untouched.
    assert (await r.xinfo_groups(keys.stream))[0]["lag"] in (1, None)


async def test_c01_claim_due_reports_deleted_ids_as_gone_not_as_lost_race(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    ids = [await post(r, keys, i) for i in range(2)]
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=2)
    await r.xdel(keys.stream, ids[0])
    await wait_idle(r, keys, 30, 2)
    out = await claim_due(r, keys, "pod-b", scripts=Scripts(r), base_ms=20, max_deliveries=5, rand=lambda: 0.5)
    assert [c.entry_id for c in out.claimed] == [ids[1]]
    assert out.claimed[0].deliveries == 2 and out.claimed[0].previous_owner == "pod-a"
    assert (out.gone, out.lost_race, out.dead_lettered) == ([ids[0]], [], [])
    assert await pending_rows(r, keys) == {ids[1]: ("pod-b", 2)}


async def test_c02_autoclaim_sweep_pages_to_0_0_and_separates_deleted(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    ids = [await post(r, keys, i) for i in range(3)]
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=3)
    # What our pinned redis-py returns: [cursor, [(id, fields)...], [deleted ids]] for the non-JUSTID form.
    raw = await r.xautoclaim(keys.stream, keys.group, "probe", 10**9, "0-0", count=1)
    assert raw == ["0-0", [], []]  # nothing idle that long: COUNT*10 entries scanned, cursor at the end
    await r.xdel(keys.stream, ids[1])
    out = await autoclaim_sweep(r, keys, "reclaimer", min_idle_ms=0, count=1)
    assert [c.entry_id for c in out.claimed] == [ids[0], ids[2]]
    assert [c.fields["order_id"] for c in out.claimed] == ["0", "2"]
    assert [c.deliveries for c in out.claimed] == [2, 2]
    assert out.gone == [ids[1]]
    assert await pending_rows(r, keys) == {ids[0]: ("reclaimer", 2), ids[2]: ("reclaimer", 2)}
    # A second sweep finds the same two (cursor followed to 0-0 again) and nothing deleted.
    again = await autoclaim_sweep(r, keys, "reclaimer", min_idle_ms=0, count=1)
    assert ([c.entry_id for c in again.claimed], again.gone) == ([ids[0], ids[2]], [])


async def test_c03_what_moves_the_delivery_counter(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    entry = await post(r, keys, 1)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=1)
    assert await pending_rows(r, keys) == {entry: ("pod-a", 1)}  # '>' counts 1
    renewed = await renew_leases(r, keys, "pod-a", [entry], scripts=ClaimScripts(r))
    assert renewed == {entry}
    assert await pending_rows(r, keys) == {entry: ("pod-a", 1)}  # lease renewal (JUSTID) counts nothing
    await r.xclaim(keys.stream, keys.group, "pod-b", 0, [entry])
    assert await pending_rows(r, keys) == {entry: ("pod-b", 2)}  # XCLAIM without JUSTID adds 1
    await r.xreadgroup(keys.group, "pod-b", {keys.stream: "0"}, count=10)
    assert await pending_rows(r, keys) == {entry: ("pod-b", 3)}  # own history with ID 0 adds 1
    await r.xclaim(keys.stream, keys.group, "pod-b", 0, [entry], retrycount=7, justid=True)
    assert await pending_rows(r, keys) == {entry: ("pod-b", 7)}  # RETRYCOUNT sets it
    # A renewal by a consumer that does not own the entry takes nothing.
    assert await renew_leases(r, keys, "pod-a", [entry], scripts=ClaimScripts(r)) == set()
    assert await pending_rows(r, keys) == {entry: ("pod-b", 7)}


async def test_c03_dead_letter_fires_on_exactly_the_nth_delivery(r, redis_url, names):
    keys = keys_for(names)
    async with running(redis_url, names, "pod-a", max_deliveries=3, claim_idle_ms=50, claim_interval_ms=50):
        entry = await post(r, keys, 66, poison=True)
        dlq = await wait_for(lambda: r.xrange(keys.dlq), timeout=10, what="poison order dead-lettered")
    assert await r.get(calls_key(keys.stream, 66)) == "3"
    f = dlq[0][1]
    assert (len(dlq), f["source_id"], f["deliveries"], f["order_id"]) == (1, entry, "3", "66")
    assert "poison order 66" in f["error"]
    assert await pending_ids(r, keys) == []


async def test_c04_idle_alone_never_makes_a_live_consumer_dead(r, redis_url, names):
    keys = keys_for(names)
    async with running(redis_url, names, "pod-live", block_ms=300) as (w,):
        await wait_for(lambda: r.exists(keys.heartbeat("pod-live")), what="heartbeat")
        await post(r, keys, 1)  # pod-live becomes a consumer of the group (Redis 7.0 adds none on empty reads)
        await wait_for(lambda: r.get(applied_key(keys.stream, 1)), what="order 1 processed")
        await r.xgroup_createconsumer(keys.stream, keys.group, "pod-dead")  # a consumer that then died
        await wait_for(lambda: _quiet_at_least(r, keys, "pod-dead", 400), what="pod-dead quiet")
        if "inactive" in await _consumer(r, keys, "pod-live"):
            # Redis >= 7.2 / Valkey: a blocked reader's `inactive` grows while `idle` stays below BLOCK.
            await wait_for(lambda: _inactive_at_least(r, keys, "pod-live", 400), what="pod-live inactive")
        # Inspecting a dead consumer never makes it look alive.
        before = await _consumer(r, keys, "pod-dead")
        await asyncio.sleep(0.05)
        after = await _consumer(r, keys, "pod-dead")
        assert after["idle"] >= before["idle"]
        await wait_for(lambda: _reads_at_least(w.home, 3), what="live worker blocked through 3 empty reads")
        rec = reclaimer_for(r, names, consumer_inactive_ttl_ms=300)
        summary = await rec.run_once()
        consumers = {c["name"] for c in await r.xinfo_consumers(keys.stream, keys.group)}
        scripts = ClaimScripts(r)
        # The live consumer keeps its heartbeat: never deleted, however quiet (TTL 0).
        assert await delete_consumer_if_dead(r, keys, "pod-live", caller="reclaimer", inactive_ttl_ms=0,
                                             scripts=scripts) == "heartbeat"
    assert summary.consumers_removed == 1
    assert "pod-dead" not in consumers and "pod-live" in consumers
    assert await delete_consumer_if_dead(r, keys, "reclaimer", caller="reclaimer", inactive_ttl_ms=0,
                                         scripts=scripts) == "self"


async def test_c05_slow_handler_keeps_its_lease(r, redis_url, names):
    keys = keys_for(names)
    async with running(redis_url, names, "pod-a", claim_idle_ms=300):
        entry = await post(r, keys, 5, sleep_s=1.3)
        await wait_for(lambda: r.get(calls_key(keys.stream, 5)), what="handler started")
        started = time.monotonic()
        rec = reclaimer_for(r, names, claim_idle_ms=300)
        passes = []
        late = 0  # passes that began once the handler had run longer than CLAIM_IDLE_MS
        while await r.get(applied_key(keys.stream, 5)) is None:
            late += time.monotonic() - started > 0.3
            passes.append(await rec.run_once())  # the reclaimer fires repeatedly past the threshold
            rows = await pending_rows(r, keys)
            if rows:
                assert rows == {entry: ("pod-a", 1)}
            await asyncio.sleep(0.2)
        await wait_for(lambda: _no_pending(r, keys), what="acked")
    assert late >= 2, f"{late} of {len(passes)} passes past the threshold"
    assert sum(p.claimed for p in passes) == 0
    assert await r.get(calls_key(keys.stream, 5)) == "1"
    assert (await r.hgetall(keys.processed("5")))["consumer"] == "pod-a"


async def test_c05_entry_taken_anyway_is_applied_once_and_never_stolen_back(r, redis_url, names):
    keys = keys_for(names)
    async with running(redis_url, names, "pod-a", claim_idle_ms=300):
        entry = await post(r, keys, 6, sleep_s=1.0)
        await wait_for(lambda: r.get(calls_key(keys.stream, 6)), what="handler started")
        await r.xclaim(keys.stream, keys.group, "pod-b", 0, [entry])  # taken anyway (say, by a forced claim)
        for _ in range(4):  # pod-a renews every 100 ms: it must not take it back
            await asyncio.sleep(0.15)
            rows = await pending_rows(r, keys)
            if rows:
                assert rows == {entry: ("pod-b", 2)}
        await wait_for(lambda: r.get(applied_key(keys.stream, 6)), what="pod-a finished")
        await wait_for(lambda: _no_pending(r, keys), what="late ack")
    assert await r.get(applied_key(keys.stream, 6)) == "1"
    assert (await r.hgetall(keys.processed("6")))["consumer"] == "pod-a"


async def test_c07_rolling_restarts_leave_no_ghost_consumers(r, redis_url, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    # Five rollouts: each pod read something; pods 1, 3, 5 died holding one order each.
    for i in range(1, 6):
        await post(r, keys, 100 + i)
        reply = await r.xreadgroup(keys.group, f"pod-{i}", {keys.stream: ">"}, count=1)
        if i % 2 == 0:
            await r.xack(keys.stream, keys.group, reply[0][1][0][0])
    async with running(redis_url, names, "pod-6", claim_idle_ms=60_000, block_ms=300):
        await wait_for(lambda: r.exists(keys.heartbeat("pod-6")), what="pod-6 heartbeat")
        await post(r, keys, 106)
        await wait_for(lambda: r.get(applied_key(keys.stream, 106)), what="pod-6 processed an order")
        await wait_idle(r, keys, 150, 3)
        rec = reclaimer_for(r, names, claim_idle_ms=100, consumer_inactive_ttl_ms=100)
        summary = await rec.run_once()
        consumers = {c["name"]: c["pending"] for c in await r.xinfo_consumers(keys.stream, keys.group)}
        again = await rec.run_once()
    assert (summary.claimed, summary.processed, summary.consumers_removed) == (3, 3, 5)
    assert consumers == {"pod-6": 0, "reclaimer": 0}
    assert again.consumers_removed == 0
    assert [await r.get(applied_key(keys.stream, 100 + i)) for i in (1, 3, 5)] == ["1", "1", "1"]


async def test_c08_consumer_with_pending_entries_is_emptied_before_deletion(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    ids = [await post(r, keys, 200 + i) for i in range(2)]
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=2)
    early = await reclaimer_for(r, names, claim_idle_ms=60_000, consumer_inactive_ttl_ms=0).run_once()
    assert (early.claimed, early.consumers_removed) == (0, 0)
    assert set(await pending_ids(r, keys, "pod-a")) == set(ids)
    await wait_idle(r, keys, 120, 2)
    summary = await reclaimer_for(r, names, claim_idle_ms=100, consumer_inactive_ttl_ms=0).run_once()
    assert (summary.claimed, summary.processed, summary.consumers_removed) == (2, 2, 1)
    assert await pending_ids(r, keys) == []
    assert [await r.get(applied_key(keys.stream, 200 + i)) for i in range(2)] == ["1", "1"]


async def test_c08_check_and_delete_is_atomic_under_a_racing_delivery(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    scripts = ClaimScripts(r)
    # Why it must be atomic: a separate check, then a delivery, then DELCONSUMER loses the entry.
    await r.xgroup_createconsumer(keys.stream, keys.group, "pod-x")
    assert [c["pending"] for c in await r.xinfo_consumers(keys.stream, keys.group)] == [0]  # the check says 0
    lost = await post(r, keys, 300)
    await r.xreadgroup(keys.group, "pod-x", {keys.stream: ">"}, count=1)  # delivered in between
    assert await r.xgroup_delconsumer(keys.stream, keys.group, "pod-x") == 1  # the naive delete
    assert await pending_ids(r, keys) == []  # ... and the delivered entry is lost
    await r.xack(keys.stream, keys.group, lost)
    # Ours: the script refuses when the delivery came first; when the delete came first, the
    # delivery recreates the consumer and the entry is pending under it. Race them many times.
    delivered: list[str] = []
    for i in range(40):
        await post(r, keys, 400 + i)
        reply, verdict = await asyncio.gather(
            r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=1),
            delete_consumer_if_dead(r, keys, "pod-a", caller="reclaimer", inactive_ttl_ms=0, scripts=scripts),
        )
        delivered.append(reply[0][1][0][0])
        assert verdict in ("deleted", "pending", "not_found")
        assert set(delivered) <= set(await pending_ids(r, keys, "pod-a"))
    assert len(await pending_ids(r, keys, "pod-a")) == 40


async def _consumer(r, keys, name):
    return next(c for c in await r.xinfo_consumers(keys.stream, keys.group) if c["name"] == name)


async def _quiet_at_least(r, keys, name, ms):
    c = await _consumer(r, keys, name)
    inactive = c.get("inactive", -1)  # Redis >= 7.2 / Valkey; -1 = never read successfully
    return (inactive if inactive >= 0 else c["idle"]) >= ms and c["idle"] >= ms


async def _inactive_at_least(r, keys, name, ms):
    return (await _consumer(r, keys, name))["inactive"] >= ms


async def _reads_at_least(worker, n):
    return worker.reads >= n


async def _no_pending(r, keys):
    return (await r.xpending(keys.stream, keys.group))["pending"] == 0


async def test_two_claimers_racing_for_the_same_entries_never_both_win(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    ids = [await post(r, keys, 500 + i) for i in range(20)]
    await r.xreadgroup(keys.group, "pod-dead", {keys.stream: ">"}, count=20)
    await wait_idle(r, keys, 60, 20)
    scripts = Scripts(r)
    a, b = await asyncio.gather(*(claim_due(r, keys, name, scripts=scripts, base_ms=50, max_deliveries=5,
                                            rand=lambda: 0.5) for name in ("pod-b", "reclaimer")))
    won_a, won_b = {c.entry_id for c in a.claimed}, {c.entry_id for c in b.claimed}
    assert won_a.isdisjoint(won_b) and won_a | won_b == set(ids)
    # Whoever scanned after the other's XCLAIM sees nothing idle; whoever scanned before loses at
    # XCLAIM's min-idle guard: either way no entry is claimed (and delivered) twice.
    assert set(a.lost_race) <= won_b and set(b.lost_race) <= won_a
    rows = await pending_rows(r, keys)
    assert {d for _, d in rows.values()} == {2}


async def test_dead_lettering_refused_by_redis_leaves_the_entry_pending(r, names):
    """The dead-letter script acks the entry only once its dead letter is written: a script is
    not rolled back, so when the XADD is refused (here the dead-letter key holds a string:
    WRONGTYPE) the entry must stay pending with its owner and count, not be acked and lost."""
    keys = keys_for(names)
    await ensure_group(r, keys)
    entry = await post(r, keys, 41)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"})
    await r.set(keys.dlq, "not a stream")
    try:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await dead_letter(r, keys, entry, scripts=Scripts(r), consumer="pod-a", deliveries=5, error="boom")
        assert await pending_rows(r, keys) == {entry: ("pod-a", 1)}
    finally:
        await r.delete(keys.dlq)
    res = await dead_letter(r, keys, entry, scripts=Scripts(r), consumer="pod-a", deliveries=5, error="boom")
    assert res.status == "dead_lettered"
    assert await pending_rows(r, keys) == {}
    assert [f["source_id"] for _, f in await r.xrange(keys.dlq)] == [entry]
