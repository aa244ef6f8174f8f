"""Local mode: the same signals and policy scale local consumer processes (``--local``).

``python -m autoscaler --local`` reads the group ``STREAM_NAME``/``GROUP_NAME`` on ``REDIS_URL``
every ``LOCAL_POLL_INTERVAL_SECONDS`` and keeps between ``LOCAL_MIN_CONSUMERS`` and
``LOCAL_MAX_CONSUMERS`` consumers named ``consumer-1`` ... running, one per
``TARGET_BACKLOG_PER_REPLICA`` entries of backlog. Its own environment is passed to every
consumer (with ``POD_NAME`` and ``HEALTH_PORT`` set per child), and each child's output is
prefixed with its name. SIGTERM/SIGINT stops the children (SIGTERM, drain, then SIGKILL after
``LOCAL_GRACE_SECONDS``) and then exits 0. The live consumers are exactly our running children.
When Redis or the stream cannot be read (unreachable, ``WRONGTYPE``...), the consumers are held
(never fewer) and the fault is logged once when it starts and once when it ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from autoscaler.actuators import ConsumerProcesses, LocalProcessActuator
from autoscaler.metrics import autoscaler_metrics
from autoscaler.policy import History, PolicySpec, ScalingRules, decide
from autoscaler.settings import AutoscalerSettings
from autoscaler.signals import SignalReader
from streamcore.connection import create_redis
from streamcore.lifecycle import install_shutdown_handlers, probe_app, start_side_server

logger = logging.getLogger(__name__)


def local_rules(settings: AutoscalerSettings) -> PolicySpec:
    """The policy of the local mode: no up window, ``LOCAL_SCALE_DOWN_WINDOW_SECONDS`` down."""
    return PolicySpec(
        min_replicas=settings.local_min_consumers,
        max_replicas=settings.local_max_consumers,
        target_backlog_per_replica=settings.target_backlog_per_replica,
        scale_up=ScalingRules(0.0),
        scale_down=ScalingRules(settings.local_scale_down_window_seconds),
    )


async def run_local(
    settings: AutoscalerSettings,
    *,
    stop: asyncio.Event | None = None,
    write: Callable[[str], None] | None = None,
) -> int:
    """Run the local autoscaler until ``stop`` is set (or SIGINT/SIGTERM); returns the exit code."""
    if stop is None:
        stop = asyncio.Event()
        install_shutdown_handlers(stop)
    rules = local_rules(settings)
    processes = ConsumerProcesses(
        shlex.split(settings.consumer_command), dict(os.environ),
        health_port_base=settings.local_consumer_health_port, grace_s=settings.local_grace_seconds, write=write)
    actuator = LocalProcessActuator(processes.start, processes.stop)
    registry = CollectorRegistry()
    metrics = autoscaler_metrics(registry)
    r = create_redis(settings.redis_url.get_secret_value(), socket_timeout_s=5.0, max_connections=4,
                     **settings.redis_options())
    reader = SignalReader(r, [(settings.stream_name, settings.group_name)], partitions=settings.stream_partitions,
                          cluster=settings.redis_cluster)
    runner = None
    if settings.metrics_port:
        async def ok() -> tuple[bool, dict[str, Any]]:
            return True, {'consumers': actuator.replicas}
        runner = await start_side_server(probe_app(registry, live=ok, ready=ok), '127.0.0.1', settings.metrics_port)
    logger.info('local autoscaler: %d..%d consumers, %d entries each, poll %.1fs, scale-down window %.0fs',
                rules.min_replicas, rules.max_replicas, rules.target_backlog_per_replica,
                settings.local_poll_interval_seconds, rules.scale_down.stabilization_window_seconds)
    history = History()
    problem: str | None = None  # what kept the last poll from reading everything, logged once
    group_state: str | None = None  # streamcore.groups state of the last poll, logged on change
    try:
        await actuator.scale(rules.min_replicas)
        while not stop.is_set():
            signals = await reader.read(processes.live_names())
            now = time.monotonic()
            if signals.error != problem:
                if signals.error:
                    logger.warning('cannot read %s; holding %d consumers (never fewer until it reads again)',
                                   signals.error, actuator.replicas)
                else:
                    logger.info('reading %s/%s again', settings.stream_name, settings.group_name)
                problem = signals.error
            state = signals.streams[0].group_state if signals.streams else None
            if state != group_state and state in ('missing', 'abandoned', 'ahead'):
                # The same judgement as /stream/info (streamcore.groups), once per change.
                (s,) = signals.streams
                if state == 'missing':
                    logger.info('group %s of %s does not exist yet: its %d entries count as backlog',
                                s.group, s.stream, s.length)
                elif state == 'ahead':
                    logger.warning('group %s of %s is positioned at %s, past the last entry and the clock: orders appended '
                                   'now are not delivered to it until XGROUP SETID moves it back below them', s.group, s.stream,
                                   s.last_delivered_id)
                else:
                    logger.warning('group %s of %s looks abandoned: %d pending entries, no consumer seen for %ss',
                                   s.group, s.stream, s.pending, '?' if s.least_quiet_ms is None
                                   else f'{s.least_quiet_ms / 1000:.0f}')
            if state is not None:
                group_state = state
            decision = decide(signals, actuator.replicas, rules, history, now)
            metrics.observe('local', signals, decision)
            if decision.changes:
                logger.info('scaling consumers %d -> %d: %s', decision.current, decision.desired, decision.message)
                await actuator.scale(decision.desired)
            history = history.recorded(decision, now, rules, applied=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.local_poll_interval_seconds)
    finally:
        logger.info('stopping %d consumers', actuator.replicas)
        await actuator.close()
        await processes.aclose()
        await r.aclose()
        if runner is not None:
            await runner.cleanup()
    return 0
