"""Opt-in end-to-end tier on a kind cluster: ``ORDERSTREAM_E2E=1 make test-e2e``.

``make kind-up`` creates the cluster, builds and loads the image and installs the chart; the
tests then talk to the producer Service through ``kubectl port-forward``. The cluster is deleted
at the end unless ``ORDERSTREAM_E2E_KEEP=1``. There is no Docker engine in CI, so CI skips this.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e import kind
from tests.e2e.kind import Api, consumer_pods, kubectl, wait_for

_REASON = kind.skip_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800), pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A kind cluster with the chart installed and ready (``make kind-up``), deleted afterwards."""
    kind.run("make", "kind-up", timeout=1200)
    yield
    if os.environ.get("ORDERSTREAM_E2E_KEEP") != "1":
        kind.run("make", "kind-down", timeout=300, check=False)


@pytest.fixture(scope="module")
def api(cluster: None) -> Iterator[Api]:
    """The producer API through a port-forward to its Service, ready."""
    port = kind.free_port()
    forward = kind.port_forward(port)
    client = Api(f"http://127.0.0.1:{port}")
    try:
        wait_for("the producer's /readyz through the Service", lambda: client.request("GET", "/readyz")[0] == 200, 60)
        yield client
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def _order_ids(count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"e2e-{run}-{i}" for i in range(count)]


def _all_processed(api: Api, order_ids: list[str]) -> dict[str, dict] | None:
    answers = {oid: api.order(oid) for oid in order_ids}
    return answers if all(a["status"] == "processed" for a in answers.values()) else None


def test_orders_posted_through_the_service_are_processed(api: Api) -> None:
    order_ids = _order_ids(20)
    entry_ids = [api.post_order(oid) for oid in order_ids]
    assert len(set(entry_ids)) == 20
    answers = wait_for("20 orders processed", lambda: _all_processed(api, order_ids), 120)
    pods = set(consumer_pods())
    # Each order was applied by a consumer named after a live pod.
    assert {a["processed"]["consumer"] for a in answers.values()} <= pods
    group = api.group()
    assert group["pending"] == 0


def test_kubectl_scale_to_three_shows_three_pod_named_consumers(api: Api) -> None:
    kubectl("scale", f"deployment/{kind.CONSUMER}", "--replicas=3")
    kubectl("rollout", "status", f"deployment/{kind.CONSUMER}", "--timeout=180s", timeout=200)
    pods = wait_for("3 running consumer pods", lambda: (p := consumer_pods()) if len(p) == 3 else None, 120)

    def joined() -> set[str] | None:
        names = {c["name"] for c in api.group()["consumers"]}
        return names if set(pods) <= names else None

    names = wait_for("the 3 pods in GET /stream/info", joined, 60)
    assert len(set(pods)) == 3
    assert set(pods) <= names
    # Every live member is a pod of the Deployment (older names may linger until the reclaimer removes them).
    assert all(name.startswith(f"{kind.CONSUMER}-") for name in names)


def test_deleting_a_consumer_pod_with_pending_orders_gets_them_processed(api: Api) -> None:
    # One consumer that fails every order, so the orders stay pending in its PEL; a high
    # MAX_DELIVERIES keeps its retries from dead-lettering them meanwhile.
    kubectl("scale", f"deployment/{kind.CONSUMER}", "--replicas=1")
    kind.set_config(FAILURE_RATE="1.0", MAX_DELIVERIES="1000")
    try:
        kubectl("rollout", "restart", f"deployment/{kind.CONSUMER}")
        kubectl("rollout", "status", f"deployment/{kind.CONSUMER}", "--timeout=180s", timeout=200)
        holder = wait_for("one running consumer", lambda: (p := consumer_pods()) if len(p) == 1 else None, 120)[0]

        order_ids = _order_ids(5)
        for oid in order_ids:
            api.post_order(oid)

        def held() -> bool:
            answers = [api.order(oid) for oid in order_ids]
            return all(a["status"] == "pending" and a["pending"]["consumer"] == holder for a in answers)

        wait_for(f"5 orders pending at {holder}", held, 60)
    finally:
        # New pods (the replacement and the reclaimer's Jobs) start healthy again.
        kind.set_config(FAILURE_RATE="0.0")

    kubectl("delete", "pod", holder, "--wait=true", timeout=120)
    answers = wait_for("the orders of the deleted pod processed", lambda: _all_processed(api, order_ids), 300, interval=3)
    assert holder not in {a["processed"]["consumer"] for a in answers.values()}
    assert holder not in consumer_pods()
    kind.set_config(MAX_DELIVERIES="5")
