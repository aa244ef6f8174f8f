"""``python -m producer``: settings from the environment, logging, serve on ``PORT``.

aiohttp's runner handles SIGTERM/SIGINT: it stops accepting, marks readiness false, lets
in-flight requests finish within ``SHUTDOWN_TIMEOUT_S`` and then closes Redis.
"""

from aiohttp import web
from prometheus_client import REGISTRY

from producer.app import create_app
from producer.settings import ProducerSettings
from streamcore.logs import configure_logging


def main() -> None:
    """Run the producer until SIGTERM/SIGINT."""
    settings = ProducerSettings()
    configure_logging(settings.log_level, settings.log_format)
    settings.log_effective("producer")
    app = create_app(settings, registry=REGISTRY)
    web.run_app(app, host=settings.host, port=settings.port, shutdown_timeout=settings.shutdown_timeout_s, access_log=None, print=None)


if __name__ == "__main__":
    main()
