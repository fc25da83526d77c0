"""The ``evalkit`` command's entry point: Ctrl-C while evalkit is still starting ends it in one line."""

import sys


def main() -> None:
    try:
        from evalkit.cli import main as cli
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    cli()
