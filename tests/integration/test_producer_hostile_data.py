"""Entries written by other tools that are not UTF-8, read through every read endpoint (issue 9, item 1).

A raw client (no decoding) writes into the order stream and the dead-letter stream: a ``data``
value that is not UTF-8, a field name that is not UTF-8, and a consumer name that is not UTF-8
(the consumer reads with XREADGROUP, so the name reaches the PEL, XINFO and the dead letters).
Every endpoint must answer (never 500), with JSON that holds only real text: a value that was not
UTF-8 is shown as ``null`` with its exact bytes base64-encoded under ``<key>Base64``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.integration.producer_support import api, keys, make_api  # noqa: F401 (fixtures)

GOOD = {"orderId": "g1", "product": "Item", "quantity": 1, "userId": 7}
BAD_DATA = b'{"orderId":"b\xff","product":"p","quantity":1,"userId":1}'
BAD_NAME = b"note-\xfe\xff"
BAD_CONSUMER = b"pod-\xff"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def clean_strings(value: Any, path: str = "$") -> list[str]:
    """Paths of every key or string in ``value`` that is not valid UTF-8 text (a lone surrogate)."""
    bad: list[str] = []
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            bad.append(path)
    elif isinstance(value, dict):
        for k, v in value.items():
            bad += clean_strings(k, f"{path}.<key {k!r}>") + clean_strings(v, f"{path}.{k!r}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad += clean_strings(v, f"{path}[{i}]")
    return bad


async def answer(resp) -> tuple[int, Any]:
    """Status and JSON body; the body must be strict UTF-8 holding no lone surrogate (not even escaped)."""
    raw = await resp.read()
    text = raw.decode("utf-8")  # strict: raises on anything that is not UTF-8
    body = json.loads(text)
    assert clean_strings(body) == [], (resp.status, text[:2000])
    return resp.status, body


@pytest.fixture
async def hostile(api, raw, r, keys):
    """The stream and dead-letter stream with hostile entries; returns their IDs."""
    resp = await api.post("/orders", json=GOOD)
    assert resp.status == 201
    good_id = (await resp.json())["id"]
    ids = {"good": good_id}
    ids["bad_data"] = (await raw.xadd(keys.stream, {b"data": BAD_DATA, b"order_id": b"b\xff", b"v": b"1"})).decode()
    ids["bad_name"] = (await raw.xadd(keys.stream, {b"data": json.dumps(GOOD).encode(), BAD_NAME: b"x"})).decode()
    try:
        await raw.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    except Exception:  # BUSYGROUP: the producer created it already
        pass
    # Another tool's group whose name is not UTF-8, and a consumer of ours whose name is not.
    await raw.xgroup_create(keys.stream, b"grp-\xff", id="0")
    got = await raw.xreadgroup(keys.group.encode(), BAD_CONSUMER, {keys.stream: ">"}, count=10)
    assert len(got[0][1]) == 3
    meta = {b"source_stream": keys.stream.encode(), b"group": keys.group.encode(), b"deliveries": b"1",
            b"consumer": BAD_CONSUMER, b"owner": BAD_CONSUMER, b"first_seen_ms": b"1", b"dead_lettered_ms": b"2"}
    ids["dl_bad_data"] = (await raw.xadd(keys.dlq, {b"data": BAD_DATA, b"order_id": b"b\xff", b"v": b"1",
                                                   b"source_id": ids["bad_data"].encode(), b"reason": b"not_utf8",
                                                   b"error": b"not UTF-8: \xff", **meta})).decode()
    ids["dl_bad_name"] = (await raw.xadd(keys.dlq, {b"data": json.dumps(GOOD).encode(), BAD_NAME: b"x",
                                                   b"source_id": ids["bad_name"].encode(), b"reason": b"not_utf8",
                                                   b"error": b"field name", **meta})).decode()
    # A good order that failed in a consumer whose name is not UTF-8: re-drivable.
    ids["dl_bad_consumer"] = (await raw.xadd(keys.dlq, {b"data": json.dumps({**GOOD, "orderId": "d1"}).encode(),
                                                       b"order_id": b"d1", b"v": b"1", b"source_id": b"5-0",
                                                       b"reason": b"max_deliveries", b"error": b"boom", **meta})).decode()
    await r.set(keys.dlq_index("d1"), ids["dl_bad_consumer"])
    # A dead letter in the old layout (``original_id``, no ``reason``).
    ids["dl_old"] = await r.xadd(keys.dlq, {"data": json.dumps({**GOOD, "orderId": "o1"}), "order_id": "o1",
                                            "original_id": "4-0", "deliveries": "5", "error": "old"})
    # A processed marker written by a consumer whose name is not UTF-8.
    await raw.hset(keys.processed("m1").encode(), mapping={b"consumer": BAD_CONSUMER, b"entry_id": b"6-0", b"at_ms": b"7"})
    return ids


async def test_history_shows_non_utf8_entries_as_null_orders_with_their_bytes(api, hostile):
    status, body = await answer(await api.get("/orders/history"))
    assert status == 200
    good, bad_data, bad_name = body["orders"]
    assert (good["id"], good["order"]) == (hostile["good"], GOOD)
    assert (bad_data["id"], bad_data["order"], bad_data["reason"]) == (hostile["bad_data"], None, "not_utf8")
    assert "'data'" in bad_data["error"]
    assert bad_data["rawFields"] == [
        {"name": "data", "value": None, "valueBase64": b64(BAD_DATA)},
        {"name": "order_id", "value": None, "valueBase64": b64(b"b\xff")},
        {"name": "v", "value": "1"},
    ]
    assert (bad_name["order"], bad_name["reason"]) == (None, "not_utf8")
    assert {"name": None, "nameBase64": b64(BAD_NAME), "value": "x"} in bad_name["rawFields"]
    status, body = await answer(await api.get("/orders/history", params={"count": "1"}))
    assert (status, body["orders"][0]["id"]) == (200, hostile["bad_name"])


async def test_pending_shows_a_non_utf8_consumer_name_as_base64(api, hostile):
    status, body = await answer(await api.get("/orders/pending"))
    assert (status, body["count"]) == (200, 3)
    assert body["consumers"] == [{"name": None, "nameBase64": b64(BAD_CONSUMER), "pending": 3}]
    assert [(e["consumer"], e["consumerBase64"]) for e in body["entries"]] == [(None, b64(BAD_CONSUMER))] * 3


async def test_stream_info_shows_non_utf8_entries_groups_and_consumers(api, hostile, keys):
    status, body = await answer(await api.get("/stream/info"))
    assert status == 200
    assert body["firstEntry"]["order"] == GOOD
    assert (body["lastEntry"]["id"], body["lastEntry"]["order"], body["lastEntry"]["reason"]) == (hostile["bad_name"], None, "not_utf8")
    groups = {g["name"] or g["nameBase64"]: g for g in body["groups"]}
    assert set(groups) == {keys.group, b64(b"grp-\xff")}
    assert groups[b64(b"grp-\xff")]["name"] is None
    [consumer] = groups[keys.group]["consumers"]
    assert (consumer["name"], consumer["nameBase64"], consumer["pending"]) == (None, b64(BAD_CONSUMER), 3)
    # The group states reach /metrics too; a label must be UTF-8, so the bytes are escaped there.
    resp = await api.get("/metrics")
    text = (await resp.read()).decode("utf-8")
    assert resp.status == 200
    assert 'orderstream_group_state{group="grp-\\\\xff",state="ok"} 1.0' in text


async def test_order_status_shows_non_utf8_consumers_as_base64(api, hostile):
    status, body = await answer(await api.get("/orders/g1"))
    assert (status, body["status"], body["order"]) == (200, "pending", GOOD)
    assert (body["pending"]["consumer"], body["pending"]["consumerBase64"]) == (None, b64(BAD_CONSUMER))
    status, body = await answer(await api.get("/orders/m1"))
    assert (status, body["status"]) == (200, "processed")
    assert (body["processed"]["consumer"], body["processed"]["consumerBase64"]) == (None, b64(BAD_CONSUMER))
    status, body = await answer(await api.get("/orders/d1"))
    assert (status, body["status"]) == (200, "dead_lettered")
    assert body["deadLetter"]["dlqId"] == hostile["dl_bad_consumer"]
    assert (body["deadLetter"]["consumer"], body["deadLetter"]["consumerBase64"]) == (None, b64(BAD_CONSUMER))
    assert (body["deadLetter"]["sourceId"], body["deadLetter"]["reason"]) == ("5-0", "max_deliveries")


async def test_dead_letters_show_non_utf8_values_reason_and_source(api, hostile, keys):
    status, body = await answer(await api.get("/dead-letters"))
    assert (status, body["count"]) == (200, 4)
    bad_data, bad_name, bad_consumer, old = body["deadLetters"]
    assert (bad_data["dlqId"], bad_data["order"], bad_data["reason"], bad_data["sourceId"]) == (
        hostile["dl_bad_data"], None, "not_utf8", hostile["bad_data"])
    assert "'data'" in bad_data["error"]
    assert (bad_data["orderId"], bad_data["orderIdBase64"]) == (None, b64(b"b\xff"))
    assert (bad_data["lastError"], bad_data["lastErrorBase64"]) == (None, b64(b"not UTF-8: \xff"))
    assert {"name": "data", "value": None, "valueBase64": b64(BAD_DATA)} in bad_data["rawFields"]
    assert (bad_name["order"], bad_name["reason"]) == (None, "not_utf8")
    assert {"name": None, "nameBase64": b64(BAD_NAME), "value": "x"} in bad_name["rawFields"]
    assert (bad_consumer["order"], bad_consumer["reason"], bad_consumer["group"]) == ({**GOOD, "orderId": "d1"}, "max_deliveries", keys.group)
    assert (bad_consumer["consumer"], bad_consumer["consumerBase64"], bad_consumer["owner"]) == (None, b64(BAD_CONSUMER), None)
    assert "rawFields" not in bad_consumer
    assert (old["sourceId"], old["originalId"], old["reason"], old["order"]["orderId"]) == ("4-0", "4-0", None, "o1")


@pytest.mark.parametrize("which", ["dl_bad_data", "dl_bad_name"])
async def test_redrive_of_a_non_utf8_dead_letter_is_409_naming_it_and_leaves_it(api, hostile, r, keys, which):
    dlq_id = hostile[which]
    before = await r.xlen(keys.stream)
    status, body = await answer(await api.post(f"/dead-letters/{dlq_id}/redrive"))
    assert status == 409
    assert dlq_id in body["error"] and "not valid UTF-8" in body["error"]
    assert list(body["fields"]) == ["dlqId"]
    assert len(await r.xrange(keys.dlq, dlq_id, dlq_id)) == 1
    assert await r.xlen(keys.stream) == before


async def test_redrive_all_moves_the_readable_and_skips_the_non_utf8_ones(api, hostile, r, keys):
    status, body = await answer(await api.post("/dead-letters/redrive"))
    assert status == 200
    assert [i["dlqId"] for i in body["items"]] == [hostile["dl_bad_consumer"], hostile["dl_old"]]
    assert [(s["dlqId"], s["reason"]) for s in body["skipped"]] == [(hostile["dl_bad_data"], "not_utf8"),
                                                                     (hostile["dl_bad_name"], "not_utf8")]
    assert body["remaining"] == 2
    assert [i for i, _ in await r.xrange(keys.dlq)] == [hostile["dl_bad_data"], hostile["dl_bad_name"]]
    # The re-driven good order is readable as a new entry.
    status, history = await answer(await api.get("/orders/history", params={"count": "2"}))
    assert [o["order"]["orderId"] for o in history["orders"]] == ["d1", "o1"]


async def test_answers_with_non_utf8_values_match_the_documented_schemas(api, hostile):
    from jsonschema import Draft202012Validator

    doc = await (await api.get("/openapi.json")).json()

    async def check(name: str, resp) -> None:
        status, body = await answer(resp)
        assert status == 200, body
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        assert [e.message for e in Draft202012Validator(schema).iter_errors(body)] == [], name

    await check("History", await api.get("/orders/history"))
    await check("Pending", await api.get("/orders/pending"))
    await check("StreamInfo", await api.get("/stream/info"))
    for order_id in ("g1", "m1", "d1"):
        await check("OrderStatus", await api.get(f"/orders/{order_id}"))
    await check("DeadLetters", await api.get("/dead-letters"))
    await check("RedriveAll", await api.post("/dead-letters/redrive"))
