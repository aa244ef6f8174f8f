"""The Dockerfile's essentials, read and checked without building it (`make image` builds it; see docs/cluster.md)."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.chart.helpers import REPO, Obj, workloads

pytestmark = pytest.mark.chart

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _stages() -> dict[str, str]:
    """Dockerfile text per stage name (``FROM ... AS <name>``)."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE, flags=re.M | re.I)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_multi_stage_on_python_311_slim() -> None:
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", DOCKERFILE, re.M)
    assert re.findall(r"^FROM (\S+) AS (\S+)$", DOCKERFILE, re.M) == [("${PYTHON_IMAGE}", "builder"), ("${PYTHON_IMAGE}", "runtime")]


def test_runtime_stage_has_no_build_tools_and_runs_as_numeric_non_root() -> None:
    runtime = _stages()["runtime"]
    assert "build-essential" in _stages()["builder"]
    assert not re.search(r"apt-get install|build-essential|gcc|pip install", runtime)
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    users = re.findall(r"^USER (\S+)$", runtime, re.M)
    assert users == ["10001:10001"]
    assert re.search(r'^CMD \["python", "-m", "producer"\]$', runtime, re.M)


def test_image_uid_matches_the_chart(default_objects: list[Obj]) -> None:
    uids = {t["spec"]["securityContext"]["runAsUser"] for w, t in workloads(default_objects) if w["kind"] != "StatefulSet"}
    assert uids == {10001}


def test_every_package_is_copied_and_not_ignored() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = sorted(p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"])
    copied = sorted(re.findall(r"^COPY (\w+) \./\1$", _stages()["builder"], re.M))
    assert copied == packages
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    # An allow-list: ignore everything, then admit what the build needs (no venvs, data or secrets).
    assert rules[0] == "*"
    admitted = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    # build/wheelhouse: the wheels that `make image` makes on the host for an offline build.
    assert admitted == {"pyproject.toml", "README.md", "build/wheelhouse", *packages}
