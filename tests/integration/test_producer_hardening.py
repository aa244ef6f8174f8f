"""Hostile input against the producer API (found by attacking a running ``python -m producer``).

Each test is one defect that the attack turned up: an input that answered 500 or 503 instead of
400, poisoned the requests sharing its Redis pipeline, or was stored although the rules forbid it.
Same set-up as ``test_producer_api.py``: the app on its own names, driven by aiohttp's TestClient,
results checked in Redis too.
"""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from producer.app import create_app
from producer.settings import ProducerSettings
from streamcore.keys import Keys
from streamcore.streams import ensure_group


@pytest.fixture
async def api(redis_url, names):
    client = TestClient(
        TestServer(
            create_app(
                ProducerSettings(redis_url=redis_url, stream_name=names.stream, group_name=names.group, dlq_stream=names.dlq),
                registry=CollectorRegistry(),
            )
        )
    )
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture
def keys(names) -> Keys:
    return Keys(stream=names.stream, group=names.group, dlq=names.dlq)


def good(i: int | str) -> dict:
    return {"orderId": i, "product": f"Item-{i}", "quantity": 1, "userId": 7}


async def post_raw(api: TestClient, body: bytes, **headers):
    resp = await api.post("/orders", data=body, headers={"Content-Type": "application/json", **headers})
    return resp.status, await resp.json()


# ---- text that used to pass a regex anchored with ``$`` or ``\d`` ---------------------------------


@pytest.mark.parametrize("field", ["orderId", "userId"])
@pytest.mark.parametrize("value", ["abc\n", "1\n", "\u0661\u0662"])
async def test_identifier_with_trailing_newline_or_non_ascii_digits_is_400(api, r, keys, field, value):
    """``$`` matches before a final newline, so ``"abc\\n"`` passed as an orderId (a different
    order from ``"abc"``, with a newline in its index key and Location header)."""
    order = good("abc") | {field: value}
    status, body = await post_raw(api, json.dumps(order).encode())
    assert status == 400, body
    assert field in body["fields"]
    assert await r.xlen(keys.stream) == 0


@pytest.mark.parametrize("path_id", ["abc%0A", "1%0A"])
async def test_order_path_id_with_trailing_newline_is_400(api, path_id):
    resp = await api.get(f"/orders/{path_id}")
    assert resp.status == 400, await resp.text()


@pytest.mark.parametrize(
    "path,param",
    [
        ("/orders/history", "start"),
        ("/orders/history", "end"),
        ("/orders/pending", "start"),
        ("/orders/pending", "end"),
        ("/dead-letters", "start"),
        ("/dead-letters", "end"),
    ],
)
@pytest.mark.parametrize("value", ["\u0661", "\u0661-\u0662", "5\n", "(5\n", "1-2\n"])
async def test_id_bounds_with_non_ascii_digits_or_newline_are_400(api, r, keys, path, param, value):
    """``\\d`` also matches Arabic-Indic and other Unicode digits and ``$`` a final newline: such
    bounds passed validation and Redis refused them, so the answer was 503 instead of 400."""
    await ensure_group(r, keys)
    await post_raw(api, json.dumps(good(1)).encode())
    resp = await api.get(path, params={param: value})
    assert resp.status == 400, await resp.text()
    assert param in (await resp.json())["fields"]


@pytest.mark.parametrize("dlq_id", ["%D9%A1-%D9%A2", "1-1%0A", "%EF%BC%91-1"])
async def test_redrive_id_with_non_ascii_digits_or_newline_is_400(api, dlq_id):
    resp = await api.post(f"/dead-letters/{dlq_id}/redrive")
    assert resp.status == 400, await resp.text()
    assert "dlqId" in (await resp.json())["fields"]


@pytest.mark.parametrize(
    "path,param",
    [
        ("/orders/history", "count"),
        ("/orders/history", "limit"),
        ("/orders/pending", "limit"),
        ("/orders/pending", "minIdleMs"),
        ("/dead-letters", "limit"),
    ],
)
@pytest.mark.parametrize("value", ["\u0665", "5\n"])
async def test_integer_parameters_take_ascii_digits_only(api, r, keys, path, param, value):
    await ensure_group(r, keys)
    resp = await api.get(path, params={param: value})
    assert resp.status == 400, await resp.text()
    assert param in (await resp.json())["fields"]


@pytest.mark.parametrize("value", ["9223372036854775808", "9999999999999999999"])
async def test_min_idle_beyond_what_redis_accepts_is_400(api, r, keys, value):
    """XPENDING IDLE takes a signed 64-bit integer; a larger value was sent and refused (503)."""
    await ensure_group(r, keys)
    resp = await api.get("/orders/pending", params={"minIdleMs": value})
    assert resp.status == 400, await resp.text()
    assert "minIdleMs" in (await resp.json())["fields"]
    resp = await api.get("/orders/pending", params={"minIdleMs": "9223372036854775807"})
    assert resp.status == 200, await resp.text()
