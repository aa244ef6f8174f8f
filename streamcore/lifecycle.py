"""Process lifecycle: a shutdown event set by signals, and the /healthz + /metrics side server.

Long-running non-web processes (consumer, reclaimer ``--loop``) serve their probes from a small
aiohttp ``AppRunner`` beside their main loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from streamcore.metrics import CONTENT_TYPE_LATEST, render

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[tuple[bool, dict]]]


def install_shutdown_handlers(stop: asyncio.Event, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Set ``stop`` on SIGTERM and SIGINT (a second signal is ignored: the drain has a deadline)."""
    loop = loop or asyncio.get_running_loop()

    def _on_signal(signame: str) -> None:
        if not stop.is_set():
            logger.info("received %s, shutting down", signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig.name)


def probe_app(registry: CollectorRegistry, *, live: HealthCheck, ready: HealthCheck) -> web.Application:
    """A tiny app serving ``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics``.

    Each check returns ``(ok, details)``; the endpoint answers 200 or 503 with ``details`` as JSON.
    """

    async def healthz(_: web.Request) -> web.Response:
        ok, details = await live()
        return web.json_response({"ok": ok, **details}, status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok, details = await ready()
        return web.json_response({"ok": ok, **details}, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=render(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_side_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on ``host:port``; the caller owns the runner and calls ``await runner.cleanup()``.

    Raises:
        OSError: the port is taken.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    logger.info("probe server on %s:%d", host, port)
    return runner
