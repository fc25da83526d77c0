"""The ``evalkit`` command's entry point: Ctrl-C or SIGTERM while evalkit is still starting ends it in one line."""

import signal
import sys


def main() -> None:
    from evalkit.errors import stop_on_signal

    signal.signal(signal.SIGTERM, stop_on_signal)  # stopped like Ctrl-C from the first instant
    signal.signal(signal.SIGINT, stop_on_signal)  # and a Ctrl-C that lands in a finalizer is raised again
    try:
        from evalkit.cli import main as cli
    except KeyboardInterrupt as e:
        sys.stderr.write(f"{str(e) or 'interrupted'}\n")
        sys.exit(getattr(e, "exit_code", 130))
    cli()
