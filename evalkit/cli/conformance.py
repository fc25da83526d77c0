"""``evalkit conformance``: whether a backend samples from the distribution it claims (see
:mod:`evalkit.conformance`). Exit 1 when a setting fails or the seeds do not reproduce; 2 for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from evalkit.cli.base import _check_output, _exit, _guard, _print_table, _ui, app, out


def _p(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3g}"


def print_report(report) -> None:
    table = Table(title=escape(f"conformance of backend {report.backend} (order auto = {report.order}): "
                               f"{report.options.draws} draws per row, alpha {report.options.alpha:g}, Holm; "
                               f"expected: {report.reference}"),
                  caption="p: Holm-adjusted; distance: total variation of the draws from the expected distribution "
                          "(by chance: a conforming backend's, at these draws); control: the wrong chain the same "
                          "draws must reject")
    for column in ("setting", "context", "test", "p", "distance", "by chance", "control", "control p", "verdict"):
        table.add_column(column, justify="right" if column in ("p", "distance", "by chance", "control p") else "left")
    for c in report.cases:
        colour = "green" if c.verdict == "pass" else "red" if c.verdict.startswith("fail") else "yellow"
        table.add_row(escape(c.setting), escape(c.context), escape(c.fit.test), _p(c.adjusted), f"{c.distance:.3f}",
                      f"{c.chance:.3f}", escape(c.control or "-"), _p(c.control_adjusted),
                      f"[{colour}]{escape(c.verdict)}[/]")
    _print_table(table)
    for c in report.cases:
        if c.note:
            out.print(f"{escape(c.setting)} {escape(c.context)}: {escape(c.note)}", highlight=False, soft_wrap=True)
    for s in report.seeds:
        mark = "not checked" if not s.total else "ok" if s.passed else "FAILED"
        note = f": {s.note}" if s.note else ""
        out.print(f"seeds, {escape(s.name)}: {s.equal}/{s.total} equal ({s.distinct} distinct) {mark}{escape(note)}",
                  highlight=False, soft_wrap=True)
    for c in report.logprobs:
        mark = "ok" if c.passed else "FAILED"
        out.print(f"logprobs at {escape(c.setting)}, {escape(c.context)}: {escape(c.why())} (distance from the raw "
                  f"model {c.distance_raw:.4f}, from the processed distribution {c.distance_processed:.4f}, sum "
                  f"{c.total:.4f}) {mark}", highlight=False, soft_wrap=True)
    out.print(f"seeds sent: {escape(report.seed_mapping)}", highlight=False, soft_wrap=True)
    n = report.counts()
    out.print(f"{n['pass']} pass, {n['fail']} fail, {n['inconclusive']} inconclusive of {len(report.cases)} "
              f"(setting x context) in {report.seconds:.1f} s", highlight=False, soft_wrap=True)


@app.command()
def conformance(
    config: Annotated[Path, typer.Argument(help="Sweep config (YAML): its model, first prompt, settings and seed.",
                                           show_default=False)],
    setting: Annotated[list[str] | None, typer.Option("--setting", metavar="ID|KNOB=VALUE[,KNOB=VALUE]",
                                                      help="Test this setting (repeatable): an id of the config's "
                                                      "grid, or knobs: temperature=0.5,top_p=0.8. Default: the "
                                                      "config's settings.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="FIELD=VALUE",
                                                   help="Override a field: model.device=cpu")] = None,
    draws: Annotated[int, typer.Option("--draws", help="Single-token draws per setting and context.", min=10,
                                       max=10_000_000)] = 2000,
    reference: Annotated[str | None, typer.Option("--reference", help="The transformers model whose forward pass "
                                                  "gives the expected distribution (default: the backend's own "
                                                  "model, or the config's model id).", show_default=False)] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Print what would be drawn (settings, contexts, draws), then "
                                                  "stop: nothing is loaded.")] = False,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write every row and seed check as JSON here.",
                                                   show_default=False)] = None,
    html_file: Annotated[Path | None, typer.Option("--html", help="Also write a page with observed vs expected bars "
                                                   "for the worst rows here.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Check that a backend samples from the distribution it claims: single-token draws per setting and context
    against the reference's distribution through the setting's chain (chi-square, Holm), with a control that must
    fail, and its seeds' reproducibility. Exit 1 when something fails."""

    def body():
        from evalkit.api import conformance as run_conformance

        if plan:
            from evalkit.conformance import plan as plan_conformance

            lines = plan_conformance(config, overrides=set_ or [], settings=setting, draws=draws)
            width = max(len(label) for label, _ in lines)
            for label, value in lines:
                out.print(f"{escape(label):<{width}}  {escape(value)}", highlight=False, soft_wrap=True)
            return 0
        for path, flag in ((json_file, "--json"), (html_file, "--html")):
            if path is not None:
                _check_output(path, flag, [], None)
        report = run_conformance(config, overrides=set_ or [], settings=setting, draws=draws, reference=reference,
                                 progress=_ui(quiet))
        print_report(report)
        if json_file is not None:
            json_file.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
        if html_file is not None:
            from evalkit.conformance.page import page

            html_file.write_text(page(report), encoding="utf-8")
        return 1 if report.failed else 0

    _exit(_guard(body, debug))
