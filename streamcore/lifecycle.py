"""Process lifecycle: a shutdown event set by signals, and the /healthz + /metrics side server.

Long-running non-web processes (consumer, reclaimer ``--loop``) serve their probes from a small
aiohttp ``AppRunner`` beside their main loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry

from streamcore.metrics import CONTENT_TYPE_LATEST, render
from streamcore.pacing import Backoff

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[tuple[bool, dict]]]
T = TypeVar("T")


#: Exit code after a second SIGTERM/SIGINT cut the drain short (128 + SIGINT, as shells do).
FORCED_EXIT_CODE = 130


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new event loop, as :func:`asyncio.run` does, on uvloop
    when it is installed (a project dependency on Linux and macOS).

    uvloop's loop costs less per callback and per socket read than asyncio's own, which the
    consumer and the reclaimer pay per read and per handler call (bench/README.md). Set
    ``ORDERSTREAM_LOOP=asyncio`` to run on asyncio's loop instead (to compare, or to rule uvloop
    out when debugging).

    Returns what ``main`` returns; raises what it raises.
    """
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for a component: uvloop's when it is installed and ``ORDERSTREAM_LOOP``
    is not ``asyncio``, else asyncio's default (see :func:`run`; the producer passes it to
    ``aiohttp.web.run_app``)."""
    if os.environ.get("ORDERSTREAM_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:  # Windows, or an install without it
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def install_shutdown_handlers(stop: asyncio.Event, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Set ``stop`` on SIGTERM and SIGINT; a second signal ends the process at once.

    The first signal starts the drain (bounded by its deadline). A second one means the
    operator (Ctrl-C twice) or the platform does not want to wait: the process exits with
    :data:`FORCED_EXIT_CODE` immediately. Nothing is lost: whatever was not acknowledged stays in
    the group's PEL and is claimed again (at-least-once).
    """
    loop = loop or asyncio.get_running_loop()

    def _on_signal(signame: str) -> None:
        if stop.is_set():
            logger.warning("received %s again: exiting now; unacknowledged orders stay pending for reclaim", signame)
            logging.shutdown()
            os._exit(FORCED_EXIT_CODE)
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


class Supervisor:
    """Runs a process's long-lived background tasks and restarts any that raises.

    A task that raises (anything but cancellation) is logged with its traceback, counted in
    ``orderstream_task_restarts_total{component,task}`` and started again after a capped,
    jittered back-off (0.1 s doubling to 10 s). A task that fails ``unhealthy_after`` times in a
    row (a run shorter than ``reset_after_s`` counts as "in a row") cannot be kept running:
    :meth:`healthy` turns False, which the process's ``/healthz`` reports so Kubernetes restarts
    the pod; the supervisor keeps trying meanwhile. A task that returns normally is done and not
    restarted.

    Args:
        component: ``consumer``, ``reclaimer``... (log and metric label).
        restarts: the ``task_restarts`` counter of :func:`streamcore.metrics.stream_metrics`.
        unhealthy_after: consecutive failures after which :meth:`healthy` is False.
        reset_after_s: a run at least this long (s) resets the consecutive-failure count.
    """

    def __init__(self, component: str, restarts, *, unhealthy_after: int = 3, reset_after_s: float = 30.0) -> None:
        self.component = component
        self.restarts = restarts
        self.unhealthy_after = unhealthy_after
        self.reset_after_s = reset_after_s
        self.failures: dict[str, int] = {}
        self.last_error: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run ``factory()`` under supervision as task ``name`` (one task per name)."""
        task = asyncio.create_task(self._keep(name, factory), name=f"{self.component}-{name}")
        self._tasks[name] = task
        return task

    async def _keep(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(0.1, 10.0)
        self.failures[name] = 0
        while True:
            started = time.monotonic()
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - started >= self.reset_after_s:
                    self.failures[name] = 0
                    backoff.reset()
                self.failures[name] += 1
                self.last_error[name] = f"{type(exc).__name__}: {exc}"
                self.restarts.labels(self.component, name).inc()
                delay = backoff.next_delay()
                logger.exception("%s: background task %s failed (%d in a row); restarting it in %.2fs",
                                 self.component, name, self.failures[name], delay)
                await asyncio.sleep(delay)

    def healthy(self) -> tuple[bool, dict]:
        """``(ok, details)``: ok unless a task failed ``unhealthy_after`` times in a row;
        details name each failing task with its consecutive failures and last error."""
        failing = {n: {"failures_in_a_row": c, "last_error": self.last_error.get(n, "")}
                   for n, c in self.failures.items() if c}
        ok = all(c < self.unhealthy_after for c in self.failures.values())
        return ok, ({"tasks_failing": failing} if failing else {})

    async def stop(self, *names: str) -> None:
        """Cancel the named tasks (all when none is named) and wait for them (bounded: a task that
        ignores cancellation is left behind after 2 s)."""
        tasks = [t for n, t in self._tasks.items() if not t.done() and (not names or n in names)]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)


class RedisHealth:
    """Whether a process reaches Redis right now, fed by every loop that talks to it.

    Any transient error (:func:`streamcore.connection.is_transient`) marks Redis down from that
    moment (``orderstream_redis_up{component}`` = 0, ``orderstream_redis_errors_total{component,
    where}`` + 1); the next successful call marks it up again. ``/healthz`` shows
    :meth:`details` while the outage lasts.

    Args:
        component: metric label.
        metrics: the :class:`streamcore.metrics.StreamMetrics` holding ``redis_up`` and ``redis_errors``.
    """

    def __init__(self, component: str, metrics) -> None:
        self.component = component
        self.metrics = metrics
        self._up = metrics.redis_up.labels(component)
        self.down_since: float | None = None
        self.last_error = ""

    def failed(self, where: str, exc: BaseException) -> None:
        """Record a transient error seen by ``where`` (``read``, ``handler``, ``acks``, ``timer``...)."""
        self.metrics.redis_errors.labels(self.component, where).inc()
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.down_since is None:
            self.down_since = time.monotonic()
            self._up.set(0)

    def ok(self) -> None:
        """Record a successful call."""
        if self.down_since is not None:
            logger.info("%s: Redis reachable again after %.1fs", self.component, time.monotonic() - self.down_since)
            self.down_since = None
        self._up.set(1)

    def details(self) -> dict:
        """``{"redis_ok", "redis_down_seconds", "redis_last_error"}`` for /healthz."""
        down = self.down_since
        return {"redis_ok": down is None,
                "redis_down_seconds": round(time.monotonic() - down, 3) if down is not None else 0.0,
                "redis_last_error": self.last_error if down is not None else ""}
