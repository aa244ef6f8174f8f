"""k8s/: the kustomize base equals the chart's default render, shares its CRD byte for byte,
and everything (base, kind overlay, example custom resource) validates strictly."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.chart.helpers import (
    CRD_FILE,
    K8S_DIR,
    KUBE_VERSIONS,
    Obj,
    by_kind,
    container,
    effective_env,
    env_map,
    labels_match,
    one,
    parse_documents,
    pod_template,
    render_objects,
    validate_custom_resource,
    validate_object,
    workloads,
)

pytestmark = pytest.mark.chart

BASE = K8S_DIR / "base"
KIND_OVERLAY = K8S_DIR / "overlays" / "kind"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not found on PATH")


def _load_render_base() -> ModuleType:
    """Import k8s/render_base.py (a script, not a package) without touching sys.path."""
    spec = importlib.util.spec_from_file_location("orderstream_k8s_render_base", K8S_DIR / "render_base.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_base = _load_render_base()


@pytest.fixture(scope="module")
def base_files() -> dict[str, str]:
    """k8s/base as ``relative path -> text``, read from disk."""
    return {str(p.relative_to(BASE)): p.read_text() for p in sorted(BASE.rglob("*.yaml"))}


@pytest.fixture(scope="module")
def base_objects(base_files: dict[str, str]) -> list[Obj]:
    """Every object of the base, in kustomization order (the kustomization itself excluded)."""
    kustomization = yaml.safe_load(base_files["kustomization.yaml"])
    return [obj for rel in kustomization["resources"] for obj in parse_documents(base_files[rel])]


def kustomize(path: Path) -> list[Obj]:
    """Objects produced by ``kubectl kustomize <path>`` (the real kubectl, with its load restrictor)."""
    assert KUBECTL is not None
    result = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return parse_documents(result.stdout)


@pytest.fixture(scope="module")
def built_base() -> list[Obj]:
    """``kubectl kustomize k8s/base``."""
    if KUBECTL is None:
        pytest.skip("kubectl not found on PATH")
    return kustomize(BASE)


@pytest.fixture(scope="module")
def built_kind() -> list[Obj]:
    """``kubectl kustomize k8s/overlays/kind``."""
    if KUBECTL is None:
        pytest.skip("kubectl not found on PATH")
    return kustomize(KIND_OVERLAY)


def test_base_is_the_charts_default_render(base_files: dict[str, str]) -> None:
    expected = render_base.render_base()
    assert sorted(base_files) == sorted(expected), "run `make k8s-base`"
    stale = [rel for rel, text in expected.items() if base_files[rel] != text]
    assert stale == [], "k8s/base differs from the chart; run `make k8s-base`"


def test_crd_copy_is_byte_identical_to_the_chart_crd() -> None:
    assert (BASE / "crds" / CRD_FILE.name).read_bytes() == CRD_FILE.read_bytes()


def test_base_has_the_same_resources_as_the_chart(chart: Any, base_objects: list[Obj]) -> None:
    rendered = render_objects(chart, {}, namespace="orderstream")
    # Except the admin token Secret the chart generates with random data (k8s/README.md).
    chart_ids = sorted((o["kind"], o["metadata"]["name"]) for o in rendered
                       if not render_base.is_generated_admin_secret(o))
    base_ids = sorted((o["kind"], o["metadata"]["name"]) for o in base_objects if o["kind"] != "Namespace")
    assert base_ids == chart_ids


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_base_files_validate_strictly(base_objects: list[Obj], crds: list[Obj], kube_version: str) -> None:
    assert len(base_objects) == 15
    for obj in base_objects:
        validate_object(obj, kube_version, crds)


def test_base_is_namespace_portable(base_objects: list[Obj]) -> None:
    secret = one(base_objects, "Secret", "orderstream-redis-url")
    assert secret["stringData"]["url"] == "redis://orderstream-redis:6379/0"
    ctr = container(pod_template(one(base_objects, "Deployment", "orderstream-autoscaler")), "autoscaler")
    assert ctr["command"] == ["python", "-m", "autoscaler", "--namespace", "$(POD_NAMESPACE)"]
    assert env_map(ctr)["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert all("namespace" not in o["metadata"] for o in base_objects)
    namespace = one(base_objects, "Namespace", "orderstream")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_example_stream_autoscaler_matches_the_crd_and_the_base(crds: list[Obj], base_objects: list[Obj]) -> None:
    examples = sorted((K8S_DIR / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        for obj in parse_documents(path.read_text()):
            validate_custom_resource(obj, crds[0])
            assert obj["metadata"]["namespace"] == "orderstream"
            one(base_objects, "Deployment", obj["spec"]["scaleTargetRef"]["name"])
            secret = one(base_objects, "Secret", obj["spec"]["redis"]["urlSecretRef"]["name"])
            assert obj["spec"]["redis"]["urlSecretRef"]["key"] in secret["stringData"]


def test_kind_config_publishes_the_overlay_node_port() -> None:
    config = yaml.safe_load((K8S_DIR / "local" / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in config["nodes"]] == ["control-plane"]
    mapping = config["nodes"][0]["extraPortMappings"][0]
    assert (mapping["hostPort"], mapping["listenAddress"]) == (30080, "127.0.0.1")  # loopback only
    patch = yaml.safe_load((KIND_OVERLAY / "producer-nodeport.yaml").read_text())
    assert mapping["containerPort"] == [op["value"] for op in patch if op["path"].endswith("nodePort")][0] == 30080


@needs_kubectl
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_kustomize_base_builds_and_validates(built_base: list[Obj], crds: list[Obj], kube_version: str) -> None:
    assert len(built_base) == 15
    for obj in built_base:
        validate_object(obj, kube_version, crds)
        if obj["kind"] not in ("Namespace", "CustomResourceDefinition"):
            assert obj["metadata"]["namespace"] == "orderstream", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustomize"


@needs_kubectl
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_kustomize_kind_overlay_builds_and_validates(built_kind: list[Obj], crds: list[Obj], kube_version: str) -> None:
    for obj in built_kind:
        validate_object(obj, kube_version, crds)
    for workload, template in workloads(built_kind):
        for ctr in template["spec"]["containers"]:
            # Both images are built and loaded by `make cluster-up`: nothing can be pulled.
            image = "orderstream.local/redis:7.0-bookworm" if ctr["name"] == "redis" else "orderstream:dev"
            assert (ctr["image"], ctr["imagePullPolicy"]) == (image, "Never"), workload["metadata"]["name"]
    service = one(built_kind, "Service", "orderstream-producer")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == 30080
    producer = one(built_kind, "Deployment", "orderstream-producer")
    assert producer["spec"]["replicas"] == 1
    assert labels_match(service["spec"]["selector"], producer["spec"]["template"]["metadata"]["labels"])


@needs_kubectl
def test_overlay_namespace_reaches_rbac_subjects(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    # As k8s/README.md says: `namespace:` alone rewrites only subjects named "default", so an
    # overlay moving the stack uses the NamespaceTransformer with allServiceAccounts.
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(BASE, overlay)}\n"
        "transformers:\n"
        "  - |-\n"
        "    apiVersion: builtin\n"
        "    kind: NamespaceTransformer\n"
        "    metadata:\n"
        "      name: namespace\n"
        "      namespace: shop\n"
        "    setRoleBindingSubjects: allServiceAccounts\n"
        "patches:\n"
        "  - target: {kind: Namespace, name: orderstream}\n"
        "    patch: |-\n"
        "      - op: replace\n"
        "        path: /metadata/name\n"
        "        value: shop\n"
    )
    objects = kustomize(overlay)
    binding = one(objects, "RoleBinding", "orderstream-autoscaler")
    assert binding["subjects"][0]["namespace"] == "shop"
    assert one(objects, "Role", "orderstream-autoscaler")["metadata"]["namespace"] == "shop"
    assert [o["metadata"]["name"] for o in by_kind(objects, "Namespace")] == ["shop"]


def test_kubectl_rejects_a_symlinked_crd(tmp_path: Path) -> None:
    """Why k8s/ holds a copy: kustomize's load restrictor refuses a symlink out of its root."""
    if KUBECTL is None:
        pytest.skip("kubectl not found on PATH")
    root = tmp_path / "k8s"
    root.mkdir()
    (root / "crd.yaml").symlink_to(CRD_FILE)
    (root / "kustomization.yaml").write_text("resources:\n  - crd.yaml\n")
    result = subprocess.run([KUBECTL, "kustomize", str(root)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "is not in or below" in result.stderr


#: The chart values each k8s/examples/ overlay stands for (k8s/README.md).
_TLS_VALUES: Obj = {"redis": {"external": {"existingSecret": "orderstream-redis-url", "existingSecretKey": "url"},
                              "tls": {"enabled": True, "existingSecret": "orderstream-redis-tls"}}}
EXAMPLE_OVERLAYS: dict[str, Obj] = {
    "external-redis-tls": _TLS_VALUES,
    "external-redis-cluster-tls": {"redis": {**_TLS_VALUES["redis"], "cluster": {"enabled": True}},
                                   "config": {"streamPartitions": 6}},
}
#: What each overlay adds to the effective env of every orderstream container.
EXAMPLE_ENV = {
    "external-redis-tls": {"REDIS_TLS_CA_FILE": "/etc/orderstream/redis-tls/ca.crt",
                           "REDIS_TLS_CERT_FILE": "/etc/orderstream/redis-tls/tls.crt",
                           "REDIS_TLS_KEY_FILE": "/etc/orderstream/redis-tls/tls.key"},
}
EXAMPLE_ENV["external-redis-cluster-tls"] = {**EXAMPLE_ENV["external-redis-tls"], "REDIS_CLUSTER": "true",
                                             "STREAM_PARTITIONS": "6"}


def _pods(objects: list[Obj]) -> dict[str, Obj]:
    """component label -> pod template, for the workloads of ``objects``."""
    return {w["metadata"]["labels"]["app.kubernetes.io/component"]: t for w, t in workloads(objects)}


@needs_kubectl
@pytest.mark.parametrize("example", sorted(EXAMPLE_OVERLAYS))
def test_example_overlay_builds_validates_and_wires_redis_like_the_chart(
        chart: Any, crds: list[Obj], built_base: list[Obj], example: str) -> None:
    objects = kustomize(K8S_DIR / "examples" / example)
    for kube_version in KUBE_VERSIONS:
        for obj in objects:
            validate_object(obj, kube_version, crds)
    # The base without the built-in Redis and without the Redis URL Secret (the user's own).
    removed = {("StatefulSet", "orderstream-redis"), ("Service", "orderstream-redis"),
               ("Secret", "orderstream-redis-url")}
    ids = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert ids == sorted({(o["kind"], o["metadata"]["name"]) for o in built_base} - removed)
    assert all(o["metadata"].get("namespace") == "orderstream" for o in objects
               if o["kind"] not in ("Namespace", "CustomResourceDefinition"))

    rendered = render_objects(chart, EXAMPLE_OVERLAYS[example], namespace="orderstream")
    base_pods, pods, chart_pods = _pods(built_base), _pods(objects), _pods(rendered)
    assert sorted(pods) == sorted(set(base_pods) - {"redis"}) == ["autoscaler", "consumer", "producer", "reclaimer"]
    for component, template in pods.items():
        ctr = container(template, component)
        base_ctr = container(base_pods[component], component)
        chart_template = chart_pods[component]
        chart_ctr = container(chart_template, component)
        env = effective_env(objects, ctr)
        # Exactly the overlay's settings on top of the base's env ...
        assert env == {**effective_env(built_base, base_ctr), **EXAMPLE_ENV[example]}, component
        # ... which are what the chart gives with the same values, as are the volume and its mount.
        chart_env = effective_env(rendered, chart_ctr)
        assert {k: chart_env[k] for k in EXAMPLE_ENV[example]} == EXAMPLE_ENV[example], component
        assert env["REDIS_URL"] == chart_env["REDIS_URL"] == {
            "secretKeyRef": {"name": "orderstream-redis-url", "key": "url"}}
        assert template["spec"]["volumes"] == chart_template["spec"]["volumes"], component
        assert ctr["volumeMounts"] == chart_ctr["volumeMounts"], component
