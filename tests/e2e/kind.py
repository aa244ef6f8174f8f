"""Helpers of the opt-in kind tier: tool checks, kubectl/helm calls, the producer API.

Everything here talks to a real kind cluster created by ``make kind-up`` (mk/kind.mk).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get("KIND_CLUSTER", "orderstream")
CONTEXT = f"kind-{CLUSTER}"
NAMESPACE = os.environ.get("KIND_NAMESPACE", "orderstream")
RELEASE = os.environ.get("KIND_RELEASE", "orderstream")
CONSUMER = f"{RELEASE}-consumer"
PRODUCER = f"{RELEASE}-producer"
CONFIG = f"{RELEASE}-config"

T = TypeVar("T")


def skip_reason() -> str | None:
    """Why the kind tier cannot run here, or None when it can.

    The tier is opt-in (``ORDERSTREAM_E2E=1``) and needs docker with a reachable engine, kind,
    helm and kubectl on PATH.
    """
    if os.environ.get("ORDERSTREAM_E2E") != "1":
        return "opt-in kind tier: set ORDERSTREAM_E2E=1 (needs docker, kind, helm, kubectl)"
    for tool in ("docker", "kind", "helm", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return "no Docker engine reachable (`docker info` failed)"
    return None


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in the repository root; raise with its output when it fails and ``check``."""
    result = subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def kubectl(*args: str, timeout: float = 120) -> str:
    """``kubectl --context kind-<cluster> -n <namespace> ...``; returns stdout."""
    return run("kubectl", "--context", CONTEXT, "-n", NAMESPACE, *args, timeout=timeout).stdout


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 1.0) -> T:
    """Poll ``probe`` until it returns a truthy value (returned) or ``timeout`` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, urllib.error.URLError, json.JSONDecodeError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Api:
    """The producer API reached through ``kubectl port-forward svc/<release>-producer``."""

    def __init__(self, base: str) -> None:
        self.base = base

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request; returns ``(status, decoded JSON or None)``."""
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

    def post_order(self, order_id: str) -> str:
        """POST /orders; returns the stream entry ID (asserts 201)."""
        status, body = self.request("POST", "/orders", {"orderId": order_id, "product": "Laptop", "quantity": 1, "userId": 42})
        assert status == 201, (status, body)
        return str(body["id"])

    def order(self, order_id: str) -> dict[str, Any]:
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


def port_forward(local_port: int) -> subprocess.Popen[str]:
    """Start ``kubectl port-forward`` to the producer Service; the caller terminates it."""
    return subprocess.Popen(
        ["kubectl", "--context", CONTEXT, "-n", NAMESPACE, "port-forward", f"svc/{PRODUCER}", f"{local_port}:http"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def consumer_pods() -> list[str]:
    """Names of the consumer pods that are running and not being deleted."""
    out = kubectl("get", "pods", "-l", f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=consumer",
                  "-o", "json")
    return sorted(
        p["metadata"]["name"]
        for p in json.loads(out)["items"]
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    )


def set_config(**settings: str) -> None:
    """Change keys of the shared ConfigMap (running pods keep their values until restarted)."""
    patch = json.dumps({"data": settings})
    kubectl("patch", "configmap", CONFIG, "--type", "merge", "-p", patch)
