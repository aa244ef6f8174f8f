"""Field cases on the HTTP side (../shared/CASES.md): C11, C16, C23, C24, C25, C26."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from aiohttp.test_utils import TestClient

from streamcore.streams import ensure_group
from tests.integration.producer_support import api, keys, make_api  # noqa: F401 (fixtures)

MIB = 1_048_576


def order(i: int, **extra) -> dict:
    return {"orderId": i, "product": f"Item-{i}", "quantity": 1, "userId": 100, **extra}


# ---- C11: the API runs before any stream or group exists ------------------------------------


async def test_c11_api_answers_before_stream_and_group_exist(api, r, keys):
    # The producer creates the group at start (item 8); here the stream and group are gone again
    # (flushed, or Redis was empty after a restart) before anything was posted.
    await r.delete(keys.stream)
    resp = await api.get("/orders/history")
    assert (resp.status, await resp.json()) == (200, {"orders": [], "count": 0, "next": None, "before": None, "truncated": False})
    resp = await api.get("/orders/history", params={"count": "5"})
    assert (await resp.json())["orders"] == []
    pending = await (await api.get("/orders/pending")).json()
    assert (pending["exists"], pending["count"], pending["entries"], pending["consumers"]) == (False, 0, [], [])
    info = await (await api.get("/stream/info")).json()
    assert (info["exists"], info["length"], info["groups"], info["firstEntry"], info["lostEntries"]) == (False, 0, [], None, 0)
    assert info["groupState"] == "no-stream"
    assert (await api.get("/orders/1")).status == 404
    dl = await (await api.get("/dead-letters")).json()
    assert (dl["length"], dl["deadLetters"]) == (0, [])
    assert (await (await api.post("/dead-letters/redrive")).json())["redriven"] == 0

    ids = []
    for i in range(3):
        resp = await api.post("/orders", json=order(i))
        assert resp.status == 201
        ids.append((await resp.json())["id"])
    info = await (await api.get("/stream/info")).json()
    assert (info["exists"], info["length"], info["groups"], info["groupState"]) == (True, 3, [], "missing")
    assert (await (await api.get("/orders/pending")).json())["exists"] is False
    assert (await (await api.get("/orders/2")).json())["status"] == "waiting"

    # Workers start later and create the group at 0: the early orders are all still ahead of it.
    assert sorted(await asyncio.gather(*(ensure_group(r, keys) for _ in range(3)))) == [False, False, True]
    info = await (await api.get("/stream/info")).json()
    [group] = info["groups"]
    assert (group["lastDeliveredId"], group["lag"], group["pending"], info["groupState"]) == ("0-0", 3, 0, "ok")
    assert (await (await api.get("/orders/0")).json())["status"] == "waiting"


# ---- C16: entries trimmed before the group read them are reported ---------------------------


async def test_c16_trim_before_delivery_is_reported(api, r, keys):
    await ensure_group(r, keys)
    ids = []
    for i in range(10):
        ids.append((await (await api.post("/orders", json=order(i))).json())["id"])
    info = await (await api.get("/stream/info")).json()
    assert info["groups"][0]["undeliveredDeleted"] is False

    assert await r.xtrim(keys.stream, maxlen=2, approximate=False) == 8
    await r.xgroup_create(keys.stream, "late-group", id="$")  # created after the loss: it lost nothing
    await r.set(keys.lost_counter, 8)  # what the reclaimer records when it detects the loss
    info = await (await api.get("/stream/info")).json()
    # Trimming moves the first entry but not max-deleted-entry-id; entries-added still says 10.
    assert (info["length"], info["maxDeletedEntryId"], info["entriesAdded"], info["lostEntries"]) == (2, "0-0", 10, 8)
    assert info["firstEntry"]["id"] == ids[8]
    groups = {g["name"]: g for g in info["groups"]}
    assert groups[keys.group]["undeliveredDeleted"] is True
    assert groups[keys.group]["lastDeliveredId"] == "0-0"
    lag = groups[keys.group]["lag"]
    assert lag is None or lag == 2  # a server that cannot tell says null, never 0
    assert groups["late-group"]["undeliveredDeleted"] is False
    assert groups["late-group"]["lag"] == 0

    # Once the group has read past the trimmed range, the report for it clears.
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=10)
    info = await (await api.get("/stream/info")).json()
    assert {g["name"]: g["undeliveredDeleted"] for g in info["groups"]} == {keys.group: False, "late-group": False}

    # XDEL of an entry the group has not read yet is the other way to lose one.
    new_ids = [(await (await api.post("/orders", json=order(i))).json())["id"] for i in (10, 11)]
    await r.xdel(keys.stream, new_ids[0])
    info = await (await api.get("/stream/info")).json()
    assert info["maxDeletedEntryId"] == new_ids[0]
    assert {g["name"]: g["undeliveredDeleted"] for g in info["groups"]} == {keys.group: True, "late-group": True}


async def test_c16_a_group_that_read_everything_before_the_trim_lost_nothing(api, r, keys):
    await ensure_group(r, keys)
    for i in range(6):
        await api.post("/orders", json=order(i))
    await r.xreadgroup(keys.group, "pod-a", {keys.stream: ">"}, count=4)
    await r.xtrim(keys.stream, maxlen=2, approximate=False)  # removes exactly the 4 read entries
    [group] = (await (await api.get("/stream/info")).json())["groups"]
    assert group["undeliveredDeleted"] is False
    await r.xtrim(keys.stream, maxlen=1, approximate=False)  # now an unread one goes too
    [group] = (await (await api.get("/stream/info")).json())["groups"]
    assert group["undeliveredDeleted"] is True
    await r.xtrim(keys.stream, maxlen=0, approximate=False)  # an empty stream still tells
    info = await (await api.get("/stream/info")).json()
    assert (info["length"], info["firstEntry"], info["groups"][0]["undeliveredDeleted"]) == (0, None, True)


# ---- C23: malformed IDs from users ----------------------------------------------------------

BAD_IDS = ["abc", "1-2-3", "-5", "1-18446744073709551616", "1700000000000-*", "18446744073709551616", "(-", "(+", "1 ", ""]


@pytest.mark.parametrize("param", ["start", "end"])
@pytest.mark.parametrize("path", ["/orders/history", "/orders/pending", "/dead-letters"])
async def test_c23_bad_ids_are_400_naming_the_parameter(api, r, keys, path, param):
    await api.post("/orders", json=order(1))
    await ensure_group(r, keys)
    for bad in BAD_IDS:
        resp = await api.get(path, params={param: bad})
        body = await resp.json()
        assert resp.status == 400, (bad, body)
        assert body["error"] == f"invalid {param} parameter"
        assert list(body["fields"]) == [param]
        assert body["fields"][param], bad


async def test_c23_exclusive_edges_are_rejected_and_valid_forms_accepted(api):
    ids = [(await (await api.post("/orders", json=order(i))).json())["id"] for i in range(3)]
    for params in ({"end": "(0-0"}, {"start": "(18446744073709551615-18446744073709551615"}):
        resp = await api.get("/orders/history", params=params)
        assert resp.status == 400
    for params, expected in (
        ({"start": "-", "end": "+"}, ids),
        ({"start": "0", "end": "18446744073709551615"}, ids),
        ({"start": "(" + ids[0]}, ids[1:]),
        ({"start": "0-0", "end": "(" + ids[2]}, ids[:2]),
        ({"start": "18446744073709551615-18446744073709551615"}, []),
    ):
        resp = await api.get("/orders/history", params=params)
        assert resp.status == 200, params
        assert [o["id"] for o in (await resp.json())["orders"]] == expected, params


# ---- C24: client retries with an Idempotency-Key --------------------------------------------


async def test_c24_retry_after_lost_response_replays_without_appending(api, r, keys):
    resp = await api.post("/orders", json=order(1001), headers={"Idempotency-Key": "K-1"})
    assert resp.status == 201
    first = await resp.json()
    assert "Idempotent-Replayed" not in resp.headers
    # The answer was "lost"; the client retries the same body, with other spacing and key order.
    body = json.dumps({"userId": 100, "quantity": 1, "product": "Item-1001", "orderId": 1001}, indent=2)
    resp = await api.post("/orders", data=body, headers={"Idempotency-Key": "K-1", "Content-Type": "application/json"})
    assert (resp.status, await resp.json(), resp.headers["Idempotent-Replayed"]) == (201, first, "true")
    assert resp.headers["Location"] == "/orders/1001"
    assert await r.xlen(keys.stream) == 1
    assert (await r.xrange(keys.stream))[0][1]["idempotency_key"] == "K-1"
    metrics = await (await api.get("/metrics")).text()
    assert "orderstream_orders_replayed_total 1.0" in metrics
    assert "orderstream_orders_accepted_total 1.0" in metrics


async def test_c24_concurrent_duplicates_make_one_entry(api, r, keys):
    answers = await asyncio.gather(
        *(api.post("/orders", json=order(7), headers={"Idempotency-Key": "K-2"}) for _ in range(10))
    )
    bodies = [await a.json() for a in answers]
    assert [a.status for a in answers] == [201] * 10
    assert len({b["id"] for b in bodies}) == 1
    assert sum(1 for a in answers if a.headers.get("Idempotent-Replayed") == "true") == 9
    assert await r.xlen(keys.stream) == 1


async def test_c24_same_key_different_body_is_422(api, r, keys):
    first = await (await api.post("/orders", json=order(1), headers={"Idempotency-Key": "K-3"})).json()
    resp = await api.post("/orders", json=order(1, quantity=2), headers={"Idempotency-Key": "K-3"})
    body = await resp.json()
    assert resp.status == 422
    assert body["fields"] == {"Idempotency-Key": f"already used for entry {first['id']} with another body"}
    assert await r.xlen(keys.stream) == 1
    # Without the key, or with another key, the same order is a new entry (at-least-once).
    assert (await api.post("/orders", json=order(1), headers={"Idempotency-Key": "K-4"})).status == 201
    assert await r.xlen(keys.stream) == 2
    for bad in ("has space", "x" * 256, "é"):
        resp = await api.post("/orders", json=order(2), headers={"Idempotency-Key": bad})
        assert (resp.status, list((await resp.json())["fields"])) == (400, ["Idempotency-Key"])
    assert await r.xlen(keys.stream) == 2


# ---- C25: malformed JSON and nested fields --------------------------------------------------


async def test_c25_bad_bodies_are_refused_and_nothing_is_appended(api, r, keys):
    cases = [
        ('{"orderId": 1001, "product": "Lap', "application/json", 400, "not valid JSON"),
        (json.dumps(order(1)), "text/plain", 415, "Content-Type must be application/json"),
        (json.dumps(order(1)), None, 415, "Content-Type must be application/json"),
        (json.dumps([order(1)]), "application/json", 400, "not an array"),
        ('"just a string"', "application/json", 400, "not a JSON str"),
        ("", "application/json", 400, "empty"),
        ('{"orderId": 1, "quantity": NaN}', "application/json", 400, "NaN"),
        (json.dumps({"orderId": True, "product": 5, "quantity": "2"}), "application/json", 400, "invalid order"),
    ]
    for body, ctype, status, fragment in cases:
        headers = {"Content-Type": ctype} if ctype else {}
        resp = await api.post("/orders", data=body.encode(), headers=headers)
        answer = await resp.json()
        assert resp.status == status, (body, answer)
        assert fragment in answer["error"], (body, answer)
        assert set(answer) == {"error", "fields"}
    resp = await api.post("/orders", json={"orderId": True, "product": 5, "quantity": "2"})
    assert set((await resp.json())["fields"]) == {"orderId", "product", "quantity", "userId"}
    assert await r.xlen(keys.stream) == 0  # the stream exists, empty: the producer created the group with MKSTREAM


async def test_c25_nested_payload_round_trips_unchanged(api, r, keys):
    nested = {
        "orderId": 42,
        "product": "Desk",
        "quantity": 1,
        "userId": "u-9",
        "items": [{"sku": "A", "qty": 2, "opts": None}, {"sku": "B", "tags": ["x", "y"], "price": 19.99}],
        "note": None,
        "shipping": {"address": {"city": "Zürich", "zip": "8000"}, "express": False},
    }
    raw = json.dumps(nested, ensure_ascii=False)
    resp = await api.post("/orders", data=raw.encode(), headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 201
    entry_id = (await resp.json())["id"]
    history = await (await api.get("/orders/history")).json()
    assert history["orders"] == [{"id": entry_id, "order": nested}]
    assert list(history["orders"][0]["order"]) == list(nested)
    assert json.loads((await r.xrange(keys.stream))[0][1]["data"]) == nested
    assert (await r.xrange(keys.stream))[0][1]["data"] == json.dumps(nested, separators=(",", ":"), ensure_ascii=False)


# ---- C26: huge bodies ------------------------------------------------------------------------


def padded_body(total: int) -> bytes:
    """A valid order JSON of exactly ``total`` bytes."""
    head = json.dumps(order(1, pad=""))[:-2]  # ... "pad": "
    body = head + "x" * (total - len(head) - 2) + '"}'
    assert len(body) == total
    return body.encode()


async def test_c26_body_over_the_limit_is_413_and_nothing_is_appended(api, r, keys):
    resp = await api.post("/orders", data=io.BytesIO(padded_body(MIB + 1)), headers={"Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status == 413
    assert body["error"] == f"body of {MIB + 1} bytes is larger than the limit of {MIB} bytes"

    async def chunks():  # no Content-Length: aiohttp's client_max_size stops it while reading
        data = padded_body(MIB + 1)
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    resp = await api.post("/orders", data=chunks(), headers={"Content-Type": "application/json"})
    assert (resp.status, resp.content_type) == (413, "application/json")
    assert "Maximum request body size" in (await resp.json())["error"]
    assert await r.xlen(keys.stream) == 0
    text = await (await api.get("/metrics")).text()
    assert 'orderstream_orders_rejected_total{reason="too_large"} 2.0' in text

    resp = await api.post("/orders", data=io.BytesIO(padded_body(MIB)), headers={"Content-Type": "application/json"})
    assert resp.status == 201  # exactly at the limit is accepted


async def test_c26_900kb_accepted_and_history_caps_and_pages(make_api, r, keys):
    api = await make_api(history_max_bytes=2 * MIB)
    big = padded_body(900_000)
    ids = []
    for _ in range(5):
        resp = await api.post("/orders", data=io.BytesIO(big), headers={"Content-Type": "application/json"})
        assert resp.status == 201
        ids.append((await resp.json())["id"])
    small = (await (await api.post("/orders", json=order(2))).json())["id"]
    ids.append(small)

    pages, cursor = [], "-"
    while cursor is not None:
        page = await (await api.get("/orders/history", params={"start": cursor})).json()
        pages.append([o["id"] for o in page["orders"]])
        assert sum(len(json.dumps(o["order"])) for o in page["orders"]) <= 2 * MIB
        cursor = page["next"]
    assert pages == [ids[0:2], ids[2:4], ids[4:6]]
    page = await (await api.get("/orders/history")).json()
    assert page["truncated"] is True
    assert page["orders"][0]["order"] == json.loads(big)

    last = await (await api.get("/orders/history", params={"count": "4"})).json()
    assert [o["id"] for o in last["orders"]] == ids[3:6]  # the newest that fit, oldest first
    assert (last["truncated"], last["before"]) == (True, "(" + ids[3])
    older = await (await api.get("/orders/history", params={"count": "1", "end": last["before"]})).json()
    assert [o["id"] for o in older["orders"]] == ids[2:3]


async def test_c26_count_and_limit_are_capped(make_api):
    api = await make_api(history_max_count=3)
    ids = [(await (await api.post("/orders", json=order(i))).json())["id"] for i in range(5)]
    page = await (await api.get("/orders/history", params={"count": "50"})).json()
    assert [o["id"] for o in page["orders"]] == ids[2:]
    assert (page["truncated"], page["before"]) == (True, "(" + ids[2])
    page = await (await api.get("/orders/history", params={"limit": "50"})).json()
    assert [o["id"] for o in page["orders"]] == ids[:3]
    assert page["next"] == "(" + ids[2]
    page = await (await api.get("/orders/history")).json()
    assert (page["count"], page["next"]) == (3, "(" + ids[2])
