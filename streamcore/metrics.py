"""Prometheus metric factories and exposition.

Each factory takes a :class:`prometheus_client.CollectorRegistry` (tests pass a fresh one) and
returns the metrics of one component. Names follow ``orderstream_<noun>_<unit>`` with
``_total``/``_seconds``/``_bytes``; labels are low-cardinality (never an orderId or entry ID).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "StreamMetrics", "render", "stream_metrics"]


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format (``Content-Type: CONTENT_TYPE_LATEST``)."""
    return generate_latest(registry)


class _LoopMetric(Collector):
    """What :class:`LoopHistogram` and :class:`LoopCounter` share: a name, labels, and one child
    per label set, created on first use and registered in ``registry``."""

    def __init__(self, name: str, documentation: str, labelnames: list[str],
                 registry: CollectorRegistry | None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        if registry is not None:
            registry.register(self)

    def _new_child(self):
        raise NotImplementedError

    def labels(self, *values: str):
        """The child for these label values (created on first use).

        Raises:
            ValueError: not one value per label name.
        """
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child


class _LoopHistogramChild:
    """One label set of a :class:`LoopHistogram`: bucket counts and the sum, as plain numbers."""

    __slots__ = ("_bounds", "_counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one value (in the histogram's unit, here seconds)."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count of values <= le), ...]`` ending with ``("+Inf", total)``."""
        out, total = [], 0
        for bound, count in zip((*(repr(float(b)) for b in self._bounds), "+Inf"), self._counts):
            total += count
            out.append((bound, total))
        return out


class LoopHistogram(_LoopMetric):
    """A histogram for the hot path of one event loop, exposed like
    :class:`prometheus_client.Histogram` (``_bucket{le}``, ``_count``, ``_sum``).

    ``labels(*values).observe(v)`` costs a bisect and two additions: about a quarter of
    ``prometheus_client.Histogram.observe``, which takes a lock and increments a locked value per
    call and was an eighth of the consumer's time per order with a no-op handler
    (bench/README.md). Not thread-safe: observe and scrape from the same event loop's thread
    (the consumer and the reclaimer serve /metrics from their main loop).
    """

    def __init__(self, name: str, documentation: str, labelnames: list[str], *,
                 buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS, registry: CollectorRegistry | None = None) -> None:
        self.buckets = tuple(b for b in buckets if b != float("inf"))
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _LoopHistogramChild:
        return _LoopHistogramChild(self.buckets)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._children.items():
            family.add_metric(list(key), child.cumulative(), child.sum)
        yield family


class _LoopCounterChild:
    """One label set of a :class:`LoopCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class LoopCounter(_LoopMetric):
    """A counter for the hot path of one event loop, exposed like
    :class:`prometheus_client.Counter` (``name_total{labels}``), at a third of its cost per
    ``inc`` (no lock). Not thread-safe: see :class:`LoopHistogram`.

    ``name`` may be given with or without ``_total``, as for ``prometheus_client.Counter``.
    """

    def __init__(self, name: str, documentation: str, labelnames: list[str], *,
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def _new_child(self) -> _LoopCounterChild:
        return _LoopCounterChild()

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._children.items():
            family.add_metric(list(key), float(child.value))
        yield family


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
        order_latency: seconds from an order's append to the end of its successful handling,
            by ``component``: the handler's clock (``time.time()``) minus the milliseconds part
            of the entry ID (Redis's clock at ``XADD``), so a skew between the two clocks shows
            in it (negative values count in the first bucket). With a batch handler every order
            of the call is observed when the call returns.
    """

    processed: LoopCounter
    failed: Counter
    acked: Counter
    claimed: Counter
    gone: Counter
    dead_lettered: Counter
    nogroup: Counter
    handle_seconds: LoopHistogram
    in_flight: Gauge
    poison: Counter
    redis_errors: Counter
    redis_up: Gauge
    task_restarts: Counter
    order_latency: LoopHistogram


#: Buckets of ``orderstream_order_latency_seconds``: 1 ms to 10 min (a backlog drained late).
ORDER_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                         120.0, 300.0, 600.0)


def stream_metrics(registry: CollectorRegistry) -> StreamMetrics:
    """Create the processing metrics in ``registry``."""
    return StreamMetrics(
        processed=LoopCounter("orderstream_orders_processed_total", "Orders handled successfully.", ["component"],
                              registry=registry),
        failed=Counter("orderstream_orders_failed_total", "Handler failures (order left pending).", ["component"], registry=registry),
        acked=Counter("orderstream_entries_acked_total", "Entries acknowledged with XACK.", ["component"], registry=registry),
        claimed=Counter("orderstream_entries_claimed_total", "Pending entries claimed from another consumer or retried.", ["component"], registry=registry),
        gone=Counter("orderstream_entries_gone_total", "Pending entries whose data was trimmed or deleted.", ["component"], registry=registry),
        dead_lettered=Counter("orderstream_entries_dead_lettered_total", "Entries moved to the dead-letter stream.", ["component"], registry=registry),
        nogroup=Counter("orderstream_nogroup_incidents_total", "NOGROUP errors healed by recreating the group.", ["component"], registry=registry),
        handle_seconds=LoopHistogram("orderstream_handle_seconds", "Handler duration in seconds.", ["component"],
                                     registry=registry),
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
        order_latency=LoopHistogram("orderstream_order_latency_seconds", "Seconds from the order's append (its entry "
                                    "ID, Redis's clock) to the end of its successful handling.", ["component"],
                                    buckets=ORDER_LATENCY_BUCKETS, registry=registry),
    )
