"""The command line's shell: the typer app, the consoles, one-line errors and exit codes, the entry point.

User errors print one line (``error: ...``) and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

import evalkit
from evalkit.errors import EvalkitError, stop_on_signal

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Measure what sampling settings do to a generative model.")
out = Console()
err = Console(stderr=True)


def printable(text: str) -> str:
    """``text`` as one line a terminal shows as it is: control characters (a newline or an escape sequence in a
    file name) written as escapes."""
    import unicodedata

    return "".join(c if unicodedata.category(c) != "Cc" else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def echoed(value) -> str:
    """A value the user chose (a path, a model id, a setting's id) for a line of rich markup: control characters
    written as escapes (:func:`printable`), markup escaped."""
    return escape(printable(str(value)))


def _ui(quiet: bool):
    """Progress bars, or with --quiet none, but the notes still shown."""
    from evalkit.progress import Quiet

    return Quiet() if quiet else True


def _print_table(table) -> None:
    """A table at the terminal's width; in a log or a pipe (CI), as wide as its cells, never cut at 80 columns."""
    (out if out.is_terminal else Console(width=10_000)).print(table)


def _version(value: bool) -> None:
    if value:
        out.print(f"evalkit {evalkit.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    pass


def _check_output(target: Path, field: str, runs: list, index: Path | None) -> None:
    """An output file named on the command line: not a folder, not one of the command's inputs, writable."""
    from evalkit.rundir.files import check_not_an_input, check_writable

    if target.is_dir():
        raise EvalkitError(f"{field}: {target} is a directory; give a file name")
    if target.exists() and not target.is_file():  # writing would replace a device or a FIFO
        raise EvalkitError(f"{field}: {target} is not a regular file (a device or a FIFO); give a file name")
    check_not_an_input(target, field, runs, index)
    check_writable(target.parent, field=field)


def _exit(code) -> None:
    if code:
        raise typer.Exit(code)


def _guard(body, debug: bool):
    try:
        return body()
    except EvalkitError as e:
        if debug:
            raise
        for line in getattr(e, "lines", None) or [str(e)]:  # several problems of one config: one line each
            err.print(f"[bold red]error:[/] {escape(printable(line))}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:
        err.print(printable(str(e)) or "interrupted", highlight=False, soft_wrap=True)
        raise typer.Exit(getattr(e, "exit_code", 130)) from None
    except (typer.Exit, typer.Abort, _CLICK_ERROR):
        raise
    except Exception as e:  # a bug: never exit 1, which means "regression" to a gate
        if debug:
            raise
        message = printable(str(e).splitlines()[0])[:300] if str(e).strip() else "no message"
        err.print(f"[bold red]error:[/] unexpected {type(e).__name__}: {escape(message)} (a bug in evalkit; "
                  "--debug shows the traceback)", highlight=False, soft_wrap=True)
        raise typer.Exit(CRASHED) from None


REPORT_FAILED = 3  # the run is complete but its report could not be written (1: a regression, 2: bad input)
CRASHED = 4  # an unexpected error: a bug


def main() -> None:
    # stopped like Ctrl-C: a run is marked interrupted, not left running; a stop lost in a finalizer is raised again
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    try:
        code = app(prog_name="evalkit", standalone_mode=False)
    except KeyboardInterrupt as e:  # between commands' guards (start-up)
        err.print(str(e) or "interrupted", highlight=False)
        sys.exit(getattr(e, "exit_code", 130))
    except _CLICK_ERROR as e:
        if type(e).__name__ == "NoArgsIsHelpError" or not isinstance(e, _USAGE_ERROR):
            e.show()  # `evalkit` alone: the help
        else:  # a bad option or argument: one line, like every other input error
            ctx = getattr(e, "ctx", None)
            sub = ctx is not None and ctx.parent is not None
            where = f"evalkit {ctx.info_name} --help" if sub else "evalkit --help"
            err.print(f"[bold red]error:[/] {escape(' '.join(e.format_message().split()))} ({escape(where)})",
                      highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("interrupted", highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _base(name: str) -> type:
    """click's exception class ``name`` as typer uses it (typer may carry its own copy of click)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_USAGE_ERROR, _CLICK_ERROR = _base("UsageError"), _base("ClickException")
