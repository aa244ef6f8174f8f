"""The cluster tier (issue 10): the chart and the operator on a real Kubernetes cluster.

The cluster is the one `make cluster-up` makes (k8s/local/cluster.sh: kind, a node image built
here from pinned sources, nothing pulled). Every test in this folder carries the ``cluster``
marker and is skipped, with one line saying why, when the cluster cannot be had cheaply: no
Docker engine, no Go toolchain, or the pinned components not built yet and ORDERSTREAM_CLUSTER
unset (a cold build takes tens of minutes; ``make test-cluster`` sets it and builds them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
