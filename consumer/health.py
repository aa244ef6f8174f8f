"""The consumer's side server: ``/healthz`` (read loop alive), ``/readyz`` (taking work) and ``/metrics``."""

from __future__ import annotations

from aiohttp import web

from consumer.settings import ConsumerSettings
from consumer.worker import Worker
from streamcore.lifecycle import probe_app, start_side_server


def create_probe_app(worker: Worker) -> web.Application:
    """The probe app over ``worker``'s state and metrics registry."""

    async def live() -> tuple[bool, dict]:
        return worker.live()

    async def ready() -> tuple[bool, dict]:
        return worker.ready()

    return probe_app(worker.registry, live=live, ready=ready)


async def start_health_server(worker: Worker, settings: ConsumerSettings) -> web.AppRunner | None:
    """Start the probe server on ``HEALTH_HOST:HEALTH_PORT`` (None when the port is 0).

    Raises:
        OSError: the port is taken.
    """
    if not settings.health_port:
        return None
    return await start_side_server(create_probe_app(worker), settings.health_host, settings.health_port)
