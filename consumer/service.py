"""Wiring of the consumer process: Redis client, worker, probe server and signal handling."""

from __future__ import annotations

import asyncio
import logging

from consumer.health import start_health_server
from consumer.settings import ConsumerSettings
from consumer.worker import PartitionedWorker, Worker
from streamcore.connection import create_redis, pool_size
from streamcore.lifecycle import install_shutdown_handlers

logger = logging.getLogger(__name__)


async def serve(settings: ConsumerSettings, stop: asyncio.Event | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT (or ``stop``), drain, close everything.

    Returns:
        the process exit code: 0 after a clean drain.
    """
    stop = stop or asyncio.Event()
    install_shutdown_handlers(stop)
    parts = settings.partitions
    r = create_redis(settings.redis_url.get_secret_value(), socket_timeout_s=settings.redis_socket_timeout_s,
                     max_connections=pool_size(settings.concurrency) * len(parts), **settings.redis_options())
    try:
        worker: Worker | PartitionedWorker = Worker(settings, r) if len(parts) == 1 else PartitionedWorker(settings, r, parts=parts)
        runner = await start_health_server(worker, settings)
        try:
            await worker.run(stop)
        finally:
            if runner is not None:
                await runner.cleanup()
    finally:
        await r.aclose()
    return 0
