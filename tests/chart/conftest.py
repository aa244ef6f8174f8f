"""Fixtures of the chart tier: one loaded chart and one render per scenario for the session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest

from tests.chart.helpers import CHART_DIR, SCENARIOS, Obj, load_crds, render_objects


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    """The chart loaded by Helm's engine (helm_python.Chart), shared by the session."""
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def crds() -> list[Obj]:
    """The CRDs shipped in the chart's crds/ folder."""
    return load_crds()


@pytest.fixture(scope="session")
def renders(chart: Any) -> dict[str, list[Obj]]:
    """Every scenario of the render matrix rendered once: scenario name -> objects (with CRDs)."""
    return {name: render_objects(chart, values) for name, values in SCENARIOS.items()}


@pytest.fixture(scope="session")
def default_objects(renders: dict[str, list[Obj]]) -> list[Obj]:
    """The objects rendered with the chart's default values."""
    return renders["defaults"]


@pytest.fixture(scope="session")
def everything_objects(renders: dict[str, list[Obj]]) -> list[Obj]:
    """The objects rendered with every optional feature switched on."""
    return renders["everything-on"]
