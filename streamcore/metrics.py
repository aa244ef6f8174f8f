"""Prometheus metric factories and exposition.

Each factory takes a :class:`prometheus_client.CollectorRegistry` (tests pass a fresh one) and
returns the metrics of one component. Names follow ``orderstream_<noun>_<unit>`` with
``_total``/``_seconds``/``_bytes``; labels are low-cardinality (never an orderId or entry ID).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "StreamMetrics", "render", "stream_metrics"]


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format (``Content-Type: CONTENT_TYPE_LATEST``)."""
    return generate_latest(registry)


@dataclass(frozen=True)
class StreamMetrics:
    """Metrics about processing that the consumer and the reclaimer share.

    Attributes:
        processed: orders handled successfully, by ``component``.
        failed: handler failures, by ``component``.
        acked: entries acknowledged with XACK.
        claimed: entries taken over with XCLAIM/XAUTOCLAIM, by ``component``.
        gone: pending entries whose data was trimmed or deleted (counted, acked, logged).
        dead_lettered: entries moved to the dead-letter stream.
        nogroup: NOGROUP incidents healed by recreating the group.
        handle_seconds: handler duration in seconds.
        in_flight: orders being handled now.
        poison: entries dead-lettered at once because they can never succeed, by ``component``
            and ``reason`` (``not_utf8``, ``no_data``, ``not_json``, ``not_object``).
        redis_errors: transient Redis errors (unreachable, restarting, pool exhausted, BUSY,
            LOADING) that were waited out and retried, by ``component`` and ``where`` (``read``,
            ``handler``, ``acks``, ``timer``); never counted as order failures.
        redis_up: 1 while the last Redis call of the component's main loop succeeded, 0 during
            an outage, by ``component``.
        task_restarts: background tasks that raised and were restarted, by ``component`` and ``task``.
    """

    processed: Counter
    failed: Counter
    acked: Counter
    claimed: Counter
    gone: Counter
    dead_lettered: Counter
    nogroup: Counter
    handle_seconds: Histogram
    in_flight: Gauge
    poison: Counter
    redis_errors: Counter
    redis_up: Gauge
    task_restarts: Counter


def stream_metrics(registry: CollectorRegistry) -> StreamMetrics:
    """Create the processing metrics in ``registry``."""
    return StreamMetrics(
        processed=Counter("orderstream_orders_processed_total", "Orders handled successfully.", ["component"], registry=registry),
        failed=Counter("orderstream_orders_failed_total", "Handler failures (order left pending).", ["component"], registry=registry),
        acked=Counter("orderstream_entries_acked_total", "Entries acknowledged with XACK.", ["component"], registry=registry),
        claimed=Counter("orderstream_entries_claimed_total", "Pending entries claimed from another consumer or retried.", ["component"], registry=registry),
        gone=Counter("orderstream_entries_gone_total", "Pending entries whose data was trimmed or deleted.", ["component"], registry=registry),
        dead_lettered=Counter("orderstream_entries_dead_lettered_total", "Entries moved to the dead-letter stream.", ["component"], registry=registry),
        nogroup=Counter("orderstream_nogroup_incidents_total", "NOGROUP errors healed by recreating the group.", ["component"], registry=registry),
        handle_seconds=Histogram("orderstream_handle_seconds", "Handler duration in seconds.", ["component"], registry=registry),
        in_flight=Gauge("orderstream_orders_in_flight", "Orders being handled now.", ["component"], registry=registry),
        poison=Counter("orderstream_poison_entries_total", "Entries dead-lettered at once because they can never be "
                       "processed (not UTF-8, no data field, not JSON, not an object).", ["component", "reason"],
                       registry=registry),
        redis_errors=Counter("orderstream_redis_errors_total", "Transient Redis errors waited out and retried (never "
                             "counted as order failures).", ["component", "where"], registry=registry),
        redis_up=Gauge("orderstream_redis_up", "1 while the component reaches Redis, 0 during an outage.", ["component"],
                       registry=registry),
        task_restarts=Counter("orderstream_task_restarts_total", "Background tasks that raised and were restarted.",
                              ["component", "task"], registry=registry),
    )
