"""Prometheus metrics of the autoscaler (served on ``METRICS_PORT`` at ``/metrics``).

Label ``autoscaler`` is ``<namespace>/<name>`` of the StreamAutoscaler (``local`` in local mode):
one series per autoscaler, a small number (``orderstream_autoscaler_groups`` adds ``state``, one
of five).
"""
from __future__ import annotations

import dataclasses
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from autoscaler.policy import Decision
from autoscaler.signals import Signals
from streamcore.groups import GroupState

#: The ``state`` label values of ``orderstream_autoscaler_groups`` (streamcore.groups' states
#: plus ``unreadable``); every one is set on every poll, 0 when no stream is in it.
GROUP_STATES = (*get_args(GroupState), 'unreadable')


@dataclasses.dataclass(frozen=True)
class AutoscalerMetrics:
    """The autoscaler's metrics; see each metric's help text for its source and unit."""

    backlog: Gauge
    lag: Gauge
    live_pending: Gauge
    dead_pending: Gauge
    redis_up: Gauge
    lag_exact: Gauge
    current: Gauge
    desired: Gauge
    groups: Gauge
    scalings: Counter
    polls: Counter
    poll_seconds: Histogram

    def observe(self, key: str, signals: Signals, decision: Decision) -> None:
        """Record one poll: the signals read and the decision taken (``key``: the label value)."""
        for gauge, value in ((self.backlog, signals.backlog), (self.lag, signals.lag)):
            if value is None:
                gauge.labels(key).set(float('nan'))  # unknown, deliberately not 0
            else:
                gauge.labels(key).set(value)
        self.live_pending.labels(key).set(signals.live_pending)
        self.dead_pending.labels(key).set(signals.dead_pending)
        self.redis_up.labels(key).set(1 if signals.reachable else 0)
        self.lag_exact.labels(key).set(1 if signals.lag_exact else 0)
        self.current.labels(key).set(decision.current)
        self.desired.labels(key).set(decision.desired)
        for state in GROUP_STATES:
            count = sum(s.group_state == state for s in signals.streams)
            self.groups.labels(key, state).set(count if signals.reachable else float('nan'))

    def forget(self, key: str) -> None:
        """Drop the series of an autoscaler that was deleted."""
        for gauge in (self.backlog, self.lag, self.live_pending, self.dead_pending, self.redis_up,
                      self.lag_exact, self.current, self.desired):
            try:
                gauge.remove(key)
            except KeyError:
                pass
        for state in GROUP_STATES:
            try:
                self.groups.remove(key, state)
            except KeyError:
                pass


def autoscaler_metrics(registry: CollectorRegistry) -> AutoscalerMetrics:
    """Create the autoscaler metrics in ``registry``."""
    def gauge(name: str, text: str) -> Gauge:
        return Gauge(name, text, ['autoscaler'], registry=registry)

    return AutoscalerMetrics(
        backlog=gauge('orderstream_autoscaler_backlog_entries', 'Lag + pending on live consumers (NaN: unknown).'),
        lag=gauge('orderstream_autoscaler_lag_entries', 'Undelivered entries of the group(s) (NaN: unknown).'),
        live_pending=gauge('orderstream_autoscaler_live_pending_entries', 'Pending entries owned by live consumers.'),
        dead_pending=gauge('orderstream_autoscaler_dead_pending_entries', 'Pending entries owned by consumers that are gone.'),
        redis_up=gauge('orderstream_autoscaler_redis_up', '1 if the last poll reached Redis.'),
        lag_exact=gauge('orderstream_autoscaler_lag_exact', '1 if the lag is exact (not unknown, not a capped count).'),
        current=gauge('orderstream_autoscaler_current_replicas', 'Replicas of the target before the decision.'),
        desired=gauge('orderstream_autoscaler_desired_replicas', 'Replicas the policy wants.'),
        groups=Gauge('orderstream_autoscaler_groups',
                     'Configured stream/group pairs by state: ok, missing (stream without its group), ahead (its '
                     'last-delivered-id past the stream\'s last entry), abandoned '
                     '(pending entries, no consumer seen for groupAbandonedAfterSeconds), no-stream, unreadable '
                     '(error reply); NaN while Redis is unreachable.',
                     ['autoscaler', 'state'], registry=registry),
        scalings=Counter('orderstream_autoscaler_scalings_total', 'Replica changes applied, by direction.',
                         ['autoscaler', 'direction'], registry=registry),
        polls=Counter('orderstream_autoscaler_polls_total', 'Polls, by result (ok, hold, error).',
                      ['autoscaler', 'result'], registry=registry),
        poll_seconds=Histogram('orderstream_autoscaler_poll_seconds', 'Duration of one poll in seconds.',
                               registry=registry),
    )
