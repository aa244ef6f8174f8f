"""The producer API against real servers: the seed scenario's HTTP side and every endpoint.

Each test builds the app on its own stream/group/DLQ names and talks to it through aiohttp's
TestServer/TestClient; values are checked in Redis too.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from producer.app import create_app
from producer.routes import PAGES
from producer.views import UNAVAILABLE
from streamcore.streams import Scripts, dead_letter, ensure_group
from tests.integration.producer_support import api, keys, make_api, make_settings  # noqa: F401 (fixtures)


def seed_order(i: int) -> dict:
    return {"orderId": i, "product": f"Item-{i}", "quantity": 1, "userId": 100}


async def post(api: TestClient, order, **headers):
    resp = await api.post("/orders", json=order, headers=headers)
    return resp, await resp.json()


async def test_seed_scenario_http_side(api, r, keys):
    ids = []
    for i in range(1, 11):
        resp, body = await post(api, seed_order(i))
        assert resp.status == 201
        assert body == {"id": body["id"], "orderId": i}
        assert resp.headers["Location"] == f"/orders/{i}"
        ids.append(body["id"])
    assert ids == sorted(ids, key=lambda x: tuple(map(int, x.split("-"))))
    assert await r.xlen(keys.stream) == 10

    history = await (await api.get("/orders/history")).json()
    assert history["count"] == 10
    assert [o["id"] for o in history["orders"]] == ids
    assert [o["order"] for o in history["orders"]] == [seed_order(i) for i in range(1, 11)]
    assert (history["next"], history["truncated"]) == (None, False)

    last5 = await (await api.get("/orders/history", params={"count": "5"})).json()
    assert [o["order"]["orderId"] for o in last5["orders"]] == [6, 7, 8, 9, 10]
    assert [o["id"] for o in last5["orders"]] == ids[5:]

    # A consumer (what `npm start` did) reads 3 without acking.
    await ensure_group(r, keys)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=3)
    pending = await (await api.get("/orders/pending")).json()
    assert pending["exists"] is True
    assert (pending["count"], pending["lowest"], pending["highest"]) == (3, ids[0], ids[2])
    assert pending["consumers"] == [{"name": "pod-a", "pending": 3}]
    assert [(e["id"], e["consumer"], e["deliveries"], e["gone"]) for e in pending["entries"]] == [
        (i, "pod-a", 1, False) for i in ids[:3]
    ]
    assert all(e["idleMs"] >= 0 for e in pending["entries"])

    info = await (await api.get("/stream/info")).json()
    assert (info["exists"], info["length"], info["entriesAdded"]) == (True, 10, 10)
    assert info["firstEntry"] == {"id": ids[0], "order": seed_order(1)}
    assert info["lastEntry"] == {"id": ids[-1], "order": seed_order(10)}
    assert info["lostEntries"] == 0
    [group] = info["groups"]
    assert group["name"] == keys.group
    assert (group["pending"], group["lag"], group["lastDeliveredId"], group["entriesRead"]) == (3, 7, ids[2], 3)
    assert group["undeliveredDeleted"] is False
    assert group["consumerCount"] == 1
    assert [(c["name"], c["pending"]) for c in group["consumers"]] == [("pod-a", 3)]


async def test_history_ranges_and_paging(api):
    ids = [(await post(api, seed_order(i)))[1]["id"] for i in range(6)]

    async def hist(**params):
        resp = await api.get("/orders/history", params=params)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    got = await hist(start=ids[1], end=ids[3])
    assert [o["id"] for o in got["orders"]] == ids[1:4]
    got = await hist(start="(" + ids[1], end="(" + ids[3])
    assert [o["id"] for o in got["orders"]] == ids[2:3]
    ms0 = ids[0].split("-")[0]
    got = await hist(end=ms0)  # ms-only end reads as <ms>-<max seq>
    assert [o["id"] for o in got["orders"]] == [i for i in ids if i.split("-")[0] == ms0]
    got = await hist(count="2", end=ids[3])
    assert [o["id"] for o in got["orders"]] == ids[2:4]

    pages, cursor = [], "-"
    while cursor is not None:
        page = await hist(start=cursor, limit="4")
        assert page["count"] <= 4
        pages.append([o["id"] for o in page["orders"]])
        cursor = page["next"]
    assert pages == [ids[:4], ids[4:]]

    resp = await api.get("/orders/history", params={"count": "2", "limit": "2"})
    assert resp.status == 400
    assert set((await resp.json())["fields"]) == {"count", "limit"}
    for bad in ("0", "-1", "x", "1.5"):
        resp = await api.get("/orders/history", params={"count": bad})
        assert (resp.status, list((await resp.json())["fields"])) == (400, ["count"])


async def test_history_shows_unreadable_entries_instead_of_crashing(api, r, keys):
    good = (await post(api, seed_order(1)))[1]["id"]
    bare = await r.xadd(keys.stream, {"something": "else"})
    broken = await r.xadd(keys.stream, {"data": "{not json"})
    history = await (await api.get("/orders/history")).json()
    assert [o["id"] for o in history["orders"]] == [good, bare, broken]
    assert "order" in history["orders"][0]
    assert "no data field" in history["orders"][1]["error"]
    assert "not JSON" in history["orders"][2]["error"]


async def test_pending_filters_and_gone_entries(api, r, keys):
    ids = [(await post(api, seed_order(i)))[1]["id"] for i in range(5)]
    await ensure_group(r, keys)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=2)
    await r.xreadgroup(keys.group, "pod-b", {keys.stream: ">"}, count=3)
    await r.xdel(keys.stream, ids[1])

    async def pend(**params):
        resp = await api.get("/orders/pending", params=params)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    all_ = await pend()
    assert all_["count"] == 5
    assert all_["consumers"] == [{"name": "pod-a", "pending": 2}, {"name": "pod-b", "pending": 3}]
    assert [e["gone"] for e in all_["entries"]] == [False, True, False, False, False]
    only_b = await pend(consumer="pod-b")
    assert [e["id"] for e in only_b["entries"]] == ids[2:]
    assert (await pend(minIdleMs="3600000"))["entries"] == []
    assert [e["id"] for e in (await pend(start="(" + ids[0], end=ids[2]))["entries"]] == ids[1:3]
    page = await pend(limit="2")
    assert [e["id"] for e in page["entries"]] == ids[:2]
    assert page["next"] == "(" + ids[1]
    assert [e["id"] for e in (await pend(start=page["next"], limit="2"))["entries"]] == ids[2:4]
    for params, name in (({"minIdleMs": "-1"}, "minIdleMs"), ({"limit": "0"}, "limit"), ({"start": "abc"}, "start")):
        resp = await api.get("/orders/pending", params=params)
        assert (resp.status, list((await resp.json())["fields"])) == (400, [name])


async def test_stream_info_consumers(api, r, keys, redis_server):
    await post(api, seed_order(1))
    await ensure_group(r, keys)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=1)
    info = await (await api.get("/stream/info")).json()
    [consumer] = info["groups"][0]["consumers"]
    assert (consumer["name"], consumer["pending"]) == ("pod-a", 1)
    assert consumer["idleMs"] >= 0
    if redis_server.kind == "redis" and redis_server.version.startswith("7.0"):
        assert consumer["inactiveMs"] is None  # not reported before 7.2
    else:
        assert isinstance(consumer["inactiveMs"], int)


async def test_order_status_through_its_life(api, r, keys):
    scripts = Scripts(r)
    ids = {i: (await post(api, seed_order(i)))[1]["id"] for i in (1, 2, 3, 4)}

    async def status(order_id):
        resp = await api.get(f"/orders/{order_id}")
        return resp.status, await resp.json()

    code, body = await status(1)
    assert (code, body["status"], body["id"], body["order"]) == (200, "waiting", ids[1], seed_order(1))

    await ensure_group(r, keys)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=3)
    code, body = await status(2)
    assert (body["status"], body["pending"]["consumer"], body["pending"]["deliveries"]) == ("pending", "pod-a", 1)
    assert body["pending"]["idleMs"] >= 0
    code, body = await status(4)
    assert body["status"] == "waiting"  # after the group's last-delivered-id

    # What the consumer's default handler writes when it is done.
    await r.hset(keys.processed("1"), mapping={"consumer": "pod-a", "entry_id": ids[1], "at_ms": "1700000000123"})
    await r.xack(keys.stream, keys.group, ids[1])
    code, body = await status(1)
    assert body["status"] == "processed"
    assert body["processed"] == {"consumer": "pod-a", "entryId": ids[1], "atMs": 1700000000123}

    out = await dead_letter(r, keys, ids[3], scripts=scripts, consumer="pod-a", deliveries=5, error="boom", order_id="3")
    code, body = await status(3)
    assert body["status"] == "dead_lettered"
    assert body["deadLetter"]["dlqId"] == out.dlq_id
    assert (body["deadLetter"]["originalId"], body["deadLetter"]["deliveries"], body["deadLetter"]["error"]) == (ids[3], 5, "boom")
    assert body["order"] == seed_order(3)

    await r.xack(keys.stream, keys.group, ids[2])  # acked by a handler that writes no marker
    assert (await status(2))[1]["status"] == "acknowledged"

    code, body = await status(999)
    assert (code, body["fields"]) == (404, {"orderId": "not found"})
    code, body = await status("bad%20id")
    assert (code, list(body["fields"])) == (400, ["orderId"])


async def test_string_order_ids(api):
    resp, body = await post(api, {**seed_order(0), "orderId": "A-77"})
    assert (resp.status, body["orderId"], resp.headers["Location"]) == (201, "A-77", "/orders/A-77")
    status = await (await api.get("/orders/A-77")).json()
    assert (status["status"], status["id"]) == ("waiting", body["id"])


async def test_dead_letters_list_and_redrive(api, r, keys):
    scripts = Scripts(r)
    await ensure_group(r, keys)
    ids = [(await post(api, {**seed_order(i), "nested": {"a": [i, None]}}))[1]["id"] for i in range(4)]
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=10)
    dlq = [
        (await dead_letter(r, keys, ids[i], scripts=scripts, consumer="pod-a", deliveries=5, error=f"e{i}", order_id=str(i))).dlq_id
        for i in range(4)
    ]
    listing = await (await api.get("/dead-letters", params={"limit": "3"})).json()
    assert (listing["length"], listing["count"], listing["next"]) == (4, 3, "(" + dlq[2])
    first = listing["deadLetters"][0]
    assert first["dlqId"] == dlq[0]
    assert (first["originalId"], first["orderId"], first["deliveries"], first["lastError"], first["consumer"]) == (
        ids[0], "0", 5, "e0", "pod-a"
    )
    assert first["order"] == {**seed_order(0), "nested": {"a": [0, None]}}
    assert first["sourceStream"] == keys.stream
    assert first["deadLetteredMs"] >= first["firstSeenMs"] > 0

    resp = await api.post(f"/dead-letters/{dlq[0]}/redrive")
    assert resp.status == 200
    one = await resp.json()
    assert (one["dlqId"], one["orderId"], one["replayed"]) == (dlq[0], "0", False)
    entry = (await r.xrange(keys.stream, one["id"], one["id"]))[0][1]
    assert entry["redriven_from"] == dlq[0]
    assert json.loads(entry["data"]) == {**seed_order(0), "nested": {"a": [0, None]}}
    assert await r.xlen(keys.dlq) == 3
    status = await (await api.get("/orders/0")).json()
    assert (status["status"], status["id"]) == ("waiting", one["id"])
    history = await (await api.get("/orders/history", params={"count": "1"})).json()
    assert history["orders"][0]["redrivenFrom"] == dlq[0]

    resp = await api.post(f"/dead-letters/{dlq[0]}/redrive")
    assert (resp.status, (await resp.json())["fields"]) == (404, {"dlqId": "not found"})
    resp = await api.post("/dead-letters/1-2-3/redrive")
    assert (resp.status, list((await resp.json())["fields"])) == (400, ["dlqId"])

    broken = await r.xadd(keys.dlq, {"original_id": "1-1", "deliveries": "5"})
    resp = await api.post("/dead-letters/redrive", params={"limit": "10"})
    assert resp.status == 200
    bulk = await resp.json()
    assert bulk["redriven"] == 3
    assert [i["dlqId"] for i in bulk["items"]] == dlq[1:]
    assert [s["dlqId"] for s in bulk["skipped"]] == [broken]
    assert bulk["remaining"] == 1
    assert await r.xlen(keys.stream) == 4 + 4
    resp = await api.post(f"/dead-letters/{broken}/redrive")
    assert resp.status == 409


async def test_redrive_of_the_same_dead_letter_appends_once(api, r, keys):
    """A crash between append and XDEL is retried by re-driving again: the append replays."""
    from producer import deadletters
    from producer.appkeys import APPENDER

    await ensure_group(r, keys)
    entry = (await post(api, seed_order(5)))[1]["id"]
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=1)
    out = await dead_letter(r, keys, entry, scripts=Scripts(r), consumer="pod-a", deliveries=5, error="x", order_id="5")
    appender = api.server.app[APPENDER]
    fields = (await r.xrange(keys.dlq))[0][1]
    first = await deadletters._append(appender, out.dlq_id, fields)  # appended, then "crashed" before XDEL
    again = await (await api.post(f"/dead-letters/{out.dlq_id}/redrive")).json()
    assert (again["id"], again["replayed"]) == (first.entry_id, True)
    assert await r.xlen(keys.stream) == 2
    assert await r.xlen(keys.dlq) == 0


async def test_batch_ingest(api, r, keys):
    orders = [seed_order(i) for i in range(3)]
    resp = await api.post("/orders/batch", json=orders)
    assert resp.status == 201
    body = await resp.json()
    assert [o["orderId"] for o in body["orders"]] == [0, 1, 2]
    assert [e[0] for e in await r.xrange(keys.stream)] == [o["id"] for o in body["orders"]]

    resp = await api.post("/orders/batch", json=[seed_order(7), {**seed_order(8), "quantity": 0}, "x"])
    assert resp.status == 400
    assert (await resp.json())["fields"] == {"1.quantity": "must be an integer from 1 to 1000000", "2": "an order must be a JSON object, not a JSON str"}
    assert await r.xlen(keys.stream) == 3

    resp = await api.post("/orders/batch", json=orders, headers={"Idempotency-Key": "B1"})
    first = await resp.json()
    resp = await api.post("/orders/batch", json=orders, headers={"Idempotency-Key": "B1"})
    assert (resp.status, resp.headers.get("Idempotent-Replayed"), await resp.json()) == (201, "true", first)
    assert await r.xlen(keys.stream) == 6
    # Another batch under the same key, even a longer one, appends nothing.
    resp = await api.post("/orders/batch", json=[*orders, seed_order(9)], headers={"Idempotency-Key": "B1"})
    assert (resp.status, (await resp.json())["fields"]) == (422, {"Idempotency-Key": "already used with another batch"})
    assert await r.xlen(keys.stream) == 6
    resp = await api.post("/orders/batch", json={"orderId": 1})
    assert resp.status == 400
    resp = await api.post("/orders/batch", json=[])
    assert resp.status == 400


async def test_redis_refusing_a_command_is_503_json_not_500(api, r, keys):
    await r.set(keys.stream, "not a stream")  # WRONGTYPE for every stream command
    resp, body = await post(api, seed_order(1))
    assert resp.status == 503
    assert body["error"].startswith("Redis refused the request: WRONGTYPE")
    resp = await api.get("/orders/history")
    assert (resp.status, (await resp.json())["error"].startswith("Redis refused the request")) == (503, True)


async def test_concurrent_posts_are_coalesced_into_pipelines(api, r, keys):
    n = 200
    results = await asyncio.gather(*(post(api, seed_order(i)) for i in range(n)))
    assert [resp.status for resp, _ in results] == [201] * n
    assert len({body["id"] for _, body in results}) == n
    assert await r.xlen(keys.stream) == n
    text = await (await api.get("/metrics")).text()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values["orderstream_append_batch_size_sum"] == n
    assert values["orderstream_append_batch_size_count"] < n
    assert values["orderstream_orders_accepted_total"] == n
    assert values['orderstream_http_requests_total{method="POST",route="/orders",status="201"}'] == n


async def test_health_readiness_metrics_openapi(api):
    resp = await api.get("/healthz")
    assert (resp.status, await resp.json()) == (200, {"ok": True})
    resp = await api.get("/readyz")
    assert (resp.status, await resp.json()) == (200, {"ok": True})
    await post(api, {"orderId": 1})
    resp = await api.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert 'orderstream_orders_rejected_total{reason="invalid"} 1.0' in text
    assert 'orderstream_http_request_duration_seconds_count{route="/orders"} 1.0' in text
    resp = await api.get("/nope")
    assert (resp.status, resp.content_type) == (404, "application/json")
    resp = await api.put("/orders")
    assert (resp.status, resp.headers["Allow"], resp.content_type) == (405, "POST", "application/json")


async def test_unmatched_requests_are_answered_as_aiohttps_router_would_in_json(api):
    """The catch-all route (producer.routes) reproduces the router's own 404/405 decisions,
    including a path one resource refuses by method while a dynamic one takes it."""
    # POST-only /orders/batch does not hide GET /orders/{orderId} for orderId "batch".
    resp = await api.get("/orders/batch")
    assert (resp.status, (await resp.json())["fields"]) == (404, {"orderId": "not found"})
    # Two resources match /orders/history by path; the Allow header is the union of their methods.
    resp = await api.post("/orders/history", json={})
    assert (resp.status, resp.headers["Allow"], resp.content_type) == (405, "GET,HEAD", "application/json")
    assert (await resp.json())["error"] == "Method Not Allowed"
    resp = await api.delete("/dead-letters/x-1/redrive")
    assert (resp.status, resp.headers["Allow"]) == (405, "POST")
    resp = await api.get("/orders/")
    assert (resp.status, (await resp.json())["error"]) == (404, "Not Found")
    text = await (await api.get("/metrics")).text()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values['orderstream_http_requests_total{method="POST",route="unmatched",status="405"}'] == 1
    assert values['orderstream_http_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    assert values['orderstream_http_requests_total{method="GET",route="/orders/{orderId}",status="404"}'] == 1


async def test_openapi_document_covers_every_route(api):
    doc = await (await api.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    app = api.server.app
    pages = {path for _, path, _ in PAGES}  # the web console: not JSON API routes
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method not in ("HEAD", "*") and route.resource.canonical not in pages
    }
    # The one route of any method is the catch-all that answers 404/405 (producer.routes).
    assert [r.resource.canonical for r in app.router.routes() if r.method == "*"] == ["/{path}"]
    documented = {(method, path) for path, item in doc["paths"].items() for method in item if method != "parameters"}
    assert routes == documented
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert op["responses"], (method, path)
            assert op.get("summary"), (method, path)


async def test_readiness_false_while_shutting_down(api):
    await api.server.app.shutdown()  # what the runner does on SIGTERM before draining
    resp = await api.get("/readyz")
    assert (resp.status, await resp.json()) == (503, {"ok": False, "reason": "shutting down"})
    assert (await api.get("/healthz")).status == 200


async def test_main_serves_and_stops_on_sigterm(redis_url, names, r, keys):
    """``python -m producer`` reads its env, serves on PORT and exits 0 on SIGTERM."""
    import os
    import signal
    import sys
    from pathlib import Path

    import aiohttp

    from tests.servers import free_port

    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PORT": str(port), "HOST": "127.0.0.1", **names.env()}
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "producer", env=env, cwd=root, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with aiohttp.ClientSession() as session:
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, "producer did not become ready"
                await asyncio.sleep(0.05)
            async with session.post(f"http://127.0.0.1:{port}/orders", json=seed_order(1)) as resp:
                assert resp.status == 201
        assert await r.xlen(keys.stream) == 1
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        stderr = (await proc.stderr.read()).decode()
        assert "producer settings" in stderr
        assert "Traceback" not in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_redis_down_gives_503_json(own_redis_server, names):
    settings = make_settings(own_redis_server.url, names, redis_socket_timeout_s=2.0)
    async with TestClient(TestServer(create_app(settings))) as api:
        resp, body = await post(api, seed_order(1))
        assert resp.status == 201
        own_redis_server.stop(kill=True)
        resp, body = await post(api, seed_order(2))
        assert resp.status == 503
        assert body == {"error": UNAVAILABLE, "fields": {}}
        assert "Traceback" not in json.dumps(body)
        assert resp.headers["Retry-After"] == "1"
        resp = await api.get("/readyz")
        body = await resp.json()
        assert (resp.status, body["ok"]) == (503, False)
        assert body["reason"].startswith("Redis unreachable")
        for path in ("/orders/history", "/orders/pending", "/stream/info", "/orders/1", "/dead-letters"):
            resp = await api.get(path)
            assert (resp.status, resp.content_type) == (503, "application/json"), path
        assert (await api.get("/healthz")).status == 200
        own_redis_server.start()
        resp, body = await post(api, seed_order(3))
        assert resp.status == 201


async def test_answers_match_the_documented_schemas(api, r, keys):
    from jsonschema import Draft202012Validator

    doc = await (await api.get("/openapi.json")).json()
    Draft202012Validator.check_schema(doc["components"]["schemas"]["Order"])

    def check(name: str, value) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(value)]
        assert errors == [], (name, errors)

    scripts = Scripts(r)
    accepted = (await post(api, {**seed_order(1), "extra": {"n": None}}))[1]
    check("Accepted", accepted)
    await post(api, {**seed_order(2), "orderId": "B-2"})
    check("Error", (await post(api, {"orderId": True}))[1])
    await ensure_group(r, keys)
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=2)
    await dead_letter(r, keys, accepted["id"], scripts=scripts, consumer="pod-a", deliveries=5, error="x", order_id="1")
    check("History", await (await api.get("/orders/history")).json())
    check("Pending", await (await api.get("/orders/pending")).json())
    check("StreamInfo", await (await api.get("/stream/info")).json())
    check("OrderStatus", await (await api.get("/orders/1")).json())
    check("OrderStatus", await (await api.get("/orders/B-2")).json())
    check("DeadLetters", await (await api.get("/dead-letters")).json())
    check("RedriveAll", await (await api.post("/dead-letters/redrive")).json())
    check("Probe", await (await api.get("/readyz")).json())
