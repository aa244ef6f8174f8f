"""The chart installed for real (issue 10): helm install --wait, orders through the API, kubectl
scale, the reclaimer CronJob, the CRD's schema on the real API server, the operator's RBAC,
helm upgrade / rollback / uninstall. The tests of this module share one release, in order."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import LOCAL, ROOT, Kube, pods, producer_api, ready

CHART = ROOT / "charts" / "orderstream"
RELEASE = "orderstream"


def _redis_image() -> tuple[str, str]:
    out = subprocess.run([str(LOCAL / "node-image.sh"), "redis-image"], capture_output=True, text=True, check=True)
    repo, tag = out.stdout.strip().rsplit(":", 1)
    return repo, tag


def install_args(namespace: str) -> list[str]:
    repo, tag = _redis_image()
    return ["-n", namespace, "--set", "image.pullPolicy=Never", "--set", f"redis.image.repository={repo}",
            "--set", f"redis.image.tag={tag}", "--set", "redis.image.pullPolicy=Never"]


@pytest.fixture(scope="module")
def release(kube: Kube) -> Iterator[str]:
    """A release of the chart with its built-in Redis in a namespace of its own; yields the namespace."""
    namespace = f"os-{uuid.uuid4().hex[:8]}"
    kube.helm("install", RELEASE, str(CHART), "--create-namespace", "--wait", "--timeout", "5m",
              *install_args(namespace), timeout=400)
    try:
        yield namespace
    finally:
        kube.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "3m", check=False, timeout=240)
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_helm_install_wait_makes_every_pod_ready(kube: Kube, release: str):
    items = kube.json("-n", release, "get", "pods")["items"]
    # The reclaimer CronJob may have started a Job by now: its pods run to completion, never Ready.
    jobs = [p for p in items if p["metadata"]["labels"]["app.kubernetes.io/component"] == "reclaimer"]
    serving = [p for p in items if p not in jobs]
    by_component = sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in serving)
    assert by_component == ["autoscaler", "consumer", "consumer", "producer", "producer", "redis"]
    assert [p["metadata"]["name"] for p in serving if not ready(p)] == []
    assert [p["metadata"]["name"] for p in jobs if p["status"].get("phase") == "Failed"] == []
    pvc = kube.json("-n", release, "get", "pvc")["items"]
    assert [(c["status"]["phase"], c["spec"]["storageClassName"]) for c in pvc] == [("Bound", "standard")]


def test_an_order_posted_through_the_service_is_processed_by_a_consumer_pod(kube: Kube, release: str):
    with producer_api(kube, release, f"{RELEASE}-producer") as api:
        api.post_order(1001)
        done = kube.wait_until(lambda: (o := api.order(1001))["status"] == "processed" and o, timeout=30,
                               what="order 1001 processed")
        consumers = {p["metadata"]["name"] for p in pods(kube, release, "consumer")}
        assert done["processed"]["consumer"] in consumers  # the consumer name is the pod name
        status, info = api.request("GET", "/stream/info")
        group = info["groups"][0]
        assert (status, group["pending"], group["lag"], info["deadLetters"]["length"]) == (200, 0, 0, 0)


def test_kubectl_scale_gives_three_ready_consumer_pods(kube: Kube, release: str):
    kube.kubectl("-n", release, "scale", f"deployment/{RELEASE}-consumer", "--replicas=3")
    kube.kubectl("-n", release, "rollout", "status", f"deployment/{RELEASE}-consumer", "--timeout=180s", timeout=200)
    kube.wait_until(lambda: sum(ready(p) for p in pods(kube, release, "consumer")) == 3, timeout=60,
                    what="3 Ready consumer pods")
    scale = kube.json("-n", release, "get", f"deployment/{RELEASE}-consumer", "--subresource=scale")
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (3, 3)


def test_a_job_made_from_the_reclaimer_cronjob_completes(kube: Kube, release: str):
    job = f"reclaim-now-{uuid.uuid4().hex[:6]}"
    kube.kubectl("-n", release, "create", "job", job, f"--from=cronjob/{RELEASE}-reclaimer")
    kube.kubectl("-n", release, "wait", "--for=condition=complete", f"job/{job}", "--timeout=180s", timeout=200)
    log = kube.kubectl("-n", release, "logs", f"job/{job}").stdout
    assert "reclaim: claimed=" in log, log


def test_the_api_server_enforces_the_streamautoscaler_schema(kube: Kube, release: str):
    example = (ROOT / "k8s" / "examples" / "streamautoscaler.yaml").read_text()
    accepted = kube.kubectl("-n", release, "apply", "--dry-run=server", "-f", "-",
                            input=example.replace("namespace: orderstream", f"namespace: {release}"))
    assert "created (server dry run)" in accepted.stdout
    bad = example.replace("namespace: orderstream", f"namespace: {release}").replace(
        "maxReplicas: 10", "maxReplicas: -3").replace("targetBacklogPerReplica: 100", "targetBacklogPerReplica: many")
    refused = kube.kubectl("-n", release, "apply", "--dry-run=server", "-f", "-", input=bad, check=False)
    assert refused.returncode != 0
    assert "spec.maxReplicas" in refused.stderr and "spec.targetBacklogPerReplica" in refused.stderr, refused.stderr


def _can(kube: Kube, namespace: str, verb: str, resource: str) -> str:
    """``kubectl auth can-i`` as the operator's ServiceAccount; ``resource`` is
    ``plural[.group][/subresource]``."""
    sa = f"system:serviceaccount:{namespace}:{RELEASE}-autoscaler"
    resource, _, sub = resource.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    out = kube.kubectl("auth", "can-i", verb, resource, *extra, "-n", namespace, f"--as={sa}", check=False)
    return out.stdout.strip()


def test_the_operator_service_account_has_what_it_needs_and_no_more(kube: Kube, release: str):
    role = kube.json("-n", release, "get", f"role/{RELEASE}-autoscaler")
    granted = [(verb, res.split("/")[0] + (f".{g}" if g else "") + ("/" + res.split("/")[1] if "/" in res else ""))
               for rule in role["rules"] for g in rule.get("apiGroups", [""])
               for res in rule["resources"] for verb in rule["verbs"]]
    assert granted, role
    assert {(v, r): _can(kube, release, v, r) for v, r in granted} == {vr: "yes" for vr in granted}
    # What the operator never does: read Secrets other than through its Role, touch Pods, delete
    # Deployments, act in another namespace.
    refused = [("delete", "deployments.apps"), ("create", "pods"), ("list", "secrets"),
               ("update", "roles.rbac.authorization.k8s.io")]
    assert {vr: _can(kube, release, *vr) for vr in refused} == {vr: "no" for vr in refused}
    assert _can(kube, "kube-system", "patch", "deployments.apps/scale") == "no"


# Each rule of the operator's Role, by the resource it grants, and what the operator can no longer
# do without it: (the 403 it meets, what a probe StreamAutoscaler shows). The probe asks for 2
# replicas of a 1-replica Deployment (minReplicas 2, no lag), so with the whole Role it scales it.
RULE_NEEDS = {
    "streamautoscalers": 'cannot list resource "streamautoscalers"',
    "streamautoscalers/status": 'cannot patch resource "streamautoscalers/status"',
    "deployments": 'cannot get resource "deployments"',
    "deployments/scale": 'cannot patch resource "deployments/scale"',
    "pods": 'cannot list resource "pods"',
    "events": 'cannot create resource "events"',
    "secrets": 'cannot get resource "secrets"',
}


def _probe(kube: Kube, namespace: str, name: str) -> None:
    """A 1-replica Deployment of the pause image (preloaded in the node) and a StreamAutoscaler
    that wants it at 2 replicas, polled every second."""
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"probe": name}}, "template": {
            "metadata": {"labels": {"probe": name}},
            "spec": {"automountServiceAccountToken": False, "containers": [{
                "name": "pause", "image": "registry.k8s.io/pause:3.10.2", "imagePullPolicy": "Never",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65535, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
            }]}}}}
    autoscaler = {
        "apiVersion": "orderstream.dev/v1alpha1", "kind": "StreamAutoscaler", "metadata": {"name": name},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                 "redis": {"urlSecretRef": {"name": f"{RELEASE}-redis-url", "key": "url"}},
                 "streams": [{"stream": "orders", "group": "order-processors"}],
                 "minReplicas": 2, "maxReplicas": 3, "targetBacklogPerReplica": 100, "pollIntervalSeconds": 1}}
    kube.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                          "items": [deployment, autoscaler]}))


def _operator_said(kube: Kube, namespace: str, probe: str) -> str:
    """Everything the operator said: its log, the probe's status and the probe's Events."""
    log = kube.kubectl("-n", namespace, "logs", f"deployment/{RELEASE}-autoscaler", check=False).stdout
    sa = kube.json("-n", namespace, "get", f"streamautoscaler/{probe}")
    events = kube.json("-n", namespace, "get", "events", "--field-selector", f"involvedObject.name={probe}")
    said = "\n".join([log, json.dumps(sa.get("status") or {}), *(e.get("message", "") for e in events["items"])])
    return said.replace('\\"', '"')  # the log is JSON lines: unescape the quotes of the API's messages


def _probe_outcome(kube: Kube, namespace: str, probe: str) -> tuple[int, str | None, list[str]]:
    """(the probe Deployment's spec.replicas, the StreamAutoscaler's status.reason, its Event reasons)."""
    replicas = kube.json("-n", namespace, "get", f"deployment/{probe}")["spec"]["replicas"]
    reason = (kube.json("-n", namespace, "get", f"streamautoscaler/{probe}").get("status") or {}).get("reason")
    events = kube.json("-n", namespace, "get", "events", "--field-selector",
                       f"involvedObject.name={probe},involvedObject.kind=StreamAutoscaler")["items"]
    return replicas, reason, sorted({e["reason"] for e in events})


def _restart_operator(kube: Kube, namespace: str) -> None:
    kube.kubectl("-n", namespace, "rollout", "restart", f"deployment/{RELEASE}-autoscaler")
    kube.kubectl("-n", namespace, "rollout", "status", f"deployment/{RELEASE}-autoscaler", "--timeout=120s",
                 timeout=150)


@pytest.mark.parametrize("without", [None, *RULE_NEEDS])
def test_each_rule_of_the_operator_role_is_needed(kube: Kube, release: str, without: str | None):
    """The operator in the cluster, with its whole Role and with one rule taken out at a time:
    the whole Role scales a probe; without any one rule the operator meets that 403 and the
    probe shows what it could not do."""
    role_name = f"role/{RELEASE}-autoscaler"
    rules = kube.json("-n", release, "get", role_name)["rules"]
    resources = [r["resources"][0] for r in rules]
    assert sorted(resources) == sorted(RULE_NEEDS)  # a new rule needs its own case here
    probe = f"probe-{(without or 'whole-role').replace('/', '-')}"
    if without is not None:
        kept = [r for r in rules if r["resources"][0] != without]
        kube.kubectl("-n", release, "patch", role_name, "--type=json",
                     "-p", json.dumps([{"op": "replace", "path": "/rules", "value": kept}]))
    try:
        _restart_operator(kube, release)
        _probe(kube, release, probe)
        if without is None:
            # Scaled (ScaleUp), then steady at 2 on the next poll.
            kube.wait_until(lambda: _probe_outcome(kube, release, probe) == (2, "Steady", ["Scaled"]), timeout=60,
                            what=lambda: f"the probe scaled to 2: {_probe_outcome(kube, release, probe)}")
            assert "forbidden" not in _operator_said(kube, release, probe).lower()
            return
        needle = RULE_NEEDS[without]
        kube.wait_until(lambda: needle in _operator_said(kube, release, probe), timeout=60,
                        what=lambda: f"{needle!r} in what the operator said:\n{_operator_said(kube, release, probe)[-3000:]}")
        expected = {
            # Never sees the StreamAutoscaler: nothing happens at all.
            "streamautoscalers": (1, None, []),
            # Scales, but can write no status: `kubectl get streamautoscaler` shows nothing.
            "streamautoscalers/status": (2, None, ["Scaled"]),
            "deployments": (1, "KubernetesError", ["KubernetesError"]),
            "deployments/scale": (1, "ScaleUp", ["ScaleFailed"]),
            # Scales, but cannot tell dead consumers' pending entries from live ones (logged).
            "pods": (2, "Steady", ["Scaled"]),
            # Scales, but nothing shows in `kubectl describe` / `kubectl get events`.
            "events": (2, "Steady", []),
            "secrets": (1, "RedisSecretUnavailable", ["RedisSecretUnavailable"]),
        }[without]
        kube.wait_until(lambda: _probe_outcome(kube, release, probe) == expected, timeout=30,
                        what=lambda: f"{expected}, not {_probe_outcome(kube, release, probe)}")
    finally:
        kube.kubectl("-n", release, "delete", "streamautoscaler", probe, "--ignore-not-found", "--wait=false",
                     check=False)
        kube.kubectl("-n", release, "delete", "deployment", probe, "--ignore-not-found", "--wait=false", check=False)
        kube.kubectl("-n", release, "patch", role_name, "--type=json",
                     "-p", json.dumps([{"op": "replace", "path": "/rules", "value": rules}]))


def _consumer_concurrency(kube: Kube, namespace: str) -> tuple[str, str]:
    dep = kube.json("-n", namespace, "get", f"deployment/{RELEASE}-consumer")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    config = kube.json("-n", namespace, "get", f"configmap/{RELEASE}-config")["data"]
    return dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"], env.get(
        "CONCURRENCY") or config.get("CONCURRENCY")


def test_helm_upgrade_rolls_the_consumers_and_rollback_restores_them(kube: Kube, release: str):
    revision, concurrency = _consumer_concurrency(kube, release)
    assert concurrency == "16"
    kube.helm("upgrade", RELEASE, str(CHART), "--reuse-values", "--set", "consumer.concurrency=24", "--wait",
              "--timeout", "5m", "-n", release, timeout=400)
    new_revision, concurrency = _consumer_concurrency(kube, release)
    assert (concurrency, int(new_revision)) == ("24", int(revision) + 1)  # a new ReplicaSet: pods rolled
    assert all(ready(p) for p in pods(kube, release, "consumer"))
    # Revision 1 holds the installed replica count (2); `kubectl scale` owns .spec.replicas since
    # (3), and Helm 4 applies server-side: rolling back to 1 conflicts unless forced, as the
    # chart's README says. Forced, the rollback takes revision 1's count back as well.
    refused = kube.helm("rollback", RELEASE, "1", "--wait", "-n", release, check=False, timeout=400)
    assert refused.returncode == 1
    assert 'conflict with "kubectl" with subresource "scale"' in refused.stderr, refused.stderr
    kube.helm("rollback", RELEASE, "1", "--force-conflicts", "--wait", "--timeout", "5m", "-n", release,
              timeout=400)
    back_revision, concurrency = _consumer_concurrency(kube, release)
    assert (concurrency, int(back_revision)) == ("16", int(revision) + 2)
    replicas = kube.json("-n", release, "get", f"deployment/{RELEASE}-consumer")["spec"]["replicas"]
    assert replicas == 2
    history = json.loads(kube.helm("history", RELEASE, "-n", release, "-o", "json").stdout)
    assert [h["status"] for h in history][-1] == "deployed"
    assert [h["description"] for h in history][-1] == "Rollback to 1"


def test_helm_uninstall_leaves_nothing_behind(kube: Kube, release: str):
    started = time.monotonic()
    kube.helm("uninstall", RELEASE, "-n", release, "--wait", "--timeout", "3m", timeout=240)
    assert time.monotonic() - started < 180  # no finalizer holds it
    kinds = "all,configmaps,secrets,serviceaccounts,roles,rolebindings,persistentvolumeclaims,streamautoscalers"

    def left() -> list[str]:
        names = kube.kubectl("-n", release, "get", kinds, "-o", "name").stdout.split()
        # Kubernetes' own per-namespace objects are not the release's.
        return [n for n in names if n not in ("configmap/kube-root-ca.crt", "serviceaccount/default")]

    # Pods of the deleted controllers end after their grace period (garbage collection).
    # The Redis claim goes too (persistentVolumeClaimRetentionPolicy whenDeleted: Delete).
    kube.wait_until(lambda: left() == [], timeout=120, what=lambda: f"the namespace emptied; left: {left()}")
