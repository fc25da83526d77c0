"""``evalkit metrics``: the available metrics, or the decoding test of a run (``--check``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from evalkit.cli.base import _exit, _guard, app, out
from evalkit.errors import EvalkitError

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
        metric = entry.cls(entry.cls.Params.model_validate(entry.fixed))
        # what the id names beyond the parameters (ent_n's log=e): part of the definition, not settable
        fixed = ", ".join(f"{k}={v}" for k, v in metric.signature().items() if k not in fields)
        params += f"; fixed: {fixed}" if fixed else ""
        out.print(f"[bold]{escape(entry.name)}[/]  ->  {escape(metric.id)}", highlight=False)
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
