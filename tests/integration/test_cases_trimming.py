"""Cases C15 and C16: pending entries whose data was trimmed, and trimming past a group — both servers."""

from __future__ import annotations

from streamcore.ids import compare
from streamcore.streams import ensure_group
from streamcore.trimming import trim_pass
from tests.handlers import applied_key, calls_key
from tests.integration.consumer_support import keys_for, pending_ids, post, reclaimer_for, running, wait_for

#: Also run against Redis over mutual TLS as the least-privilege ACL user, and against a Redis
#: Cluster with 6 partitions (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl", "cluster")


async def test_c15_restarted_consumer_acks_body_less_history_and_carries_on(r, redis_url, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    for i in range(5):
        await post(r, keys, i)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=5)
    await r.xtrim(keys.stream, maxlen=0, approximate=False)
    assert await r.xlen(keys.stream) == 0 and len(await pending_ids(r, keys)) == 5
    async with running(redis_url, names, "pod-a") as (w,):
        await wait_for(lambda: _state(w.home, "reading"), what="own PEL read")
        await post(r, keys, 5)
        await wait_for(lambda: r.get(applied_key(keys.stream, 5)), what="new order processed")
        await wait_for(lambda: _pending_count(r, keys, 0), what="no phantom pending entries")
        gone = w.worker.registry.get_sample_value("orderstream_entries_gone_total", {"component": "consumer"})
    assert gone == 5
    assert [await r.get(calls_key(keys.stream, i)) for i in range(5)] == [None] * 5  # no body-less handler call
    assert await r.xlen(keys.dlq) == 0


async def test_c15_reclaimer_acks_pending_entries_below_the_first_entry(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    ids = [await post(r, keys, i) for i in range(5)]
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=5)
    await r.xtrim(keys.stream, minid=ids[3], approximate=False)  # 3 pending entries lose their data
    report = await trim_pass(r, keys, maxlen=1000)
    assert report.gone == ids[:3]
    assert await pending_ids(r, keys) == ids[3:]
    assert report.lost == 0  # they had been delivered: gone, not lost
    empty = await trim_pass(r, keys, maxlen=1000)
    assert empty.gone == []


async def test_c16_trimming_never_passes_the_slowest_group_and_catches_up_after(r, redis_url, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    ids = [await post(r, keys, i) for i in range(10)]  # workers stopped
    report = await trim_pass(r, keys, maxlen=2, approximate=False)
    assert (report.trimmed, report.lost, report.floor) == (0, 0, "0-1")
    assert report.retention_floor == ids[8] and report.group_floor == "0-1"
    assert await r.get(keys.trim_floor) == "0-1"
    await post(r, keys, 10)  # the producer's XADD carries MINID ~ floor: nothing is cut either
    assert await r.xlen(keys.stream) == 11
    async with running(redis_url, names, "pod-a"):
        await wait_for(lambda: _all_applied(r, keys, range(11)), what="all 11 orders processed")
        await wait_for(lambda: _pending_count(r, keys, 0), what="acked")
    report = await trim_pass(r, keys, maxlen=2, approximate=False)
    assert (report.trimmed, report.lost) == (9, 0)
    assert [e[0] for e in await r.xrange(keys.stream)] == ids[9:] + [await _last_id(r, keys)]
    assert compare(await r.get(keys.trim_floor), ids[9]) == 0


async def test_c16_pending_entries_hold_the_floor(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    ids = [await post(r, keys, i) for i in range(6)]
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=6)
    await r.xack(keys.stream, keys.group, *ids[:2], *ids[3:])  # ids[2] stays pending
    report = await trim_pass(r, keys, maxlen=1, approximate=False)
    assert (report.group_floor, report.floor, report.trimmed) == (ids[2], ids[2], 2)
    assert [e[0] for e in await r.xrange(keys.stream)] == ids[2:]


async def test_c16_loss_by_someone_elses_maxlen_is_detected_once(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    for i in range(10):
        await post(r, keys, i)
    await r.xtrim(keys.stream, maxlen=2, approximate=False)  # a MAXLEN on another path cuts unread entries
    rec = reclaimer_for(r, names)
    first = await rec.run_once()
    second = await rec.run_once()
    assert (first.lost, second.lost) == (8, 0)
    assert await r.get(keys.lost_counter) == "8"
    assert rec.registry.get_sample_value("orderstream_entries_lost_total") == 8
    await r.xtrim(keys.stream, maxlen=1, approximate=False)  # one more unread entry cut
    third = await rec.run_once()
    assert third.lost == 1 and await r.get(keys.lost_counter) == "9"


async def test_trim_pass_without_stream_or_group_trims_nothing(r, names):
    keys = keys_for(names)
    assert (await trim_pass(r, keys, maxlen=1)).floor is None
    for i in range(5):
        await post(r, keys, i)  # a stream without any group
    await r.set(keys.trim_floor, "0-1")
    report = await trim_pass(r, keys, maxlen=1, approximate=False)
    assert (report.floor, report.trimmed) == (None, 0)
    assert await r.exists(keys.trim_floor) == 0
    assert await r.xlen(keys.stream) == 5


async def _last_id(r, keys):
    return (await r.xrevrange(keys.stream, count=1))[0][0]


async def _state(worker, state):
    return worker.state == state


async def _pending_count(r, keys, n):
    return (await r.xpending(keys.stream, keys.group))["pending"] == n


async def _all_applied(r, keys, order_ids):
    return all([await r.get(applied_key(keys.stream, i)) == "1" for i in order_ids])


async def test_c16_loss_after_the_group_read_part_of_the_stream(r, names):
    keys = keys_for(names)
    await ensure_group(r, keys)
    for i in range(10):
        await post(r, keys, i)
    reply = await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=3)
    await r.xack(keys.stream, keys.group, *[e[0] for e in reply[0][1]])
    await r.xtrim(keys.stream, maxlen=2, approximate=False)  # 5 unread entries cut
    report = await trim_pass(r, keys, maxlen=1000)
    assert report.lost == 5
    reply = await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=10)  # the 2 survivors
    assert len(reply[0][1]) == 2
    assert (await trim_pass(r, keys, maxlen=1000)).lost == 0
    assert await r.get(keys.lost_counter) == "5"
