"""What schemas cannot check: wiring between objects, probes, security, drain timing, RBAC."""

from __future__ import annotations

from typing import Any

import base64
import pytest

from tests.chart.helpers import (
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    Obj,
    by_kind,
    container,
    env_map,
    labels_match,
    one,
    pod_template,
    render_objects,
    resolve_port,
    validate_object,
    workloads,
)

pytestmark = pytest.mark.chart

SCENARIO_NAMES = sorted(SCENARIOS)

# Served paths and ports per docs/CONTRACT.md: component -> (container port env, port, probe paths).
SERVED = {
    "producer": ("PORT", 3000, {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}),
    "consumer": ("HEALTH_PORT", 8081, {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}),
    "autoscaler": ("HEALTH_PORT", 8080, {"livenessProbe": "/healthz", "readinessProbe": "/healthz"}),
}


def _pods(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    return list(workloads(objects))


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_workload_selectors_match_their_pod_labels(renders: dict[str, list[Obj]], scenario: str) -> None:
    pods = _pods(renders[scenario])
    assert pods
    for workload, template in pods:
        if workload["kind"] == "CronJob":
            continue  # Jobs generate their own selector.
        selector = workload["spec"]["selector"]["matchLabels"]
        assert labels_match(selector, template["metadata"]["labels"]), workload["metadata"]["name"]
        # The selector must single out one workload's pods, not the whole release.
        others = [w for w, t in pods if w is not workload and labels_match(selector, t["metadata"]["labels"])]
        assert others == [], (workload["metadata"]["name"], [w["metadata"]["name"] for w in others])


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_every_service_selects_pods_and_targets_a_named_container_port(
    renders: dict[str, list[Obj]], scenario: str
) -> None:
    objects = renders[scenario]
    for service in by_kind(objects, "Service"):
        selected = [t for _, t in _pods(objects) if labels_match(service["spec"]["selector"], t["metadata"]["labels"])]
        assert selected, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            assert isinstance(port["targetPort"], str), "targetPort must name a container port"
            for template in selected:
                names = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
                assert port["targetPort"] in names, (service["metadata"]["name"], port["targetPort"], names)


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_pdb_network_policy_and_service_monitor_select_something(renders: dict[str, list[Obj]], scenario: str) -> None:
    objects = renders[scenario]
    templates = [t for _, t in _pods(objects)]
    for obj in by_kind(objects, "PodDisruptionBudget") + by_kind(objects, "NetworkPolicy"):
        selector = obj["spec"]["selector" if obj["kind"] == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
        assert any(labels_match(selector, t["metadata"]["labels"]) for t in templates), obj["metadata"]["name"]
    services = by_kind(objects, "Service")
    for monitor in by_kind(objects, "ServiceMonitor"):
        matched = [s for s in services if labels_match(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert len(matched) == 1, monitor["metadata"]["name"]
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names


def test_consumer_pdb_allows_one_disruption_and_selects_only_consumers(default_objects: list[Obj]) -> None:
    pdb = one(default_objects, "PodDisruptionBudget", "orderstream-consumer")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "consumer"


@pytest.mark.parametrize("component", sorted(SERVED))
def test_probes_point_at_served_paths_and_ports(default_objects: list[Obj], component: str) -> None:
    env_name, port, paths = SERVED[component]
    template = pod_template(one(default_objects, "Deployment", f"orderstream-{component}"))
    ctr = container(template, component)
    assert env_map(ctr)[env_name] == str(port)
    assert {p["containerPort"] for p in ctr["ports"]} >= {port}
    for probe_name, path in paths.items():
        probe = ctr[probe_name]["httpGet"]
        assert probe["path"] == path, (component, probe_name)
        assert resolve_port(ctr, probe["port"]) == port, (component, probe_name)
    assert set(paths) == {k for k in ("livenessProbe", "readinessProbe", "startupProbe") if k in ctr}


def test_ports_follow_values(chart: Any) -> None:
    objects = render_objects(chart, {"producer": {"port": 8000}, "consumer": {"healthPort": 9001}})
    producer = container(pod_template(one(objects, "Deployment", "orderstream-producer")), "producer")
    assert env_map(producer)["PORT"] == "8000"
    assert resolve_port(producer, producer["readinessProbe"]["httpGet"]["port"]) == 8000
    consumer = container(pod_template(one(objects, "Deployment", "orderstream-consumer")), "consumer")
    assert env_map(consumer)["HEALTH_PORT"] == "9001"
    assert resolve_port(consumer, consumer["livenessProbe"]["httpGet"]["port"]) == 9001


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_every_pod_is_restricted(renders: dict[str, list[Obj]], scenario: str) -> None:
    for workload, template in _pods(renders[scenario]):
        name = workload["metadata"]["name"]
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert "hostNetwork" not in pod and "hostPID" not in pod, name
        for ctr in pod["containers"] + pod.get("initContainers", []):
            sc = ctr["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, ctr["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, ctr["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, ctr["name"])
            assert "add" not in sc["capabilities"], (name, ctr["name"])
            assert sc["runAsNonRoot"] is True, (name, ctr["name"])
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", (name, ctr["name"])
            assert sc.get("privileged", False) is False, (name, ctr["name"])
            assert ctr["resources"]["requests"]["memory"] and ctr["resources"]["limits"]["memory"], (name, ctr["name"])
            # The read-only root needs a writable /tmp.
            mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], (name, ctr["name"])


def test_orderstream_pods_run_as_the_image_uid(default_objects: list[Obj]) -> None:
    for workload, template in _pods(default_objects):
        expected = 999 if workload["kind"] == "StatefulSet" else 10001
        assert template["spec"]["securityContext"]["runAsUser"] == expected, workload["metadata"]["name"]


def test_only_the_operator_mounts_a_service_account_token(default_objects: list[Obj]) -> None:
    mounting = sorted(w["metadata"]["name"] for w, t in _pods(default_objects) if t["spec"]["automountServiceAccountToken"])
    assert mounting == ["orderstream-autoscaler"]


def test_consumer_name_comes_from_pod_name_and_grace_outlives_drain(default_objects: list[Obj]) -> None:
    template = pod_template(one(default_objects, "Deployment", "orderstream-consumer"))
    env = env_map(container(template, "consumer"))
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["DRAIN_TIMEOUT_SECONDS"] == "20"
    assert template["spec"]["terminationGracePeriodSeconds"] == 30
    assert template["spec"]["terminationGracePeriodSeconds"] > int(env["DRAIN_TIMEOUT_SECONDS"])


def test_commands_choose_the_component(default_objects: list[Obj]) -> None:
    commands = {
        c["name"]: c["command"] for _, t in _pods(default_objects) for c in t["spec"]["containers"] if "command" in c
    }
    assert commands == {
        "producer": ["python", "-m", "producer"],
        "consumer": ["python", "-m", "consumer"],
        "reclaimer": ["python", "-m", "reclaimer"],
        "autoscaler": ["python", "-m", "autoscaler", "--namespace", NAMESPACE],
    }


def test_image_tag_is_the_app_version_and_one_image_serves_all(default_objects: list[Obj], chart: Any) -> None:
    images = {c["image"] for w, t in _pods(default_objects) if w["kind"] != "StatefulSet" for c in t["spec"]["containers"]}
    # The image that `make image` builds locally (k8s/local/image.sh), tagged with the appVersion.
    assert images == {f"orderstream:{chart.metadata['appVersion']}"}


def test_reclaimer_cronjob(default_objects: list[Obj]) -> None:
    cron = one(default_objects, "CronJob", "orderstream-reclaimer")
    spec = cron["spec"]
    assert spec["schedule"] == "* * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] == 1
    assert spec["failedJobsHistoryLimit"] == 3
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 1
    # A pass is killed before the next one is due (the schedule is every 60 s).
    assert 0 < job["activeDeadlineSeconds"] < 60
    assert job["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_autoscaler_is_a_single_recreated_replica(default_objects: list[Obj]) -> None:
    deployment = one(default_objects, "Deployment", "orderstream-autoscaler")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    ctr = container(deployment["spec"]["template"], "autoscaler")
    assert env_map(ctr)["METRICS_PORT"] == "9090"
    assert resolve_port(ctr, "metrics") == 9090


# --- RBAC -----------------------------------------------------------------------------------------

NAMESPACED_RULES = [
    (["orderstream.dev"], ["streamautoscalers"], ["list", "watch", "patch"]),
    (["orderstream.dev"], ["streamautoscalers/status"], ["patch"]),
    (["apps"], ["deployments"], ["get"]),
    (["apps"], ["deployments/scale"], ["patch"]),
    ([""], ["pods"], ["list"]),
    ([""], ["events"], ["create"]),
    ([""], ["secrets"], ["get"]),
]
# Each verb is one the operator uses: tests/operator/test_rbac_coverage.py records its requests.
CLUSTER_ONLY_RULES = [
    (["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"]),
]


def _rules(role: Obj) -> list[tuple[list[str], list[str], list[str]]]:
    return [(r["apiGroups"], r["resources"], r["verbs"]) for r in role["rules"]]


@pytest.mark.parametrize(
    ("scenario", "role_kind", "expected_rules"),
    [
        ("defaults", "Role", NAMESPACED_RULES),
        ("everything-on", "ClusterRole", NAMESPACED_RULES + CLUSTER_ONLY_RULES),
    ],
)
def test_rbac_binds_the_rendered_service_account_with_least_privilege(
    renders: dict[str, list[Obj]], scenario: str, role_kind: str, expected_rules: list[Any]
) -> None:
    objects = renders[scenario]
    account = one(objects, "ServiceAccount", "orderstream-autoscaler")
    assert account["metadata"]["namespace"] == NAMESPACE
    deployment = one(objects, "Deployment", "orderstream-autoscaler")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]

    role = one(objects, role_kind, "orderstream-autoscaler")
    assert _rules(role) == expected_rules
    assert all("*" not in verbs and "*" not in resources for _, resources, verbs in _rules(role))
    binding = one(objects, f"{role_kind}Binding", "orderstream-autoscaler")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}]
    if role_kind == "Role":
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
        assert deployment["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--namespace", NAMESPACE]
        assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    else:
        assert "namespace" not in role["metadata"] and "namespace" not in binding["metadata"]
        assert deployment["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--all-namespaces"
        assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")


def test_existing_service_account_is_bound_by_name(chart: Any) -> None:
    objects = render_objects(chart, {"autoscaler": {"serviceAccount": {"create": False, "name": "ops-bot"}}})
    assert not by_kind(objects, "ServiceAccount")
    binding = one(objects, "RoleBinding", "orderstream-autoscaler")
    assert binding["subjects"][0]["name"] == "ops-bot"
    deployment = one(objects, "Deployment", "orderstream-autoscaler")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "ops-bot"


# --- Redis wiring ---------------------------------------------------------------------------------


def _redis_url_refs(objects: list[Obj]) -> set[tuple[str, str]]:
    refs = set()
    for _, template in workloads(objects):
        for ctr in template["spec"]["containers"]:
            if ctr["name"] == "redis":
                continue
            ref = env_map(ctr)["REDIS_URL"]["secretKeyRef"]
            refs.add((ref["name"], ref["key"]))
    return refs


def test_builtin_redis_by_default(default_objects: list[Obj]) -> None:
    redis = one(default_objects, "StatefulSet", "orderstream-redis")
    template = redis["spec"]["template"]
    ctr = container(template, "redis")
    assert ctr["image"].startswith("redis:7.")
    args = ctr["args"]
    assert args[0] == "redis-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == "/data"
    assert {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}["/data"] == "data"
    claim = redis["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert redis["spec"]["serviceName"] == one(default_objects, "Service", "orderstream-redis")["metadata"]["name"]
    secret = one(default_objects, "Secret", "orderstream-redis-url")
    assert secret["stringData"] == {"url": f"redis://orderstream-redis.{NAMESPACE}.svc:6379/0"}
    assert _redis_url_refs(default_objects) == {("orderstream-redis-url", "url")}


def test_external_url_replaces_builtin_redis(renders: dict[str, list[Obj]]) -> None:
    objects = renders["external-redis-url"]
    assert not by_kind(objects, "StatefulSet")
    assert [s["metadata"]["name"] for s in by_kind(objects, "Service")] == ["orderstream-producer"]
    secret = one(objects, "Secret", "orderstream-redis-url")
    assert secret["stringData"] == {"url": "rediss://redis.example.com:6380/2"}
    assert _redis_url_refs(objects) == {("orderstream-redis-url", "url")}


def test_existing_secret_replaces_builtin_redis_and_chart_secret(renders: dict[str, list[Obj]]) -> None:
    objects = renders["external-redis-secret"]
    assert not by_kind(objects, "StatefulSet")
    assert [o["metadata"]["name"] for o in by_kind(objects, "Secret")] == ["orderstream-admin"]  # no Redis URL Secret
    assert _redis_url_refs(objects) == {("prod-redis", "REDIS_URL")}


def test_redis_network_policy_admits_only_this_release(renders: dict[str, list[Obj]]) -> None:
    policy = one(renders["components-off"], "NetworkPolicy", "orderstream-redis")
    assert policy["spec"]["ingress"] == [{
        "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "orderstream", "app.kubernetes.io/instance": RELEASE}}}],
        "ports": [{"port": "redis", "protocol": "TCP"}],
    }]


def test_shared_settings_live_in_one_config_map(default_objects: list[Obj]) -> None:
    config = one(default_objects, "ConfigMap", "orderstream-config")
    assert config["data"]["STREAM_NAME"] == "orders"
    assert config["data"]["GROUP_NAME"] == "order-processors"
    assert config["data"]["DLQ_STREAM"] == "orders:dlq"
    assert config["data"]["STREAM_MAXLEN"] == "100000"
    assert config["data"]["LOG_FORMAT"] == "json"
    assert "REDIS_URL" not in config["data"]
    for _, template in workloads(default_objects):
        for ctr in template["spec"]["containers"]:
            if ctr["name"] != "redis":
                assert ctr["envFrom"] == [{"configMapRef": {"name": "orderstream-config"}}]


# --- ingress, StreamAutoscaler, labels, NOTES -----------------------------------------------------


def test_ingress_routes_to_the_producer_service_with_tls(renders: dict[str, list[Obj]]) -> None:
    objects = renders["ingress-tls"]
    ingress = one(objects, "Ingress", "orderstream-producer")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "orders-tls", "hosts": ["orders.example.com"]}]
    service = one(objects, "Service", "orderstream-producer")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["rules"][0]["host"] == "orders.example.com"


def test_stream_autoscaler_targets_the_consumer_deployment(everything_objects: list[Obj]) -> None:
    sas = one(everything_objects, "StreamAutoscaler", "orderstream-consumer")
    consumer = one(everything_objects, "Deployment", "orderstream-consumer")
    assert sas["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": consumer["metadata"]["name"]}
    assert (sas["spec"]["redis"]["urlSecretRef"]["name"], sas["spec"]["redis"]["urlSecretRef"]["key"]) in _redis_url_refs(everything_objects)
    assert sas["spec"]["streams"] == [{"stream": "orders", "group": "order-processors"}]
    assert (sas["spec"]["minReplicas"], sas["spec"]["maxReplicas"]) == (0, 20)
    assert sas["spec"]["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 120, "selectPolicy": "Min"}
    # The operator owns the replica count, so helm upgrade must not reset it.
    assert "replicas" not in consumer["spec"]


def test_consumer_replicas_come_from_values_without_autoscaler(default_objects: list[Obj]) -> None:
    assert one(default_objects, "Deployment", "orderstream-consumer")["spec"]["replicas"] == 2
    assert not by_kind(default_objects, "StreamAutoscaler")


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_every_object_carries_the_standard_labels(renders: dict[str, list[Obj]], scenario: str) -> None:
    for obj in renders[scenario]:
        if obj["kind"] == "CustomResourceDefinition":
            continue  # Shipped verbatim from crds/ (not templated).
        labels = obj["metadata"]["labels"]
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels["app.kubernetes.io/name"] == "orderstream", name
        assert labels["app.kubernetes.io/instance"] == RELEASE, name
        assert labels["app.kubernetes.io/managed-by"] == "Helm", name
        assert labels["app.kubernetes.io/version"] == "0.1.0", name
        assert labels["app.kubernetes.io/part-of"] == "orderstream", name
        assert labels["helm.sh/chart"] == "orderstream-0.1.0", name
        assert len(obj["metadata"]["name"]) <= 63, name
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, name
    if scenario == "everything-on":
        assert all(o["metadata"]["labels"]["team"] == "payments" for o in renders[scenario] if o["kind"] != "CustomResourceDefinition")


def test_long_release_names_still_fit_dns_labels(chart: Any) -> None:
    manifests = chart.render({}, name="a" * 53, namespace=NAMESPACE)
    names = [line.split(":", 1)[1].strip() for text in manifests.values() for line in text.splitlines() if line.startswith("  name: ")]
    assert names and max(len(n) for n in names) <= 63


def test_notes_tell_how_to_post_an_order(chart: Any) -> None:
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)["orderstream/templates/NOTES.txt"]
    assert f"kubectl --namespace {NAMESPACE} port-forward svc/orderstream-producer 3000:80" in notes
    assert "curl -X POST http://127.0.0.1:3000/orders" in notes
    assert "Content-Type: application/json" in notes
    with_ingress = chart.render(SCENARIOS["ingress-tls"], name=RELEASE, namespace=NAMESPACE)["orderstream/templates/NOTES.txt"]
    assert "curl -X POST https://orders.example.com/orders" in with_ingress


def test_ingress_without_host_is_a_catch_all_rule(chart: Any, crds: list[Obj]) -> None:
    values = {"producer": {"ingress": {"enabled": True, "hosts": [{"host": "", "paths": [{"path": "/", "pathType": "Prefix"}]}]}}}
    ingress = one(render_objects(chart, values), "Ingress", "orderstream-producer")
    assert "host" not in ingress["spec"]["rules"][0]
    assert "tls" not in ingress["spec"] and "ingressClassName" not in ingress["spec"]
    for version in KUBE_VERSIONS:
        validate_object(ingress, version, crds)


# --- the pre-delete hook that releases the StreamAutoscaler ------------------------------------------


def test_the_uninstall_hook_deletes_the_release_streamautoscalers_with_least_privilege(chart: Any, crds: list[Obj]) -> None:
    hooks = render_objects(chart, SCENARIOS["everything-on"], hooks=True)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in hooks) == [
        ("Job", "orderstream-autoscaler-uninstall"), ("Role", "orderstream-autoscaler-uninstall"),
        ("RoleBinding", "orderstream-autoscaler-uninstall"), ("ServiceAccount", "orderstream-autoscaler-uninstall")]
    for obj in hooks:
        notes = obj["metadata"]["annotations"]
        assert notes["helm.sh/hook"] == "pre-delete"
        assert notes["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        assert obj["metadata"]["namespace"] == NAMESPACE
        for kube_version in KUBE_VERSIONS:
            validate_object(obj, kube_version, crds)
    # Its account, role and binding exist before the Job runs (lower weight).
    weights = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hooks}
    assert weights["Job"] > max(weights["ServiceAccount"], weights["Role"], weights["RoleBinding"])
    role = one(hooks, "Role", "orderstream-autoscaler-uninstall")
    assert role["rules"] == [{"apiGroups": ["orderstream.dev"], "resources": ["streamautoscalers"],
                              "verbs": ["list", "delete", "patch"]}]
    binding = one(hooks, "RoleBinding", "orderstream-autoscaler-uninstall")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "orderstream-autoscaler-uninstall",
                                    "namespace": NAMESPACE}]
    job = one(hooks, "Job", "orderstream-autoscaler-uninstall")
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "orderstream-autoscaler-uninstall" and spec["restartPolicy"] == "Never"
    ctr = spec["containers"][0]
    assert ctr["command"] == ["python", "-m", "autoscaler.uninstall", "--namespace", NAMESPACE, "--selector",
                              f"app.kubernetes.io/name=orderstream,app.kubernetes.io/instance={RELEASE}"]
    assert ctr["securityContext"]["readOnlyRootFilesystem"] and spec["securityContext"]["runAsNonRoot"]
    # The selector picks exactly the release's StreamAutoscaler.
    sas = one(render_objects(chart, SCENARIOS["everything-on"]), "StreamAutoscaler", "orderstream-consumer")
    selector = dict(pair.split("=") for pair in ctr["command"][-1].split(","))
    assert labels_match(selector, sas["metadata"]["labels"])


def test_no_uninstall_hook_without_a_streamautoscaler(chart: Any) -> None:
    assert render_objects(chart, SCENARIOS["defaults"], hooks=True) == []


def _admin_token_ref(objects: list[Obj]) -> dict:
    producer = one(objects, "Deployment", "orderstream-producer")
    [env] = [e for e in producer["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "ADMIN_TOKEN"]
    return env["valueFrom"]["secretKeyRef"]


def test_admin_token_comes_from_a_generated_secret_by_default(default_objects: list[Obj]) -> None:
    secret = one(default_objects, "Secret", "orderstream-admin")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) == 40 and token.isalnum()
    assert _admin_token_ref(default_objects) == {"name": "orderstream-admin", "key": "token"}


def test_admin_token_from_an_existing_secret(chart) -> None:
    objects = render_objects(chart, {"producer": {"adminToken": {"existingSecret": "ops-admin", "existingSecretKey": "t"}}})
    assert "orderstream-admin" not in {o["metadata"]["name"] for o in by_kind(objects, "Secret")}
    assert _admin_token_ref(objects) == {"name": "ops-admin", "key": "t"}
