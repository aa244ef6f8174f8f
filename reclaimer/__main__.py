"""``python -m reclaimer``: one reclaim pass (exit 0 on success, 1 on failure); ``--loop`` for local use."""

from __future__ import annotations

import asyncio
import logging
import sys

from reclaimer.reclaim import PartitionedReclaimer, Reclaimer, run_loop
from reclaimer.settings import ReclaimerSettings
from streamcore.connection import create_redis, is_transient, pool_size
from streamcore import lifecycle
from streamcore.lifecycle import install_shutdown_handlers
from streamcore.logs import configure_logging
from streamcore.settings import settings_from_command_line

logger = logging.getLogger("reclaimer")


async def amain(settings: ReclaimerSettings, loop: bool) -> int:
    parts = settings.partitions
    r = create_redis(settings.redis_url.get_secret_value(), socket_timeout_s=settings.redis_socket_timeout_s,
                     max_connections=pool_size(settings.concurrency), **settings.redis_options())
    try:
        reclaimer: Reclaimer | PartitionedReclaimer = (Reclaimer(settings, r) if len(parts) == 1
                                                       else PartitionedReclaimer(settings, r, parts=parts))
        if loop:
            stop = asyncio.Event()
            install_shutdown_handlers(stop)
            await run_loop(reclaimer, stop, settings.reclaim_interval_seconds)
            return 0
        return await one_pass(reclaimer, settings.reclaim_retry_seconds)
    finally:
        await r.aclose()


async def one_pass(reclaimer: Reclaimer | PartitionedReclaimer, retry_s: float, *, first_backoff_s: float = 0.5,
                   max_backoff_s: float = 5.0) -> int:
    """One reclaim pass, the CronJob's; returns the exit code and prints the summary line.

    A transient Redis fault (:func:`streamcore.connection.is_transient`: Redis not listening yet,
    a dropped connection, LOADING, ...) is retried with exponential back-off for ``retry_s``
    seconds (RECLAIM_RETRY_SECONDS), one warning line per attempt: a Job that starts while Redis
    restarts, or before the chart's Redis is up, still completes. A pass is safe to repeat: what
    an interrupted one claimed stays pending under the reclaimer's name and is claimed again.
    After ``retry_s`` it exits 1 with one error line; any other error exits 1 with its traceback.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_s
    backoff = first_backoff_s
    while True:
        try:
            summary = await reclaimer.run_once()
        except Exception as exc:
            if not is_transient(exc):
                logger.exception("reclaim pass failed")
                return 1
            left = deadline - loop.time()
            if left <= 0:
                logger.error("reclaim pass failed: Redis unavailable for %.0f s (RECLAIM_RETRY_SECONDS): %s: %s",
                             retry_s, type(exc).__name__, exc)
                return 1
            wait = min(backoff, left)
            logger.warning("reclaim: Redis unavailable (%s: %s); retrying in %.1f s", type(exc).__name__, exc, wait)
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, max_backoff_s)
            continue
        print(summary.line(), flush=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    """One pass (or ``--loop``); returns the exit code. ``--help`` lists the environment variables
    and exits 0; a bad value exits 2 with one line naming it, before anything connects."""
    settings, args = settings_from_command_line(
        ReclaimerSettings, prog="python -m reclaimer", argv=argv, description=__doc__,
        flags=lambda p: p.add_argument("--loop", action="store_true",
                                       help="run a pass every RECLAIM_INTERVAL_SECONDS until SIGTERM"),
    )
    configure_logging(settings.log_level, settings.log_format)
    settings.log_effective("reclaimer")
    return lifecycle.run(amain(settings, args.loop))


if __name__ == "__main__":
    sys.exit(main())
