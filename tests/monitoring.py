"""What the chart's dashboard and alerts use, and what a /metrics page exports (shared by the
chart, integration and operator tiers)."""

from __future__ import annotations

import json
import re
from pathlib import Path

CHART_DIR = Path(__file__).resolve().parents[1] / "charts" / "orderstream"
DASHBOARD = CHART_DIR / "dashboards" / "orderstream.json"
RULES = CHART_DIR / "templates" / "monitoring" / "prometheusrule.yaml"
_NAME = re.compile(r"\b(orderstream_[a-z_]+)\b")


def dashboard_metric_names() -> set[str]:
    """Every ``orderstream_*`` metric name a query of the shipped dashboard uses."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {m for p in dashboard["panels"] for t in p.get("targets", []) for m in _NAME.findall(t["expr"])}


def alert_metric_names() -> set[str]:
    """Every ``orderstream_*`` metric name the chart's PrometheusRule template uses."""
    return set(_NAME.findall(RULES.read_text()))


def families(exposition: str) -> set[str]:
    """Metric family names of a Prometheus text exposition (its ``# TYPE`` lines), with the
    ``_bucket``/``_sum``/``_count`` series names of histograms."""
    out: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        out.add(name)
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return out
