"""``python -m consumer``: settings from the environment, logging, then the worker until SIGTERM."""

from __future__ import annotations

import asyncio
import sys

from consumer.settings import ConsumerSettings
from consumer.service import serve
from streamcore.logs import configure_logging


def main() -> int:
    settings = ConsumerSettings()
    configure_logging(settings.log_level, settings.log_format)
    settings.log_effective("consumer")
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
