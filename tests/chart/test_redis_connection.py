"""Chart values of issue 13: redis.tls (a Secret with ca.crt, tls.crt, tls.key mounted read-only,
REDIS_TLS_* pointing at it), redis.sentinel (REDIS_SENTINELS, REDIS_SENTINEL_MASTER),
redis.waitReplicas (the producer's REDIS_WAIT_REPLICAS); defaults render none of it."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.chart.helpers import Obj, container, env_map, render_objects, workloads

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
    assert _fixed_admin_token(render_objects(chart, explicit)) == _fixed_admin_token(default_objects)


def _fixed_admin_token(objects: list[Obj]) -> list[Obj]:
    """``objects`` with the generated admin token (random on every render) replaced by a fixed
    value, so two renders compare equal when everything else is."""
    out = []
    for o in objects:
        if o["kind"] == "Secret" and o["metadata"]["name"] == "orderstream-admin":
            assert set(o["data"]) == {"token"}
            o = {**o, "data": {"token": "<random>"}}
        out.append(o)
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
