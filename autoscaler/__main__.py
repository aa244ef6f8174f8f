"""``python -m autoscaler [--namespace NS ... | --all-namespaces | --local]`` (see settings.py)."""
import argparse
import asyncio
import sys

from autoscaler.settings import AutoscalerSettings, build_parser, load_settings
from streamcore.logs import configure_logging
from streamcore.settings import env_help, load_or_exit


def main(argv: list[str] | None = None) -> int:
    """Build the settings, configure logging, run the operator or the local mode; exit code."""
    argv = sys.argv[1:] if argv is None else argv
    # --help (with every environment variable) and bad flags first, then the settings: a bad
    # value exits 2 with one line naming it, before anything connects or listens.
    parser = build_parser()
    parser.epilog = env_help(AutoscalerSettings)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.parse_args(argv)
    settings = load_or_exit(lambda: load_settings(argv), prog=parser.prog, settings_cls=AutoscalerSettings)
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
