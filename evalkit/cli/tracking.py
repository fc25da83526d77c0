"""The commands over finished runs: ``evalkit report``, ``runs``, ``compare`` and ``history``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

import evalkit
from evalkit.cli.base import _check_output, _exit, _guard, _print_table, app, out, echoed
from evalkit.cli.gate import _compare
from evalkit.compare import Rule
from evalkit.errors import EvalkitError, shown
from evalkit.numbers import count, fmt

@app.command()
def report(
    # said in the docstring: typer lists a variadic argument with its Python annotation (<list[Path]>)
    runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", hidden=True, show_default=False)],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="HTML file to write (default: RUN_DIR/"
                                                "report.html for one run, reports/BASE_vs_NEW.html for several).",
                                                show_default=False)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Write the HTML report of one run directory (RUN_DIR), or of several compared with the first (the base)."""

    def body():
        from evalkit.report import write_report

        for run_dir in runs:  # the runs are named first: `evalkit report FILE` is about FILE, not -o
            evalkit.load_run(run_dir).manifest  # noqa: B018
        target = output.expanduser() if output is not None else None
        if target is None:
            target = runs[0] / "report.html" if len(runs) == 1 else Path("reports") / (
                f"{runs[0].resolve().name}_vs_{runs[-1].resolve().name}.html")
        _check_output(target, "-o", runs, None)
        written = write_report(runs, target)
        out.print(f"report: [bold]{echoed(written)}[/]", highlight=False, soft_wrap=True)

    _guard(body, debug)


IndexOption = Annotated[Path | None, typer.Option("--index", help="Run index file (default: $EVALKIT_INDEX, "
                                                  "else runs/index.sqlite).", show_default=False)]
MetricOption = Annotated[list[str] | None, typer.Option("--metric", metavar="METRIC",
                                                        help="Only these metrics (repeatable; "
                                                        "'self_bleu[n=4]' matches any self_bleu with n=4).")]


@app.command()
def runs(
    name: Annotated[str | None, typer.Option(help="Only runs of this name.")] = None,
    index: IndexOption = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """List the runs in the run index, oldest first."""

    def body():
        from evalkit.index import RunIndex, index_path

        with RunIndex(index_path(index), create=False) as db:
            listed = db.runs(name=name)
        if listed.empty:
            out.print(f"no runs{f' named {echoed(name)}' if name else ''} in {echoed(db.path)}", highlight=False)
            return
        table = Table(title=f"runs in {echoed(db.path)}")
        table.add_column("run", no_wrap=True, min_width=max(len(r) for r in listed["run_id"]))  # ids are copied
        for column in ("status", "started", "model", "model hash", "git", "samples"):
            table.add_column(column)
        listed = listed.astype(object).where(listed.notna(), None)  # a scored run has no model hash: None, not NaN
        for r in listed.itertuples():
            git = f"{(r.git_commit or '')[:10]}{' (dirty)' if r.git_dirty else ''}"
            table.add_row(echoed(r.run_id), r.status, r.started_at, echoed(r.model_id or ""),
                          echoed(r.model_hash or "")[:12], escape(git), "" if r.n_samples is None else
                          str(r.n_samples))
        _print_table(table)

    _guard(body, debug)


@app.command()
def compare(
    base: Annotated[str, typer.Argument(help="Base run: a run directory or a run id in the index.",
                                        show_default=False)],
    new: Annotated[str, typer.Argument(help="New run: a run directory or a run id in the index.",
                                       show_default=False)],
    metric: MetricOption = None,
    format_: Annotated[str, typer.Option("--format", help="text | markdown | json | html")] = "text",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of the terminal "
                                                "(html: default reports/BASE_vs_NEW.html).",
                                                show_default=False)] = None,
    fail_on: Annotated[list[str] | None, typer.Option("--fail-on", metavar="METRIC:+TOL",
                                                      help="Exit 1 on a significant change beyond "
                                                      "METRIC:+TOL (a rise is bad) or METRIC:-TOL (a fall is bad).")
                       ] = None,
    junit: Annotated[Path | None, typer.Option(help="Write the gate as JUnit XML here.", show_default=False)] = None,
    alpha: Annotated[float, typer.Option(help="Family-wise significance level (Holm).", min=1e-6, max=0.5)] = 0.05,
    homogeneity: Annotated[bool, typer.Option("--homogeneity", help="Also the mean embedding similarity between "
                                              "the runs' samples per setting (embeds both runs' samples).")] = False,
    index: IndexOption = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Compare two runs setting by setting, paired by prompt; with --fail-on, gate on regressions."""

    def body():
        from evalkit.compare import load_side
        from evalkit.index import index_path

        if format_ not in ("text", "markdown", "json", "html"):
            raise EvalkitError(f"--format: {shown(format_)} is not text, markdown, json or html")
        rules = [Rule.parse(r) for r in fail_on or []]
        where = index_path(index)
        a = load_side(base, where if where.is_file() else None, what="BASE")
        b = load_side(new, where if where.is_file() else None, what="NEW")
        for target, field in ((output, "-o"), (junit, "--junit")):  # checked before anything is printed
            if target is not None:
                _check_output(target.expanduser(), field, [r.path for r in (a, b) if r.path is not None], where)
        return _compare(a, b, rules, metric, format_, output, junit, alpha, homogeneity)

    _exit(_guard(body, debug))


@app.command()
def history(
    name: Annotated[str, typer.Option(help="The sweep's name (runs of that name, oldest first).",
                                      show_default=False)],
    metric: MetricOption = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="The HTML page (default: "
                                                "reports/history-NAME.html).", show_default=False)] = None,
    index: IndexOption = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """The trend of a sweep over its runs: a table here and an offline HTML page with regressions marked."""

    def body():
        from evalkit.history import load_history, write_history_html
        from evalkit.index import RunIndex, index_path

        target = (output or Path("reports") / f"history-{name}.html").expanduser()
        _check_output(target, "-o", [], index_path(index))
        with RunIndex(index_path(index), create=False) as db:
            h = load_history(db, name, metric)
        for m in h.metrics:
            trend = h.trend(m)
            table = Table(title=f"{echoed(m)}: mean per run", caption="! marks a regression from the run before")
            table.add_column("run", no_wrap=True, min_width=max(len(r) for r in trend.index))
            for sid in trend.columns:
                table.add_column(echoed(sid), justify="right")
            for run_id, values in zip(trend.index, trend.to_numpy()):
                table.add_row(echoed(run_id), *[fmt(v) + (" !" if (run_id, sid, m) in h.regressions else "")
                                                for sid, v in zip(trend.columns, values)])
            _print_table(table)
        written = write_history_html(h, target)
        out.print(f"{count(len(h.regressions), 'regressions')} in {count(len(h.runs), 'runs')}; history page: "
                  f"[bold]{echoed(written)}[/]", highlight=False, soft_wrap=True)

    _guard(body, debug)
