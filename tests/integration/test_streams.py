"""streamcore.streams against real servers: group creation, atomic append, atomic dead-lettering."""

from __future__ import annotations

import asyncio
import json

from streamcore import envelope
from streamcore.streams import Scripts, append_order, dead_letter, ensure_group
from tests.integration.consumer_support import keys_for

#: Also run against Redis over mutual TLS as the least-privilege ACL user, and against a Redis
#: Cluster with 6 partitions (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl", "cluster")


async def test_ensure_group_tolerates_busygroup_and_creates_stream(r, names):
    keys = keys_for(names)
    results = await asyncio.gather(*(ensure_group(r, keys) for _ in range(3)))
    assert sorted(results) == [False, False, True]
    groups = await r.xinfo_groups(keys.stream)
    assert [g["name"] for g in groups] == [keys.group]
    assert groups[0]["last-delivered-id"] == "0-0"


async def test_append_keeps_order_exactly_and_indexes_it(r, names):
    keys = keys_for(names)
    scripts = Scripts(r)
    order = {"orderId": 7, "product": "Laptop", "quantity": 2, "userId": 42, "items": [{"sku": "a", "n": None}]}
    res = await append_order(r, keys, envelope.encode(order), "7", scripts=scripts)
    assert res.created is True
    entries = await r.xrange(keys.stream)
    assert [e[0] for e in entries] == [res.entry_id]
    assert json.loads(entries[0][1]["data"]) == order
    assert list(json.loads(entries[0][1]["data"])) == ["orderId", "product", "quantity", "userId", "items"]
    assert await r.get(keys.order_index("7")) == res.entry_id


async def test_idempotent_append_concurrent_duplicates_make_one_entry(r, names):
    keys = keys_for(names)
    scripts = Scripts(r)
    fields = envelope.encode({"orderId": 1, "product": "x", "quantity": 1, "userId": 1})
    results = await asyncio.gather(
        *(append_order(r, keys, fields, "1", scripts=scripts, idempotency_key="K", body_hash="h1") for _ in range(10))
    )
    assert len({x.entry_id for x in results}) == 1
    assert sum(x.created for x in results) == 1
    assert await r.xlen(keys.stream) == 1
    other = await append_order(r, keys, fields, "1", scripts=scripts, idempotency_key="K", body_hash="h2")
    assert (other.created, other.same_body, other.entry_id) == (False, False, results[0].entry_id)


async def test_append_trims_only_below_the_published_floor(r, names):
    keys = keys_for(names)
    scripts = Scripts(r)
    ids = []
    for i in range(300):
        res = await append_order(r, keys, envelope.encode({"orderId": i}), str(i), scripts=scripts)
        ids.append(res.entry_id)
    assert await r.xlen(keys.stream) == 300  # no floor published: nothing trimmed
    await r.set(keys.trim_floor, ids[250])
    await append_order(r, keys, envelope.encode({"orderId": 300}), "300", scripts=scripts)
    first = (await r.xrange(keys.stream, count=1))[0][0]
    remaining = await r.xlen(keys.stream)
    # MINID ~ trims whole nodes only, and never at or past the floor.
    assert ids.index(first) <= 250
    assert remaining >= 51


async def test_dead_letter_is_atomic_and_checks_pending(r, names):
    keys = keys_for(names)
    scripts = Scripts(r)
    await ensure_group(r, keys)
    res = await append_order(r, keys, envelope.encode({"orderId": 5, "nested": {"a": [1, None]}}), "5", scripts=scripts)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=10)
    out = await dead_letter(r, keys, res.entry_id, scripts=scripts, consumer="pod-a", deliveries=5, error="boom", order_id="5")
    assert out.status == "dead_lettered"
    dlq = await r.xrange(keys.dlq)
    assert len(dlq) == 1
    f = dlq[0][1]
    assert (f["source_id"], f["deliveries"], f["error"], f["order_id"], f["owner"]) == (res.entry_id, "5", "boom", "5", "pod-a")
    assert json.loads(f["data"]) == {"orderId": 5, "nested": {"a": [1, None]}}
    assert (await r.xpending(keys.stream, keys.group))["pending"] == 0
    assert await r.get(keys.dlq_index("5")) == dlq[0][0]
    again = await dead_letter(r, keys, res.entry_id, scripts=scripts, consumer="pod-a", deliveries=5, error="boom", order_id="5")
    assert again.status == "not_pending"
    assert await r.xlen(keys.dlq) == 1


async def test_dead_letter_of_deleted_entry_acks_without_body_less_dlq_entry(r, names):
    keys = keys_for(names)
    scripts = Scripts(r)
    await ensure_group(r, keys)
    res = await append_order(r, keys, envelope.encode({"orderId": 9}), "9", scripts=scripts)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=10)
    await r.xdel(keys.stream, res.entry_id)
    out = await dead_letter(r, keys, res.entry_id, scripts=scripts, consumer="pod-a", deliveries=5, error="x", order_id="9")
    assert out.status == "gone"
    assert await r.xlen(keys.dlq) == 0
    assert (await r.xpending(keys.stream, keys.group))["pending"] == 0
