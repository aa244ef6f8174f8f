"""Admin routes of the producer (issue 14's safety and pause/resume): the token, the audit
stream, deleting a dead letter, and pausing a group with a real consumer and the reclaimer."""

from __future__ import annotations

import asyncio
import time

from streamcore.keys import Keys
from tests.handlers import done_key
from tests.integration.consumer_support import (keys_for, order_keys, pending_rows, post, reclaimer_for, running,
                                                wait_for, wait_idle)
from tests.integration.producer_support import api, keys, make_api  # noqa: F401 (fixtures)

#: Also against Redis over mutual TLS with the ACL user of streamcore.acl (tests/conftest.py).
EXTRA_SERVER_KINDS = ("tls-acl", "cluster")

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Admin-Actor": "alice"}


async def dead_letter(r, keys, order_id: str) -> str:
    return await r.xadd(keys.dlq, {"data": f'{{"orderId": "{order_id}", "product": "p", "quantity": 1, "userId": 1}}',
                                   "source_id": "1-1", "order_id": order_id, "reason": "max_deliveries",
                                   "deliveries": "5", "error": "boom"})


async def test_mutations_need_the_token_reads_do_not_and_each_mutation_is_audited(make_api, r, keys):
    api = await make_api(admin_token=TOKEN)
    first, second = await dead_letter(r, keys, "a-1"), await dead_letter(r, keys, "a-2")
    refused = [
        await api.post(f"/dead-letters/{first}/redrive"),
        await api.post("/dead-letters/redrive", headers={"Authorization": "Bearer wrong"}),
        await api.delete(f"/dead-letters/{second}", headers={"Authorization": TOKEN}),  # no scheme
        await api.post(f"/groups/{keys.group}/pause"),
        await api.post(f"/groups/{keys.group}/resume", headers={"Authorization": "Basic " + TOKEN}),
    ]
    for resp in refused:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await resp.json())["fields"] == {"Authorization": "Bearer <ADMIN_TOKEN> is required for this route"}
    assert await r.xlen(keys.dlq) == 2 and not await r.exists(keys.paused(keys.group))  # nothing was done
    for path in ("/dead-letters", "/stream/info", "/audit", "/orders/pending"):
        assert (await api.get(path)).status == 200, path  # read-only: no token

    assert (await api.post(f"/dead-letters/{first}/redrive", headers=AUTH)).status == 200
    resp = await api.delete(f"/dead-letters/{second}", headers=AUTH)
    assert (resp.status, await resp.json()) == (200, {"dlqId": second, "deleted": 1})
    resp = await api.delete(f"/dead-letters/{second}", headers=AUTH)
    assert (resp.status, (await resp.json())["fields"]) == (404, {"dlqId": "not found"})
    resp = await api.post(f"/groups/{keys.group}/pause", headers=AUTH)
    assert (resp.status, await resp.json()) == (200, {"group": keys.group, "paused": True})
    assert (await api.post(f"/groups/{keys.group}/resume", headers=AUTH)).status == 200
    assert (await api.post("/dead-letters/redrive", headers=AUTH)).status == 200  # nothing left: count 0
    resp = await api.post("/groups/no-such-group/pause", headers=AUTH)
    assert (resp.status, (await resp.json())["fields"]) == (404, {"group": "not found"})

    entries = (await (await api.get("/audit")).json())["entries"]
    assert [(e["action"], e["target"], e["count"], e["actor"], e["auth"]) for e in entries] == [
        ("redrive_all", "*", 0, "alice", "token"),
        ("resume", keys.group, 0, "alice", "token"),
        ("pause", keys.group, 0, "alice", "token"),
        ("delete_dead_letter", second, 1, "alice", "token"),
        ("redrive", first, 1, "alice", "token"),
    ]  # newest first; refused requests left no entry
    assert all(e["remote"] == "127.0.0.1" and abs(e["atMs"] - time.time() * 1000) < 60_000 for e in entries)
    assert await r.xlen(keys.dlq) == 0


async def test_without_a_token_setting_mutations_are_open_and_audited_as_such(api, r, keys):
    dlq_id = await dead_letter(r, keys, "open-1")
    assert (await api.delete(f"/dead-letters/{dlq_id}")).status == 200
    [entry] = (await (await api.get("/audit")).json())["entries"]
    assert (entry["action"], entry["auth"], entry["actor"]) == ("delete_dead_letter", "none", "")


async def test_pause_stops_a_running_consumer_and_resume_restarts_it_without_a_restart(api, r, keys, redis_url, names):
    async with running(redis_url, names, "pod-a", block_ms=500) as (w,):
        await wait_for(lambda: _state(w, "reading"), what="the consumer reading")
        assert (await api.post(f"/groups/{keys.group}/pause")).status == 200
        # Within one BLOCK interval (plus the read in flight) it reads no more.
        await wait_for(lambda: _state(w, "paused"), timeout=3, what="the consumer paused")
        reads = w.home.reads
        for i in range(5):
            assert (await api.post("/orders", json={"orderId": f"p-{i}", "product": "p", "quantity": 1,
                                                    "userId": 1})).status == 201
        info = await (await api.get("/stream/info")).json()
        assert (info["groups"][0]["paused"], info["groups"][0]["lag"]) == (True, 5)
        assert 'orderstream_group_paused{group="%s"} 1.0' % keys.group in await (await api.get("/metrics")).text()
        await asyncio.sleep(1.5)  # three BLOCK intervals: long enough for a read to have happened
        assert (w.home.reads, await r.get(done_key(order_keys(names, "p-0").stream, "p-0"))) == (reads, None)
        health = w.home.live()
        assert health[0] and health[1]["state"] == "paused"  # paused is not a stall

        assert (await api.post(f"/groups/{keys.group}/resume")).status == 200
        for i in range(5):
            await wait_for(lambda i=i: r.get(done_key(order_keys(names, f"p-{i}").stream, f"p-{i}")), timeout=5,
                           what=f"p-{i} processed")
        assert w.home.state in ("reading", "waiting") and not w.task.done()  # the same run, never restarted
    info = await (await api.get("/stream/info")).json()
    assert (info["groups"][0]["paused"], info["groups"][0]["lag"], info["groups"][0]["pending"]) == (False, 0, 0)


async def test_the_reclaimer_claims_nothing_for_a_paused_group(api, r, redis_url, names):
    keys = keys_for(names)
    entry_id = await post(r, keys, 7)
    await r.xreadgroup(keys.group, "pod-gone", {keys.stream: ">"}, count=1)
    await wait_idle(r, keys, 250, 1)
    assert (await api.post(f"/groups/{keys.group}/pause")).status == 200
    summary = await reclaimer_for(r, names).run_once()
    assert (summary.claimed, await pending_rows(r, keys)) == (0, {entry_id: ("pod-gone", 1)})
    assert (await api.post(f"/groups/{keys.group}/resume")).status == 200
    summary = await reclaimer_for(r, names).run_once()
    assert (summary.claimed, summary.processed, await pending_rows(r, keys)) == (1, 1, {})


async def _state(w, state: str) -> bool:
    return w.home.state == state


async def test_autoscaler_decisions_are_read_back_newest_first(api, r, names):
    from streamcore.decisions import Decision, record

    keys = Keys(stream=names.stream, group=names.group, dlq=names.dlq)  # under STREAM_NAME, partitioned or not
    for current, desired in ((1, 3), (3, 6)):
        await record(r, [keys.stream], Decision(autoscaler="shop/orders", target="consumer", current=current,
                                                desired=desired, outcome="scaled", reason="ScaleUp",
                                                message=f"backlog wants {desired}", backlog=desired * 100))
    await r.xadd(keys.autoscaler_decisions, {"current": "x", "desired": "2"})  # another writer's malformed entry
    body = await (await api.get("/autoscaler/decisions?limit=3")).json()
    assert body["stream"] == keys.autoscaler_decisions
    assert [(d["current"], d["desired"], d["outcome"], d["backlog"]) for d in body["decisions"]] == [
        (None, 2, None, None), (3, 6, "scaled", 600), (1, 3, "scaled", 300)]
    assert body["decisions"][1]["message"] == "backlog wants 6" and body["decisions"][1]["autoscaler"] == "shop/orders"


async def test_failed_deliveries_are_counted_in_redis_for_the_consoles_rate(api, r, redis_url, names):
    keys = keys_for(names)
    await post(r, keys, 1, fail_until=2)  # fails on its first two calls, then succeeds
    async with running(redis_url, names, "pod-a", block_ms=500, claim_idle_ms=200):
        await wait_for(lambda: r.get(done_key(keys.stream, 1)), timeout=20, what="the order processed on call 3")
    info = await (await api.get("/stream/info")).json()
    assert info["failedDeliveries"] == 2


async def test_a_token_that_is_not_utf8_is_refused_with_401_not_500(make_api, r, keys):
    api = await make_api(admin_token=TOKEN)
    dlq_id = await dead_letter(r, keys, "u-1")
    # Raw bytes on the wire: aiohttp's client refuses to send them, so write the request by hand.
    host, port = api.server.host, api.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"POST /dead-letters/{dlq_id}/redrive HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n".encode()
                 + b"Authorization: Bearer " + TOKEN.encode() + b"\xff\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"401", answer[:300]
    assert b'"Authorization"' in body
    assert await r.xlen(keys.dlq) == 1


async def test_a_dead_letter_spelled_with_leading_zeros_is_redriven_once(api, r, keys, names):
    dlq_id = await dead_letter(r, keys, "z-1")
    ms, seq = dlq_id.split("-")
    spellings = [dlq_id, f"0{ms}-{seq}", f"{ms}-0{seq}", f"00{ms}-{seq}"]
    answers = await asyncio.gather(*(api.post(f"/dead-letters/{s}/redrive") for s in spellings))
    # Each answers 200 (re-driven, or replayed) or 404 (already gone), never an error.
    assert {a.status for a in answers} <= {200, 404} and 200 in {a.status for a in answers}
    assert await r.xlen(order_keys(names, "z-1").stream) == 1  # appended once, whatever the spelling
    entries = (await (await api.get("/audit")).json())["entries"]
    assert {e["target"] for e in entries} == {dlq_id}  # audited under its canonical ID


async def test_a_consumer_started_while_paused_does_not_reread_its_own_pel(api, r, redis_url, names):
    keys = keys_for(names)
    await post(r, keys, 11)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=1)  # pod-a held it, then died
    assert (await api.post(f"/groups/{keys.group}/pause")).status == 200
    async with running(redis_url, names, "pod-a", block_ms=500) as (w,):  # the same pod name restarts
        await wait_for(lambda: _state(w, "paused"), timeout=5, what="the restarted consumer paused")
        await asyncio.sleep(1.5)  # three BLOCK intervals
        assert (await r.get(done_key(keys.stream, 11)), w.home.finished) == (None, 0)
        assert (await api.post(f"/groups/{keys.group}/resume")).status == 200
        await wait_for(lambda: r.get(done_key(keys.stream, 11)), timeout=10, what="its own entry handled after resume")
