"""``python -m producer``: settings from the environment, logging, serve on ``PORT``.

``--help`` prints the usage and every environment variable read, and exits 0; a bad value exits
2 with one line naming the variable (:func:`streamcore.settings.settings_from_command_line`),
before anything connects or listens. aiohttp's runner handles SIGTERM/SIGINT: it stops
accepting, marks readiness false, lets in-flight requests finish within ``SHUTDOWN_TIMEOUT_S``
and then closes Redis.

The event loop is uvloop's where it is installed (a dependency on every platform but Windows):
the producer spends most of its time in the loop's transports (HTTP reads and writes, the Redis
socket), which uvloop runs in C; asyncio's default loop is the fallback, and ``ORDERSTREAM_LOOP=asyncio``
chooses it (:func:`streamcore.lifecycle.new_event_loop`).
"""

import logging

from aiohttp import web
from prometheus_client import REGISTRY

from producer.app import create_app
from producer.settings import ProducerSettings
from streamcore.lifecycle import new_event_loop
from streamcore.logs import configure_logging
from streamcore.settings import settings_from_command_line


def main(argv: list[str] | None = None) -> None:
    """Run the producer until SIGTERM/SIGINT (``argv`` without the program name; default ``sys.argv[1:]``)."""
    settings, _ = settings_from_command_line(
        ProducerSettings, prog="python -m producer", argv=argv,
        description="The orderstream producer: an HTTP API that validates orders and appends them to a Redis stream.",
    )
    configure_logging(settings.log_level, settings.log_format)
    settings.log_effective("producer")
    if settings.admin_token is None:
        logging.getLogger("producer").warning(
            "ADMIN_TOKEN is not set: the admin routes (re-drive, delete a dead letter, pause, resume) are open to "
            "whoever reaches this API")
    app = create_app(settings, registry=REGISTRY)
    web.run_app(app, host=settings.host, port=settings.port, shutdown_timeout=settings.shutdown_timeout_s, access_log=None, print=None,
                loop=new_event_loop())


if __name__ == "__main__":
    main()
