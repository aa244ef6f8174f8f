"""The shipped Grafana dashboard and the chart's alerts name only metrics a running stack
exports (issue 14): a live producer and a live consumer process on real Redis are scraped, and
every ``orderstream_*`` name a dashboard query or an alert uses is among their metric families.
(The autoscaler's names are checked against a live operator in
tests/operator/test_autoscaler_process.py.)"""

from __future__ import annotations

import aiohttp

from tests.handlers import done_key
from tests.integration.consumer_support import ConsumerProcess, keys_for, reclaimer_for, wait_for
from tests.integration.producer_support import api, keys, make_api  # noqa: F401 (fixtures)
from tests.monitoring import alert_metric_names, dashboard_metric_names, families


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


async def test_every_metric_of_the_dashboard_and_the_alerts_is_exported_by_the_running_stack(api, r, redis_url,
                                                                                              names):
    used = dashboard_metric_names() | alert_metric_names()
    used = {n for n in used if not n.startswith("orderstream_autoscaler_")}
    stream_keys = keys_for(names)
    consumer = ConsumerProcess(redis_url, names, "pod-dash")
    try:
        resp = await api.post("/orders", json={"orderId": "dash-1", "product": "p", "quantity": 1, "userId": 1})
        assert resp.status == 201, await resp.text()
        await wait_for(lambda: r.get(done_key(stream_keys.stream, "dash-1")), timeout=20, what="the order processed")
        await reclaimer_for(r, names).run_once()  # one pass, so its last-pass gauge exists
        consumer_metrics = await wait_for(lambda: _scraped(f"http://127.0.0.1:{consumer.health_port}/metrics"),
                                          timeout=20, what="the consumer's /metrics after the order")
        producer_metrics = await (await api.get("/metrics")).text()
    finally:
        consumer.close()
    exported = families(producer_metrics) | families(consumer_metrics)
    assert sorted(used - exported) == []
    assert len(used) >= 12  # the check covers the dashboard, not an empty set


async def _scraped(url: str) -> str | None:
    try:
        text = await scrape(url)
    except aiohttp.ClientError:
        return None
    return text if 'orderstream_order_latency_seconds_count{component="consumer"} 1.0' in text else None
