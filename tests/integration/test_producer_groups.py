"""The producer reports the consumer group's health and creates the group at start (issue 9, items 7 and 8).

Item 7: a group nobody reads any more (pending entries, no consumer seen for
``ABANDONED_AFTER_MS``) and a stream whose group is missing show in ``/stream/info`` (``state`` per
group, ``groupState`` for the configured group) and in ``orderstream_group_state{group,state}``.
Item 8: the producer creates the group (``0``, MKSTREAM) at start, so orders accepted before any
consumer started are the group's lag; with Redis down at start it creates it once Redis answers.
"""

from __future__ import annotations

import re
import time

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from producer.app import create_app
from tests.integration.consumer_support import wait_for
from tests.integration.producer_support import api, keys, make_api, make_settings  # noqa: F401 (fixtures)

#: Also against Redis over mutual TLS with the ACL user of streamcore.acl (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl",)


def order(i: int) -> dict:
    return {"orderId": i, "product": f"Item-{i}", "quantity": 1, "userId": 100}


async def info(api: TestClient) -> dict:
    resp = await api.get("/stream/info")
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def group_states(api: TestClient) -> dict[tuple[str, str], float]:
    """``orderstream_group_state`` series of ``/metrics``: ``{(group, state): value}``."""
    resp = await api.get("/metrics")
    assert resp.status == 200, await resp.text()
    found = re.findall(r'^orderstream_group_state\{group="([^"]*)",state="([^"]*)"\} (\S+)$', await resp.text(), re.M)
    return {(g, s): float(v) for g, s, v in found}


def current(states: dict[tuple[str, str], float], group: str) -> list[str]:
    return [s for (g, s), v in states.items() if g == group and v == 1.0]


# ---- item 8 ----------------------------------------------------------------------------------------


async def test_backlog_accepted_before_any_consumer_is_the_groups_lag(api, keys):
    for i in range(5):
        assert (await api.post("/orders", json=order(i))).status == 201
    body = await info(api)
    [group] = body["groups"]
    assert (group["name"], group["lag"], group["pending"], group["lastDeliveredId"], group["consumers"]) == (
        keys.group, 5, 0, "0-0", [])
    assert (group["state"], body["groupState"]) == ("ok", "ok")


async def test_group_is_created_once_redis_answers_and_start_up_does_not_wait(own_redis_server, names, keys):
    import redis.asyncio as aioredis

    own_redis_server.stop()
    app = create_app(make_settings(own_redis_server.url, names), registry=CollectorRegistry())
    client = TestClient(TestServer(app))
    started = time.monotonic()
    await client.start_server()
    try:
        assert time.monotonic() - started < 5.0
        assert (await client.get("/healthz")).status == 200
        own_redis_server.start()
        r = aioredis.Redis.from_url(own_redis_server.url, decode_responses=True)
        try:
            async def groups():
                try:
                    return await r.xinfo_groups(keys.stream)
                except aioredis.ResponseError:  # no such key yet
                    return []

            [group] = await wait_for(groups, timeout=20, what="the producer to create the group")
            assert (group["name"], group["last-delivered-id"]) == (keys.group, "0-0")
        finally:
            await r.aclose()
    finally:
        await client.close()


# ---- item 7 ----------------------------------------------------------------------------------------


async def test_abandoned_group_shows_in_stream_info_and_metrics(make_api, r, keys):
    patient = await make_api()  # the default ABANDONED_AFTER_MS (15 min)
    strict = await make_api(abandoned_after_ms=300)
    for i in range(2):
        assert (await patient.post("/orders", json=order(i))).status == 201
    await r.xreadgroup(keys.group, "gone-pod", {keys.stream: ">"}, count=2)  # and never acks: the pod is gone

    body = await info(patient)
    assert (body["groups"][0]["state"], body["groupState"]) == ("ok", "ok")
    assert current(await group_states(patient), keys.group) == ["ok"]

    async def abandoned():
        body = await info(strict)
        return body if body["groupState"] == "abandoned" else None

    body = await wait_for(abandoned, timeout=10, what="the group to count as abandoned")
    [group] = body["groups"]
    assert (group["state"], group["pending"], [c["name"] for c in group["consumers"]]) == ("abandoned", 2, ["gone-pod"])
    states = await group_states(strict)
    assert current(states, keys.group) == ["abandoned"]
    assert states[(keys.group, "ok")] == 0.0

    # A consumer that reads is seen: the group is no longer abandoned. (It reads an entry: on
    # Redis 7.0 a read that returns nothing does not even create the consumer.)
    assert (await strict.post("/orders", json=order(2))).status == 201
    assert await r.xreadgroup(keys.group, "new-pod", {keys.stream: ">"}, count=1)
    assert (await info(strict))["groupState"] == "ok"
    assert current(await group_states(strict), keys.group) == ["ok"]


async def test_missing_group_and_missing_stream_show_in_stream_info_and_metrics(api, r, keys):
    await r.xgroup_destroy(keys.stream, keys.group)  # destroyed by someone after the producer started
    for i in range(3):
        assert (await api.post("/orders", json=order(i))).status == 201
    body = await info(api)
    assert (body["exists"], body["length"], body["groups"], body["group"], body["groupState"]) == (
        True, 3, [], keys.group, "missing")
    assert current(await group_states(api), keys.group) == ["missing"]

    await r.delete(keys.stream)
    body = await info(api)
    assert (body["exists"], body["groupState"]) == (False, "no-stream")
    assert current(await group_states(api), keys.group) == ["no-stream"]


async def test_every_group_of_the_stream_gets_a_state(make_api, r, keys):
    """An old group (the GROUP_NAME before a rename) whose entries nobody will ever ack is
    abandoned while ours is fine: it holds trimming back, so it must be visible too."""
    api = await make_api(abandoned_after_ms=300)
    assert (await api.post("/orders", json=order(1))).status == 201
    await r.xgroup_create(keys.stream, "old-group", id="0")
    await r.xreadgroup("old-group", "old-pod", {keys.stream: ">"}, count=1)

    async def old_abandoned():
        body = await info(api)
        states = {g["name"]: g["state"] for g in body["groups"]}
        return body if states["old-group"] == "abandoned" else None

    body = await wait_for(old_abandoned, timeout=10, what="the old group to count as abandoned")
    assert {g["name"]: g["state"] for g in body["groups"]} == {keys.group: "ok", "old-group": "abandoned"}
    assert body["groupState"] == "ok"
    states = await group_states(api)
    assert (current(states, keys.group), current(states, "old-group")) == (["ok"], ["abandoned"])


async def backlog_series(api: TestClient) -> dict[str, float]:
    """The backlog gauges of ``/metrics``: ``{"name{labels}": value}``."""
    resp = await api.get("/metrics")
    assert resp.status == 200, await resp.text()
    names = ("orderstream_group_lag_entries", "orderstream_group_pending_entries", "orderstream_group_consumers",
             "orderstream_group_oldest_pending_age_seconds", "orderstream_dead_letter_entries",
             "orderstream_reclaimer_last_pass_timestamp_seconds")
    return {m[0]: float(m[1]) for m in re.findall(r"^((?:%s)(?:\{[^}]*\})?) (\S+)$" % "|".join(names),
                                                   await resp.text(), re.M)}


async def test_backlog_gauges_give_lag_pending_oldest_age_dead_letters_and_the_last_reclaim(api, r, keys):
    """What the dashboard and the alerts read: per group, lag, pending, consumers and the age of
    the oldest pending entry (from its entry ID); the dead-letter stream's length; when the
    reclaimer last ended a pass."""
    now_ms = int(time.time() * 1000)
    for i, age_s in enumerate((90, 60, 30, 20, 10)):  # entry IDs dated 90 s ... 10 s ago
        await r.xadd(keys.stream, {"data": f'{{"orderId": {i}}}'}, id=f"{now_ms - age_s * 1000}-0")
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=2)  # the 90 s and 60 s ones
    await r.xack(keys.stream, keys.group, f"{now_ms - 90_000}-0")
    await r.xadd(keys.dlq, {"data": "x", "reason": "test"})
    g = f'{{group="{keys.group}"}}'
    dlq, stream = f'{{stream="{keys.dlq}"}}', f'{{stream="{keys.stream}"}}'
    series = await backlog_series(api)
    assert {k: v for k, v in series.items() if "age" not in k} == {
        f"orderstream_group_lag_entries{g}": 3.0,
        f"orderstream_group_pending_entries{g}": 1.0,
        f"orderstream_group_consumers{g}": 1.0,
        f"orderstream_dead_letter_entries{dlq}": 1.0,
    }  # no reclaimer pass yet: its series is absent
    assert 60.0 <= series[f"orderstream_group_oldest_pending_age_seconds{g}"] < 70.0
    [group] = (await info(api))["groups"]  # the same figure in /stream/info, with its entry ID
    assert group["oldestPendingId"] == f"{now_ms - 60_000}-0"
    assert 60_000 <= group["oldestPendingAgeMs"] < 70_000

    await r.set(keys.reclaimer_last_pass, now_ms)
    await r.xack(keys.stream, keys.group, f"{now_ms - 60_000}-0")
    series = await backlog_series(api)
    assert series[f"orderstream_group_oldest_pending_age_seconds{g}"] == 0.0  # nothing pending
    [group] = (await info(api))["groups"]
    assert (group["oldestPendingId"], group["oldestPendingAgeMs"]) == (None, None)
    assert series[f"orderstream_reclaimer_last_pass_timestamp_seconds{stream}"] == now_ms / 1000.0

    await r.delete(keys.stream)
    series = await backlog_series(api)
    assert series == {f"orderstream_dead_letter_entries{dlq}": 1.0,
                      f"orderstream_reclaimer_last_pass_timestamp_seconds{stream}": now_ms / 1000.0}
