"""The command line: a thin layer over the Python API.

User errors print one line (``error: ...``) and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import math
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import evalkit
from evalkit.errors import EvalkitError
from evalkit.numbers import fmt

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure what sampling settings do to a generative model.")
out = Console()
err = Console(stderr=True)


def preset_names() -> list[str]:
    folder = resources.files("evalkit_presets")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    if name not in preset_names():
        raise EvalkitError(f"--preset: unknown preset {name!r} (presets: {', '.join(preset_names())})")
    return Path(str(resources.files("evalkit_presets") / f"{name}.yaml"))


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
        ["code", "qa", "chat", "creative", "brainstorm"]))] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: grid.temperature=[0.5,1.0]")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue a stopped run in this run directory.",
                                                show_default=False)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Generate every sample, reuse none.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks for errors.")] = False,
) -> None:
    """Run a sweep: generate every sample, score it, write a run directory."""

    def body():
        if resume is not None:
            if config is not None or preset is not None or set_:
                raise EvalkitError("--resume continues a run as it was configured: give no config, preset or --set")
            result = evalkit.run_sweep(None, resume=resume, progress=not quiet, cache=not no_cache)
        else:
            if (config is None) == (preset is None):
                raise EvalkitError("give a config file or --preset NAME (one of them)")
            path = config if config is not None else preset_path(preset)
            result = evalkit.run_sweep(path, overrides=set_ or [], progress=not quiet, cache=not no_cache)
        _print_summary(result)

    _guard(body, debug)


@app.command()
def score(
    file: Annotated[Path, typer.Argument(help="JSONL: one generation per line with text and prompt_id/prompt.",
                                         show_default=False)],
    metrics: Annotated[str, typer.Option("--metrics", help="Comma-separated metric names.")] = ",".join(
        ("distinct_1", "distinct_2", "self_bleu")),
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to write (must not exist or be empty).",
                                         show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks for errors.")] = False,
) -> None:
    """Score generations produced elsewhere into a run-like directory."""
    from evalkit.external import metric_list, score_file

    def body():
        if output is None:
            raise EvalkitError("-o: give the directory to write the scores into")
        result = score_file(file, metric_list(metrics), output, seed=seed, progress=not quiet)
        _print_summary(result)

    _guard(body, debug)


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories; the first is the base the others are "
                                                    "compared with.", show_default=False)],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="HTML file to write [default: RUN_DIR/"
                                                "report.html for one run, reports/BASE_vs_NEW.html for several]",
                                                show_default=False)] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks for errors.")] = False,
) -> None:
    """Write the HTML report of one run, or of several runs compared with the first."""
    from evalkit.report import write_report
    from evalkit.store import check_writable

    def body():
        target = output
        if target is None:
            target = runs[0] / "report.html" if len(runs) == 1 else Path("reports") / (
                f"{runs[0].resolve().name}_vs_{runs[-1].resolve().name}.html")
        if target.is_dir():
            raise EvalkitError(f"-o: {target} is a directory; give a file name")
        check_writable(target.parent, field="-o")
        written = write_report(runs, target)
        out.print(f"report: [bold]{escape(str(written))}[/]", highlight=False, soft_wrap=True)

    _guard(body, debug)


@app.command("metrics")
def list_metrics() -> None:
    """List the available metrics with their definitions, references and parameters."""
    from evalkit.registry import default_registry

    for entry in default_registry().entries():
        fields = entry.cls.Params.model_fields
        params = ", ".join(f"{k}={f.default}" for k, f in fields.items() if k not in entry.fixed) or "none"
        output = entry.cls(entry.cls.Params.model_validate(entry.fixed)).id
        out.print(f"[bold]{escape(entry.name)}[/]  ->  {escape(output)}", highlight=False)
        out.print(f"    {escape(entry.cls.definition)}", highlight=False)
        out.print(f"    parameters: {escape(params)}; reference: {escape(entry.cls.reference)}", highlight=False)


def _guard(body, debug: bool) -> None:
    try:
        body()
    except EvalkitError as e:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:
        err.print(str(e) or "interrupted", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


TABLE_METRICS = 4  # the summary table shows the first metrics of the config; summary.csv has all


def _print_summary(result: evalkit.Run) -> None:
    summary = result.summary
    every = list(dict.fromkeys(summary["metric"]))
    metrics = every[:TABLE_METRICS]
    level = int(round(result.manifest.ci["level"] * 100))
    more = f"; {len(every) - len(metrics)} more in summary.csv" if len(every) > len(metrics) else ""
    table = Table(title=f"{escape(result.manifest.name)}: mean over prompts [{level}% bootstrap CI]",
                  caption=escape("; ".join(metrics) + more))
    table.add_column("setting")
    for m in metrics:
        table.add_column(escape(m.split("[")[0]), justify="right")
    for sid, df in summary.groupby("setting_id", sort=False):
        by_metric = df.set_index("metric")
        cells = []
        for m in metrics:
            r = by_metric.loc[m]
            ci = "" if math.isnan(r["ci_low"]) else f"\n[dim][{fmt(r['ci_low'])}, {fmt(r['ci_high'])}][/]"
            cells.append(fmt(r["mean"]) + ci)
        table.add_row(escape(str(sid)), *cells)
    out.print(table)
    m = result.manifest
    if m.kind == "sweep":
        reused = m.samples_reused
        kept = ", ".join(f"{n} {what}" for what, n in (("from the sample cache", reused.get("from_cache", 0)),
                                                       ("from before the resume", reused.get("from_parts", 0))) if n)
        out.print(f"{m.n_samples} samples: {m.n_prompts} prompts x {len(m.settings)} settings x "
                  f"{result.config['samples_per_prompt']} on {escape(m.model['id'])} ({m.device}, {m.model['dtype']}); "
                  f"generation {m.timings.get('generate_s', 0):.1f} s" + (f" ({kept})" if kept else ""),
                  highlight=False, soft_wrap=True)
    else:
        out.print(f"{m.n_samples} samples scored: {m.n_prompts} prompts x {len(m.settings)} settings from "
                  f"{escape(m.config_source)}", highlight=False, soft_wrap=True)
    out.print(f"run directory: [bold]{escape(str(result.path))}[/]", highlight=False, soft_wrap=True)
    if (result.path / "report.html").is_file():
        out.print(f"report: [bold]{escape(str(result.path / 'report.html'))}[/]", highlight=False, soft_wrap=True)


def main() -> None:
    app(prog_name="evalkit")


if __name__ == "__main__":
    sys.exit(main())
