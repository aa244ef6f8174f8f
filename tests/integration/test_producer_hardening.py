"""Hostile input against the producer API (found by attacking a running ``python -m producer``).

Each test is one defect that the attack turned up: an input that answered 500 or 503 instead of
400, poisoned the requests sharing its Redis pipeline, or was stored although the rules forbid it.
Same set-up as ``test_producer_api.py``: the app on its own names, driven by aiohttp's TestClient,
results checked in Redis too.
"""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from producer.app import create_app
from producer.appkeys import APPENDER
from producer.settings import ProducerSettings
from streamcore import envelope
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


def order_text(extra: str) -> bytes:
    """An otherwise valid order with ``extra`` (raw JSON text) as one more member."""
    return ('{"orderId":"o1","product":"p","quantity":1,"userId":1,' + extra + "}").encode()


# ---- bodies that used to answer 500 ----------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        '"note":"\\ud800"',  # lone high surrogate: not encodable as UTF-8
        '"note":"\\udfff x"',  # lone low surrogate
        '"\\udc00":1',  # in a member name
    ],
)
async def test_lone_surrogate_is_400_and_nothing_appended(api, r, keys, extra):
    status, body = await post_raw(api, order_text(extra), **{"Idempotency-Key": "sur-1"})
    assert status == 400, body
    assert "surrogate" in body["error"]
    assert await r.xlen(keys.stream) == 0
    # A correctly paired surrogate (an emoji written as an escape) is fine and round-trips.
    status, body = await post_raw(api, order_text('"note":"\\ud83d\\ude00"'))
    assert status == 201, body
    [(_, fields)] = await r.xrange(keys.stream)
    assert json.loads(fields["data"])["note"] == "\U0001f600"


async def test_lone_surrogate_does_not_fail_the_orders_sharing_its_pipeline(api, r, keys):
    """One bad request must not fail the concurrent ones batched with it (it failed them all
    with 500: the pipeline could not be encoded)."""
    bad = order_text('"note":"\\ud800"')
    bodies = [bad if i % 10 == 0 else json.dumps(good(i)).encode() for i in range(60)]
    results = await asyncio.gather(*(post_raw(api, b) for b in bodies))
    statuses = [s for s, _ in results]
    assert [s for i, s in enumerate(statuses) if i % 10 == 0] == [400] * 6
    assert [s for i, s in enumerate(statuses) if i % 10] == [201] * 54
    assert await r.xlen(keys.stream) == 54


async def test_appender_isolates_an_unencodable_append(api, r, keys):
    """Defence in depth below validation: the appender encodes each append on its own, so a
    value that cannot be sent fails that caller only, never the pipeline it would have shared."""
    appender = api.server.app[APPENDER]
    fields = [envelope.encode(good(i)) for i in range(20)]
    fields[5] = {**fields[5], "data": fields[5]["data"].replace("Item-5", "\ud800")}
    outcomes = await asyncio.gather(*(appender.append(f, str(i)) for i, f in enumerate(fields)), return_exceptions=True)
    assert isinstance(outcomes[5], ValueError)
    assert all(not isinstance(o, BaseException) and o.created for i, o in enumerate(outcomes) if i != 5)
    assert await r.xlen(keys.stream) == 19


async def test_an_append_redis_refuses_fails_alone_in_its_batch(api, r, keys):
    """A batch is one script call; an order Redis refuses (its idempotency key holds a list:
    WRONGTYPE) gets its own error back, and the orders before and after it in the call are
    appended, in call order."""
    from redis.exceptions import ResponseError

    from producer.appender import AppendCall

    await r.rpush(keys.idempotency("k5"), "not an idempotency record")
    calls = [AppendCall(envelope.encode(good(i)), str(i), f"k{i}" if i in (4, 5, 6) else None) for i in range(12)]
    outcomes = await api.server.app[APPENDER].append_many(calls)
    assert isinstance(outcomes[5], ResponseError) and str(outcomes[5]).startswith("WRONGTYPE")
    ids = [o.entry_id for i, o in enumerate(outcomes) if i != 5]
    assert all(o.created for i, o in enumerate(outcomes) if i != 5)
    assert [entry_id for entry_id, _ in await r.xrange(keys.stream)] == ids
    assert [json.loads(f["data"])["orderId"] for _, f in await r.xrange(keys.stream)] == [i for i in range(12) if i != 5]
    assert await r.get(keys.idempotency("k6")) == f"{ids[5]}|"
    assert await r.lrange(keys.idempotency("k5"), 0, -1) == ["not an idempotency record"]

    resp = await api.post("/orders", json=good(5), headers={"Idempotency-Key": "k5"})
    assert (resp.status, (await resp.json())["error"].startswith("Redis refused the request: WRONGTYPE")) == (503, True)
    assert await r.xlen(keys.stream) == 11


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1.5e999"])
async def test_number_overflowing_to_infinity_is_400(api, r, keys, number):
    status, body = await post_raw(api, order_text(f'"price":{number}'))
    assert status == 400, body
    assert await r.xlen(keys.stream) == 0


@pytest.mark.parametrize("where", ["extra", "orderId", "quantity"])
async def test_integer_with_thousands_of_digits_is_400(api, r, keys, where):
    digits = "9" * 5000
    if where == "extra":
        body = order_text(f'"n":{digits}')
    elif where == "orderId":
        body = ('{"orderId":' + digits + ',"product":"p","quantity":1,"userId":1}').encode()
    else:
        body = ('{"orderId":1,"product":"p","quantity":' + digits + ',"userId":1}').encode()
    status, answer = await post_raw(api, body)
    assert status == 400, answer
    assert await r.xlen(keys.stream) == 0
    # In a batch as well.
    resp = await api.post("/orders/batch", data=b"[" + body + b"]", headers={"Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert await r.xlen(keys.stream) == 0


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_deep_nesting_is_400_before_it_can_break_readers(api, r, keys):
    """An order nested ~975 deep was accepted, and then every history page holding it and
    /stream/info answered 500 (RecursionError decoding it at a deeper stack)."""
    for depth in (65, 200, 975, 100_000):
        status, body = await post_raw(api, order_text(f'"x":{nested(depth)}'), **{"Idempotency-Key": f"deep-{depth}"})
        assert status == 400, (depth, body)
        assert "deep" in body["error"]
        resp = await api.post(
            "/orders/batch", data=("[" + order_text(f'"x":{nested(depth)}').decode() + "]").encode(),
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 400, (depth, await resp.text())
    assert await r.xlen(keys.stream) == 0
    status, body = await post_raw(api, order_text(f'"x":{nested(64)}'))
    assert status == 201, body


async def test_history_and_info_survive_an_entry_nested_too_deeply(api, r, keys):
    """Entries written before the depth limit (or by another writer) must not turn reads into 500."""
    await ensure_group(r, keys)
    deep = '{"orderId":"deep","product":"p","quantity":1,"userId":1,"x":' + nested(990) + "}"
    deep_id = await r.xadd(keys.stream, {"data": deep, "order_id": "deep", "v": "1"})
    await r.set(keys.order_index("deep"), deep_id)
    # Decodes here, but answering it from a deeper stack could still recurse too far.
    deep2 = '{"orderId":"deep2","product":"p","quantity":1,"userId":1,"x":' + nested(960) + "}"
    deep2_id = await r.xadd(keys.stream, {"data": deep2, "order_id": "deep2", "v": "1"})
    status, body = await post_raw(api, json.dumps(good(2)).encode())
    assert status == 201

    resp = await api.get("/orders/history")
    assert resp.status == 200, await resp.text()
    page = await resp.json()
    assert [o["id"] for o in page["orders"][:2]] == [deep_id, deep2_id]
    assert all("error" in o and o["order"] is None for o in page["orders"][:2])
    assert page["orders"][2]["order"] == good(2)
    resp = await api.get("/orders/history", params={"count": "5"})
    assert resp.status == 200, await resp.text()
    resp = await api.get("/stream/info")
    assert resp.status == 200, await resp.text()
    assert "error" in (await resp.json())["firstEntry"]
    resp = await api.get("/orders/deep")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "waiting"

    dlq_id = await r.xadd(keys.dlq, {"original_id": deep_id, "data": deep, "order_id": "deep", "deliveries": "3"})
    resp = await api.get("/dead-letters")
    assert resp.status == 200, await resp.text()
    assert "error" in (await resp.json())["deadLetters"][0]
    resp = await api.post(f"/dead-letters/{dlq_id}/redrive")
    assert resp.status == 409, await resp.text()
    resp = await api.post("/dead-letters/redrive")
    assert resp.status == 200, await resp.text()
    assert [s["dlqId"] for s in (await resp.json())["skipped"]] == [dlq_id]


async def test_content_encoding_that_does_not_match_the_body_is_400(api, r, keys):
    body = json.dumps(good(1)).encode()
    resp = await api.post("/orders", data=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert resp.status == 400, await resp.text()
    assert "error" in await resp.json()
    assert await r.xlen(keys.stream) == 0
    # A real gzip body is fine.
    resp = await api.post(
        "/orders", data=gzip.compress(body), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert resp.status == 201, await resp.text()


async def test_redrive_of_an_unencodable_dead_letter_is_409_and_does_not_block_the_others(api, r, keys):
    """A dead letter whose JSON holds a lone surrogate escape decodes, but cannot be sent back to
    Redis: it failed the shared pipeline, so re-driving all answered 500 and moved nothing."""
    bad_id = await r.xadd(keys.dlq, {"original_id": "1-1", "data": '{"orderId":"bad","product":"\\ud800","quantity":1,"userId":1}', "order_id": "bad"})
    good_ids = [
        await r.xadd(keys.dlq, {"original_id": f"1-{i + 2}", "data": json.dumps(good(i)), "order_id": str(i)}) for i in range(3)
    ]
    resp = await api.post(f"/dead-letters/{bad_id}/redrive")
    assert resp.status == 409, await resp.text()
    resp = await api.post("/dead-letters/redrive")
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert [i["dlqId"] for i in answer["items"]] == good_ids
    assert [s["dlqId"] for s in answer["skipped"]] == [bad_id]
    assert answer["remaining"] == 1
    assert await r.xlen(keys.stream) == 3


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


# ---- a Redis that hangs instead of refusing ---------------------------------------------------------


async def test_hung_redis_gives_503_within_the_socket_timeout_and_readyz_says_why(own_redis_server, names):
    """SIGSTOP, not a refused connection: answers must still be JSON 503s bounded by the socket
    timeout, and /readyz must give a reason (it said ``"Redis unreachable: "``: a TimeoutError
    has no message)."""
    import os
    import signal
    import time

    settings = ProducerSettings(
        redis_url=own_redis_server.url, stream_name=names.stream, group_name=names.group, dlq_stream=names.dlq,
        redis_socket_timeout_s=3.0,  # longer than readyz's own 2 s deadline, as in production (15 s)
    )
    async with TestClient(TestServer(create_app(settings, registry=CollectorRegistry()))) as api:
        status, _ = await post_raw(api, json.dumps(good(1)).encode())
        assert status == 201
        os.kill(own_redis_server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, body = await post_raw(api, json.dumps(good(2)).encode(), **{"Idempotency-Key": "hung-2"})
            assert status == 503 and "error" in body
            assert time.monotonic() - started < 6
            resp = await api.get("/readyz")
            body = await resp.json()
            assert resp.status == 503
            assert body["reason"].startswith("Redis unreachable: ") and len(body["reason"]) > len("Redis unreachable: ")
            resp = await api.get("/orders/history")
            assert (resp.status, resp.content_type) == (503, "application/json")
        finally:
            os.kill(own_redis_server.proc.pid, signal.SIGCONT)
        # The retry with the same key appends at most once, whatever the hung attempt did.
        status, body = await post_raw(api, json.dumps(good(2)).encode(), **{"Idempotency-Key": "hung-2"})
        assert status == 201, body
        status, _ = await post_raw(api, json.dumps(good(2)).encode(), **{"Idempotency-Key": "hung-2"})
        assert status == 201
        history = await (await api.get("/orders/history")).json()
        assert [o["order"]["orderId"] for o in history["orders"]] == [1, 2]


async def test_script_cache_flushed_between_check_and_call_does_not_fail_appends(api, r, keys, monkeypatch):
    """redis-py checks SCRIPT EXISTS before each pipeline; a SCRIPT FLUSH (an operator, a restore)
    landing between that check and the EVALSHAs answered every order of the batch with 503
    NOSCRIPT (measured: 82 of ~23k orders under 20 flushes). NOSCRIPT means the script did not
    run, so those appends are retried once."""
    from redis.asyncio.client import Pipeline

    original = Pipeline.load_scripts
    flushed: list[bool] = []

    async def load_then_flush(self):
        await original(self)
        if not flushed:
            flushed.append(True)
            await r.script_flush()

    monkeypatch.setattr(Pipeline, "load_scripts", load_then_flush)
    results = await asyncio.gather(*(post_raw(api, json.dumps(good(i)).encode()) for i in range(10)))
    assert flushed
    assert [s for s, _ in results] == [201] * 10, results
    assert await r.xlen(keys.stream) == 10



# ---- memory under a slow or hung Redis ----------------------------------------------------------------


async def test_request_bytes_in_flight_are_capped_with_503(redis_url, names, r, keys):
    """With Redis hung, every POST holds its body (and ~3x that once parsed and encoded) until
    the socket timeout: 500 concurrent 900 KB POSTs took the process to 1.7 GB RSS (the chart's
    pod limit is 256 Mi). Past IN_FLIGHT_MAX_BYTES of bodies a POST is refused at once with 503
    and Retry-After, before its body is read; the budget comes back when requests finish."""
    settings = ProducerSettings(
        redis_url=redis_url, stream_name=names.stream, group_name=names.group, dlq_stream=names.dlq,
        in_flight_max_bytes=250_000,
    )
    async with TestClient(TestServer(create_app(settings, registry=CollectorRegistry()))) as api:
        appender = api.server.app[APPENDER]
        release = asyncio.Event()
        parked = []
        original = appender.append

        async def slow_append(*args, **kwargs):
            parked.append(True)
            await release.wait()
            return await original(*args, **kwargs)

        appender.append = slow_append
        try:
            big = lambda i: json.dumps(good(i) | {"pad": "x" * 100_000}).encode()  # noqa: E731
            first = [asyncio.create_task(post_raw(api, big(i))) for i in range(2)]
            while len(parked) < 2:
                await asyncio.sleep(0.01)
            resp = await asyncio.wait_for(api.post("/orders", data=big(3), headers={"Content-Type": "application/json"}), 5)
            assert resp.status == 503, await resp.text()
            assert resp.headers["Retry-After"] == "1"
            assert "in flight" in (await resp.json())["error"]
            # Small requests still fit beside the parked ones.
            small = asyncio.create_task(post_raw(api, json.dumps(good(4)).encode()))
            while len(parked) < 3:
                await asyncio.sleep(0.01)
            release.set()
            assert [s for s, _ in await asyncio.gather(*first, small)] == [201, 201, 201]
            # The budget was given back.
            status, _ = await post_raw(api, big(5))
            assert status == 201
            assert await r.xlen(keys.stream) == 4
            # One body of any allowed size always fits when nothing else is in flight.
            status, _ = await post_raw(api, json.dumps(good(6) | {"pad": "x" * 400_000}).encode())
            assert status == 201
        finally:
            release.set()  # never leave handlers parked, whatever failed


# ---- seen, not fixed here (streamcore) --------------------------------------------------------------


async def test_order_index_key_does_not_outlive_retention(api, r, keys):
    status, _ = await post_raw(api, json.dumps(good("idx-1")).encode())
    assert status == 201
    assert 7 * 86400 - 60 <= await r.ttl(keys.order_index("idx-1")) <= 7 * 86400
