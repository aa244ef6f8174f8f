"""The producer application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from producer.appender import RoutedAppender
from producer.appkeys import APPENDER, IN_FLIGHT, LIFECYCLE, LIMITS, METRICS, REDIS, REGISTRY, SCRIPTS, SETTINGS, InFlight, Lifecycle
from producer.metrics import producer_metrics
from producer.routes import setup_routes
from producer.settings import ProducerSettings
from producer.validation import Limits
from streamcore.connection import create_redis, server_info
from streamcore.keys import Keys
from streamcore.pacing import Backoff, RateLimitedLog
from streamcore.streams import Scripts, ensure_group

logger = logging.getLogger(__name__)


async def create_group(r: aioredis.Redis, keys: Keys, *, backoff: Backoff | None = None) -> None:
    """Create the consumer group (``XGROUP CREATE <stream> <group> 0 MKSTREAM``; BUSYGROUP is
    fine), retrying with capped back-off until it succeeds (issue 9, item 8).

    The producer creates it so the backlog of orders accepted before any consumer started is the
    group's lag from the first order on: visible in ``/stream/info`` and measurable by the
    autoscaler (scale-up from zero consumers). ``0`` makes a group created after orders were
    accepted (Redis was unreachable at start) still count every one of them.

    Args:
        backoff: delays between attempts (0.1 s doubling to 5 s, jittered, by default).

    Raises:
        asyncio.CancelledError: when cancelled (shutdown); every Redis error is retried.
    """
    backoff = backoff or Backoff(0.1, 5.0)
    failures = RateLimitedLog(logger, 60.0)
    while True:
        try:
            await ensure_group(r, keys, "0")
            return
        except (RedisError, OSError) as exc:
            failures.log(logging.WARNING, "cannot create consumer group %s on %s yet (retrying): %s", keys.group, keys.stream, exc)
        await backoff.sleep()


async def create_groups(r: aioredis.Redis, parts: tuple[Keys, ...], *, backoff: Backoff | None = None) -> None:
    """:func:`create_group` on every partition, one after another (each retried until it succeeds)."""
    for keys in parts:
        await create_group(r, keys, backoff=backoff)


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: own the Redis client, the scripts, the batching appender and the task
    that creates the consumer group.

    Start-up does not need Redis: the server check and the first attempt to create the group
    take at most 2 s; an unreachable server is logged, ``/readyz`` reports it, and the group is
    created in the background as soon as Redis answers (:func:`create_group`). So the process
    starts (and recovers) without depending on start order.
    """
    settings = app[SETTINGS]
    r = create_redis(settings.redis_url.get_secret_value(), socket_timeout_s=settings.redis_socket_timeout_s,
                     **settings.redis_options())
    app[REDIS] = r
    app[SCRIPTS] = scripts = Scripts(r)
    appender = RoutedAppender(
        r,
        settings.partitions,
        scripts,
        max_batch=settings.append_batch_max,
        idempotency_ttl_s=settings.idempotency_ttl_seconds,
        order_index_ttl_s=settings.order_index_ttl_seconds,
        on_batch=app[METRICS].batch_size.observe,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    app[APPENDER] = appender
    appender.start()
    group_task: asyncio.Task | None = None
    try:
        async with asyncio.timeout(2.0):
            found = await server_info(r)
            app[LIFECYCLE].server = {"family": found.family, "version": ".".join(map(str, found.version))}
            logger.info("connected to %s %s", found.family, app[LIFECYCLE].server["version"])
            for keys in settings.partitions:
                await ensure_group(r, keys, "0")
    except (RedisError, OSError, TimeoutError) as exc:
        logger.warning("Redis not ready at start-up (readiness will say so; the consumer group is created once it is): %s", exc)
        group_task = asyncio.create_task(create_groups(r, settings.partitions), name="producer-create-group")
    try:
        yield
    finally:
        if group_task is not None:
            group_task.cancel()
            await asyncio.gather(group_task, return_exceptions=True)
        await appender.close()
        await r.aclose()


async def _mark_shutting_down(app: web.Application) -> None:
    app[LIFECYCLE].shutting_down = True


def create_app(settings: ProducerSettings, *, registry: CollectorRegistry | None = None) -> web.Application:
    """Build the producer application (no I/O until it starts).

    Args:
        settings: the producer settings.
        registry: where metrics go; a fresh registry when None (tests), the default
            ``prometheus_client.REGISTRY`` in ``__main__`` (adds process metrics).

    Returns:
        The application; request bodies above ``settings.max_body_bytes`` get a JSON 413.
    """
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[LIMITS] = Limits(
        max_id_length=settings.max_id_length,
        max_product_length=settings.max_product_length,
        max_quantity=settings.max_quantity,
    )
    app[REGISTRY] = registry if registry is not None else CollectorRegistry()
    app[METRICS] = producer_metrics(app[REGISTRY])
    app[LIFECYCLE] = Lifecycle()
    app[IN_FLIGHT] = InFlight(limit=settings.in_flight_max_bytes)
    app.cleanup_ctx.append(redis_ctx)
    app.on_shutdown.append(_mark_shutting_down)
    setup_routes(app)
    return app
