"""``evalkit run`` and ``evalkit score``, and the summary table they print."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

import evalkit
from evalkit.cli.base import REPORT_FAILED, _exit, _guard, _print_table, _ui, app, err, out, echoed
from evalkit.cli.gate import _check_gate, _gate_on_baseline
from evalkit.compare import Rule
from evalkit.config import preset_names, preset_path
from evalkit.errors import EvalkitError
from evalkit.numbers import count, fmt

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
        if (fail_on or junit) and baseline is None:
            raise EvalkitError("--fail-on and --junit need --baseline")
        rules = [Rule.parse(r) for r in fail_on or []]
        gate_check = (lambda c: _check_gate(c, baseline, rules, junit)) if baseline is not None else None
        if plan:
            if resume is not None or (config is None) == (preset is None):
                raise EvalkitError("--plan: give a config file or --preset NAME")
            from evalkit.api import plan_sweep

            lines = plan_sweep(config if config is not None else preset_path(preset), overrides=set_ or [],
                               cache=not no_cache, check=gate_check)
            width = max(len(label) for label, _ in lines)
            for label, value in lines:
                out.print(f"{escape(label):<{width}}  {escape(value)}", highlight=False, soft_wrap=True)
            return 0
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
        table.add_row(echoed(sid), *cells)
    _print_table(table)
    m = result.manifest
    if m.kind != "scored":
        reused = m.samples_reused
        kept = ", ".join(f"{n} {what}" for what, n in (("from the sample cache", reused.get("from_cache", 0)),
                                                       ("from before the resume", reused.get("from_parts", 0))) if n)
        prompts = kind_named(m.kind).noun
        out.print(f"{count(m.n_samples, 'samples')}: {count(m.n_prompts, prompts)} x "
                  f"{count(len(m.settings), 'settings')} x {result.config['samples_per_prompt']} on "
                  f"{echoed(m.model['id'])} ({escape(_where(m))}); "
                  f"generation {m.timings.get('generate_s', 0):.1f} s" + (f" ({kept})" if kept else ""),
                  highlight=False, soft_wrap=True)
    else:
        out.print(f"{count(m.n_samples, 'samples')} scored: {count(m.n_prompts, 'prompts')} x "
                  f"{count(len(m.settings), 'settings')} from "
                  f"{echoed(m.config_source)}", highlight=False, soft_wrap=True)
    out.print(f"run directory: [bold]{echoed(result.path)}[/]", highlight=False, soft_wrap=True)
    if (result.path / "report.html").is_file():
        out.print(f"report: [bold]{echoed(result.path / 'report.html')}[/]", highlight=False, soft_wrap=True)
