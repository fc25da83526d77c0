"""The command line: a thin layer over the Python API.

User errors print one line (``error: ...``) and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import io
import math
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import evalkit
from evalkit.compare import Rule
from evalkit.config import preset_names, preset_path
from evalkit.errors import EvalkitError, Terminated, shown
from evalkit.numbers import count, fmt

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


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="Sweep config (YAML).", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option(help="Run a bundled preset instead: " + "|".join(
        preset_names()))] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="FIELD=VALUE",
                                                   help="Override a field: grid.temperature=[0.5,1.0]")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue a stopped run in this run directory.",
                                                show_default=False)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Generate every sample, reuse none.")] = False,
    baseline: Annotated[str | None, typer.Option(help="Then compare with this run: 'latest' (the latest complete "
                                                      "run of the same name in the run index) or a run id.",
                                                 show_default=False)] = None,
    fail_on: Annotated[list[str] | None, typer.Option("--fail-on", metavar="METRIC:+TOL",
                                                      help="With --baseline: exit 1 on a significant "
                                                      "change beyond METRIC:+TOL or METRIC:-TOL.")] = None,
    junit: Annotated[Path | None, typer.Option(help="With --baseline: write the gate as JUnit XML here.",
                                               show_default=False)] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Print what the run would make and send (samples, requests, "
                                                  "most tokens), then stop: nothing is loaded or sent.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Run a sweep: generate every sample, score it, write a run directory (and gate it on a baseline)."""

    def body():
        if plan:
            if resume is not None or (config is None) == (preset is None):
                raise EvalkitError("--plan: give a config file or --preset NAME")
            from evalkit.api import plan_sweep

            lines = plan_sweep(config if config is not None else preset_path(preset), overrides=set_ or [])
            width = max(len(label) for label, _ in lines)
            for label, value in lines:
                out.print(f"{escape(label):<{width}}  {escape(value)}", highlight=False, soft_wrap=True)
            return 0
        if (fail_on or junit) and baseline is None:
            raise EvalkitError("--fail-on and --junit need --baseline")
        rules = [Rule.parse(r) for r in fail_on or []]
        gate_check = (lambda c: _check_gate(c, baseline, rules, junit)) if baseline is not None else None
        if resume is not None:
            if config is not None or preset is not None or set_:
                raise EvalkitError("--resume continues a run as it was configured: give no config, preset or --set")
            result = evalkit.run_sweep(None, resume=resume, progress=_ui(quiet), cache=not no_cache, check=gate_check)
        else:
            if (config is None) == (preset is None):
                raise EvalkitError("give a config file or --preset NAME (one of them)")
            path = config if config is not None else preset_path(preset)
            result = evalkit.run_sweep(path, overrides=set_ or [], progress=_ui(quiet), cache=not no_cache,
                                       check=gate_check)
        _print_summary(result)
        if result.report_error:
            err.print(f"[bold red]error:[/] {escape(result.report_error)}", highlight=False, soft_wrap=True)
        if baseline is not None:
            return _gate_on_baseline(result, baseline, rules, junit)
        return REPORT_FAILED if result.report_error else 0

    _exit(_guard(body, debug))


@app.command()
def score(
    file: Annotated[Path, typer.Argument(help="JSONL: one generation per line with text and prompt_id/prompt.",
                                         show_default=False)],
    metrics: Annotated[str, typer.Option("--metrics", help="Comma-separated metric names.")] = ",".join(
        ("distinct_1", "distinct_2", "self_bleu")),
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to write (must not exist or be empty).",
                                         show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.", min=0, max=2**63 - 1)] = 0,
    references: Annotated[Path, typer.Option("--references", help="JSONL of reference texts (text, and prompt_id "
                                             "where one belongs to a prompt) for mauve, zipf, ... and the human "
                                             "row.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Score generations produced elsewhere into a run-like directory."""

    def body():
        from evalkit.api import score_file
        from evalkit.config import metric_list

        if output is None:
            raise EvalkitError("-o: give the directory to write the scores into")
        result = score_file(file, metric_list(metrics), output, seed=seed, progress=not quiet, references=references)
        _print_summary(result)

    _guard(body, debug)


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories; the first is the base the others are "
                                                    "compared with.", show_default=False)],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="HTML file to write (default: RUN_DIR/"
                                                "report.html for one run, reports/BASE_vs_NEW.html for several).",
                                                show_default=False)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Write the HTML report of one run, or of several runs compared with the first."""

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
        out.print(f"report: [bold]{escape(str(written))}[/]", highlight=False, soft_wrap=True)

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
            out.print(f"no runs{f' named {escape(name)}' if name else ''} in {escape(str(db.path))}", highlight=False)
            return
        table = Table(title=f"runs in {escape(str(db.path))}")
        table.add_column("run", no_wrap=True, min_width=max(len(r) for r in listed["run_id"]))  # ids are copied
        for column in ("status", "started", "model", "model hash", "git", "samples"):
            table.add_column(column)
        listed = listed.astype(object).where(listed.notna(), None)  # a scored run has no model hash: None, not NaN
        for r in listed.itertuples():
            git = f"{(r.git_commit or '')[:10]}{' (dirty)' if r.git_dirty else ''}"
            table.add_row(escape(r.run_id), r.status, r.started_at, escape(str(r.model_id or "")),
                          escape(str(r.model_hash or ""))[:12], escape(git), "" if r.n_samples is None else
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
        return _compare(a, b, rules, metric, format_, output, junit, alpha)

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
            table = Table(title=f"{escape(m)}: mean per run", caption="! marks a regression from the run before")
            table.add_column("run", no_wrap=True, min_width=max(len(r) for r in trend.index))
            for sid in trend.columns:
                table.add_column(escape(str(sid)), justify="right")
            for run_id, values in zip(trend.index, trend.to_numpy()):
                table.add_row(escape(run_id), *[fmt(v) + (" !" if (run_id, sid, m) in h.regressions else "")
                                                for sid, v in zip(trend.columns, values)])
            _print_table(table)
        written = write_history_html(h, target)
        out.print(f"{count(len(h.regressions), 'regressions')} in {count(len(h.runs), 'runs')}; history page: "
                  f"[bold]{escape(str(written))}[/]", highlight=False, soft_wrap=True)

    _guard(body, debug)


def _compare(a, b, rules, metrics, format_, output, junit, alpha) -> int:
    """Compare, print or write the result, write JUnit XML; the exit code of the gate."""
    output, junit = (p.expanduser() if p is not None else None for p in (output, junit))
    from evalkit.compare import format as compare_format
    from evalkit.compare import compare_runs, gate
    from evalkit.rundir.files import write_atomic

    narrowed = metrics or [r.metric for r in rules] or None  # a gate tests only what it gates
    comparison = compare_runs(a, b, metrics=narrowed, alpha=alpha, metrics_from="--metric" if metrics else "--fail-on")
    violations = gate(comparison, rules)
    if format_ == "html":
        if a.path is None or b.path is None or not (a.path / "manifest.json").is_file():
            raise EvalkitError("--format html needs both run directories (the report is drawn from them)")
        from evalkit.report import write_report

        target = output or Path("reports") / f"{a.label}_vs_{b.label}.html"
        out.print(f"report: [bold]{escape(str(write_report([a.path, b.path], target)))}[/]", highlight=False)
    elif format_ == "text":
        if output is not None:
            plain = Console(record=True, file=io.StringIO(), width=200)
            plain.print(compare_format.text_table(comparison))
            write_atomic(output, plain.export_text().encode("utf-8"))
        else:
            _print_table(compare_format.text_table(comparison))
    else:
        text = (compare_format.as_json if format_ == "json" else compare_format.as_markdown)(comparison, violations)
        if output is not None:
            write_atomic(output, text.encode("utf-8"))
        else:
            out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
    if format_ != "json" or output is not None:
        for line in compare_format.headline(comparison, violations):
            (err if line.startswith(("REGRESSION", "  ")) else out).print(escape(line), highlight=False,
                                                                          soft_wrap=True)
    if junit is not None:
        write_atomic(junit, compare_format.junit(comparison, rules, violations))
    return 1 if violations else 0


def _check_output(target: Path, field: str, runs: list, index: Path | None) -> None:
    """An output file named on the command line: not a folder, not one of the command's inputs, writable."""
    from evalkit.rundir.files import check_not_an_input, check_writable

    if target.is_dir():
        raise EvalkitError(f"{field}: {target} is a directory; give a file name")
    check_not_an_input(target, field, runs, index)
    check_writable(target.parent, field=field)


def _check_gate(config, baseline: str, rules, junit: Path | None) -> None:
    """Before the sweep: every --fail-on rule names a metric the sweep scores, the baseline can be found,
    and the JUnit file can be written; a mistake here is found in a second, not after the run."""
    from evalkit.compare import load_side, matches
    from evalkit.compare.stats import pooled_rule
    from evalkit.index import TABLES, RunIndex, index_path
    from evalkit.kinds import kind_of
    from evalkit.prompts import load_prompts
    from evalkit.rundir.files import check_database
    from evalkit.rundir.protocol import FIELDS, differences
    from evalkit.scoring.registry import default_registry

    created = default_registry().create_all(config.metrics, source=config.source)
    ids = [m.id for m in created]
    for rule in rules:
        hit = [m for m in created if matches(rule.metric, m.id)]
        if not hit:
            raise EvalkitError(f"--fail-on: {shown(rule.metric)} matches no metric this sweep scores "
                               f"({', '.join(ids)})")
        if all(m.pooled for m in hit):
            raise pooled_rule(rule, [m.id for m in hit])
    where, base = index_path(config.index, config.output_dir), None
    if baseline == "latest":
        check_database(where, field="index", tables=TABLES)
        if where.is_file():
            with RunIndex(where) as db:
                latest = db.latest(config.name)
            base = load_side(latest, where, what="--baseline") if latest else None
    else:
        base = load_side(baseline, where, what="--baseline")
    if base is not None:  # what the run's protocol will be, as far as the config tells it
        planned = {"kind": kind_of(config).name, **{f: getattr(config, f) for f in FIELDS},
                   "chat_template": config.prompts.chat_template, "system_prompt": config.prompts.system_prompt,
                   "prompts": {p.id: p.display for p in load_prompts(config)}}
        problems = differences({k: v for k, v in base.protocol.items() if k in planned}, planned)
        if problems:
            raise EvalkitError(f"--baseline: this sweep would not be comparable with {base.label}: "
                               f"{'; '.join(problems)}")
    if junit is not None:
        _check_output(junit.expanduser(), "--junit", [base.path] if base is not None and base.path else [], where)


def _gate_on_baseline(result, baseline: str, rules, junit) -> int:
    from evalkit.compare import RunData, load_side
    from evalkit.index import RunIndex, index_path

    where = index_path(result.config.get("index"), result.config.get("output_dir", "runs"))
    if baseline == "latest":
        with RunIndex(where) as db:
            baseline = db.latest(result.manifest.name, exclude=result.manifest.run_id)
        if baseline is None:
            out.print(f"no earlier complete run named {escape(result.manifest.name)} in {escape(str(where))}: "
                      f"nothing to compare; this run is the baseline of the next", highlight=False, soft_wrap=True)
            return 0
    base = load_side(baseline, where, what="--baseline")
    return _compare(base, RunData.from_run(result), rules, None, "text", None, junit, 0.05)


def _exit(code) -> None:
    if code:
        raise typer.Exit(code)


@app.command("metrics")
def list_metrics(
    check: Annotated[Path, typer.Option("--check", help="A run directory: check its diversity metrics against "
                                        "temperature (the decoding test) instead of listing metrics.",
                                        show_default=False)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """List the available metrics with their definitions, references and parameters."""
    if check is not None:
        _exit(_guard(lambda: _check_metrics(check), debug))
        return
    from evalkit.scoring.registry import default_registry

    for entry in default_registry().entries():
        fields = entry.cls.Params.model_fields
        params = ", ".join(f"{k}={f.default}" for k, f in fields.items() if k not in entry.fixed) or "none"
        output = entry.cls(entry.cls.Params.model_validate(entry.fixed)).id
        out.print(f"[bold]{escape(entry.name)}[/]  ->  {escape(output)}", highlight=False)
        out.print(f"    {escape(entry.cls.definition)}", highlight=False)
        out.print(f"    parameters: {escape(params)}; reference: {escape(entry.cls.reference)}", highlight=False)


def _check_metrics(run_dir: Path) -> int:
    """Print the decoding test of a run (see evalkit.scoring.decoding_test); 1 when a metric fails it."""
    from evalkit.inputs import check_path_text
    from evalkit.rundir import load_run
    from evalkit.scoring.decoding_test import STRONG, run_decoding_test

    check_path_text(run_dir, "--check")
    run = load_run(run_dir)
    result = run_decoding_test(run)
    if result is None:
        temperatures = {s.params.get("temperature") for s in run.manifest.settings} - {None}
        raise EvalkitError(f"--check: {run_dir} has {len(temperatures)} temperature"
                           f"{'' if len(temperatures) == 1 else 's'}; the decoding test needs at least 3")
    if result.empty:
        raise EvalkitError(f"--check: {run_dir} has no diversity metric to check")
    table = Table(title=f"decoding test: Spearman's rho between temperature and each diversity metric ({run_dir})")
    for column in ("metric", "expected", "rho", "CI", "prompts", "verdict"):
        table.add_column(column, justify="left" if column in ("metric", "verdict") else "right",
                         overflow="fold")
    bases = [m.split("[")[0] for m in result["metric"]]
    for r, base in zip(result.itertuples(), bases):
        ci = "" if math.isnan(r.ci_low) else f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
        style = {"ok": "green", "weak": "yellow", "wrong sign": "red"}.get(r.verdict, "")
        table.add_row(escape(base if bases.count(base) == 1 else r.metric), "rises" if r.direction > 0 else "falls",
                      "n/a" if math.isnan(r.rho) else f"{r.rho:+.2f}", ci,
                      "pooled" if r.n_prompts == 0 and not math.isnan(r.rho) else str(r.n_prompts),
                      f"[{style}]{r.verdict}[/]" if style else r.verdict)
    table.caption = escape("; ".join(result["metric"]))
    out.print(table)
    out.print(f"ok: the direction-signed rho is at least {STRONG} and its CI stays above 0; wrong sign: its CI lies "
              f"below 0 (pooled: rho -{STRONG} or less), the metric moves against temperature; weak: between.",
              highlight=False)
    return 1 if (result["verdict"] == "wrong sign").any() else 0


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
TABLE_METRICS = 4  # the summary table shows the first metrics of the config; summary.csv has all


def _where(m) -> str:
    """Where a run's model ran: device and dtype, or the server it was served by."""
    if m.model.get("server"):
        return f"served by {m.model['path']}"
    return ", ".join(str(x) for x in (m.device, m.model.get("dtype")) if x)


def _print_summary(result: evalkit.Run) -> None:
    from evalkit.kinds import kind_named

    summary = result.summary
    present = list(dict.fromkeys(summary["metric"]))
    every = [m for m in result.manifest.metrics if m in present] + [m for m in present
                                                                     if m not in result.manifest.metrics]
    metrics = every[:TABLE_METRICS]
    level = int(round(result.manifest.ci["level"] * 100))
    more = f"; {len(every) - len(metrics)} more in summary.csv" if len(every) > len(metrics) else ""
    pooled = [m.split("[")[0] for m in metrics if result.manifest.metric_info.get(m, {}).get("pooled")]
    note = (f" ({', '.join(pooled)}: one value over all prompts, jackknife interval)" if pooled else "")
    table = Table(title=f"{escape(result.manifest.name)}: mean over prompts [{level}% bootstrap CI]",
                  caption=escape("; ".join(metrics) + more + note))
    table.add_column("setting")
    bases = [m.split("[")[0] for m in metrics]
    for m, base in zip(metrics, bases):  # the full id where two variants of one metric would look alike
        table.add_column(escape(m if bases.count(base) > 1 else base), justify="right")
    for sid, df in summary.groupby("setting_id", sort=False):
        by_metric = df.set_index("metric")
        cells = []
        for m in metrics:
            r = by_metric.loc[m]
            ci = "" if math.isnan(r["ci_low"]) else f"\n[dim][{fmt(r['ci_low'])}, {fmt(r['ci_high'])}][/]"
            cells.append(fmt(r["mean"]) + ci)
        table.add_row(escape(str(sid)), *cells)
    _print_table(table)
    m = result.manifest
    if m.kind != "scored":
        reused = m.samples_reused
        kept = ", ".join(f"{n} {what}" for what, n in (("from the sample cache", reused.get("from_cache", 0)),
                                                       ("from before the resume", reused.get("from_parts", 0))) if n)
        prompts = kind_named(m.kind).noun
        out.print(f"{count(m.n_samples, 'samples')}: {count(m.n_prompts, prompts)} x "
                  f"{count(len(m.settings), 'settings')} x {result.config['samples_per_prompt']} on "
                  f"{escape(m.model['id'])} ({escape(_where(m))}); "
                  f"generation {m.timings.get('generate_s', 0):.1f} s" + (f" ({kept})" if kept else ""),
                  highlight=False, soft_wrap=True)
    else:
        out.print(f"{count(m.n_samples, 'samples')} scored: {count(m.n_prompts, 'prompts')} x "
                  f"{count(len(m.settings), 'settings')} from "
                  f"{escape(m.config_source)}", highlight=False, soft_wrap=True)
    out.print(f"run directory: [bold]{escape(str(result.path))}[/]", highlight=False, soft_wrap=True)
    if (result.path / "report.html").is_file():
        out.print(f"report: [bold]{escape(str(result.path / 'report.html'))}[/]", highlight=False, soft_wrap=True)


def _terminate(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)  # stopped like Ctrl-C: a run is marked interrupted, not left running
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


if __name__ == "__main__":
    sys.exit(main())
