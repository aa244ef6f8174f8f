"""Prometheus metrics of the producer (a factory over a registry; tests pass a fresh one)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from producer.backlog import Backlog
from producer.rendering import readable
from streamcore.groups import GroupState
from streamcore.metrics import LoopCounter, LoopHistogram

#: Every value of the ``state`` label of ``orderstream_group_state``.
GROUP_STATES: tuple[str, ...] = get_args(GroupState)


@dataclass(frozen=True)
class ProducerMetrics:
    """Producer metrics.

    Attributes:
        requests: HTTP requests by ``route`` (the route template, never a raw path; ``unmatched``
            for the 404/405 of paths and methods the API does not have), ``method``, ``status``.
            A :class:`streamcore.metrics.LoopCounter`: counted on the event loop's thread, without
            prometheus_client's lock per call (the ingest hot path; exposed the same way).
        latency: HTTP request duration in seconds by ``route`` (a
            :class:`streamcore.metrics.LoopHistogram`, for the same reason).
        accepted: orders appended (new stream entries from POST /orders, /orders/batch and re-drives).
        replayed: POSTs answered from an Idempotency-Key record without appending.
        rejected: orders refused before Redis, by ``reason`` (``invalid``, ``not_json``, ``too_large``,
            ``media_type``, ``idempotency_conflict``).
        append_failed: appends that failed in Redis (the client got 503; nothing was appended).
        batch_size: appends per batch (one append-script call) of the batching appender.
        group_state: ``orderstream_group_state{group, state}``, 1 for the state each consumer
            group of the stream is in and 0 for the other states (:mod:`streamcore.groups`:
            ``ok``, ``ahead``, ``abandoned``, ``missing``, ``no-stream``), set by :meth:`show_group_states`
            whenever ``/metrics`` or ``/stream/info`` is read. Low cardinality: one series per
            state and group of the stream (normally one group).
        group_lag, group_pending, group_consumers, group_oldest_pending_age: per group of the
            stream, ``orderstream_group_lag_entries`` (NaN when Redis cannot tell),
            ``orderstream_group_pending_entries``, ``orderstream_group_consumers`` and
            ``orderstream_group_oldest_pending_age_seconds`` (how long ago the oldest entry still
            pending was appended; 0 with nothing pending), set by :meth:`show_backlog` at every
            scrape (:mod:`producer.backlog`).
        group_paused: ``orderstream_group_paused{group}``, 1 while the group is paused.
        dead_letters: ``orderstream_dead_letter_entries{stream}``, entries in the dead-letter
            stream (labelled with its name).
        reclaimer_last_pass: ``orderstream_reclaimer_last_pass_timestamp_seconds{stream}``, when
            the last reclaimer pass over the stream ended (absent until one has).
    """

    requests: LoopCounter
    latency: LoopHistogram
    accepted: Counter
    replayed: Counter
    rejected: Counter
    append_failed: Counter
    batch_size: Histogram
    group_state: Gauge
    group_lag: Gauge
    group_pending: Gauge
    group_consumers: Gauge
    group_oldest_pending_age: Gauge
    group_paused: Gauge
    dead_letters: Gauge
    reclaimer_last_pass: Gauge
    #: ``(route, method, status)`` → the labelled children of ``requests`` and ``latency``.
    _request_children: dict[tuple[str, str, int], tuple] = field(default_factory=dict, repr=False, compare=False)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration (``requests`` and ``latency``).

        The labelled children are looked up once per ``(route, method, status)`` and kept
        (``labels()`` builds and checks a key on every call). Routes are templates and statuses
        few, so the cache stays small. Call from the event loop's thread only.
        """
        children = self._request_children.get((route, method, status))
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
            self._request_children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def show_group_states(self, groups: Iterable[tuple[str, str]] | None) -> None:
        """Replace the ``orderstream_group_state`` series with ``(group, state)`` pairs; None
        (Redis could not tell) removes them all. A group name that is not UTF-8 is labelled with
        ``\\xNN`` escapes (:func:`producer.rendering.readable`)."""
        self.group_state.clear()
        for name, state in groups or ():
            for candidate in GROUP_STATES:
                self.group_state.labels(readable(name), candidate).set(1 if candidate == state else 0)


    def show_backlog(self, backlog: Backlog | None, now_s: float) -> None:
        """Replace the backlog series with ``backlog`` (:func:`producer.backlog.read_backlog`)
        read at ``now_s`` (seconds since the epoch); None (Redis could not tell) removes them."""
        per_group = (self.group_lag, self.group_pending, self.group_consumers, self.group_oldest_pending_age,
                     self.group_paused)
        for gauge in (*per_group, self.dead_letters, self.reclaimer_last_pass):
            gauge.clear()
        if backlog is None:
            return
        for g in backlog.groups:
            name = readable(g.name)
            self.group_lag.labels(name).set(float("nan") if g.lag is None else g.lag)
            self.group_pending.labels(name).set(g.pending)
            self.group_consumers.labels(name).set(g.consumers)
            age = 0.0 if g.oldest_pending_ms is None else max(now_s - g.oldest_pending_ms / 1000.0, 0.0)
            self.group_oldest_pending_age.labels(name).set(age)
            self.group_paused.labels(name).set(1 if g.paused else 0)
        self.dead_letters.labels(readable(backlog.dlq)).set(backlog.dead_letters)
        if backlog.reclaimer_last_pass_ms is not None:
            self.reclaimer_last_pass.labels(readable(backlog.stream)).set(backlog.reclaimer_last_pass_ms / 1000.0)


def producer_metrics(registry: CollectorRegistry) -> ProducerMetrics:
    """Create the producer metrics in ``registry``."""
    return ProducerMetrics(
        requests=LoopCounter("orderstream_http_requests_total", "HTTP requests.", ["route", "method", "status"], registry=registry),
        latency=LoopHistogram(
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
            "Appends sent to Redis in one batch (one append-script call).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=registry,
        ),
        group_state=Gauge(
            "orderstream_group_state",
            "Consumer group state (1 = the group is in this state): ok, ahead, abandoned, missing, no-stream.",
            ["group", "state"],
            registry=registry,
        ),
        group_lag=Gauge("orderstream_group_lag_entries", "Entries not yet delivered to the group (XINFO GROUPS lag; "
                        "NaN when Redis cannot tell).", ["group"], registry=registry),
        group_pending=Gauge("orderstream_group_pending_entries", "Entries delivered to the group and not yet "
                            "acknowledged (its PEL).", ["group"], registry=registry),
        group_consumers=Gauge("orderstream_group_consumers", "Consumers the group lists, live or not.", ["group"],
                              registry=registry),
        group_oldest_pending_age=Gauge("orderstream_group_oldest_pending_age_seconds", "Seconds since the oldest entry "
                                       "still pending in the group was appended (0 with nothing pending).", ["group"],
                                       registry=registry),
        group_paused=Gauge("orderstream_group_paused", "1 while the group is paused (POST /groups/{group}/pause).",
                           ["group"], registry=registry),
        dead_letters=Gauge("orderstream_dead_letter_entries", "Entries in the dead-letter stream.", ["stream"],
                           registry=registry),
        reclaimer_last_pass=Gauge("orderstream_reclaimer_last_pass_timestamp_seconds", "When the last reclaimer pass "
                                  "over the stream ended (seconds since the epoch).", ["stream"], registry=registry),
    )
