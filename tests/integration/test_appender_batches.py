"""How the producer's appender cuts what is queued into batches (producer.appender, issue 12).

A burst of appends queued at once is shared among the idle pipelines, so the first part's
answers go out while Redis runs the rest; a share never goes below ``min_batch`` nor above
``max_batch``, and a group (one ``append_many``) is never split. Real Redis; the batch sizes are
what ``on_batch`` (the ``orderstream_append_batch_size`` metric) sees, in the order sent.
"""

from __future__ import annotations

import asyncio

import pytest

from producer.appender import AppendCall, Appender, RoutedAppender
from streamcore.connection import create_redis
from streamcore.envelope import encode
from streamcore.keys import Keys
from streamcore.streams import Scripts

ONLY_SERVER_KINDS = ("redis",)  # the appender and the producer's pool are under test, the same on any server


@pytest.fixture
async def appender_of(redis_url, names):
    """``appender_of(**options)``: a started :class:`Appender` on the test's stream, and the
    list its ``on_batch`` fills; closed after the test."""
    r = create_redis(redis_url)
    made: list[Appender] = []

    def make(**options) -> tuple[Appender, list[int]]:
        sizes: list[int] = []
        appender = Appender(r, Keys(stream=names.stream, group=names.group, dlq=names.dlq), Scripts(r),
                            on_batch=sizes.append, **options)
        appender.start()
        made.append(appender)
        return appender, sizes

    yield make
    for appender in made:
        await appender.close()
    await r.aclose()


def fields(i: int, prefix: str = "o") -> dict[str, str]:
    return encode({"orderId": f"{prefix}{i}", "product": "p", "quantity": 1})


@pytest.mark.parametrize(("queued", "expected"), [
    (60, [15, 15, 15, 15]),  # ceil(60/4), ceil(45/3), ceil(30/2), 15
    (10, [8, 2]),            # a share of ceil(10/4) = 3 is raised to min_batch
    (3, [3]),
    (600, [128, 128, 128, 128, 88]),  # capped at max_batch; the rest waits for a free pipeline
])
async def test_a_burst_is_shared_among_the_idle_pipelines(appender_of, r, names, queued, expected):
    appender, sizes = appender_of(pipelines=4, min_batch=8, max_batch=128)
    futures = [appender.append(fields(i), f"o{i}") for i in range(queued)]  # queued before any is sent
    results = await asyncio.gather(*futures)
    assert sizes == expected
    assert sum(sizes) == queued
    # Each caller got its own entry, and the entries are all in the stream.
    assert len({result.entry_id for result in results}) == queued
    assert await r.xlen(names.stream) == queued


async def test_a_group_is_never_split_by_the_sharing(appender_of, r, names):
    appender, sizes = appender_of(pipelines=4, min_batch=8, max_batch=128)
    group = asyncio.ensure_future(appender.append_many(
        [AppendCall(fields(i, "g"), f"g{i}") for i in range(40)]))
    await asyncio.sleep(0)  # the group's task has run up to its await: its 40 appends are queued
    singles = [appender.append(fields(i, "s"), f"s{i}") for i in range(4)]
    await asyncio.gather(group, *singles)
    # 44 queued: the first pipeline's share is ceil(44/4) = 11, but the group of 40 at the head
    # goes whole, alone; the next pipeline takes the 4 singles (a share of at least min_batch).
    assert sizes == [40, 4]
    # The two batches are in flight at once on two connections: which one Redis runs first is
    # not fixed, but the group's entries are in call order.
    order_ids = [e[1]["order_id"] for e in await r.xrange(names.stream)]
    assert [i for i in order_ids if i.startswith("g")] == [f"g{i}" for i in range(40)]
    assert sorted(i for i in order_ids if i.startswith("s")) == ["s0", "s1", "s2", "s3"]


async def test_one_pipeline_takes_the_whole_queue_up_to_max_batch(appender_of):
    appender, sizes = appender_of(pipelines=1, min_batch=8, max_batch=128)
    await asyncio.gather(*(appender.append(fields(i), f"o{i}") for i in range(200)))
    assert sizes == [128, 72]


@pytest.mark.parametrize(("partitions", "pipelines"), [(1, 4), (8, 4), (12, 2), (16, 2), (32, 1), (256, 1)])
async def test_many_partitions_share_a_budget_of_pipelines(redis_url, names, partitions, pipelines):
    """With many partitions each appender keeps fewer batches in flight, so up to 32 partitions
    the ingest path never has more than half of the connection pool (64) in use and the read
    routes keep theirs (past that, one pipeline per partition)."""
    r = create_redis(redis_url)
    try:
        parts = [Keys(stream=f"{names.stream}:{i}", group=names.group, dlq=names.dlq) for i in range(partitions)]
        routed = RoutedAppender(r, parts, Scripts(r))
        assert {a.pipelines for a in routed.appenders} == {pipelines}
        assert RoutedAppender(r, parts[:1], Scripts(r), pipelines=7).appenders[0].pipelines == 7  # given: kept
    finally:
        await r.aclose()



async def test_a_producer_with_more_partitions_than_pool_connections_keeps_serving(redis_url, names, r):
    """Breaker finding on an intermediate change that held one connection per pipeline for good:
    with STREAM_PARTITIONS=70 (past the pool of 64), one order per partition left every pooled
    connection held, and /readyz, GET /stream/info and the script reload after SCRIPT FLUSH
    waited for a connection until they failed (503 after the socket timeout, for good). A
    pipeline now gives its connection back after each batch."""
    from aiohttp.test_utils import TestClient, TestServer
    from prometheus_client import CollectorRegistry

    from producer.app import create_app
    from producer.settings import ProducerSettings
    from streamcore.keys import partition_of

    partitions = 70
    settings = ProducerSettings(redis_url=redis_url, stream_name=names.stream, group_name=names.group,
                                dlq_stream=names.dlq, stream_partitions=partitions, redis_socket_timeout_s=3)
    client = TestClient(TestServer(create_app(settings, registry=CollectorRegistry())))
    await client.start_server()
    try:
        ids: dict[int, str] = {}
        n = 0
        while len(ids) < partitions:  # one orderId for each partition, posted one after another
            order_id = f"p{n}"
            n += 1
            if partition_of(order_id, partitions) not in ids:
                ids[partition_of(order_id, partitions)] = order_id
        for order_id in ids.values():
            resp = await client.post("/orders", json={"orderId": order_id, "product": "p", "quantity": 1, "userId": 1})
            assert resp.status == 201, await resp.text()
        async with asyncio.timeout(2.0):  # well inside the 3 s socket timeout a pool wait would take
            assert (await client.get("/readyz")).status == 200
            assert (await client.get("/stream/info")).status == 200
        await r.script_flush()
        async with asyncio.timeout(2.0):
            resp = await client.post("/orders", json={"orderId": "after-flush", "product": "p", "quantity": 1, "userId": 1})
            assert resp.status == 201, await resp.text()
    finally:
        await client.close()


async def test_a_disconnected_connection_is_reconnected_through_connect(redis_server, names):
    """After a failed attempt the retry policy disconnects the batch's connection; the resend
    must reconnect through ``connect()``, where a Sentinel-managed connection asks the Sentinels
    for the current primary. Modelled with a connection whose ``connect()`` moves it from a dead
    address to the live server, as Sentinel would after a failover: a resend through
    ``send_packed_command``'s own reconnect went to the old address and failed."""
    from urllib.parse import urlparse

    import hiredis
    from redis.asyncio.connection import Connection

    live = urlparse(redis_server.url)

    class FailedOver(Connection):
        async def connect(self) -> None:
            self.host, self.port = live.hostname, live.port  # what the Sentinels would answer now
            await super().connect()

    dead_port = 1  # nothing listens there: the demoted primary
    conn = FailedOver(host="127.0.0.1", port=dead_port, socket_timeout=5)
    try:
        assert not conn.is_connected
        replies = await Appender._send_and_read(conn, hiredis.pack_command((b"PING",)), 1)
        assert replies == [b"PONG"]
        assert (conn.host, conn.port) == (live.hostname, live.port)
    finally:
        await conn.disconnect()


async def test_a_cancelled_group_ends_at_once_and_its_batch_still_settles(appender_of, r, names):
    """A group waits on its last append's future (the group is settled in one loop, in order);
    cancelling the caller cancels every append of the group at once, the batch in flight still
    runs (the appends happen: cancelling drops outcomes, not appends) and the appender goes on."""
    appender, sizes = appender_of(pipelines=1, min_batch=1, max_batch=128)
    await r.execute_command("CLIENT", "PAUSE", "700", "WRITE")  # the group's EVALSHA waits in Redis
    group = asyncio.ensure_future(appender.append_many([AppendCall(fields(i, "c"), f"c{i}") for i in range(5)]))
    await asyncio.sleep(0.1)
    assert sizes == [5] and not group.done()  # sent, not answered
    started = asyncio.get_running_loop().time()
    group.cancel()
    with pytest.raises(asyncio.CancelledError):
        await group
    assert asyncio.get_running_loop().time() - started < 0.3  # not after the pause
    after = await asyncio.wait_for(appender.append(fields(9, "d"), "d9"), 5)
    assert after.created
    assert sizes == [5, 1]
    assert [e[1]["order_id"] for e in await r.xrange(names.stream)] == ["c0", "c1", "c2", "c3", "c4", "d9"]
