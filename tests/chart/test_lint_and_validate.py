"""Helm lint (strict) and strict Kubernetes schema validation of every rendered object."""

from __future__ import annotations

import copy
import json
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest

from tests.monitoring import DASHBOARD
from tests.chart.helpers import (
    CHART_DIR,
    KUBE_VERSIONS,
    OWN_GROUP,
    SCENARIOS,
    Obj,
    api_group,
    by_kind,
    one,
    validate_object,
)

pytestmark = pytest.mark.chart

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_strict_has_no_warnings(scenario: str, kube_version: str) -> None:
    report = helm.lint(CHART_DIR, SCENARIOS[scenario], strict=True, kube_version=f"v{kube_version}.0")
    assert report["total_charts_linted"] == 1
    findings = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert findings == [], findings
    assert report["errors"] == []


def test_chart_metadata_declares_oldest_supported_kubernetes(chart: Any) -> None:
    metadata = chart.metadata
    assert metadata["apiVersion"] == "v2"
    assert metadata["kubeVersion"] == f">={KUBE_VERSIONS[0]}.0-0"
    assert metadata["appVersion"] == "0.1.0"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_validates_strictly(
    renders: dict[str, list[Obj]], crds: list[Obj], scenario: str, kube_version: str
) -> None:
    objects = renders[scenario]
    assert len(objects) >= 10
    failures = []
    for obj in objects:
        try:
            validate_object(obj, kube_version, crds)
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: no schema: {exc.message}")
        except (jsonschema.ValidationError, AssertionError) as exc:
            path = "/".join(str(p) for p in getattr(exc, "absolute_path", []))
            failures.append(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {getattr(exc, 'message', exc)}")
    assert failures == []


def test_render_includes_the_crd(default_objects: list[Obj]) -> None:
    crd = one(default_objects, "CustomResourceDefinition", "streamautoscalers.orderstream.dev")
    assert crd["spec"]["group"] == OWN_GROUP
    assert crd["spec"]["names"]["kind"] == "StreamAutoscaler"
    assert crd["spec"]["scope"] == "Namespaced"


def test_everything_on_renders_every_optional_kind(everything_objects: list[Obj]) -> None:
    kinds = {o["kind"] for o in everything_objects}
    assert {
        "Ingress",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "StreamAutoscaler",
        "ClusterRole",
        "ClusterRoleBinding",
        "PodDisruptionBudget",
        "CronJob",
    } <= kinds
    assert {"StatefulSet", "Role", "RoleBinding"}.isdisjoint(kinds)
    assert len(by_kind(everything_objects, "ServiceMonitor")) == 3
    dashboard = one(everything_objects, "ConfigMap", "orderstream-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Orders"}
    assert json.loads(dashboard["data"]["orderstream.json"]) == json.loads(DASHBOARD.read_text())
    # One policy per component that has pods; the built-in Redis is off here.
    assert sorted(o["metadata"]["name"] for o in by_kind(everything_objects, "NetworkPolicy")) == [
        "orderstream-autoscaler",
        "orderstream-consumer",
        "orderstream-producer",
        "orderstream-reclaimer",
    ]


def test_only_own_group_and_service_monitor_skip_kubernetes_schemas(renders: dict[str, list[Obj]]) -> None:
    groups = {api_group(o) for objects in renders.values() for o in objects}
    assert groups == {"", "apps", "batch", "policy", "networking.k8s.io", "rbac.authorization.k8s.io",
                      "apiextensions.k8s.io", "monitoring.coreos.com", OWN_GROUP}


# --- the validator itself must be able to fail -------------------------------------------------


def _deployment(default_objects: list[Obj]) -> Obj:
    return copy.deepcopy(one(default_objects, "Deployment", "orderstream-producer"))


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_validator_catches_unknown_field(default_objects: list[Obj], crds: list[Obj], kube_version: str) -> None:
    obj = _deployment(default_objects)
    obj["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate_object(obj, kube_version, crds)
    assert "livenessProbes" in caught.value.message
    assert list(caught.value.absolute_path) == ["spec", "template", "spec", "containers", 0]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_validator_catches_wrong_type(default_objects: list[Obj], crds: list[Obj], kube_version: str) -> None:
    obj = _deployment(default_objects)
    obj["spec"]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate_object(obj, kube_version, crds)
    assert list(caught.value.absolute_path) == ["spec", "replicas"]


def test_validator_fails_on_missing_schema(crds: list[Obj]) -> None:
    obj = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_object(obj, KUBE_VERSIONS[0], crds)


def test_validator_catches_unknown_field_in_custom_resource(everything_objects: list[Obj], crds: list[Obj]) -> None:
    sas = copy.deepcopy(one(everything_objects, "StreamAutoscaler", "orderstream-consumer"))
    sas["spec"]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate_object(sas, KUBE_VERSIONS[0], crds)
    assert "maxReplica" in caught.value.message


def test_validator_catches_bad_service_monitor(everything_objects: list[Obj], crds: list[Obj]) -> None:
    monitor = copy.deepcopy(one(everything_objects, "ServiceMonitor", "orderstream-producer"))
    monitor["spec"]["endpoints"][0]["targetPortt"] = "http"
    with pytest.raises(AssertionError, match="targetPortt"):
        validate_object(monitor, KUBE_VERSIONS[0], crds)
