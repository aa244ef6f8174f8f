"""``python -m autoscaler [--namespace NS ... | --all-namespaces | --local]`` (see settings.py)."""
import asyncio
import sys

from autoscaler.settings import load_settings
from streamcore.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    """Build the settings, configure logging, run the operator or the local mode; exit code."""
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    configure_logging(settings.log_level, settings.log_format)
    settings.log_effective('autoscaler')
    if settings.local:
        from autoscaler.local import run_local
        return asyncio.run(run_local(settings))
    from autoscaler.handlers import run_operator
    asyncio.run(run_operator(settings))
    return 0


if __name__ == '__main__':
    sys.exit(main())
