"""Prometheus metrics of the producer (a factory over a registry; tests pass a fresh one)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class ProducerMetrics:
    """Producer metrics.

    Attributes:
        requests: HTTP requests by ``route`` (the route template, never a raw path), ``method``, ``status``.
        latency: HTTP request duration in seconds by ``route``.
        accepted: orders appended (new stream entries from POST /orders, /orders/batch and re-drives).
        replayed: POSTs answered from an Idempotency-Key record without appending.
        rejected: orders refused before Redis, by ``reason`` (``invalid``, ``not_json``, ``too_large``,
            ``media_type``, ``idempotency_conflict``).
        append_failed: appends that failed in Redis (the client got 503; nothing was appended).
        batch_size: appends per Redis pipeline of the batching appender.
    """

    requests: Counter
    latency: Histogram
    accepted: Counter
    replayed: Counter
    rejected: Counter
    append_failed: Counter
    batch_size: Histogram


def producer_metrics(registry: CollectorRegistry) -> ProducerMetrics:
    """Create the producer metrics in ``registry``."""
    return ProducerMetrics(
        requests=Counter("orderstream_http_requests_total", "HTTP requests.", ["route", "method", "status"], registry=registry),
        latency=Histogram(
            "orderstream_http_request_duration_seconds",
            "HTTP request duration in seconds.",
            ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        ),
        accepted=Counter("orderstream_orders_accepted_total", "Orders appended to the stream.", registry=registry),
        replayed=Counter("orderstream_orders_replayed_total", "POSTs answered from an Idempotency-Key record.", registry=registry),
        rejected=Counter("orderstream_orders_rejected_total", "Orders refused before reaching Redis.", ["reason"], registry=registry),
        append_failed=Counter("orderstream_appends_failed_total", "Appends that failed in Redis.", registry=registry),
        batch_size=Histogram(
            "orderstream_append_batch_size",
            "Appends sent to Redis in one pipeline.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=registry,
        ),
    )
