"""The plain manifests of k8s/ on the real cluster (issue 10): the kind overlay applied with
``kubectl apply --server-side`` reaches the same Ready state as the chart and processes an order.

The overlay is applied in a namespace of its own (the NamespaceTransformer of k8s/README.md),
with its NodePort Service turned into a ClusterIP one so that it cannot collide with a release
that publishes 30080. The CRD is cluster-scoped and shared with the chart's releases: it is
applied (same content, so no field conflict) and never deleted here.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import OUT, ROOT, Kube, pods, producer_api, ready


@pytest.fixture(scope="module")
def applied(kube: Kube) -> Iterator[str]:
    """k8s/overlays/kind applied server-side in namespace os-k-<hex>; yields the namespace."""
    namespace = f"os-k-{uuid.uuid4().hex[:8]}"
    overlay = OUT / f"overlay-{namespace}"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(Path("..") / ".." / "k8s" / "overlays" / "kind")],
        "transformers": [json.dumps({
            "apiVersion": "builtin", "kind": "NamespaceTransformer",
            "metadata": {"name": "namespace", "namespace": namespace},
            "setRoleBindingSubjects": "allServiceAccounts"})],
        "patches": [
            {"target": {"kind": "Namespace", "name": "orderstream"},
             "patch": json.dumps([{"op": "replace", "path": "/metadata/name", "value": namespace}])},
            {"target": {"kind": "Service", "name": "orderstream-producer"},
             "patch": json.dumps([{"op": "replace", "path": "/spec/type", "value": "ClusterIP"},
                                  {"op": "remove", "path": "/spec/ports/0/nodePort"}])},
        ],
    }, indent=1))
    try:
        kube.kubectl("apply", "--server-side", "-k", str(overlay), timeout=120)
        yield namespace
    finally:
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        shutil.rmtree(overlay, ignore_errors=True)


def test_the_kind_overlay_applied_server_side_gets_every_pod_ready(kube: Kube, applied: str):
    for kind in ("deployment/orderstream-producer", "deployment/orderstream-consumer",
                 "deployment/orderstream-autoscaler", "statefulset/orderstream-redis"):
        kube.kubectl("-n", applied, "rollout", "status", kind, "--timeout=240s", timeout=260)
    items = kube.json("-n", applied, "get", "pods")["items"]
    serving = [p for p in items if p["metadata"]["labels"]["app.kubernetes.io/component"] != "reclaimer"]
    by_component = sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in serving)
    # The chart's default install, with one producer (the overlay's choice for a small cluster).
    assert by_component == ["autoscaler", "consumer", "consumer", "producer", "redis"]
    assert [p["metadata"]["name"] for p in serving if not ready(p)] == []
    claims = kube.json("-n", applied, "get", "pvc")["items"]
    assert [(c["status"]["phase"], c["spec"]["storageClassName"]) for c in claims] == [("Bound", "standard")]
    # Server-side apply recorded kubectl as the manager of what it applied.
    managers = {f["manager"] for f in kube.json("-n", applied, "get", "deployment/orderstream-consumer",
                                                "--show-managed-fields")["metadata"]["managedFields"]}
    assert "kubectl" in managers


def test_an_order_is_processed_on_the_plain_manifests(kube: Kube, applied: str):
    with producer_api(kube, applied, "orderstream-producer") as api:
        api.post_order("manifests-1")
        done = kube.wait_until(lambda: (o := api.order("manifests-1"))["status"] == "processed" and o, timeout=60,
                               what="order manifests-1 processed")
    assert done["processed"]["consumer"] in {p["metadata"]["name"] for p in pods(kube, applied, "consumer")}


def test_reapplying_the_same_manifests_changes_nothing(kube: Kube, applied: str):
    before = kube.json("-n", applied, "get", "deployment/orderstream-consumer")["metadata"]["generation"]
    overlay = OUT / f"overlay-{applied}"
    out = kube.kubectl("apply", "--server-side", "-k", str(overlay), timeout=120).stdout
    assert "serverside-applied" in out
    after = kube.json("-n", applied, "get", "deployment/orderstream-consumer")["metadata"]["generation"]
    assert after == before
