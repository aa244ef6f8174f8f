"""Cases C06 (restart under the same name), C09-C11 (lost groups, start-up order) on both servers."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from tests.handlers import applied_key, call_log_key
from tests.integration.consumer_support import keys_for, pending_ids, post, running, wait_for

#: Also against Redis over mutual TLS with the ACL user of streamcore.acl (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl",)


async def test_c06_restart_under_the_same_name_drains_own_pel_first(r, redis_url, names):
    keys = keys_for(names)
    from streamcore.streams import ensure_group

    await ensure_group(r, keys)
    old = [await post(r, keys, 10 + i) for i in range(3)]
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=3)  # then killed before XACK
    async with running(redis_url, names, "pod-a", concurrency=1) as (w,):
        await wait_for(lambda: _state(w.worker, "reading"), what="pod-a reading new entries")
        await post(r, keys, 13)
        await wait_for(lambda: _all_applied(r, keys, [10, 11, 12, 13]), what="4 orders applied")
        await wait_for(lambda: _no_pending(r, keys), what="all acked")
    assert await r.lrange(call_log_key(keys.stream), 0, -1) == ["10", "11", "12", "13"]
    assert [(await r.hgetall(keys.processed(str(10 + i))))["entry_id"] for i in range(3)] == old


async def test_c09_group_lost_to_del_is_recreated_and_orders_flow(r, redis_url, names, caplog):
    keys = keys_for(names)
    async with running(redis_url, names, "pod-a") as (w,):
        await wait_for(lambda: _state(w.worker, "reading"), what="pod-a blocked in XREADGROUP")
        with caplog.at_level(logging.ERROR, logger="consumer.worker"):
            await r.delete(keys.stream)
            await wait_for(lambda: _nogroup_seen(w.worker), timeout=5, what="NOGROUP noticed")
            ids = [await post(r, keys, 20 + i) for i in range(3)]
            await wait_for(lambda: _all_applied(r, keys, [20, 21, 22]), timeout=5, what="3 orders after the DEL")
        live, details = w.worker.live()
        ready, _ = w.worker.ready()
    assert (live, ready) == (True, True)
    assert details["nogroup_incidents"] >= 1
    assert w.worker.registry.get_sample_value("orderstream_nogroup_incidents_total", {"component": "consumer"}) >= 1
    assert "is missing" in caplog.text
    assert [(await r.hgetall(keys.processed(str(20 + i))))["entry_id"] for i in range(3)] == ids


async def test_c09_flushall_and_empty_restart_heal_without_a_tight_loop(own_redis_server, names):
    url = own_redis_server.url
    keys = keys_for(names)
    r = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=15)
    try:
        async with running(url, names, "pod-a", block_ms=300) as (w,):
            await wait_for(lambda: _state(w.worker, "reading"), what="pod-a reading")
            await r.flushall()
            await post(r, keys, 30)
            await wait_for(lambda: _all_applied(r, keys, [30]), timeout=5, what="order after FLUSHALL")
            await r.aclose()
            own_redis_server.restart(wipe=True)  # an empty Redis: no stream, no group
            r = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=15)
            await wait_for(lambda: _group_exists(r, keys), timeout=10, what="group recreated after the wipe")
            await post(r, keys, 31)
            await post(r, keys, 32)
            await wait_for(lambda: _all_applied(r, keys, [31, 32]), timeout=5, what="orders after the empty restart")
            # No tight loop on a stream key that cannot hold a group: back-off paces the retries.
            await r.delete(keys.stream)
            await r.set(keys.stream, "not a stream")
            await r.config_resetstat()
            await asyncio.sleep(2.0)
            stats = await r.info("commandstats")
            attempts = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("xreadgroup", "xgroup|create"))
            _, details = w.worker.live()
    finally:
        await r.aclose()
    assert 1 <= attempts <= 16, attempts
    assert "WRONGTYPE" in details["last_error"]


async def test_c10_stream_recreated_by_producer_before_the_worker_notices(r, redis_url, names):
    keys = keys_for(names)
    async with running(redis_url, names, "pod-a", block_ms=1000) as (w,):
        await wait_for(lambda: _state(w.worker, "reading"), what="pod-a reading")
        await post(r, keys, 40)
        await wait_for(lambda: _all_applied(r, keys, [40]), what="first order")
        await r.delete(keys.stream)
        await post(r, keys, 41)  # XADD recreates the stream, without a group
        await post(r, keys, 42)
        await wait_for(lambda: _all_applied(r, keys, [41, 42]), timeout=6, what="both orders after the recreate")
    assert [g["name"] for g in await r.xinfo_groups(keys.stream)] == [keys.group]
    assert await pending_ids(r, keys) == []


async def test_c11_orders_before_any_worker_and_three_workers_creating_the_group(r, redis_url, names):
    keys = keys_for(names)
    ids = [await post(r, keys, 50 + i) for i in range(3)]  # the API ran first: stream without group
    assert await r.exists(keys.stream) == 1
    async with running(redis_url, names, "pod-a", "pod-b", "pod-c") as workers:
        await wait_for(lambda: _all_applied(r, keys, [50, 51, 52]), what="3 early orders")
        await wait_for(lambda: _no_pending(r, keys), what="acked")
        errors = [w.worker.last_error for w in workers]
    assert errors == ["", "", ""]
    assert [g["name"] for g in await r.xinfo_groups(keys.stream)] == [keys.group]
    assert [(await r.hgetall(keys.processed(str(50 + i))))["entry_id"] for i in range(3)] == ids
    assert [await r.get(applied_key(keys.stream, 50 + i)) for i in range(3)] == ["1", "1", "1"]


async def _state(worker, state):
    return worker.state == state


async def _nogroup_seen(worker):
    return worker.nogroup_incidents >= 1


async def _group_exists(r, keys):
    try:
        return any(g["name"] == keys.group for g in await r.xinfo_groups(keys.stream))
    except Exception:
        return False


async def _all_applied(r, keys, order_ids):
    return all([await r.get(applied_key(keys.stream, i)) == "1" for i in order_ids])


async def _no_pending(r, keys):
    return (await r.xpending(keys.stream, keys.group))["pending"] == 0
