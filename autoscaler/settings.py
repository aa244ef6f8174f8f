"""Settings of the autoscaler process, built once in ``__main__`` from env vars and flags.

Two modes share one settings object:

* **operator** (default): a kopf operator watching ``StreamAutoscaler`` resources in
  ``--namespace NS`` (repeatable) or ``--all-namespaces``. Each resource carries its own Redis
  URL, streams and rules; the process-wide settings are ports and the timer tick.
* **local** (``--local``): no Kubernetes; the same signals and policy scale local
  ``python -m consumer`` processes. Redis, stream and group come from the usual env vars
  (``REDIS_URL``, ``STREAM_NAME``, ``GROUP_NAME``), the rules from ``LOCAL_*`` vars or flags.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from pydantic import Field

from streamcore.settings import CommonSettings


class AutoscalerSettings(CommonSettings):
    """Env vars are the upper-case field names (``health_port`` <- ``HEALTH_PORT``)."""

    health_port: int = Field(default=8080, ge=0, le=65535,
                             description="HEALTH_PORT: kopf liveness endpoint /healthz (0: none).")
    metrics_port: int = Field(default=9090, ge=0, le=65535,
                              description="METRICS_PORT: Prometheus /metrics (0: none).")
    autoscaler_tick_seconds: float = Field(
        default=1.0, gt=0,
        description=(
            "AUTOSCALER_TICK_SECONDS: the kopf timer's fixed interval. Each StreamAutoscaler is "
            "polled on the first tick after its spec.pollIntervalSeconds has elapsed, so the "
            "effective interval is rounded up to a multiple of this."
        ))
    namespaces: tuple[str, ...] = Field(default=(), description="--namespace NS (repeatable).")
    all_namespaces: bool = Field(default=False, description="--all-namespaces: watch cluster-wide.")

    local: bool = Field(default=False, description="--local: scale local consumer processes.")
    local_min_consumers: int = Field(default=1, ge=0, description="LOCAL_MIN_CONSUMERS: local minimum (1) of `python -m autoscaler --local`; "
                                     "`make up` sets it from its CONSUMERS (2).")
    local_max_consumers: int = Field(default=4, ge=1, description="LOCAL_MAX_CONSUMERS: local maximum (4) of `python -m autoscaler --local`; "
                                     "`make up` sets it from its MAX_CONSUMERS (6).")
    target_backlog_per_replica: int = Field(
        default=100, ge=1, description="TARGET_BACKLOG_PER_REPLICA: local entries per consumer (100).")
    local_poll_interval_seconds: float = Field(
        default=1.0, gt=0, description="LOCAL_POLL_INTERVAL_SECONDS: local polling period (1 s).")
    local_scale_down_window_seconds: float = Field(
        default=15.0, ge=0, description="LOCAL_SCALE_DOWN_WINDOW_SECONDS: local scale-down window (15 s).")
    consumer_command: str = Field(
        default=f"{shlex.quote(sys.executable)} -m consumer",
        description="CONSUMER_COMMAND: how the local mode starts one consumer (POD_NAME is set per child).")
    local_consumer_health_port: int = Field(
        default=8081, ge=0, le=65535,
        description="LOCAL_CONSUMER_HEALTH_PORT: HEALTH_PORT of consumer-1; consumer-N gets +N-1 (0: leave as is).")
    local_grace_seconds: float = Field(
        default=25.0, gt=0, description="LOCAL_GRACE_SECONDS: drain time of a stopped consumer before SIGKILL.")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m autoscaler`` argument parser."""
    parser = argparse.ArgumentParser(
        prog='python -m autoscaler',
        description='Scale consumers of Redis Streams consumer groups on their backlog.')
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument('--namespace', '-n', action='append', default=[], metavar='NS',
                       help='watch StreamAutoscalers in this namespace (repeatable)')
    scope.add_argument('--all-namespaces', '-A', action='store_true', help='watch the whole cluster')
    scope.add_argument('--local', action='store_true',
                       help='no Kubernetes: scale local `python -m consumer` processes')
    parser.add_argument('--consumer-command', help='local: command that starts one consumer')
    parser.add_argument('--min-consumers', type=int, help='local: minimum consumers (LOCAL_MIN_CONSUMERS)')
    parser.add_argument('--max-consumers', type=int, help='local: maximum consumers (LOCAL_MAX_CONSUMERS)')
    parser.add_argument('--target-backlog', type=int, help='local: backlog per consumer (TARGET_BACKLOG_PER_REPLICA)')
    return parser


def load_settings(argv: Sequence[str] | None = None) -> AutoscalerSettings:
    """Settings from the environment, overridden by command-line flags.

    Without ``--namespace``, ``--all-namespaces`` or ``--local``, the operator watches its own
    namespace (``POD_NAMESPACE``, from the downward API) or else ``default``: cluster-wide only
    when asked, so the least-privilege RBAC is the default. Raises ``SystemExit`` on bad flags
    and ``pydantic.ValidationError`` on bad env values.
    """
    args = build_parser().parse_args(argv)
    overrides: dict[str, object] = {
        'namespaces': tuple(args.namespace) or (
            () if args.all_namespaces or args.local else (os.environ.get('POD_NAMESPACE') or 'default',)),
        'all_namespaces': args.all_namespaces,
        'local': args.local,
    }
    for flag, field in (('consumer_command', 'consumer_command'), ('min_consumers', 'local_min_consumers'),
                        ('max_consumers', 'local_max_consumers'), ('target_backlog', 'target_backlog_per_replica')):
        if getattr(args, flag) is not None:
            overrides[field] = getattr(args, flag)
    settings = AutoscalerSettings(**overrides)
    if settings.local_min_consumers > settings.local_max_consumers:
        raise SystemExit('LOCAL_MIN_CONSUMERS must not exceed LOCAL_MAX_CONSUMERS')
    return settings
