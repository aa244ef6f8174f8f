"""The cluster tier (issue 10): the chart and the operator on a real Kubernetes cluster.

The cluster is the one `make cluster-up` makes (k8s/local/cluster.sh: kind, a node image built
here from pinned sources, nothing pulled). Every test in this folder carries the ``cluster``
marker and is skipped, with one line saying why, when the cluster cannot be had cheaply: no
Docker engine, no Go toolchain, or the pinned components not built yet and ORDERSTREAM_CLUSTER
unset (a cold build takes tens of minutes; ``make test-cluster`` sets it and builds them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "k8s" / "local"
OUT = ROOT / ".local-cluster"
CACHE = Path(os.environ.get("ORDERSTREAM_CACHE", Path.home() / ".cache" / "orderstream"))
#: Seconds a whole cluster test may take, cluster creation included for the first one.
CLUSTER_TEST_TIMEOUT_S = 1800


def _versions() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (LOCAL / "versions.env").read_text().splitlines()
             if line and not line.startswith("#") and "=" in line)
    return {k: v for k, v in pairs}


def _components_built() -> bool:
    v = _versions()
    wanted = [f"kind-{v['KIND_VERSION']}", f"helm-{v['HELM_VERSION']}", f"kubernetes-{v['KUBERNETES_VERSION']}",
              f"containerd-{v['CONTAINERD_VERSION']}", f"etcd-{v['ETCD_VERSION']}"]
    return all((CACHE / name / ".built").exists() for name in wanted)


def skip_reason() -> str | None:
    """Why the cluster tier cannot run here, or None."""
    if shutil.which("docker") is None:
        return "cluster tier skipped: no docker client (apt-get install docker.io; make dockerd)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "cluster tier skipped: no Docker engine answers (make dockerd starts one)"
    if shutil.which("go") is None:
        return "cluster tier skipped: no Go toolchain to build the pinned Kubernetes components"
    if not os.environ.get("ORDERSTREAM_CLUSTER") and not _components_built():
        return ("cluster tier skipped: pinned components not built in ~/.cache/orderstream "
                "(make cluster-up, or make test-cluster, builds them)")
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    mine = [item for item in items if here in Path(item.fspath).parents]
    if not mine:
        return
    reason = skip_reason()
    for item in mine:
        item.add_marker(pytest.mark.cluster)
        item.add_marker(pytest.mark.timeout(CLUSTER_TEST_TIMEOUT_S))
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@dataclass
class Kube:
    """kubectl and helm (the exact binaries `make cluster-up` used) against the local cluster."""

    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 300, input: str | None = None
            ) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout,
                              input=input, cwd=ROOT)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def kubectl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(str(OUT / "bin" / "kubectl"), *args, **kw)

    def helm(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(str(OUT / "bin" / "helm"), *args, **kw)

    def json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def wait_until(self, check, *, timeout: float, what: str | Callable[[], str], interval: float = 1.0):
        """Call ``check`` every ``interval`` s until it returns something true, and return that;
        AssertionError after ``timeout`` s naming ``what`` (called then, when it is callable)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(interval)
        described = what() if callable(what) else what
        raise AssertionError(f"timed out after {timeout}s waiting for {described} (last: {last!r})")


@pytest.fixture(scope="session")
def kube() -> Kube:
    """The local cluster, created (and its parts built) by k8s/local/cluster.sh when missing."""
    proc = subprocess.run([str(LOCAL / "cluster.sh"), "up"], capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"k8s/local/cluster.sh up failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    env = {**os.environ, "KUBECONFIG": str(OUT / "kubeconfig"), "PATH": f"{OUT / 'bin'}:{os.environ['PATH']}"}
    return Kube(env)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready(pod: dict) -> bool:
    """The pod is Running with condition Ready=True (from ``status.conditions``)."""
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def pods(kube: Kube, namespace: str, component: str) -> list[dict]:
    """The pods labelled ``app.kubernetes.io/component=<component>`` in ``namespace``."""
    return kube.json("-n", namespace, "get", "pods", "-l", f"app.kubernetes.io/component={component}")["items"]


class Api:
    """The producer's HTTP API at ``base`` (a ``kubectl port-forward`` to its Service)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request; ``(HTTP status, decoded JSON body or None)``. OSError when nothing answers."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Connection": "close"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def answers(self) -> bool:
        """GET /readyz answers 200."""
        try:
            return self.request("GET", "/readyz")[0] == 200
        except OSError:
            return False

    def post_order(self, order_id: str | int) -> str:
        """POST /orders with a valid order; returns the stream entry ID (asserts 201)."""
        status, body = self.request("POST", "/orders", {"orderId": order_id, "product": "Laptop", "quantity": 1,
                                                        "userId": 42})
        assert status == 201, (status, body)
        return str(body["id"])

    def order(self, order_id: str | int) -> dict[str, Any]:
        """GET /orders/{orderId}: ``{"status", "processed": {"consumer"}, "pending": {"consumer"}, ...}``."""
        status, body = self.request("GET", f"/orders/{order_id}")
        assert status == 200, (status, body)
        return dict(body)

    def group(self, name: str = "order-processors") -> dict[str, Any]:
        """The group's entry of GET /stream/info (``consumers[].name`` are pod names)."""
        status, body = self.request("GET", "/stream/info")
        assert status == 200, (status, body)
        groups = [g for g in body["groups"] if g["name"] == name]
        assert groups, body
        return dict(groups[0])


@contextlib.contextmanager
def producer_api(kube: Kube, namespace: str, service: str) -> Iterator[Api]:
    """``kubectl port-forward svc/<service>`` on a free loopback port, ready; stopped on exit."""
    port = free_port()
    forward = subprocess.Popen([str(OUT / "bin" / "kubectl"), "-n", namespace, "port-forward", f"svc/{service}",
                                f"{port}:http"], env=kube.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        api = Api(f"http://127.0.0.1:{port}")
        kube.wait_until(api.answers, timeout=60, what=f"the producer through a port-forward to {service}",
                        interval=0.2)
        yield api
    finally:
        forward.terminate()
        forward.wait(10)
