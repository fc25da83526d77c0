"""``evalkit calibrate``: each sampler family's knob at the value whose samples have a given mean entropy per token,
printed as a ``grid.settings`` list to paste into a sweep (see :mod:`evalkit.calibrate`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from evalkit.cli.base import _check_output, _exit, _guard, _print_table, _ui, app, err, out
from evalkit.errors import ConfigError

NOTHING_CALIBRATED = 1  # every family out of reach or not monotone: no setting found


def knob_option(text: str) -> dict:
    """``--knob KNOB[=LOW:HIGH][,OTHER=VALUE...]`` as a ``calibrate:`` entry: the knob, its range, the fixed rest
    (values read as YAML: ``order=llama_cpp``, ``temperature=0.8``)."""
    import yaml

    head, *rest = [part.strip() for part in text.split(",")]
    knob, sep, span = head.partition("=")
    item: dict = {"knob": knob.strip()}
    if sep:
        low, colon, high = span.partition(":")
        try:
            item["range"] = [float(low), float(high)] if colon else None
        except ValueError:
            item["range"] = None
        if item["range"] is None:
            raise ConfigError(f"expects KNOB=LOW:HIGH, got {text!r}", path="--knob")
    fixed = {}
    for part in rest:
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"expects KNOB[=LOW:HIGH][,OTHER=VALUE...], got {text!r}", path="--knob")
        fixed[key.strip()] = yaml.safe_load(value)
    if fixed:
        item["fixed"] = fixed
    return item


@app.command()
def calibrate(
    config: Annotated[Path, typer.Argument(help="Sweep config (YAML): its model, prompts, samples per prompt, "
                                                "max_new_tokens and seed; its calibrate: section, if any, lists the "
                                                "families.", show_default=False)],
    entropy: Annotated[float, typer.Option("--entropy", help="Target mean entropy per token of the sampling "
                                                             "distribution, in nats.", show_default=False)],
    knob: Annotated[list[str] | None, typer.Option("--knob", metavar="KNOB[=LOW:HIGH][,OTHER=VALUE]",
                                                   help="A family to calibrate (repeatable): temperature, top_k, "
                                                   "top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff, "
                                                   "top_n_sigma, xtc_probability. Default: the config's calibrate: "
                                                   "section, else each of them but xtc_probability, and "
                                                   "temperature with XTC at 0.5 (llama.cpp's order).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="FIELD=VALUE",
                                                   help="Override a field: samples_per_prompt=2")] = None,
    tolerance: Annotated[float, typer.Option(help="Stop within this many nats of the target.")] = 0.02,
    max_steps: Annotated[int, typer.Option(help="Bisection steps at most, after the range's ends.", min=1,
                                           max=60)] = 12,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write every family's outcome as JSON here.",
                                                   show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Find each sampler family's knob value whose samples have mean entropy --entropy (bisection, evalkit's engine,
    the config's seed); print the settings as a grid.settings list."""

    def body():
        import yaml

        from evalkit.calibrate import calibrate as run_calibration
        from evalkit.calibrate import pasted

        if json_file is not None:
            _check_output(json_file, "--json", [], None)
        families = [knob_option(k) for k in knob] if knob else None
        results = run_calibration(config, entropy, families, overrides=set_ or [], tolerance=tolerance,
                                  max_steps=max_steps, progress=_ui(quiet))
        table = Table(title=f"calibrated to {entropy:g} nats per token (tolerance {tolerance:g})")
        for column in ("family", "value", "mean entropy", "outcome", "values tried"):
            table.add_column(column, justify="left" if column in ("family", "outcome") else "right")
        for r in results:
            value, h = r.best
            shown = r.setting is not None and math.isfinite(h)
            table.add_row(escape(r.family.name), f"{value:g}" if shown else "-", f"{h:.3f}" if shown else "-",
                          r.status, str(len(r.tried)))
        _print_table(table)
        for r in results:
            out.print(escape(r.line()), highlight=False, soft_wrap=True)
        found = [r for r in results if r.setting is not None]
        if found:
            out.print("grid:\n  settings:", highlight=False)
        for r in found:
            entry = yaml.safe_dump(pasted(r.setting), default_flow_style=True, sort_keys=False,
                                   allow_unicode=True, width=10_000).strip()
            out.print(escape(f"    - {entry:<48} # {r.family.name}: {r.best[1]:.3f} nats"), highlight=False,
                      soft_wrap=True)
        if json_file is not None:
            json_file.write_text(json.dumps({"entropy": entropy, "tolerance": tolerance, "config": str(config),
                                             "families": [r.as_dict() for r in results]}, indent=2) + "\n",
                                 encoding="utf-8")
        if not found:  # a script must not paste an empty list
            err.print(f"no family reached {entropy:g} nats: no setting to paste", highlight=False)
            return NOTHING_CALIBRATED
        return 0

    _exit(_guard(body, debug))
