"""Redis Cluster mode with partitioned streams (issue 13): the core delivery scenarios end to end,
over HTTP, against a real 3-master/3-replica cluster with STREAM_PARTITIONS=6: orders routed over
every partition and the HTTP reads summing them. (The core modules' own tests also run on this
cluster, as server kind ``cluster``: tests/conftest.py.)

The producer is the real app (aiohttp TestServer), the consumers are in-process
:class:`consumer.worker.PartitionedWorker` s with redis-py's cluster client, the reclaimer is
:class:`reclaimer.reclaim.PartitionedReclaimer`. Each test has its own stream names.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
import zlib

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from consumer.settings import ConsumerSettings
from consumer.worker import PartitionedWorker
from producer.app import create_app
from producer.settings import ProducerSettings
from reclaimer.reclaim import PartitionedReclaimer
from reclaimer.settings import ReclaimerSettings
from streamcore import envelope
from streamcore.connection import create_redis
from streamcore.keys import partition_keys, partition_of
from streamcore.streams import Scripts, append_order
from streamcore.trimming import trim_pass
from tests.handlers import applied_key, calls_key, done_key
from tests.integration.consumer_support import wait_for

N = 6
HANDLER = "tests.handlers:scripted"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def common(url: str, names) -> dict:
    return dict(redis_url=url, stream_name=names.stream, group_name=names.group, dlq_stream=names.dlq,
                redis_cluster=True, stream_partitions=N)


@contextlib.asynccontextmanager
async def producer(url: str, names, **overrides):
    client = TestClient(TestServer(create_app(ProducerSettings(**common(url, names), **overrides),
                                              registry=CollectorRegistry())))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def consumers(url: str, names, *pods: str, **overrides):
    """In-process partitioned workers (one cluster client each); stopped and drained at the end."""
    running = []
    for pod in pods:
        values = dict(common(url, names), pod_name=pod, handler=HANDLER, claim_idle_ms=200, block_ms=500,
                      health_port=0, drain_timeout_seconds=5)
        values.update(overrides)
        settings = ConsumerSettings(**values)
        r = create_redis(url, cluster=True, socket_timeout_s=settings.redis_socket_timeout_s)
        worker = PartitionedWorker(settings, r, parts=settings.partitions)
        stop = asyncio.Event()
        running.append((worker, stop, asyncio.create_task(worker.run(stop)), r))
    try:
        yield [w for w, _, _, _ in running]
    finally:
        for _, stop, _, _ in running:
            stop.set()
        for _, _, task, r in running:
            try:
                await asyncio.wait_for(task, 20)
            finally:
                await r.aclose()


@pytest.fixture(autouse=True)
async def _collect():
    """Finalise this test's dropped objects while its loop runs, so that a leaked socket (see
    test_re_reading_the_slot_map_closes_the_node_objects_it_drops) fails the test that leaked it."""
    yield
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.05)


@pytest.fixture
async def rc(redis_cluster):
    client = create_redis(redis_cluster.url, cluster=True)
    yield client
    await client.aclose()


def parts_of(names):
    return partition_keys(names.stream, names.group, names.dlq, N, cluster=True)


def keys_of(names, order_id) -> object:
    return parts_of(names)[partition_of(str(order_id), N)]


async def applied(rc, names, order_ids) -> dict:
    """orderId -> value of its applied counter (on its partition), for every orderId given."""
    async with rc.pipeline() as pipe:
        for oid in order_ids:
            pipe.get(applied_key(keys_of(names, oid).stream, oid))
        values = await pipe.execute()
    return {oid: int(v or 0) for oid, v in zip(order_ids, values, strict=True)}


def order(oid, **extra) -> dict:
    return {"orderId": oid, "product": f"P-{oid}", "quantity": 1, "userId": 7, **extra}


async def test_re_reading_the_slot_map_closes_the_node_objects_it_drops(redis_cluster, names):
    """redis-py 7.4 builds new node objects for the slot map on every re-read (as after a
    connection error) and dropped the old ones with their sockets open: each showed up later as
    ``ResourceWarning: unclosed socket`` in whatever test the garbage collector ran in."""
    from redis.crc import key_slot

    r = create_redis(redis_cluster.url, cluster=True)
    try:
        key = f"{names.stream}:probe"
        dropped = []
        for round_ in range(3):
            await r.set(key, round_)  # connects to the slot's node object of this map
            before = r._known_nodes()
            used = r.nodes_manager.get_node_from_slot(key_slot(key.encode()))
            assert any(c.is_connected for c in used._connections)
            r._initialize = True  # what a ConnectionError or a MOVED after a failover sets
            assert await r.get(key) == str(round_)
            after = r._known_nodes()
            dropped += [node for k, node in before.items() if k not in after]
        assert dropped, "redis-py re-used its node objects: this fix may be unneeded"
        assert [n.name for n in dropped if any(c.is_connected for c in n._connections)] == []
        # A command that picked its node before a re-read dropped it connects on it afterwards
        # and gives the connection back: the node is still held, and the next re-read closes it.
        picked = r.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        r.mark_stale()
        assert await r.get(key) == "2"
        assert id(picked) not in r._known_nodes()
        late = picked.acquire_connection()
        await late.connect()
        picked.release(late)
        r.mark_stale()
        assert await r.get(key) == "2"
        assert (id(picked) in r._held, late.is_connected) == (True, False)
    finally:
        await r.aclose()
    assert [n.name for n in r._known_nodes().values() if any(c.is_connected for c in n._connections)] == []


async def test_commands_that_find_the_slot_map_stale_together_all_succeed(redis_cluster, names):
    """Concurrent commands (appenders of every partition, GET handlers, consumer loops) find the
    map stale at once after a failover; each re-reads it and closes what it dropped. A node
    forgotten twice raised KeyError: a 500 from the API and a failed delivery in a consumer."""
    r = create_redis(redis_cluster.url, cluster=True)
    try:
        keys = [f"{names.stream}:{{p{i % 3}}}:k{i}" for i in range(60)]
        await _gather_all(lambda: [r.set(k, i) for i, k in enumerate(keys)])
        for _ in range(5):
            r.mark_stale()
            assert await _gather_all(lambda: [r.get(k) for k in keys]) == [str(i) for i in range(60)]
    finally:
        await r.aclose()


async def _gather_all(calls) -> list:
    """Run the calls at once and return their results; fail on any error (a KeyError was the
    concurrent re-read bug; an AttributeError or "Connection closed by server" the close of
    connections other commands were using, see the next test)."""
    results = await asyncio.gather(*calls(), return_exceptions=True)
    assert [e for e in results if isinstance(e, BaseException)] == []
    return results


async def test_a_new_clients_concurrent_first_commands_all_succeed(redis_cluster, names):
    """Ten appends at once on each of 20 new clients (what a producer does with its first
    requests): redis-py closed every connection of every node from inside a command (its own
    ``aclose`` after a run of MOVED replies, and its idle-connection close after a connection
    error, which left the connections takeable while closing), cutting the other commands in
    flight: 14 to 20 of 400 such appends failed with ``'NoneType' object has no attribute
    'writelines'`` before streamcore.connection._Cluster kept those calls to idle connections."""
    fields = envelope.encode({"orderId": 1, "product": "x", "quantity": 1, "userId": 1})
    for trial in range(20):
        r = create_redis(redis_cluster.url, cluster=True)
        try:
            keys = partition_keys(f"{names.stream}-{trial}", names.group, f"{names.dlq}-{trial}", N,
                                  cluster=True)[trial % N]
            scripts = Scripts(r)
            results = await _gather_all(lambda: [append_order(r, keys, fields, "1", scripts=scripts,
                                                              idempotency_key="K", body_hash="h") for _ in range(10)])
            assert sum(x.created for x in results) == 1
        finally:
            await r.aclose()


async def test_a_command_redis_py_retried_after_a_cut_connection_is_counted(redis_cluster, names):
    """The consumer looks for entries whose reply was lost whenever its client retried a command
    (streamcore.connection.CountingRetry, consumer.worker.Worker._note_hidden_retries). The
    cluster client retries in its own loop, not through Retry.call_with_retry; our client counts
    those attempts too. Here the node closes the client's idle connection (CLIENT KILL): the next
    command fails on it, is retried by redis-py and succeeds, and the count moved."""
    from streamcore.connection import retried_failures

    key = f"{names.stream}:{{p0}}:k"
    rc = create_redis(redis_cluster.url, cluster=True)
    try:
        assert await rc.set(key, "v") is True
        before = retried_failures(rc)
        owner = rc.get_node_from_key(key)
        node = redis.Redis(host=owner.host, port=owner.port, decode_responses=True)
        try:
            assert node.client_kill_filter(_type="normal", skipme=True) >= 1
        finally:
            node.close()
        assert await rc.get(key) == "v"
        assert retried_failures(rc) > before
    finally:
        await rc.aclose()


async def test_partitions_spread_over_the_three_masters(redis_cluster, names):
    nodes = redis.Redis(host="127.0.0.1", port=redis_cluster.nodes[0].port, decode_responses=True)
    try:
        owners = []
        for keys in parts_of(names):
            slot = nodes.cluster("KEYSLOT", keys.stream)
            for first, last, master, *_ in nodes.cluster("SLOTS"):
                if first <= slot <= last:
                    owners.append(master[1])
    finally:
        nodes.close()
    assert len(owners) == N and sorted(owners.count(p) for p in set(owners)) == [2, 2, 2]


async def test_orders_are_routed_processed_once_and_acked_across_partitions(redis_cluster, rc, names):
    url = redis_cluster.url
    async with producer(url, names) as api:
        ids = {}
        for oid in range(30):
            resp = await api.post("/orders", json=order(oid))
            assert resp.status == 201
            ids[oid] = (await resp.json())["id"]
        resp = await api.post("/orders/batch", json=[order(oid) for oid in range(30, 60)])
        assert resp.status == 201 and (await resp.json())["count"] == 30
        # The same orderId twice (an at-least-once client retry without a key): applied once.
        assert (await api.post("/orders", json=order(5))).status == 201
        # A replay under an Idempotency-Key appends nothing.
        first = await api.post("/orders", json=order(77), headers={"Idempotency-Key": "k-77"})
        again = await api.post("/orders", json=order(77), headers={"Idempotency-Key": "k-77"})
        assert (first.status, again.status, again.headers.get("Idempotent-Replayed")) == (201, 201, "true")
        assert (await first.json())["id"] == (await again.json())["id"]
        every = list(range(60)) + [77]

        # Each order is in the stream of partition crc32(orderId) % 6, and only there.
        for oid in (0, 1, 59, 77):
            home = keys_of(names, oid)
            assert partition_of(str(oid), N) == zlib.crc32(str(oid).encode()) % N
            found = [k.partition for k in parts_of(names)
                     if any(f"\"orderId\":{oid}," in e[1]["data"] for e in await rc.xrange(k.stream))]
            assert found == [home.partition]

        info = await (await api.get("/stream/info")).json()
        assert (info["length"], info["groupState"], len(info["partitions"])) == (62, "ok", N)
        assert [g["lag"] for g in info["groups"]] == [62]
        assert sum(p["length"] for p in info["partitions"]) == 62

        # CLAIM_IDLE_MS long enough that no entry is claimed from a busy consumer here: the
        # delivery counts below are then exact.
        async with consumers(url, names, "pod-a", "pod-b", claim_idle_ms=20_000):
            await wait_applied_once(rc, names, every, timeout=30, what="every order applied")
            await wait_for(lambda: _drained(api), timeout=10, what="lag and pending at 0")
        assert await applied(rc, names, every) == {oid: 1 for oid in every}
        calls5 = int(await rc.get(calls_key(keys_of(names, 5).stream, 5)))
        done5 = int(await rc.get(done_key(keys_of(names, 5).stream, 5)))
        assert (calls5, done5) == (2, 2)  # delivered twice (two entries), applied once

        status = await (await api.get("/orders/3")).json()
        assert (status["status"], status["id"]) == ("processed", ids[3])
        assert status["processed"]["consumer"] in ("pod-a", "pod-b")
        assert (await api.get("/orders/999")).status == 404

        # History: pages of 7 through every partition give each entry once, oldest first.
        seen, cursor = [], None
        while True:
            q = {"limit": "7"} if cursor is None else {"limit": "7", "start": cursor}
            page = await (await api.get("/orders/history", params=q)).json()
            seen += [(o["id"], o["order"]["orderId"]) for o in page["orders"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert len(seen) == 62 and sorted(oid for _, oid in seen) == sorted(every + [5])
        order_key = [tuple(map(int, i.split("-"))) for i, _ in seen]
        assert order_key == sorted(order_key)
        last5 = await (await api.get("/orders/history", params={"count": "5"})).json()
        assert [o["id"] for o in last5["orders"]] == [i for i, _ in seen[-5:]]


async def wait_applied_once(rc, names, order_ids, *, timeout: float, what: str) -> None:
    """Poll the applied counters until every orderId given reads 1; on the deadline fail with
    those that do not (0: lost or not yet processed, 2+: applied twice)."""
    deadline = time.monotonic() + timeout
    while True:
        wrong = {oid: n for oid, n in (await applied(rc, names, order_ids)).items() if n != 1}
        if not wrong or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    assert wrong == {}, f"{what}: {len(wrong)} of {len(order_ids)} orders not applied exactly once"


async def _drained(api) -> bool:
    info = await (await api.get("/stream/info")).json()
    pending = await (await api.get("/orders/pending")).json()
    return info["groups"][0]["lag"] == 0 and info["groups"][0]["pending"] == 0 and pending["count"] == 0


async def test_failures_retry_dead_letter_and_redrive_to_their_own_partition(redis_cluster, rc, names):
    url = redis_cluster.url
    async with producer(url, names) as api:
        # 10 fail twice then succeed; 4 are poison (dead-lettered after MAX_DELIVERIES=3).
        batch = [order(f"r{i}", fail_until=2) for i in range(10)] + [order(f"x{i}", poison=True) for i in range(4)]
        assert (await api.post("/orders/batch", json=batch)).status == 201
        async with consumers(url, names, "pod-a", max_deliveries=3):
            await wait_applied_once(rc, names, [f"r{i}" for i in range(10)], timeout=30, what="retried orders applied")
            dead = await wait_for(lambda: _dead(api, 4), timeout=60, what="4 dead letters")
        assert sorted(d["orderId"] for d in dead["deadLetters"]) == [f"x{i}" for i in range(4)]
        assert {d["orderId"]: d["partition"] for d in dead["deadLetters"]} == {
            f"x{i}": partition_of(f"x{i}", N) for i in range(4)}
        assert all(d["deliveries"] == 3 and d["reason"] == "max_deliveries" for d in dead["deadLetters"])
        assert (await (await api.get("/stream/info")).json())["deadLetters"]["length"] == 4

        # Re-drive one by its dlqId, then the rest: each goes back to its own partition's stream.
        one = dead["deadLetters"][0]
        resp = await api.post(f"/dead-letters/{one['dlqId']}/redrive")
        assert resp.status == 200
        body = await resp.json()
        home = keys_of(names, one["orderId"])
        assert [e[0] for e in await rc.xrange(home.stream, body["id"], body["id"])] == [body["id"]]
        rest = await (await api.post("/dead-letters/redrive")).json()
        assert (rest["redriven"], rest["remaining"], rest["skipped"]) == (3, 0, [])
        for item in rest["items"]:
            k = keys_of(names, item["orderId"])
            assert len(await rc.xrange(k.stream, item["id"], item["id"])) == 1
        assert (await (await api.get("/dead-letters")).json())["length"] == 0


async def _dead(api, n):
    got = await (await api.get("/dead-letters")).json()
    return got if got["count"] == n else None


async def test_reclaimer_takes_over_a_dead_consumers_entries_on_every_partition(redis_cluster, rc, names):
    url = redis_cluster.url
    async with producer(url, names) as api:
        every = [f"o{i}" for i in range(24)]
        assert (await api.post("/orders/batch", json=[order(o) for o in every])).status == 201
        # A consumer that read everything and died: its entries are pending on all 6 partitions.
        for keys in parts_of(names):
            await rc.xreadgroup(keys.group, "ghost", {keys.stream: ">"}, count=100)
        pending = await (await api.get("/orders/pending")).json()
        assert pending["count"] == 24 and pending["consumers"] == [{"name": "ghost", "pending": 24}]
        assert sorted({e["partition"] for e in pending["entries"]}) == sorted({partition_of(o, N) for o in every})
        await asyncio.sleep(0.3)  # older than CLAIM_IDLE_MS (200 ms)
        settings = ReclaimerSettings(**common(url, names), handler=HANDLER, claim_idle_ms=200)
        reclaimer = PartitionedReclaimer(settings, rc, parts=settings.partitions)
        summary = await wait_for(lambda: _claimed_all(reclaimer, 24), timeout=20, what="a pass claiming 24")
        assert (summary.processed, summary.failed, summary.dead_lettered) == (24, 0, 0)
        assert await applied(rc, names, every) == {o: 1 for o in every}
        assert (await (await api.get("/orders/pending")).json())["count"] == 0


async def _claimed_all(reclaimer, n):
    summary = await reclaimer.run_once()
    return summary if summary.claimed == n else None


async def test_retention_trims_each_partition_only_below_its_safe_floor(redis_cluster, rc, names):
    url = redis_cluster.url
    async with producer(url, names) as api:
        every = [f"t{i}" for i in range(60)]
        assert (await api.post("/orders/batch", json=[order(o) for o in every])).status == 201
        parts = parts_of(names)
        lengths = [await rc.xlen(k.stream) for k in parts]
        assert sum(lengths) == 60 and all(n >= 3 for n in lengths)
        # Nothing delivered yet: no partition may be trimmed.
        for keys in parts:
            report = await trim_pass(rc, keys, maxlen=2, approximate=False)
            assert (report.trimmed, report.lost, report.floor) == (0, 0, "0-1")
        async with consumers(url, names, "pod-a"):
            await wait_applied_once(rc, names, every, timeout=30, what="all applied")
            await wait_for(lambda: _drained(api), timeout=10, what="acked")
        for keys, n in zip(parts, lengths, strict=True):
            report = await trim_pass(rc, keys, maxlen=2, approximate=False)
            assert (report.trimmed, report.lost) == (n - 2, 0)
            assert await rc.xlen(keys.stream) == 2
        info = await (await api.get("/stream/info")).json()
        assert (info["length"], info["lostEntries"]) == (2 * N, 0)


async def test_cluster_setting_against_a_standalone_server_exits_2(redis_url, names):
    env = dict(os.environ, REDIS_URL=redis_url, REDIS_CLUSTER="true", STREAM_PARTITIONS="3", **names.env())
    done = subprocess.run([sys.executable, "-m", "consumer"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr == ("python -m consumer: REDIS_CLUSTER=true but the server at REDIS_URL is not a cluster node "
                           "(cluster_enabled:0)\n")


async def test_wait_replicas_counts_the_replicas_of_the_partitions_own_primary(redis_cluster, rc, names):
    """REDIS_WAIT_REPLICAS=1 with REDIS_CLUSTER: the WAIT goes to the primary that took the
    append. With that primary's replica stopped (SIGSTOP), an order of its partition gets 503
    (0 of 1 replicas); an order of a partition on another primary gets 201 (a WAIT sent to any
    other node would have said 1); once the replica runs again the client's retry with the same
    Idempotency-Key gets 201, and the stream holds the order once, on the replica too."""
    parts = parts_of(names)
    home = _master_of(redis_cluster, parts[0].stream)
    other_part = next(k.partition for k in parts if _master_of(redis_cluster, k.stream) is not home)
    first, held = [oid for oid in (f"w{i}" for i in range(1000)) if partition_of(oid, N) == 0][:2]
    elsewhere = next(f"w{i}" for i in range(1000) if partition_of(f"w{i}", N) == other_part)
    replica = _replica_of(redis_cluster, parts[0].stream)
    async with producer(redis_cluster.url, names, redis_wait_replicas=1, redis_wait_timeout_ms=300) as api:
        ok = await api.post("/orders", json=order(first), headers={"Idempotency-Key": first})
        assert ok.status == 201, await ok.text()
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            refused = await api.post("/orders", json=order(held), headers={"Idempotency-Key": held})
            body = await refused.json()
            other = await api.post("/orders", json=order(elsewhere), headers={"Idempotency-Key": elsewhere})
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        assert (refused.status, body["replicasConfirmed"], body["replicasRequired"]) == (503, 0, 1)
        assert other.status == 201, await other.text()
        deadline = time.monotonic() + 15
        while (again := await api.post("/orders", json=order(held), headers={"Idempotency-Key": held})).status != 201:
            assert time.monotonic() < deadline, await again.text()
            await asyncio.sleep(0.1)
        entry = (await again.json())["id"]
    assert await rc.xlen(parts[0].stream) == 2  # first and held, once each
    reader = redis.Redis(port=replica.port, socket_timeout=2, decode_responses=True)
    try:
        reader.execute_command("READONLY")
        assert [e[0] for e in reader.xrange(parts[0].stream)][-1] == entry
    finally:
        reader.close()


def _replica_of(cluster, key: str):
    """A replica attached to the master serving ``key``'s slot."""
    return cluster.replicas_of(_master_of(cluster, key))[0]


async def test_sigkilled_master_fails_over_and_every_accepted_order_is_applied_once(tmp_path, names):
    """One master is SIGKILLed while orders flow; a replica takes over (cluster-node-timeout
    1000 ms) and processing resumes without restarting anything. Clients retry a failed POST with
    the same Idempotency-Key, as the API asks. REDIS_WAIT_REPLICAS=1, as the README says for no
    loss: without it the master can die with orders it answered 201 for that no replica has."""
    from tests.servers import RedisClusterServers, server_binary

    # Two replicas per master: after the failover the new master still has one for WAIT.
    cluster = RedisClusterServers(server_binary("redis"), tmp_path / "failover", replicas=2)
    try:
        cluster.start()
        url = cluster.url
        accepted: list[str] = []
        stop_flow = asyncio.Event()
        async with producer(url, names, redis_wait_replicas=1) as api, consumers(url, names, "pod-a", "pod-b"):
            task = asyncio.create_task(steady_flow(api, "f", accepted, stop_flow, retry_for_s=60))
            await wait_for(lambda: _count_at_least(accepted, 50), timeout=20, what="orders flowing")
            # Kill the master of partition 0's slot (a seed node must stay up for the client).
            victim = _master_of(cluster, parts_of(names)[0].stream)
            before = len(accepted)
            victim.stop(kill=True)
            # Its replica is promoted once the others flag it failed (cluster-node-timeout 1 s).
            await wait_for(lambda: asyncio.to_thread(_promoted, cluster), timeout=30, interval=0.2,
                           what="the killed master's replica promoted")
            await asyncio.to_thread(cluster.wait_ok, 30)
            await wait_for(lambda: _count_at_least(accepted, before + 100), timeout=60, what="orders after failover")
            stop_flow.set()
            await asyncio.wait_for(task, 70)
            client = create_redis(url if victim is not cluster.nodes[0] else
                                  f"redis://127.0.0.1:{cluster.running()[0].port}/0", cluster=True)
            try:
                await wait_applied_once(client, names, accepted, timeout=60, what="every accepted order applied")
                counts = await applied(client, names, accepted)
            finally:
                await client.aclose()
        assert len(accepted) >= 150 and len(set(accepted)) == len(accepted)
        assert counts == {oid: 1 for oid in accepted}
    finally:
        cluster.stop()


async def steady_flow(api, prefix: str, accepted: list[str], stop: asyncio.Event, *, retry_for_s: float) -> None:
    """POST orders ``<prefix>0``, ``<prefix>1``, ... one at a time until ``stop`` is set, as a
    client that retries each (same Idempotency-Key) after any failure for up to ``retry_for_s``
    seconds, then gives up on it; each orderId answered 201 is appended to ``accepted``."""
    i = 0
    while not stop.is_set():
        oid = f"{prefix}{i}"
        deadline = time.monotonic() + retry_for_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                resp = await api.post("/orders", json=order(oid), headers={"Idempotency-Key": oid})
                if resp.status == 201:
                    accepted.append(oid)
                    break
            await asyncio.sleep(0.05)
        i += 1
        await asyncio.sleep(0.01)


async def _count_at_least(items, n):
    return len(items) >= n


def _promoted(cluster) -> bool:
    """Three masters among the running nodes again (the killed one's replica took over)."""
    return len(cluster.masters()) == 3


def _master_of(cluster, key: str):
    probe = redis.Redis(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True)
    try:
        slot = probe.cluster("KEYSLOT", key)
        for first, last, master, *_ in probe.cluster("SLOTS"):
            if first <= slot <= last:
                return next(n for n in cluster.nodes if n.port == int(master[1]))
    finally:
        probe.close()
    raise AssertionError(f"no master for {key}")


@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["pipeline", "wait-1"])
async def test_a_partitions_slot_resharded_under_load_keeps_every_order_applied_once(tmp_path, names, wait_replicas):
    """Partition 0's hash slot moves to another master while orders flow over HTTP, its keys
    migrated 10 at a time (clients meet the half-moved slot: ASK and TRYAGAIN redirections), as
    ``redis-cli --cluster reshard`` moves a slot; nothing is restarted. Processing goes on and every
    accepted orderId is applied exactly once, partition 0's on its new master. Its own cluster: the
    session one keeps the even slot split other tests assert. Twice: appends through redis-py's
    cluster pipeline, and with REDIS_WAIT_REPLICAS=1 on one connection to the slot's primary
    (which answers MOVED once the slot is gone: the batch goes again to the new owner)."""
    from redis.crc import key_slot

    from tests.servers import RedisClusterServers, server_binary

    cluster = RedisClusterServers(server_binary("redis"), tmp_path / "reshard")
    rc = None
    try:
        cluster.start()
        url = cluster.url
        home = parts_of(names)[0]
        slot = key_slot(home.stream.encode())
        source = cluster.owner(slot)
        target = cluster.owner(key_slot(parts_of(names)[2].stream.encode()))
        assert target is not source
        accepted: list[str] = []
        stop_flow = asyncio.Event()
        rc = create_redis(url, cluster=True)
        async with producer(url, names, redis_wait_replicas=wait_replicas) as api, \
                consumers(url, names, "pod-a", "pod-b"):
            task = asyncio.create_task(steady_flow(api, "m", accepted, stop_flow, retry_for_s=30))
            await wait_for(lambda: _count_at_least(accepted, 50), timeout=20, what="orders flowing")
            await wait_applied_once(rc, names, accepted[:40], timeout=20, what="the first orders applied")
            before = len(accepted)
            in_slot = await asyncio.to_thread(_count_keys, source, slot)
            moved = await asyncio.to_thread(cluster.migrate_slot, slot, target, pause_s=0.1)
            assert cluster.owner(slot) is target
            # Its keys really moved (the stream, its group, per-order keys): at least those there
            # when the move began, 10 a MIGRATE.
            assert moved["keys"] >= in_slot > 20 and moved["batches"] >= 3
            assert await asyncio.to_thread(_count_keys, source, slot) == 0
            await wait_for(lambda: _count_at_least(accepted, before + 100), timeout=30,
                           what="orders after the move")
            stop_flow.set()
            await asyncio.wait_for(task, 40)
            await wait_applied_once(rc, names, accepted, timeout=30, what="every accepted order applied")
            counts = await applied(rc, names, accepted)
        assert len(accepted) >= 150 and len(set(accepted)) == len(accepted)
        assert counts == {oid: 1 for oid in accepted}
        # Partition 0's stream, now on the target, holds each of its accepted orders once,
        # including those accepted after the move.
        after_move = [oid for oid in accepted[before:] if partition_of(oid, N) == 0]
        assert after_move
        direct = redis.Redis(host="127.0.0.1", port=target.port, decode_responses=True)
        try:
            entries = direct.xrange(home.stream)
        finally:
            direct.close()
        in_stream = sorted(json.loads(e[1]["data"])["orderId"] for e in entries)
        assert in_stream == sorted(oid for oid in accepted if partition_of(oid, N) == 0)
    finally:
        if rc is not None:
            await rc.aclose()
        cluster.stop()


def _count_keys(node, slot: int) -> int:
    client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)
    try:
        return int(client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))
    finally:
        client.close()
