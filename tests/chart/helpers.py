"""Helpers for the chart tier: render the chart with Helm's engine, validate every object.

Rendering uses helm-python-sdk (Helm's own Go engine through a C ABI; synchronous, no event
loop). ``Chart.render`` leaves ``crds/`` out, so :func:`render_objects` adds ``chart.crds``.
Validation uses kubernetes-validate's strict schemas (unknown fields are errors), except for
our own API group, validated against the CRD's openAPIV3Schema, and the Prometheus Operator's
ServiceMonitor, checked by hand (:func:`check_service_monitor`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "orderstream"
CRD_FILE = CHART_DIR / "crds" / "streamautoscalers.orderstream.dev.yaml"
K8S_DIR = REPO / "k8s"
RELEASE = "orderstream"
NAMESPACE = "orders-ns"

# Oldest Kubernetes minor we support (Chart.yaml kubeVersion) and the newest we validate for.
KUBE_VERSIONS = ("1.29", "1.37")
OWN_GROUP = "orderstream.dev"

Obj = dict[str, Any]

# The render matrix: name -> values passed to the chart (merged over values.yaml by Helm).
SCENARIOS: dict[str, Obj] = {
    "defaults": {},
    "ingress-tls": {
        "producer": {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
                "hosts": [{"host": "orders.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
                "tls": [{"secretName": "orders-tls", "hosts": ["orders.example.com"]}],
            }
        }
    },
    "external-redis-url": {"redis": {"external": {"url": "rediss://redis.example.com:6380/2"}}},
    "external-redis-secret": {
        "redis": {"external": {"existingSecret": "prod-redis", "existingSecretKey": "REDIS_URL"}}
    },
    "everything-on": {
        "commonLabels": {"team": "payments"},
        "imagePullSecrets": [{"name": "regcred"}],
        "producer": {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": [{"host": "orders.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
                "tls": [{"secretName": "orders-tls", "hosts": ["orders.example.com"]}],
            },
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "orders", "effect": "NoSchedule"}],
        },
        "redis": {"external": {"existingSecret": "prod-redis", "existingSecretKey": "url"}},
        "autoscaler": {
            "watchAllNamespaces": True,
            "streamAutoscaler": {
                "enabled": True,
                "minReplicas": 0,
                "maxReplicas": 20,
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}]},
                    "scaleDown": {"stabilizationWindowSeconds": 120, "selectPolicy": "Min"},
                },
            },
        },
        "networkPolicy": {"enabled": True},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Orders"}},
    },
    # charts/orderstream/examples/external-redis-tls.yaml: TLS, Sentinel and WAIT (issue 13)
    "external-redis-tls": yaml.safe_load((CHART_DIR / "examples" / "external-redis-tls.yaml").read_text()),
    # charts/orderstream/examples/external-redis-cluster-tls.yaml: Redis Cluster, TLS, 6 partitions
    "external-redis-cluster-tls": yaml.safe_load(
        (CHART_DIR / "examples" / "external-redis-cluster-tls.yaml").read_text()),
    "components-off": {
        "reclaimer": {"enabled": False},
        "autoscaler": {"enabled": False},
        "consumer": {"podDisruptionBudget": {"enabled": False}},
        "networkPolicy": {"enabled": True},
    },
}


def parse_documents(text: str) -> list[Obj]:
    """Parse a multi-document YAML string into its non-empty documents (dicts)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_manifests(chart: Any, values: Obj, namespace: str = NAMESPACE) -> dict[str, str]:
    """Render ``chart`` (a ``helm_python.Chart``) with ``values``; returns template path -> text.

    Raises ``helm_python.HelmRenderError`` when a template fails (e.g. a ``fail`` guard).
    """
    return chart.render(values, name=RELEASE, namespace=namespace, is_install=True)


def is_hook(obj: Obj) -> bool:
    """The object is a Helm hook (annotation ``helm.sh/hook``): run at its hook, not part of the release."""
    return "helm.sh/hook" in ((obj.get("metadata") or {}).get("annotations") or {})


def render_objects(chart: Any, values: Obj, namespace: str = NAMESPACE, *, hooks: bool = False) -> list[Obj]:
    """Render ``chart`` and return the release's Kubernetes objects, including the CRDs of ``crds/``;
    with ``hooks=True`` only its Helm hooks instead (e.g. the pre-delete uninstall Job).

    ``Chart.render`` omits ``crds/`` (Helm installs them separately), so they are added from
    ``chart.crds``. NOTES.txt is not an object and is left out.
    """
    manifests = render_manifests(chart, values, namespace)
    objects = [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith((".yaml", ".yml"))
        for doc in parse_documents(text)
    ]
    if hooks:
        return [o for o in objects if is_hook(o)]
    objects = [o for o in objects if not is_hook(o)]
    for crd in chart.crds:
        objects.extend(parse_documents(crd["data"]))
    return objects


def api_group(obj: Obj) -> str:
    """The API group of an object ('' for the core group)."""
    api_version = obj["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


def strict_crd_schema(crd: Obj, version: str = "v1alpha1") -> Obj:
    """The openAPIV3Schema of ``crd``'s ``version`` as a JSON schema that rejects unknown fields.

    The API server prunes unknown fields of structural schemas and, with kubectl's default
    ``--validate=strict``, rejects them; ``additionalProperties: false`` is added wherever the
    schema lists properties and does not preserve unknown fields, to the same effect.
    """
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema = copy.deepcopy(entry["schema"]["openAPIV3Schema"])
            break
    else:  # pragma: no cover - a broken CRD fails the tests that call this
        raise KeyError(f"CRD {crd['metadata']['name']} has no version {version}")

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    # metadata is validated by the API server itself, not by the CRD schema.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def validate_custom_resource(obj: Obj, crd: Obj) -> None:
    """Validate a custom resource against ``crd``'s strict schema.

    Raises ``jsonschema.ValidationError`` (its ``absolute_path`` names the bad field) when the
    object does not conform, or ``AssertionError`` when the kind or group does not match.
    """
    names = crd["spec"]["names"]
    assert obj["kind"] == names["kind"], obj["kind"]
    group, _, version = obj["apiVersion"].partition("/")
    assert group == crd["spec"]["group"], obj["apiVersion"]
    jsonschema.validate(obj, strict_crd_schema(crd, version), cls=jsonschema.Draft7Validator)


def check_service_monitor(obj: Obj) -> None:
    """Hand check of a monitoring.coreos.com/v1 ServiceMonitor (no schema ships for it).

    Checks the fields the Prometheus Operator needs and that no unknown field is used in the
    parts the chart writes. Raises ``AssertionError`` naming the problem.
    """
    assert obj["apiVersion"] == "monitoring.coreos.com/v1", obj["apiVersion"]
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}, sorted(obj)
    assert obj["metadata"].get("name"), "ServiceMonitor without a name"
    spec = obj["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels"}, sorted(spec)
    assert spec["selector"]["matchLabels"], "ServiceMonitor selects nothing"
    assert spec["endpoints"], "ServiceMonitor without endpoints"
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, sorted(endpoint)
        assert isinstance(endpoint["port"], str) and endpoint["port"], endpoint
        assert endpoint.get("path", "/metrics").startswith("/"), endpoint


def check_prometheus_rule(obj: Obj) -> None:
    """Hand check of a monitoring.coreos.com/v1 PrometheusRule (no schema ships for it): the
    fields the Prometheus Operator reads and nothing else. The expressions themselves are
    checked by promtool (tests/chart/test_alerts.py). Raises ``AssertionError`` naming the problem."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1", obj["apiVersion"]
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}, sorted(obj)
    assert obj["metadata"].get("name"), "PrometheusRule without a name"
    assert set(obj["spec"]) == {"groups"}, sorted(obj["spec"])
    for group in obj["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"], sorted(group)
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}, sorted(rule)
            assert ("alert" in rule) != ("record" in rule) and isinstance(rule["expr"], str), rule


def validate_object(obj: Obj, kube_version: str, crds: list[Obj]) -> None:
    """Validate one rendered object for ``kube_version`` in strict mode.

    Objects of our own API group go through :func:`validate_custom_resource` with the matching
    CRD; ServiceMonitors through :func:`check_service_monitor`; everything else through
    kubernetes-validate with ``strict=True``. A missing schema raises
    ``kubernetes_validate.SchemaNotFoundError`` (a failure for the caller).
    """
    group = api_group(obj)
    if group == OWN_GROUP:
        matching = [c for c in crds if c["spec"]["names"]["kind"] == obj["kind"] and c["spec"]["group"] == group]
        assert matching, f"no CRD for {obj['apiVersion']} {obj['kind']}"
        validate_custom_resource(obj, matching[0])
    elif group == "monitoring.coreos.com" and obj["kind"] == "ServiceMonitor":
        check_service_monitor(obj)
    elif group == "monitoring.coreos.com" and obj["kind"] == "PrometheusRule":
        check_prometheus_rule(obj)
    else:
        kubernetes_validate.validate(obj, kube_version, strict=True)


def load_crds() -> list[Obj]:
    """The CRDs of the chart's ``crds/`` folder, parsed from disk."""
    return [doc for path in sorted((CHART_DIR / "crds").glob("*.yaml")) for doc in parse_documents(path.read_text())]


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    """The objects of ``kind``."""
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    """The single object of ``kind`` named ``name``; fails the test when absent or repeated."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}: {[o['metadata']['name'] for o in by_kind(objects, kind)]}"
    return found[0]


def pod_template(obj: Obj) -> Obj | None:
    """The pod template (``{metadata, spec}``) of a workload, or None for other kinds."""
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return None


def workloads(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """Yield ``(workload, pod_template)`` for every object that creates pods."""
    for obj in objects:
        template = pod_template(obj)
        if template is not None:
            yield obj, template


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """True when every ``selector`` key/value is present in ``labels`` (an empty selector is False)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container(template: Obj, name: str) -> Obj:
    """The container called ``name`` in a pod template."""
    found = [c for c in template["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"container {name} not found"
    return found[0]


def env_map(ctr: Obj) -> dict[str, Any]:
    """A container's env as ``name -> value`` (a plain string) or ``name -> valueFrom`` (a dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in ctr.get("env", [])}


def effective_env(objects: list[Obj], ctr: Obj) -> dict[str, Any]:
    """What a container's process sees: the data of the ConfigMaps (among ``objects``) its
    ``envFrom`` names, then its ``env`` over them (``name -> value``, or ``name -> valueFrom``
    for a Secret or field reference). Raises ``KeyError`` for a ConfigMap not in ``objects``."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    env: dict[str, Any] = {}
    for source in ctr.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    env.update(env_map(ctr))
    return env


def resolve_port(ctr: Obj, port: int | str) -> int:
    """The container port number a probe/Service port refers to (by name or number)."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in ctr.get("ports", []) if "name" in p}
    assert port in named, f"port {port!r} is not a named port of container {ctr['name']}: {sorted(named)}"
    return named[port]


def leaf_value_paths(values: Any, prefix: str = "") -> list[str]:
    """Dotted paths of a values tree; maps that are empty by default count as leaves."""
    if isinstance(values, dict) and values and not prefix.endswith(("resources", "requests", "limits")):
        paths: list[str] = []
        for key, value in values.items():
            paths.extend(leaf_value_paths(value, f"{prefix}.{key}" if prefix else key))
        return paths
    return [prefix]
