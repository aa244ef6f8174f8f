"""``python -m consumer``: settings from the environment, logging, then the worker until SIGTERM.

``--help`` prints the usage and every environment variable read, and exits 0; a bad value (for
example ``CONCURRENCY=0`` or ``BLOCK_MS`` not below the socket timeout) exits 2 with one line
naming the variable, before anything connects or listens.
"""

from __future__ import annotations

import sys

from consumer.settings import ConsumerSettings
from consumer.service import serve
from streamcore import lifecycle
from streamcore.logs import configure_logging
from streamcore.settings import settings_from_command_line


def main(argv: list[str] | None = None) -> int:
    """Run one consumer-group worker; returns the exit code (``argv`` without the program name)."""
    settings, _ = settings_from_command_line(
        ConsumerSettings, prog="python -m consumer", argv=argv,
        description="An orderstream consumer: reads the order stream in its consumer group and processes each order.",
    )
    configure_logging(settings.log_level, settings.log_format)
    settings.log_effective("consumer")
    return lifecycle.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
