"""End to end on the real cluster (issue 11): the stack of `make cluster-demo` the way a user sees it.

One release made by ``k8s/local/demo.sh up`` (what `make cluster-demo` runs) in a namespace of
its own: the built-in Redis, the kopf operator in the cluster and a StreamAutoscaler for the
consumers, the producer and Redis on the host through the NodePorts that the kind config
publishes (``PRODUCER_URL``/``REDIS_URL``, the lines the script prints). The handler is
``soak.handler:apply``, which counts applications per orderId in ``orders:soak:applied``: every
test compares the order IDs the producer accepted with that hash, so an order lost (0) or
applied twice (2) fails it.

The release turns the consumers' own claim pass off (``CLAIM_INTERVAL_MS`` one hour), so that
the orders of a pod that died can only come back through the reclaimer CronJob. The tests run in
file order and share the release; those that scale by hand pause the StreamAutoscaler first
(``spec.paused``: a manual ``kubectl scale`` then sticks), the operator test resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from soak.handler import applied_key
from streamcore.burst import BurstResult, post_burst
from tests.cluster.conftest import LOCAL, ROOT, Api, Kube, pods, ready

STREAM, GROUP = "orders", "order-processors"
#: Where the operator test writes its samples (CSV) and plot (PNG); docs/autoscaling.png is a copy
#: of one from a real run.
ARTIFACTS = ROOT / "build" / "cluster-e2e"
#: The consumers' terminationGracePeriodSeconds in the chart's default values.
GRACE_S = 30
#: StreamAutoscaler settings of k8s/local/demo-values.yaml that the operator test checks against.
MAX_REPLICAS, MIN_REPLICAS, SCALE_DOWN_WINDOW_S, POLL_S = 4, 1, 20, 2


@dataclass
class Demo:
    """The running demo release: where it is and how to reach it."""

    kube: Kube
    namespace: str
    api: Api
    redis: redis.Redis
    release: str = "orderstream"
    accepted: set[str] = field(default_factory=set)

    @property
    def consumer(self) -> str:
        return f"{self.release}-consumer"

    def kubectl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.kube.kubectl("-n", self.namespace, *args, **kw)

    def running_consumers(self) -> list[str]:
        """Names of the consumer pods that run and are not being deleted."""
        return sorted(p["metadata"]["name"] for p in pods(self.kube, self.namespace, "consumer")
                      if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp"))

    def all_consumer_pods(self) -> list[str]:
        return sorted(p["metadata"]["name"] for p in pods(self.kube, self.namespace, "consumer"))

    def group_consumers(self) -> dict[str, int]:
        """XINFO CONSUMERS of the group, the reclaimer's own name aside: name -> pending."""
        return {c["name"]: int(c["pending"]) for c in self.redis.xinfo_consumers(STREAM, GROUP)
                if c["name"] != "reclaimer"}

    def backlog(self) -> tuple[int, int]:
        """``(lag, pending)`` of the group from XINFO GROUPS."""
        group = next(g for g in self.redis.xinfo_groups(STREAM) if g["name"] == GROUP)
        return int(group.get("lag") or 0), int(group["pending"])

    def pause_autoscaler(self, paused: bool) -> None:
        self.kubectl("patch", "streamautoscaler", self.consumer, "--type=merge",
                     "-p", f'{{"spec": {{"paused": {str(paused).lower()}}}}}')

    def scale(self, replicas: int) -> None:
        self.kubectl("scale", f"deployment/{self.consumer}", f"--replicas={replicas}")

    def wait_running(self, replicas: int, timeout: float = 180) -> list[str]:
        """Wait until exactly ``replicas`` consumer pods exist and all are Ready; their names."""
        def settled():
            items = pods(self.kube, self.namespace, "consumer")
            if len(items) == replicas and all(ready(p) and not p["metadata"].get("deletionTimestamp") for p in items):
                return sorted(p["metadata"]["name"] for p in items)
            return None
        return self.kube.wait_until(settled, timeout=timeout, what=f"{replicas} Ready consumer pods and no other",
                                    interval=0.5)

    def burst(self, orders: int, concurrency: int = 8) -> BurstResult:
        """Post ``orders`` orders through the published producer port; all must be accepted."""
        result = asyncio.run(post_burst(self.api.base, orders, concurrency=concurrency,
                                        prefix=f"e2e-{uuid.uuid4().hex[:6]}"))
        assert (len(result.accepted), result.rejected) == (orders, []), result.rejected[:3]
        self.accepted |= set(result.accepted)
        return result

    def applied(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.redis.hgetall(applied_key(STREAM)).items()}

    def wait_exactly_once(self, timeout: float = 240) -> None:
        """Every order accepted so far is applied exactly once, and nothing else was applied twice."""
        def check():
            applied = self.applied()
            twice = {k: n for k, n in applied.items() if n > 1}
            assert twice == {}, f"applied more than once: {sorted(twice.items())[:10]}"
            missing = [o for o in self.accepted if applied.get(o) != 1]
            return not missing or None
        self.kube.wait_until(check, timeout=timeout, interval=1.0, what=lambda: (
            f"every accepted order applied once; {sum(1 for o in self.accepted if self.applied().get(o) != 1)} "
            f"of {len(self.accepted)} not yet, backlog (lag, pending) {self.backlog()}"))


def _demo_up(kube: Kube, namespace: str) -> tuple[str, str]:
    env = {**kube.env, "DEMO_NAMESPACE": namespace}
    proc = subprocess.run([str(LOCAL / "demo.sh"), "up", "--set", "config.extraEnv.CLAIM_INTERVAL_MS=3600000"],
                          env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, f"demo.sh up exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert set(lines) == {"PRODUCER_URL", "REDIS_URL"}, proc.stdout  # the two lines scripts read, nothing else
    return lines["PRODUCER_URL"], lines["REDIS_URL"]


def _demo_down(kube: Kube, namespace: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LOCAL / "demo.sh"), "down"], env={**kube.env, "DEMO_NAMESPACE": namespace},
                          capture_output=True, text=True, timeout=400, cwd=ROOT)


@pytest.fixture(scope="module")
def demo(kube: Kube) -> Iterator[Demo]:
    namespace = f"os-e2e-{uuid.uuid4().hex[:6]}"
    # A Service left by another module may still hold the demo's node ports for a moment.
    kube.wait_until(lambda: "30080" not in kube.kubectl("get", "services", "-A", "-o",
                                                        "jsonpath={..nodePort}").stdout.split(),
                    timeout=120, what="node port 30080 free")
    producer_url, redis_url = _demo_up(kube, namespace)
    assert (producer_url, redis_url) == ("http://127.0.0.1:30080", "redis://127.0.0.1:30379/0")
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    try:
        yield Demo(kube, namespace, Api(producer_url), client)
    finally:
        client.close()
        _demo_down(kube, namespace)


# --- 1. the seed scenario ------------------------------------------------------------------------------


def test_seed_scenario_through_the_published_port_each_order_processed_once(demo: Demo):
    ids = {}
    for n in range(1, 11):  # the seed's loop: orders 1..10, one POST each
        order_id = f"seed-{uuid.uuid4().hex[:6]}-{n}"
        ids[order_id] = demo.api.post_order(order_id)
    demo.accepted |= set(ids)
    demo.wait_exactly_once(timeout=60)
    pod_names = set(demo.all_consumer_pods())
    for order_id in ids:
        state = demo.api.order(order_id)
        assert state["status"] == "processed", state
        assert state["processed"]["consumer"] in pod_names  # the consumer name is the pod name
    status, history = demo.api.request("GET", "/orders/history?count=50")
    assert status == 200
    seen = {item["id"]: item["order"]["orderId"] for item in history["orders"]}
    assert {seen[entry] for entry in ids.values()} == set(ids)
    status, pending = demo.api.request("GET", "/orders/pending")
    assert status == 200


# --- 2. consumer names are pod names across kubectl scale 1 -> 4 -> 1 -----------------------------------


def test_xinfo_consumers_lists_exactly_the_running_pods_across_scale_1_4_1(demo: Demo):
    demo.pause_autoscaler(True)
    for replicas in (1, 4, 1):
        demo.scale(replicas)
        names = demo.wait_running(replicas)
        demo.kube.wait_until(lambda: sorted(demo.group_consumers()) == names or None, timeout=60,
                             what=lambda: f"XINFO CONSUMERS {sorted(demo.group_consumers())} == pods {names}",
                             interval=0.5)


# --- 3. scale-down drains ---------------------------------------------------------------------------------


def test_scale_down_mid_burst_drains_the_leaving_pods_and_they_leave_the_group(demo: Demo):
    demo.pause_autoscaler(True)
    demo.scale(4)
    before = demo.wait_running(4)
    demo.burst(12_000)
    assert sum(demo.backlog()) > 0  # the scale-down meets orders in flight
    started = time.monotonic()
    demo.scale(1)
    gone_at = {}

    def leavers_gone():
        now = demo.all_consumer_pods()
        for name in before:
            if name not in now and name not in gone_at:
                gone_at[name] = time.monotonic() - started
        return len(now) == 1 and now[0] in before and len(gone_at) == 3
    demo.kube.wait_until(leavers_gone, timeout=GRACE_S + 30, what=lambda: f"3 pods gone (so far {gone_at})",
                         interval=0.25)
    # Each stopped within terminationGracePeriodSeconds (no SIGKILL needed: DRAIN_TIMEOUT 20 s < 30 s)...
    assert max(gone_at.values()) < GRACE_S, gone_at
    # ...and had finished what it read: a consumer that left entries pending would still be listed.
    survivor = demo.all_consumer_pods()
    demo.wait_exactly_once()
    assert sorted(demo.group_consumers()) == survivor


# --- 4. the operator scales on a burst ------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    lag: int
    pending: int
    replicas: int
    ready: int


def _sampler(demo: Demo, stop: threading.Event, out: list[Sample], t0: float) -> None:
    """Every 0.5 s: the group's lag and pending (XINFO GROUPS) and the Deployment's replicas."""
    while not stop.is_set():
        try:
            lag, pending = demo.backlog()
            scale = demo.kube.json("-n", demo.namespace, "get", "deployment", demo.consumer)
            out.append(Sample(time.monotonic() - t0, lag, pending, int(scale["spec"]["replicas"]),
                              int(scale["status"].get("readyReplicas") or 0)))
        except (redis.RedisError, AssertionError, KeyError):
            pass  # a missed sample; the plot has the others
        stop.wait(0.5)


def _plot(samples: list[Sample], burst_s: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(9, 4.2), dpi=110)
    t = [s.t for s in samples]
    left.plot(t, [s.lag + s.pending for s in samples], color="tab:blue", label="backlog (lag + pending)")
    left.set_xlabel("seconds since the burst began")
    left.set_ylabel("entries", color="tab:blue")
    right = left.twinx()
    right.step(t, [s.replicas for s in samples], where="post", color="tab:red", label="replicas (spec)")
    right.step(t, [s.ready for s in samples], where="post", color="tab:orange", linestyle="--", label="ready pods")
    right.set_ylabel("consumer pods", color="tab:red")
    right.set_ylim(0, MAX_REPLICAS + 1)
    left.axvspan(0, burst_s, color="grey", alpha=0.15, label="orders posted")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    left.set_title("StreamAutoscaler on kind: 20,000 orders, target 1000 per replica, "
                   f"scale-down window {SCALE_DOWN_WINDOW_S} s", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def test_the_operator_scales_up_on_a_20k_burst_and_back_down_after_it_drains(demo: Demo):
    demo.pause_autoscaler(True)
    demo.scale(MIN_REPLICAS)
    demo.wait_running(MIN_REPLICAS)
    demo.wait_exactly_once()
    demo.pause_autoscaler(False)
    samples: list[Sample] = []
    stop = threading.Event()
    t0 = time.monotonic()
    sampler = threading.Thread(target=_sampler, args=(demo, stop, samples, t0), daemon=True)
    sampler.start()
    try:
        burst = demo.burst(20_000)
        burst_s = time.monotonic() - t0
        demo.wait_exactly_once(timeout=300)
        drained_at = time.monotonic() - t0
        demo.kube.wait_until(
            lambda: samples and samples[-1].replicas == MIN_REPLICAS and samples[-1].t > drained_at or None,
            timeout=SCALE_DOWN_WINDOW_S + 90, what="the operator scaling back down to minReplicas")
        time.sleep(2)  # a few more samples at the bottom, for the plot
    finally:
        stop.set()
        sampler.join(10)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "autoscaling.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["t_s", "lag", "pending", "replicas", "ready"])
        writer.writerows([round(s.t, 2), s.lag, s.pending, s.replicas, s.ready] for s in samples)
    _plot(samples, burst_s, ARTIFACTS / "autoscaling.png")

    peak = max(s.replicas for s in samples)
    assert peak == MAX_REPLICAS, [(s.t, s.replicas) for s in samples]  # 20k / 1000 per replica, capped at 4
    first_up = next(s.t for s in samples if s.replicas > MIN_REPLICAS)
    assert first_up < burst_s + 3 * POLL_S + 5  # scaled up while the burst was building lag
    # Scale-down waited for the window: the first step below the peak came at least the window
    # after the last backlog that still recommended the peak (> 3 replicas' share).
    last_high = max(s.t for s in samples if s.lag + s.pending > (MAX_REPLICAS - 1) * 1000)
    # The scale-up may come in steps (the first poll can see only part of the burst), so "down"
    # means below the peak after the peak was reached, not below it on the way up.
    peak_at = next(s.t for s in samples if s.replicas == peak)
    first_down = next(s.t for s in samples if s.t > peak_at and s.replicas < peak)
    assert first_down >= last_high + SCALE_DOWN_WINDOW_S - 2 * POLL_S, (first_down, last_high)
    assert samples[-1].replicas == MIN_REPLICAS

    # Its decisions, in the resource's status and as Events (what kubectl describe shows).
    status = demo.kube.json("-n", demo.namespace, "get", "streamautoscaler", demo.consumer)["status"]
    assert (status["currentReplicas"], status["desiredReplicas"]) == (MIN_REPLICAS, MIN_REPLICAS), status
    assert status.get("lastScaleTime"), status
    described = demo.kubectl("describe", "streamautoscaler", demo.consumer).stdout
    assert f"scaled {demo.consumer} from 1 to" in described, described
    assert f"to {MAX_REPLICAS}" in described and f"-> {MIN_REPLICAS} (limited by MinReplicas)" in described, described
    assert burst.rate > 0


# --- 5. a force-deleted pod's orders come back through the reclaimer CronJob -----------------------------


def _pending_of(demo: Demo, consumer: str) -> list[dict]:
    return demo.redis.xpending_range(STREAM, GROUP, min="-", max="+", count=100_000, consumername=consumer)


def test_force_deleted_consumer_mid_burst_its_orders_are_moved_by_a_reclaimer_job(demo: Demo):
    demo.pause_autoscaler(True)
    demo.scale(2)
    victim = demo.wait_running(2)[0]
    poster = threading.Thread(target=demo.burst, args=(6000, 2), daemon=True)
    poster.start()
    demo.kube.wait_until(lambda: len(_pending_of(demo, victim)) >= 5, timeout=60, interval=0.05,
                         what=f"{victim} holding orders")
    demo.kubectl("delete", "pod", victim, "--grace-period=0", "--force")
    # What it held when it died (nobody but the reclaimer claims them: CLAIM_INTERVAL_MS is 1 h).
    held = {row["message_id"] for row in _pending_of(demo, victim)}
    assert held
    poster.join(120)
    # The entries become claimable after CLAIM_IDLE_MS (10 s in the demo values); then one Job from
    # the CronJob (the scheduled ones run every minute too) moves them.
    demo.kube.wait_until(lambda: all(r["time_since_delivered"] >= 10_000 for r in _pending_of(demo, victim)),
                         timeout=60, what="the victim's entries idle for CLAIM_IDLE_MS")
    job = f"e2e-reclaim-{uuid.uuid4().hex[:6]}"
    demo.kubectl("create", "job", f"--from=cronjob/{demo.release}-reclaimer", job)
    demo.kubectl("wait", "--for=condition=complete", f"job/{job}", "--timeout=120s", timeout=150)
    assert _pending_of(demo, victim) == []
    demo.wait_exactly_once()
    # Whoever finished them, each of the victim's entries was acknowledged.
    assert not held & {row["message_id"] for row in demo.redis.xpending_range(STREAM, GROUP, "-", "+", 100_000)}


# --- 6. rollout restart mid-burst -----------------------------------------------------------------------


def test_rollout_restart_mid_burst_loses_nothing_and_applies_nothing_twice(demo: Demo):
    demo.pause_autoscaler(True)
    demo.scale(2)
    old = demo.wait_running(2)
    poster = threading.Thread(target=demo.burst, args=(10_000, 2), daemon=True)
    poster.start()
    demo.kube.wait_until(lambda: sum(demo.backlog()) > 200, timeout=60, interval=0.1, what="orders in flight")
    demo.kubectl("rollout", "restart", f"deployment/{demo.consumer}")
    demo.kubectl("rollout", "status", f"deployment/{demo.consumer}", "--timeout=180s", timeout=200)
    poster.join(120)
    new = demo.wait_running(2)
    assert not set(new) & set(old)
    demo.wait_exactly_once()
    # The old pods drained and left the group; only the new pods are members.
    demo.kube.wait_until(lambda: sorted(demo.group_consumers()) == new or None, timeout=30,
                         what=lambda: f"XINFO CONSUMERS {sorted(demo.group_consumers())} == {new}")


# --- 7. the built-in Redis keeps its data across a restart of its pod ----------------------------------------


def test_redis_keeps_its_data_across_a_restart_of_its_pod(demo: Demo):
    pvc = demo.kube.json("-n", demo.namespace, "get", "pvc")["items"]
    assert [(c["status"]["phase"], c["spec"]["storageClassName"]) for c in pvc] == [("Bound", "standard")]
    length, applied = demo.redis.xlen(STREAM), demo.applied()
    marker = f"e2e-marker-{uuid.uuid4().hex[:6]}"
    demo.redis.set(marker, "kept")
    time.sleep(1.5)  # appendfsync everysec: on disk within a second (a graceful stop saves anyway)
    uid = demo.kube.json("-n", demo.namespace, "get", "pod", f"{demo.release}-redis-0")["metadata"]["uid"]
    demo.kubectl("delete", "pod", f"{demo.release}-redis-0", "--wait=true", timeout=120)

    def back():
        pod = demo.kube.json("-n", demo.namespace, "get", "pod", f"{demo.release}-redis-0")
        return pod["metadata"]["uid"] != uid and ready(pod)
    demo.kube.wait_until(back, timeout=180, what="a new Ready redis-0 pod")
    fresh = redis.Redis.from_url("redis://127.0.0.1:30379/0", decode_responses=True, socket_timeout=10)
    try:
        demo.kube.wait_until(lambda: _pings(fresh), timeout=60, what="Redis answering on the node port")
        assert fresh.get(marker) == "kept"
        assert fresh.xlen(STREAM) == length
        assert {k: int(v) for k, v in fresh.hgetall(applied_key(STREAM)).items()} == applied
    finally:
        fresh.close()
    # The services reconnect by themselves: a new order is accepted and processed.
    order_id = f"after-redis-restart-{uuid.uuid4().hex[:6]}"
    demo.kube.wait_until(lambda: _accepted(demo.api, order_id), timeout=90, what="the producer accepting again")
    demo.accepted.add(order_id)
    demo.wait_exactly_once(timeout=120)


def _pings(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(client.ping())
    return False


def _accepted(api: Api, order_id: str) -> bool:
    with contextlib.suppress(OSError):
        status, _ = api.request("POST", "/orders", {"orderId": order_id, "product": "Laptop", "quantity": 1,
                                                    "userId": 42})
        return status == 201
    return False


# --- last: the demo goes away cleanly -------------------------------------------------------------------------


def test_cluster_demo_down_uninstalls_with_the_streamautoscaler_and_leaves_nothing(demo: Demo):
    started = time.monotonic()
    proc = _demo_down(demo.kube, demo.namespace)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert time.monotonic() - started < 120
    listed = demo.kube.kubectl("get", "namespace", demo.namespace, check=False)
    assert listed.returncode != 0 and "NotFound" in listed.stderr
