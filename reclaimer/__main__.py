"""``python -m reclaimer``: one reclaim pass (exit 0 on success, 1 on failure); ``--loop`` for local use."""

from __future__ import annotations

import asyncio
import logging
import sys

from reclaimer.reclaim import Reclaimer, run_loop
from reclaimer.settings import ReclaimerSettings
from streamcore.connection import create_redis, pool_size
from streamcore.lifecycle import install_shutdown_handlers
from streamcore.logs import configure_logging
from streamcore.settings import settings_from_command_line

logger = logging.getLogger("reclaimer")


async def amain(settings: ReclaimerSettings, loop: bool) -> int:
    r = create_redis(settings.redis_url.get_secret_value(), socket_timeout_s=settings.redis_socket_timeout_s,
                     max_connections=pool_size(settings.concurrency))
    try:
        reclaimer = Reclaimer(settings, r)
        if loop:
            stop = asyncio.Event()
            install_shutdown_handlers(stop)
            await run_loop(reclaimer, stop, settings.reclaim_interval_seconds)
            return 0
        try:
            summary = await reclaimer.run_once()
        except Exception:
            logger.exception("reclaim pass failed")
            return 1
        print(summary.line(), flush=True)
        return 0
    finally:
        await r.aclose()


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
    return asyncio.run(amain(settings, args.loop))


if __name__ == "__main__":
    sys.exit(main())
