"""The ``evalkit`` command's entry point: Ctrl-C or SIGTERM while evalkit is still starting ends it in one line."""

import signal
import sys


def main() -> None:
    from evalkit.errors import Terminated

    def terminate(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)  # stopped like Ctrl-C from the first instant
    try:
        from evalkit.cli import main as cli
    except KeyboardInterrupt as e:
        sys.stderr.write(f"{str(e) or 'interrupted'}\n")
        sys.exit(getattr(e, "exit_code", 130))
    cli()
