"""The chart's alerts (prometheusRule.enabled) checked by Prometheus's own promtool: the rules
parse (``promtool check rules``) and each alert fires on the series it should, at the time it
should, and not on a near miss (``promtool test rules`` with tests/chart/alerts_test.yaml)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helpers import Obj, one, render_objects
from tests.monitoring import alert_metric_names, dashboard_metric_names
from tests.servers import ci_requires_servers

HERE = Path(__file__).parent
ALERTS = ("OrderstreamLagGrowing", "OrderstreamOldestPendingTooOld", "OrderstreamDeadLetters", "OrderstreamNoConsumer",
          "OrderstreamGroupAhead", "OrderstreamReclaimerNotRunning")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found (Debian: apt-get install prometheus)"
        if ci_requires_servers():
            pytest.fail(message)
        pytest.skip(message)
    return found


def rule_spec(chart: Any, **values: Any) -> Obj:
    objects = render_objects(chart, {"prometheusRule": {"enabled": True, **values}})
    return one(objects, "PrometheusRule", "orderstream")["spec"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_rules_parse_and_every_alert_passes_its_promtool_tests(chart: Any, promtool: str, tmp_path: Path) -> None:
    spec = rule_spec(chart)
    assert [r["alert"] for g in spec["groups"] for r in g["rules"]] == list(ALERTS)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    checked = run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(promtool, "test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a test case.
    cases = yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
    assert {t["alertname"] for case in cases for t in case["alert_rule_test"]} == set(ALERTS)


def test_promtool_catches_an_alert_that_does_not_fire(chart: Any, promtool: str, tmp_path: Path) -> None:
    """The harness can fail: with the lag threshold raised past the test's series, the lag
    test's expected alert is missing and promtool says so."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_spec(chart, lagThreshold=100000)))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    tested = run(promtool, "test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert tested.returncode != 0
    assert "OrderstreamLagGrowing" in tested.stdout + tested.stderr


def test_thresholds_come_from_the_values(chart: Any) -> None:
    spec = rule_spec(chart, lagThreshold=50, lagFor="3m", oldestPendingSeconds=42, deadLetterWindow="7m",
                     noConsumerFor="4m", reclaimerStaleSeconds=900)
    rules = {r["alert"]: r for g in spec["groups"] for r in g["rules"]}
    assert "> 50" in rules["OrderstreamLagGrowing"]["expr"] and "[3m]" in rules["OrderstreamLagGrowing"]["expr"]
    assert rules["OrderstreamLagGrowing"]["for"] == "3m"
    assert rules["OrderstreamOldestPendingTooOld"]["expr"].endswith("> 42")
    assert "[7m]" in rules["OrderstreamDeadLetters"]["expr"]
    assert rules["OrderstreamNoConsumer"]["for"] == "4m"
    assert rules["OrderstreamReclaimerNotRunning"]["expr"].endswith("> 900")


def test_the_alerts_and_the_dashboard_name_only_metrics_the_stack_defines() -> None:
    """A cheap first line (the live check is tests/integration/test_dashboard_metrics.py): every
    name the alerts and the dashboard use is defined in the code."""
    source = "".join(p.read_text() for d in ("producer", "consumer", "reclaimer", "streamcore", "autoscaler")
                     for p in (HERE.parents[1] / d).glob("*.py"))
    used = dashboard_metric_names() | alert_metric_names()
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert sorted(n for n in base if f"'{n}'" not in source and f'"{n}"' not in source) == []
