"""values.schema.json: defaults pass, bad values are rejected with the offending path named,
and every value is documented (comment in values.yaml, row in the chart README)."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.chart.helpers import CHART_DIR, SCENARIOS, leaf_value_paths, render_manifests

pytestmark = pytest.mark.chart


def test_defaults_and_every_scenario_pass_the_schema(chart: Any) -> None:
    for values in SCENARIOS.values():
        chart.validate_schema(chart.merge_values(values))


def test_schema_forbids_unknown_keys_at_every_object_level() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    open_objects: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                open_objects.append(path or "<root>")
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}" if path else key)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    assert open_objects == []


@pytest.mark.parametrize(
    ("values", "path", "problem"),
    [
        ({"producer": {"replicaCount": "two"}}, "/producer/replicaCount", "got string, want integer"),
        ({"producer": {"replicas": 2}}, "/producer", "additional properties 'replicas' not allowed"),
        ({"consumer": {"healthPort": 70000}}, "/consumer/healthPort", "maximum"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "value must be one of"),
        ({"config": {"logFormat": "xml"}}, "/config/logFormat", "value must be one of"),
        ({"config": {"streamPartitions": 0}}, "/config/streamPartitions", "minimum"),
        ({"config": {"streamPartitions": 257}}, "/config/streamPartitions", "maximum"),
        ({"redis": {"cluster": {"enabled": "yes"}}}, "/redis/cluster/enabled", "got string, want boolean"),
        ({"redis": {"external": {"url": "http://redis:6379"}}}, "/redis/external/url", "does not match pattern"),
        ({"autoscaler": {"streamAutoscaler": {"maxReplicas": 0}}}, "/autoscaler/streamAutoscaler/maxReplicas", "minimum"),
        ({"producer": {"ingress": {"tls": [{"hosts": ["a"]}]}}}, "/producer/ingress/tls/0", "missing property 'secretName'"),
        ({"enableEverything": True}, "", "additional properties 'enableEverything' not allowed"),
        ({"autoscaler": {"streamAutoscaler": {"behavior": {"scaleUp": {"window": 1}}}}},
         "/autoscaler/streamAutoscaler/behavior/scaleUp", "additional properties 'window' not allowed"),
    ],
)
def test_schema_rejects_bad_values_naming_the_path(chart: Any, values: dict[str, Any], path: str, problem: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(chart.merge_values(values))
    message = str(caught.value)
    assert f"at '{path}'" in message
    assert problem in message


def test_render_guards_what_the_schema_cannot_express(chart: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"terminationGracePeriodSeconds \(20\) must be greater than consumer.drainTimeoutSeconds \(20\)"):
        render_manifests(chart, {"consumer": {"terminationGracePeriodSeconds": 20}})
    with pytest.raises(helm.HelmRenderError, match="set only one of redis.external.url and redis.external.existingSecret"):
        render_manifests(chart, {"redis": {"external": {"url": "redis://r:6379/0", "existingSecret": "s"}}})
    with pytest.raises(helm.HelmRenderError, match="minReplicas must not exceed maxReplicas"):
        render_manifests(chart, {"autoscaler": {"streamAutoscaler": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}})


def test_default_values_hold_no_secret(chart: Any) -> None:
    values = chart.values
    assert values["redis"]["external"]["url"] == ""
    assert values["redis"]["external"]["existingSecret"] == ""
    text = (CHART_DIR / "values.yaml").read_text()
    assert not re.search(r"(?i)^\s*(password|token|secret)\s*:\s*\S", text, re.M)


def test_image_tag_defaults_to_app_version(chart: Any) -> None:
    assert chart.values["image"]["tag"] == ""


def _values_comments() -> dict[str, str]:
    """Map dotted value path -> the comment line that documents it in values.yaml."""
    comments: dict[str, str] = {}
    for line in (CHART_DIR / "values.yaml").read_text().splitlines():
        match = re.match(r"^\s*# ([A-Za-z][A-Za-z0-9.]*) -- (.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return comments


def test_every_value_has_a_comment_starting_with_its_name(chart: Any) -> None:
    documented = _values_comments()
    missing = [path for path in leaf_value_paths(chart.values) if path not in documented]
    assert missing == []


def test_values_are_camel_case(chart: Any) -> None:
    keys = [segment for path in leaf_value_paths(chart.values) for segment in path.split(".")]
    assert [k for k in keys if not re.fullmatch(r"[a-z][A-Za-z0-9]*", k)] == []


def test_chart_readme_has_a_row_per_value(chart: Any) -> None:
    readme = (CHART_DIR / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Za-z0-9.]+)` \| [^|]+ \| `([^`]*)` \|", readme, re.M))
    leaves = leaf_value_paths(chart.values)
    assert sorted(set(leaves) - set(rows)) == []
    assert sorted(set(rows) - set(leaves)) == []

    def lookup(path: str) -> Any:
        node: Any = chart.values
        for key in path.split("."):
            node = node[key]
        return node

    wrong = {path: default for path, default in rows.items() if yaml.safe_load(default) != lookup(path)}
    assert wrong == {}
