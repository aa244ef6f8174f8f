"""Property-based API test: schemathesis generates requests for every operation of the served
OpenAPI document and checks each answer against it, on a live producer (``python -m producer`` on
a free loopback port) over real Redis.

Both generation modes: requests that fit the document (positive) and requests that break it
(negative: wrong types, missing fields, bad parameters), which must get a documented 4xx. Checks: no 5xx (``not_a_server_error``), every answer's body matches its documented schema
(``response_schema_conformance``) and its status is documented (``status_code_conformance``).
Bounded and reproducible: ``derandomize=True``, no example database, :data:`EXAMPLES` examples per
operation (the whole test takes well under 90 s on two shared cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import hypothesis
import pytest
import redis
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from streamcore.keys import Keys
from tests.servers import free_port

#: Examples per operation and generation mode (each one HTTP request); SCHEMATHESIS_EXAMPLES=500 for a longer hunt.
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def live_producer(redis_url, names):
    """``python -m producer`` on a free loopback port with this test's names; yields its base URL
    once /readyz answers 200 (deadline 20 s), and stops it (SIGTERM, then kill) afterwards."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING", **names.env()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer"], env=env, cwd=_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "producer did not become ready"
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            stderr = proc.communicate(timeout=15)[1].decode()
        except subprocess.TimeoutExpired:
            proc.kill()
            stderr = proc.communicate()[1].decode()
        assert "Traceback" not in stderr, stderr[-4000:]


def _seed(base: str, redis_url: str, names) -> dict[str, str]:
    """Orders, a group with pending entries (one consumer name not UTF-8), a processed marker and
    dead letters (re-drivable and unreadable), so reads and re-drives return every kind of
    answer; returns the dead letters' IDs by name."""
    for i in range(3):
        order = {"orderId": f"seed-{i}", "product": "widget", "quantity": i + 1, "userId": 7, "extra": {"n": [1, None]}}
        assert requests.post(f"{base}/orders", json=order, timeout=5).status_code == 201
    keys = Keys(stream=names.stream, group=names.group, dlq=names.dlq)
    r = redis.Redis.from_url(redis_url)
    try:
        try:
            r.xgroup_create(names.stream, names.group, id="0", mkstream=True)
        except redis.ResponseError:  # BUSYGROUP: the producer created it
            pass
        r.xreadgroup(names.group, "worker-1", {names.stream: ">"}, count=1)
        r.xreadgroup(names.group, b"worker-\xff", {names.stream: ">"}, count=1)
        r.hset(keys.processed("seed-1"), mapping={"consumer": "worker-1", "entry_id": "1-0", "at_ms": "7"})
        good = json.dumps({"orderId": "dead-1", "product": "widget", "quantity": 1, "userId": 1})
        dead = {
            "good": r.xadd(names.dlq, {"data": good, "order_id": "dead-1", "v": "1", "source_id": "1-0",
                                       "reason": "max_deliveries", "error": "boom", "deliveries": "5",
                                       "consumer": "worker-1"}).decode(),
            "unreadable": r.xadd(names.dlq, {b"data": b"{\xff", b"order_id": b"b\xff", b"source_id": b"2-0",
                                             b"reason": b"not_utf8", b"consumer": b"w\xff"}).decode(),
        }
        r.set(keys.dlq_index("dead-1"), dead["good"])
        return dead
    finally:
        r.close()


def test_every_operation_conforms_to_the_document(live_producer, redis_url, names):
    base = live_producer
    dead = _seed(base, redis_url, names)
    document = requests.get(f"{base}/openapi.json", timeout=5).json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=base)
    checks = [not_a_server_error, response_schema_conformance, status_code_conformance]
    session = requests.Session()

    # The seeded data first (generated requests would re-drive it away): every kind of answer.
    def explicit(method: str, path: str, expected: int, **data) -> dict:
        case = schema[path][method].Case(**data)
        response = case.call_and_validate(base_url=base, session=session, checks=checks, timeout=10)
        assert response.status_code == expected, (method, path, data, response.text)
        return response.json()

    status = {f"seed-{i}": explicit("GET", "/orders/{orderId}", 200, path_parameters={"orderId": f"seed-{i}"})["status"]
              for i in range(3)}
    assert status == {"seed-0": "pending", "seed-1": "processed", "seed-2": "waiting"}
    assert explicit("GET", "/orders/{orderId}", 200, path_parameters={"orderId": "dead-1"})["status"] == "dead_lettered"
    pending = explicit("GET", "/orders/pending", 200)
    assert pending["count"] == 2 and {"name": None, "nameBase64": "d29ya2VyLf8=", "pending": 1} in pending["consumers"]
    assert explicit("GET", "/stream/info", 200)["groupState"] == "ok"
    assert explicit("GET", "/orders/history", 200, query={"count": "2"})["count"] == 2
    assert [d["dlqId"] for d in explicit("GET", "/dead-letters", 200)["deadLetters"]] == [dead["good"], dead["unreadable"]]
    explicit("POST", "/dead-letters/{dlqId}/redrive", 409, path_parameters={"dlqId": dead["unreadable"]})
    assert explicit("POST", "/dead-letters/{dlqId}/redrive", 200, path_parameters={"dlqId": dead["good"]})["orderId"] == "dead-1"
    assert explicit("POST", "/dead-letters/redrive", 200)["skipped"][0]["reason"] == "not_utf8"
    assert explicit("POST", "/groups/{group}/pause", 200, path_parameters={"group": names.group})["paused"] is True
    assert [g.get("paused") for g in explicit("GET", "/stream/info", 200)["groups"] if g["name"] == names.group] == [True]
    assert explicit("POST", "/groups/{group}/resume", 200, path_parameters={"group": names.group})["paused"] is False
    assert explicit("DELETE", "/dead-letters/{dlqId}", 200, path_parameters={"dlqId": dead["unreadable"]})["deleted"] == 1
    actions = [e["action"] for e in explicit("GET", "/audit", 200)["entries"]]
    assert actions == ["delete_dead_letter", "resume", "pause", "redrive_all", "redrive"]
    assert explicit("GET", "/autoscaler/decisions", 200)["decisions"] == []
    explicit("POST", "/orders/batch", 400, body=[{"orderId": 1}], media_type="application/json")
    assert explicit("POST", "/orders", 415, body="x", media_type="text/plain")["fields"] == {"Content-Type": "must be application/json"}
    explicit("POST", "/orders", 413, body="x" * (1024 * 1024 + 1), media_type="application/json")
    assert explicit("POST", "/orders", 400, body={"orderId": 1}, media_type="application/json")["fields"].keys() == {"product", "quantity", "userId"}

    tested = []
    unbreakable: list[str] = []
    for result, mode in ((r, m) for r in schema.get_all_operations() for m in GenerationMode):
        operation = result.ok()
        tested.append((operation.label, mode))

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case) -> None:
            case.call_and_validate(base_url=base, session=session, checks=checks, timeout=10)

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            # Nothing of this operation can be made invalid (no body; parameters any string fits).
            assert mode is GenerationMode.NEGATIVE, operation.label
            unbreakable.append(operation.label)
    assert len(tested) == len(GenerationMode) * sum(len([m for m in item if m != "parameters"]) for item in document["paths"].values())
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
