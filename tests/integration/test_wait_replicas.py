"""REDIS_WAIT_REPLICAS: the producer answers 201 only once enough replicas confirmed the append
(WAIT after each append batch), else 503 with the counts (issue 13)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from streamcore.keys import Keys
from streamcore.streams import _APPEND, append_call
from tests.conftest import Names
from tests.integration.producer_support import make_api  # noqa: F401 (fixtures)
from tests.servers import RedisServer, server_binary


def wait_in_sync(replica: RedisServer, timeout_s: float = 15.0) -> None:
    """Wait until ``replica``'s link to its primary is up (the first sync is done)."""
    client = redis.Redis(port=replica.port, socket_timeout=2, decode_responses=True)
    deadline = time.monotonic() + timeout_s
    try:
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture(params=["redis", "valkey"])
def primary_and_replica(tmp_path, request):
    """A primary and its replica, both of one kind: Redis 7.0 moves a connection's WAIT offset
    after any command, Valkey (as Redis >= 7.2) only after a write."""
    kind = request.param
    binary = server_binary(kind)
    if binary is None:
        pytest.skip(f"{kind} server not found")
    primary = RedisServer(kind, binary, tmp_path / "primary", appendonly=False,
                          extra_args=("--repl-diskless-sync-delay", "0"))
    primary.start()
    replica = RedisServer(kind, binary, tmp_path / "replica", appendonly=False,
                          extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
    replica.start()
    wait_in_sync(replica)
    yield primary, replica
    replica.stop(kill=True)
    primary.stop(kill=True)


@pytest.fixture
def redis_url(primary_and_replica):  # what make_api connects to
    return primary_and_replica[0].url


def order(order_id: int) -> dict:
    return {"orderId": order_id, "product": "Laptop", "quantity": 1, "userId": 7}


async def test_one_replica_confirms_and_the_order_is_on_it(make_api, primary_and_replica, names: Names):
    api = await make_api(redis_wait_replicas=1, redis_wait_timeout_ms=2000)
    resp = await api.post("/orders", json=order(1), headers={"Idempotency-Key": "k1"})
    assert resp.status == 201, await resp.text()
    entry = (await resp.json())["id"]
    replica = redis.Redis(port=primary_and_replica[1].port, decode_responses=True)
    try:
        assert [e[0] for e in replica.xrange(names.stream)] == [entry]  # there when the 201 left
    finally:
        replica.close()
    batch = await api.post("/orders/batch", json=[order(2), order(3)])
    assert batch.status == 201 and (await batch.json())["count"] == 2


async def test_too_few_replicas_give_503_with_the_counts_and_a_retry_replays(make_api, names: Names):
    # 1 s: the one replica confirms well within it even on a loaded machine (with 200 ms a CI run
    # saw 0 of 2 confirmed), and the second replica never can.
    api = await make_api(redis_wait_replicas=2, redis_wait_timeout_ms=1000)
    started = time.monotonic()
    resp = await api.post("/orders", json=order(5), headers={"Idempotency-Key": "k5"})
    assert time.monotonic() - started >= 1.0
    body = await resp.json()
    assert (resp.status, resp.headers.get("Retry-After")) == (503, "1")
    assert (body["replicasConfirmed"], body["replicasRequired"]) == (1, 2)
    assert "Idempotency-Key" in body["error"]
    again = await api.post("/orders", json=order(5), headers={"Idempotency-Key": "k5"})
    assert again.status == 503  # still not on 2 replicas; and not appended twice:
    history = await (await (await make_api()).get("/orders/history")).json()
    assert [e["order"]["orderId"] for e in history["orders"]] == [5]


async def test_a_dead_replica_gives_503_within_the_timeout(make_api, primary_and_replica):
    primary_and_replica[1].stop(kill=True)
    api = await make_api(redis_wait_replicas=1, redis_wait_timeout_ms=300)
    started = time.monotonic()
    resp = await api.post("/orders", json=order(9))
    assert time.monotonic() - started < 2.0
    assert resp.status == 503
    assert ((await resp.json())["replicasConfirmed"], (await resp.json())["replicasRequired"]) == (0, 1)


def test_a_wait_timeout_past_the_socket_timeout_is_a_bad_setting():
    from pydantic import ValidationError

    from producer.settings import ProducerSettings
    from streamcore.settings import describe_errors

    with pytest.raises(ValidationError) as info:
        ProducerSettings(redis_wait_replicas=1, redis_wait_timeout_ms=20_000, redis_socket_timeout_s=15)
    assert describe_errors(info.value).startswith("invalid settings: REDIS_WAIT_TIMEOUT_MS (20000) must be below")
    assert ProducerSettings(redis_wait_timeout_ms=20_000, redis_socket_timeout_s=15).redis_wait_replicas == 0


def test_a_replay_waits_for_the_replicas_as_the_first_append_did(primary_and_replica, names: Names):
    """A client retries a 503 (WAIT shortfall) with its Idempotency-Key; the retry replays on
    another pooled connection whose own last write a replica had already confirmed. WAIT counts
    from the connection's last write, so a replay that wrote nothing answered 1 at once on Valkey
    (and Redis >= 7.2): a 201 that no replica had confirmed."""
    primary, replica = primary_and_replica
    keys = Keys(names.stream, names.group, names.dlq)
    first = redis.Redis(port=primary.port, single_connection_client=True, decode_responses=True)
    second = redis.Redis(port=primary.port, single_connection_client=True, decode_responses=True)
    append = first.register_script(_APPEND)
    call_keys, call_args = append_call(keys, {"data": '{"orderId": 1}'}, "1", idempotency_key="k1")
    try:
        first.set(f"{names.stream}:warm", 1)
        assert first.wait(1, 2000) == 1  # this connection's last write is on the replica
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            assert append(keys=call_keys, args=call_args, client=second)[0][0] == 1  # appended
            assert second.wait(1, 200) == 0  # the replica does not have it: the client got 503
            assert append(keys=call_keys, args=call_args, client=first)[0][0] == 0  # the retry replays
            assert first.wait(1, 200) == 0  # and still waits for the replica
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        assert first.wait(1, 5000) == 1
    finally:
        first.close()
        second.close()
