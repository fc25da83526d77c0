"""Assemble the report: charts per run, tables, the samples as JSON, one Jinja2 template.

Everything the page needs is inlined (CSS, JavaScript, SVG charts, data); model output is
escaped by the template or carried as JSON and set with ``textContent`` in the page.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup, escape

from evalkit.version import __version__
from evalkit.numbers import fmt
from evalkit.kinds.base import Axes
from evalkit.report import charts
from evalkit.report.data import ENTROPY, RunView, deltas, load_views, script_json
from evalkit.report.homogeneity import homogeneity_section, metric_notes
from evalkit.report.judge import judge_sections
from evalkit.rundir.files import write_atomic

MAX_LABELLED = 8  # trade-off charts label every setting up to this many, else only the Pareto front


def chart_set(view: RunView) -> dict:
    """The SVG charts of one run: per metric a heatmap and a line chart, the trade-off pairs, entropy."""
    per_metric = {}
    for i, metric in enumerate(view.metrics):
        rows = view.metric_rows(metric)
        if rows.empty:
            continue
        if rows["mean"].isna().all():  # nothing to draw: say why instead of empty axes
            per_metric[metric] = {"undefined": True, "wide": False}
            continue
        human = view.human(metric)
        per_metric[metric] = {
            "heatmap": charts.heatmap(rows, view.info(metric), f"{view.key}h{i}", view.level, axes=view.axes,
                                      human=human),
            "lines": charts.lines(rows, view.info(metric), f"{view.key}l{i}", view.level, ylabel=metric.split("[")[0],
                                  axes=view.axes, human=human),
            "human": human,
            "wide": len(charts.facets(rows, view.axes)) > 1,  # small multiples take the page's full width
            "undefined": False,
        }
    # x: diversity, and distances to the references (CLIPScore against FID over the guidance scale); y: quality,
    # other than those distances where there is any
    xs = [m for m in view.metrics if view.info(m)["kind"] == "diversity" or view.info(m).get("against_references")]
    xs = xs or view.metrics
    quality = view.by_kind("quality")
    ys = ([m for m in quality if not view.info(m).get("against_references")] or quality
          or [m for m in view.metrics if m not in xs] or view.metrics)
    pairs = []
    for x in xs:
        for y in ys:
            if x == y:
                continue
            both, front = charts.tradeoff_points(view.metric_rows(x), view.metric_rows(y), view.info(x), view.info(y))
            hx, hy = view.human(x), view.human(y)
            svg = charts.tradeoff(both, front, x, y, view.info(x), view.info(y), f"{view.key}t{len(pairs)}",
                                  label_all=len(view.settings) <= MAX_LABELLED,
                                  human=(hx, hy) if hx is not None and hy is not None else None)
            on_front = [{"setting": r.setting_id, "x": fmt(r.mean_x), "y": fmt(r.mean_y)}
                        for r in both.iloc[front].itertuples()]
            pairs.append({"x": x, "y": y, "svg": svg, "front": on_front, "n": len(both)})
    entropy = None
    if view.entropy is not None:
        e = view.entropy
        entropy = charts.lines(e[e["metric"] == "entropy_sampling"], {}, f"{view.key}e", view.level,
                               ylabel="entropy per token (nats)", reference=e[e["metric"] == "entropy_model"],
                               reference_label="model, T=1")
    return {"metrics": per_metric, "pairs": pairs, "xs": xs, "ys": ys, "entropy": entropy,
            "pass_at_k": pass_at_k_chart(view), "best_temperatures": best_temperatures(view)}


PASS_AT = re.compile(r"pass_at_(\d+)(\[.*\])?")


def pass_at_k_rows(view: RunView) -> pd.DataFrame | None:
    """The summary rows of every pass@k metric of the run, with their k; None where the run has no pass@k, no
    temperature axis or no value."""
    found = [(m, PASS_AT.fullmatch(m)) for m in view.metrics]
    found = [(m, int(match.group(1))) for m, match in found if match]
    if not found or view.axes.x != "temperature":
        return None
    rows = pd.concat([view.metric_rows(m).assign(k=k) for m, k in found], ignore_index=True)
    return None if rows.empty or rows["mean"].isna().all() else rows


def pass_at_k_chart(view: RunView) -> str | None:
    """pass@k against temperature, one line per k (Chen et al. 2021, Fig. 5: the best temperature rises with k);
    None where the run has no pass@k or no temperature axis."""
    rows = pass_at_k_rows(view)
    if rows is None:
        return None
    axes = Axes(x="temperature", y="k", panels=(view.axes.y, *view.axes.panels))
    info = view.info(next(m for m in view.metrics if PASS_AT.fullmatch(m)))
    return charts.lines(rows, info, f"{view.key}k", view.level, ylabel="pass@k", axes=axes)


def best_temperatures(view: RunView) -> list[dict]:
    """For each k, the settings of the highest pass@k (the lower panel of Chen et al.'s Fig. 5); empty unless
    pass@k was measured at several temperatures."""
    rows = pass_at_k_rows(view)
    rows = None if rows is None else rows.dropna(subset=["mean", "temperature"])  # a setting nobody named: unknown
    if rows is None or rows["temperature"].nunique() < 2:
        return []
    best = []
    for k, per_k in rows.groupby("k", sort=True):
        if per_k["mean"].nunique() < 2:  # every setting alike (all 0 for a model that solves nothing): none is best
            continue
        top = per_k[per_k["mean"] == per_k["mean"].max()].sort_values("temperature")
        best.append({"k": int(k), "value": fmt(float(top["mean"].iloc[0])), "settings": list(top["setting_id"]),
                     "temperatures": sorted({charts.show_param(t) for t in top["temperature"]}, key=float)})
    return best


def summary_table(view: RunView) -> dict:
    """Rows of the sortable summary table: setting parameters, then each metric's mean and CI."""
    table = view.summary.pivot_table(index="setting_id", columns="metric", values=["mean", "ci_low", "ci_high"],
                                     sort=False, dropna=False)
    rows = []
    for setting in view.settings:
        cells = []
        for m in view.metrics:
            mean, low, high = (float(table.loc[setting.id, (k, m)]) if setting.id in table.index and (k, m) in table
                               else math.nan for k in ("mean", "ci_low", "ci_high"))
            cells.append({"value": mean, "text": fmt(mean),
                          "ci": "" if math.isnan(low) else f"[{fmt(low)}, {fmt(high)}]"})
        params = [(k, v, "off" if k in ("top_k", "min_p") and v is not None and not v else charts.show_param(v))
                  for k, v in setting.params().items() if k in view.param_names]
        rows.append({"run": view.label, "setting": setting.id, "params": params, "cells": cells})
    return {"metrics": view.metrics, "rows": rows, "params": view.param_names}


def delta_table(base: RunView, new: RunView) -> dict:
    comparison = deltas(base, new)
    d = comparison.table
    metrics = [m for m in base.metrics if m in set(d["metric"])]
    by = {(r.setting_id, r.metric): r for r in d.itertuples()}
    rows = []
    for s in base.settings:
        cells = []
        for m in metrics:
            r = by.get((s.id, m))
            if r is None:
                cells.append({"text": "–", "ci": "", "cls": "na", "value": math.nan})
                continue
            if m in comparison.pooled:
                cells.append({"text": f"{r.delta:+.3g}", "ci": "untested", "cls": "same", "value": r.delta,
                              "title": f"{s.id} {m}: {fmt(r.base)} -> {fmt(r.new)}; pooled over the prompts (one value "
                                       "per setting), so not tested"})
                continue
            good = r.delta * base.info(m)["direction"] > 0
            cls = ("better" if good else "worse") if r.significant and base.info(m)["kind"] != "descriptive" else (
                "changed" if r.significant else "same")
            title = (f"{s.id} {m}: {fmt(r.base)} -> {fmt(r.new)} over {r.n_prompts} prompts, p = {r.p:.3g} "
                     f"(Holm: {r.p_adjusted:.3g})")
            cells.append({"text": f"{r.delta:+.3g}", "ci": f"[{r.ci_low:+.3g}, {r.ci_high:+.3g}]", "cls": cls,
                          "value": r.delta, "title": title})
        if any(c["cls"] != "na" for c in cells):
            rows.append({"setting": s.id, "cells": cells})
    return {"base": base.label, "new": new.label, "metrics": metrics, "rows": rows,
            "n_significant": int(d["significant"].sum()), "n": len(d), "alpha": comparison.alpha,
            "problems": comparison.protocol_differences + comparison.not_compared
            + ([comparison.cross_engine] if comparison.cross_engine else [])}


def nolink(text: str) -> Markup:
    """Escaped text in which "://" is written as an entity: a URL in a config shows, but the file
    holds no address of another host."""
    return Markup(str(escape(text)).replace("://", ":&#47;&#47;"))


def render_report(run_dirs: list[str | Path]) -> str:
    views = load_views(run_dirs)
    env = jinja2.Environment(loader=jinja2.PackageLoader("evalkit.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    env.filters["nolink"] = nolink
    env.globals["short"] = lambda metric: metric.split("[")[0]
    asset = resources.files("evalkit.report") / "templates"
    names = list(dict.fromkeys(m for v in views for m in v.metrics))
    chart_sets = {v.key: chart_set(v) for v in views}
    wide = {m for c in chart_sets.values() for m, per in c["metrics"].items() if per["wide"]}
    tests = {v.key: v.decoding_test for v in views}
    judges = {v.key: judge_sections(v) for v in views}
    notes = {v.key: metric_notes(v) for v in views}
    return env.get_template("report.html.j2").render(
        homogeneity=homogeneity_section(views), notes=notes,
        human=any(v.human_likeness for v in views), decoding_tests=tests, judges=judges,
        has_judge=any(judges.values()),
        pooled_metrics=[m.split("[")[0] for m in names if any(v.info(m).get("pooled") for v in views)],
        has_decoding_test=any(t is not None and not t.empty for t in tests.values()),
        title=", ".join(dict.fromkeys(v.manifest.name for v in views)),
        views=views, charts=chart_sets, wide=wide, pass_at_k=any(c["pass_at_k"] for c in chart_sets.values()),
        text_runs=any(not v.images for v in views), tables=[summary_table(v) for v in views],
        deltas=[delta_table(views[0], v) for v in views[1:]], metric_names=names, entropy_help=ENTROPY,
        data=script_json({"runs": [v.browser_data() for v in views]}), version=__version__,
        css=(asset / "report.css").read_text(encoding="utf-8"), js=(asset / "report.js").read_text(encoding="utf-8"))


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Render the report of ``run_dirs`` into ``out`` (written whole or not at all)."""
    out = Path(out)
    html = render_report(run_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, html.encode("utf-8"))
    return out
