"""Chart values of issue 13: redis.tls (a Secret with ca.crt, tls.crt, tls.key mounted read-only,
REDIS_TLS_* pointing at it), redis.sentinel (REDIS_SENTINELS, REDIS_SENTINEL_MASTER),
redis.waitReplicas (the producer's REDIS_WAIT_REPLICAS); defaults render none of it."""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import pytest

from tests.chart.helpers import Obj, container, effective_env, env_map, render_objects, workloads

pytestmark = pytest.mark.chart

#: The containers that talk to Redis: (workload kind, workload name suffix, container name).
REDIS_CLIENTS = {"producer": "Deployment", "consumer": "Deployment", "autoscaler": "Deployment", "reclaimer": "CronJob"}
TLS_ENV = {"REDIS_TLS_CA_FILE": "/etc/orderstream/redis-tls/ca.crt",
           "REDIS_TLS_CERT_FILE": "/etc/orderstream/redis-tls/tls.crt",
           "REDIS_TLS_KEY_FILE": "/etc/orderstream/redis-tls/tls.key"}
NEW_ENV = {*TLS_ENV, "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_WAIT_REPLICAS", "REDIS_WAIT_TIMEOUT_MS"}


def clients(objects: list[Obj]) -> dict[str, tuple[Obj, Obj]]:
    """component -> (pod template, its container) for the components that use Redis."""
    found = {}
    for workload, template in workloads(objects):
        component = workload["metadata"]["labels"].get("app.kubernetes.io/component")
        if component in REDIS_CLIENTS and workload["kind"] == REDIS_CLIENTS[component]:
            found[component] = (template, container(template, component))
    assert set(found) == set(REDIS_CLIENTS), found.keys()
    return found


def test_tls_mounts_the_secret_read_only_and_points_the_settings_at_it(renders: dict[str, list[Obj]]) -> None:
    for component, (template, ctr) in clients(renders["external-redis-tls"]).items():
        env = env_map(ctr)
        assert {k: env.get(k) for k in TLS_ENV} == TLS_ENV, component
        [mount] = [m for m in ctr["volumeMounts"] if m["name"] == "redis-tls"]
        assert mount == {"name": "redis-tls", "mountPath": "/etc/orderstream/redis-tls", "readOnly": True}
        [volume] = [v for v in template["spec"]["volumes"] if v["name"] == "redis-tls"]
        assert volume["secret"] == {"secretName": "orders-redis-tls", "defaultMode": 0o440, "items": [
            {"key": "ca.crt", "path": "ca.crt"}, {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}


def test_sentinel_hosts_and_master_reach_every_component(renders: dict[str, list[Obj]]) -> None:
    for component, (_, ctr) in clients(renders["external-redis-tls"]).items():
        env = env_map(ctr)
        assert env["REDIS_SENTINELS"] == ("redis-sentinel-0.redis-sentinel:26379,redis-sentinel-1.redis-sentinel:26379,"
                                          "redis-sentinel-2.redis-sentinel:26379"), component
        assert env["REDIS_SENTINEL_MASTER"] == "orders-primary"


def test_wait_replicas_only_on_the_producer(renders: dict[str, list[Obj]]) -> None:
    for component, (_, ctr) in clients(renders["external-redis-tls"]).items():
        env = env_map(ctr)
        if component == "producer":
            assert (env["REDIS_WAIT_REPLICAS"], env["REDIS_WAIT_TIMEOUT_MS"]) == ("1", "1000")
        else:
            assert "REDIS_WAIT_REPLICAS" not in env


def test_defaults_render_none_of_it(chart: Any, default_objects: list[Obj]) -> None:
    for component, (template, ctr) in clients(default_objects).items():
        assert not NEW_ENV & set(env_map(ctr)), component
        assert [v["name"] for v in template["spec"]["volumes"]] == ["tmp"]
        assert [m["name"] for m in ctr["volumeMounts"]] == ["tmp"]
    # the new values at their defaults, spelled out, render exactly what no values render
    explicit = {"redis": {"tls": {"enabled": False, "existingSecret": ""}, "sentinel": {"hosts": [], "masterName": ""},
                          "waitReplicas": 0, "waitTimeoutMs": 1000}}
    assert steady(render_objects(chart, explicit)) == steady(default_objects)


def steady(objects: list[Obj]) -> list[Obj]:
    """``objects`` with the admin token the chart generates at random on each render blanked
    (``<release>-admin``'s ``data.token``), so two renders of the same values compare equal."""
    out = copy.deepcopy(objects)
    for obj in out:
        if obj["kind"] == "Secret" and obj["metadata"]["name"].endswith("-admin"):
            obj["data"]["token"] = ""
    return out


@pytest.mark.parametrize(("values", "message"), [
    ({"redis": {"external": {"url": "rediss://r:6380/0"}, "tls": {"enabled": True}}},
     "redis.tls.enabled needs redis.tls.existingSecret"),
    ({"redis": {"tls": {"enabled": True, "existingSecret": "s"}}}, "the built-in Redis has no TLS"),
    ({"redis": {"external": {"url": "redis://r:6379/0"}, "tls": {"enabled": True, "existingSecret": "s"}}},
     "needs a rediss:// redis.external.url"),
    ({"redis": {"external": {"url": "redis://r:6379/0"}, "sentinel": {"hosts": ["s:26379"]}}},
     "set redis.sentinel.hosts and redis.sentinel.masterName together"),
    ({"redis": {"sentinel": {"hosts": ["s:26379"], "masterName": "m"}}}, "redis.sentinel needs an external Redis URL"),
])
def test_inconsistent_values_fail_the_render(chart: Any, values: Obj, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render_objects(chart, values)


def test_cluster_example_gives_every_component_cluster_mode_six_partitions_and_tls(
        renders: dict[str, list[Obj]]) -> None:
    objects = renders["external-redis-cluster-tls"]
    for component, (template, ctr) in clients(objects).items():
        env = effective_env(objects, ctr)
        assert (env["REDIS_CLUSTER"], env["STREAM_PARTITIONS"]) == ("true", "6"), component
        assert env["REDIS_URL"] == {"secretKeyRef": {"name": "orders-redis-cluster", "key": "url"}}
        assert {k: env.get(k) for k in TLS_ENV} == TLS_ENV
        assert (env["STREAM_NAME"], env["DLQ_STREAM"]) == ("orders", "orders:dlq")
        assert not {"REDIS_SENTINELS", "REDIS_SENTINEL_MASTER"} & set(env)
        assert env.get("REDIS_WAIT_REPLICAS") == ("1" if component == "producer" else None), component
        assert [v["name"] for v in template["spec"]["volumes"]] == ["tmp", "redis-tls"]
    # No built-in Redis: no StatefulSet, and the only Secret of a URL is the one named.
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "StatefulSet"] == []


def test_partitions_alone_reach_the_shared_config_map(chart: Any) -> None:
    objects = render_objects(chart, {"config": {"streamPartitions": 3}})
    for component, (_, ctr) in clients(objects).items():
        env = effective_env(objects, ctr)
        assert env["STREAM_PARTITIONS"] == "3", component
        assert "REDIS_CLUSTER" not in env


def test_cluster_values_at_their_defaults_render_exactly_the_defaults(chart: Any,
                                                                     default_objects: list[Obj]) -> None:
    for component, (_, ctr) in clients(default_objects).items():
        assert not {"REDIS_CLUSTER", "STREAM_PARTITIONS"} & set(effective_env(default_objects, ctr)), component
    explicit = {"redis": {"cluster": {"enabled": False}}, "config": {"streamPartitions": 1}}
    assert steady(render_objects(chart, explicit)) == steady(default_objects)


@pytest.mark.parametrize(("values", "message"), [
    ({"redis": {"cluster": {"enabled": True}}},
     "redis.cluster.enabled needs an external Redis Cluster .* the built-in Redis is a single standalone server"),
    ({"redis": {"external": {"url": "redis://r:6379/0"}, "cluster": {"enabled": True},
                "sentinel": {"hosts": ["s:26379"], "masterName": "m"}}},
     "redis.cluster.enabled and redis.sentinel exclude each other"),
])
def test_cluster_mode_guards_fail_the_render(chart: Any, values: Obj, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render_objects(chart, values)
