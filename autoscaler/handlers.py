"""Thin kopf handlers: log in, hold shared clients in the memo, and poll each StreamAutoscaler.

Handlers are registered into an explicit registry by :func:`register` (no import-time side
effects), so tests run the operator with their own settings. :func:`run_operator` is the whole
operator: the metrics server beside ``kopf.operator`` (standalone: one replica, no peering).

kopf timers have a fixed interval; ours ticks every ``AUTOSCALER_TICK_SECONDS`` (1 s) and each
StreamAutoscaler is polled on the first tick after its ``spec.pollIntervalSeconds`` has passed
(or at once after its spec changed).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from typing import Any

import kopf
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from autoscaler.actuators import KubeApi
from autoscaler.metrics import AutoscalerMetrics, autoscaler_metrics
from autoscaler.reconcile import Outcome, ResourceState, reconcile
from autoscaler.settings import AutoscalerSettings
from streamcore.connection import create_redis
from streamcore.lifecycle import probe_app, start_side_server

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = 'orderstream.dev', 'v1alpha1', 'streamautoscalers'


@dataclasses.dataclass
class Runtime:
    """Operator-wide shared objects, in kopf's operator memo as ``memo.runtime``.

    ``api``: the Kubernetes client (connected at login); ``metrics``; ``clients``: one Redis
    client per URL, shared by the StreamAutoscalers that use the same Redis, closed at cleanup.
    """

    settings: AutoscalerSettings
    api: KubeApi
    metrics: AutoscalerMetrics
    clients: dict[str, aioredis.Redis] = dataclasses.field(default_factory=dict)
    closed: bool = False

    def redis_for(self, url: str) -> aioredis.Redis:
        """The shared client for ``url`` (created on first use; never logged: it holds secrets).

        A ``rediss://`` URL is verified with the operator's own TLS files (REDIS_TLS_CA_FILE,
        REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE of :class:`AutoscalerSettings`, mounted from the
        chart's ``redis.tls.existingSecret``): the URL comes from the StreamAutoscaler's Secret,
        the trust comes from the operator's deployment. A ``redis://`` URL gets no TLS. The
        operator's own REDIS_URL (the chart's StreamAutoscaler reads the same Secret) gets all of
        :meth:`~streamcore.settings.CommonSettings.redis_options`, Sentinel included, so it
        follows the same primary as the components.

        Raises ``RuntimeError`` once the runtime is closed (a late poll must not open clients
        that nobody will close).
        """
        if self.closed:
            raise RuntimeError('the operator is stopping')
        if url not in self.clients:
            if url == self.settings.redis_url.get_secret_value():
                options = self.settings.redis_options()
            else:
                options = dict(self.settings.tls_files) if url.startswith('rediss://') else {}
                if self.settings.redis_cluster:
                    options['cluster'] = True
            self.clients[url] = create_redis(url, socket_timeout_s=5.0, max_connections=8, **options)
        return self.clients[url]

    async def close(self) -> None:
        """Close every Redis client and the Kubernetes client; idempotent."""
        self.closed = True
        for client in self.clients.values():
            await client.aclose()
        self.clients.clear()
        await self.api.close()


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Startup: tune kopf for this operator.

    * Post only our own Events: kopf would also post handler log lines (e.g. every retry of a
      missing target) as Events; ours are posted once per change or incident.
    * Keep kopf's bookkeeping in annotations: the status is ours.
    * Let a poll in progress finish when the operator stops: timers have no cancellation
      timeout, and a poll caught mid-flight would be orphaned while the cleanup closes its
      clients under it.
    * Namespaced mode watches exact namespaces: no cluster-wide scanning of namespaces and
      CRDs, which the least-privilege Role does not allow (it would only log 403 warnings).
    """
    settings.posting.level = logging.CRITICAL
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix='orderstream.dev')
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix='orderstream.dev')
    settings.background.instant_exit_timeout = 5.0
    if not memo.runtime.settings.all_namespaces:
        settings.scanning.disabled = True


def credentials(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """The pod's service account, else a kubeconfig (``KUBECONFIG`` or ``~/.kube/config``)."""
    return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)


async def login(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """Log in and share the credentials with our own API client (:class:`KubeApi`), which
    re-reads them by itself on a 401 (service-account tokens rotate).

    Raises ``kopf.LoginError`` when there is neither a service account nor a kubeconfig.
    """
    info = credentials(settings)
    if info is None:
        raise kopf.LoginError('no service account and no kubeconfig found')
    await memo.runtime.api.connect(info, relogin=lambda: credentials(settings))
    return info


async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Close the shared clients."""
    await memo.runtime.close()


async def poll(
    body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
    namespace: str, name: str, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any,
) -> None:
    """Timer: when due, run :func:`reconcile`, merge the status, post the Events.

    Raises ``kopf.TemporaryError`` (after the status is written) when the target or the API
    failed, so kopf retries after the poll interval.
    """
    runtime: Runtime = memo.runtime
    if runtime.closed:  # the operator is stopping and its clients are closed
        return
    state: ResourceState = memo.setdefault('state', ResourceState())
    now = time.monotonic()
    generation = meta.get('generation')
    if not state.due(now, generation):
        return
    interval = _poll_interval(spec)
    state.next_poll, state.generation = now + interval, generation

    started = time.perf_counter()
    outcome = await reconcile(namespace=namespace, name=name, spec=spec, status=status, generation=generation,
                              state=state, api=runtime.api, redis_for=runtime.redis_for,
                              metrics=runtime.metrics, now=now, partitions=runtime.settings.stream_partitions,
                              cluster=runtime.settings.redis_cluster)
    runtime.metrics.poll_seconds.observe(time.perf_counter() - started)
    _apply(outcome, body, patch, logger)
    if outcome.retry_in is not None:
        runtime.metrics.polls.labels(f'{namespace}/{name}', 'error').inc()
        raise kopf.TemporaryError(outcome.error or 'retrying', delay=outcome.retry_in)


def _poll_interval(spec: kopf.Spec) -> float:
    try:
        return max(0.1, float(spec.get('pollIntervalSeconds', 15)))
    except (TypeError, ValueError):
        return 15.0


def _apply(outcome: Outcome, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
    for field, value in outcome.status.items():
        patch.status[field] = value
    for event in outcome.events:
        target = outcome.target if event.on_target else body
        if target is None:
            continue
        kopf.event(target, type=event.type, reason=event.reason, message=event.message)
        (logger.warning if event.type == 'Warning' else logger.info)('%s: %s', event.reason, event.message)


async def forget(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """On deletion: drop this autoscaler's metric series (the timer stops by itself)."""
    memo.runtime.metrics.forget(f'{namespace}/{name}')


class QuietTicks(logging.Filter):
    """Drops kopf's per-tick "Timer 'poll' is invoked/succeeded" lines (one per second per
    StreamAutoscaler); failures and everything else pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not str(record.msg).startswith("Timer 'poll'")


def register(registry: kopf.OperatorRegistry, settings: AutoscalerSettings) -> None:
    """Register the handlers into ``registry`` with the tick from ``settings``."""
    kopf.on.startup(registry=registry)(configure)
    kopf.on.login(registry=registry)(login)
    kopf.on.cleanup(registry=registry)(cleanup)
    kopf.timer(GROUP, VERSION, PLURAL, registry=registry, interval=settings.autoscaler_tick_seconds,
               backoff=settings.autoscaler_tick_seconds)(poll)
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, optional=True)(forget)


async def run_operator(
    settings: AutoscalerSettings,
    *,
    kopf_settings: kopf.OperatorSettings | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> None:
    """Run the operator until ``stop_flag`` is set (or SIGINT/SIGTERM, which kopf handles).

    ``stop_flag``/``ready_flag`` may be asyncio or threading events (tests run the operator in
    a thread of its own).

    Serves kopf's liveness probe on ``HEALTH_PORT`` (``/healthz``) and our metrics on
    ``METRICS_PORT`` (``/metrics``); 0 disables either.
    """
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    quiet = QuietTicks()
    logging.getLogger('kopf.objects').addFilter(quiet)
    metrics_registry = metrics_registry or CollectorRegistry()
    runtime = Runtime(settings, KubeApi(), autoscaler_metrics(metrics_registry))
    runner = None
    if settings.metrics_port:
        async def always_ok() -> tuple[bool, dict[str, Any]]:
            return True, {}
        runner = await start_side_server(probe_app(metrics_registry, live=always_ok, ready=always_ok),
                                         '0.0.0.0', settings.metrics_port)
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings or kopf.OperatorSettings(),
            memo=kopf.Memo(runtime=runtime),
            standalone=True,
            clusterwide=settings.all_namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=f'http://0.0.0.0:{settings.health_port}/healthz' if settings.health_port else None,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        logging.getLogger('kopf.objects').removeFilter(quiet)
        if runner is not None:
            await runner.cleanup()
        await runtime.close()  # idempotent; in case cleanup handlers did not run
