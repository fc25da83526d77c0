"""Server-side charts: matplotlib figures written as SVG and inlined (see ``svg.py``).

Every chart takes tidy rows (one per setting: its parameters, mean, ci_low, ci_high,
setting_id) and returns an SVG string. ``Axes`` names the parameters drawn: temperature x
top_p for text (panels over top_k, min_p), guidance scale x steps for images (panels over
scheduler, eta). Where a panel parameter varies, charts are small multiples. Marks carry a
tooltip with the value and its CI.
"""

from __future__ import annotations

import io
import math

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from evalkit.kinds import TEXT, TEXT_TO_IMAGE
from evalkit.kinds.base import Axes
from evalkit.numbers import fmt
from evalkit.report.svg import inline_svg



TEXT_AXES, IMAGE_AXES = TEXT.report_axes, TEXT_TO_IMAGE.report_axes
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "evalkit", "font.family": "sans-serif", "font.size": 8.5,
         "axes.spines.top": False, "axes.spines.right": False, "axes.titlesize": 9, "axes.labelsize": 8.5,
         "legend.fontsize": 7.5, "legend.frameon": False}
MAX_LABELS = 10  # setting labels written in a trade-off chart
SEEN_AS = {"diversity": "more diverse", "quality": "better"}


def facets(rows: pd.DataFrame, axes: Axes = TEXT_AXES) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per panel: one panel per value of the panel parameters where they vary."""
    vary = [k for k in axes.panels if k in rows and rows[k].nunique() > 1]
    if not vary:
        return [("", rows)]
    return [(", ".join(f"{k}={show_param(v)}" for k, v in zip(vary, key if isinstance(key, tuple) else (key,))), df)
            for key, df in rows.groupby(vary, sort=True)]


def log_scaled(info: dict, values) -> bool:
    """A metric drawn on a log scale (perplexity), where all its values are positive."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return info.get("scale") == "log" and bool(v.size) and bool(np.all(v > 0))


def tooltip(row, level: int) -> str:
    ci = "" if math.isnan(row.ci_low) else f" [{level}% CI {fmt(row.ci_low)}, {fmt(row.ci_high)}]"
    return f"{row.setting_id}: {fmt(row.mean)}{ci}"


def heatmap(rows: pd.DataFrame, info: dict, prefix: str, level: int, axes: Axes = TEXT_AXES,
            human: float | None = None) -> str:
    """Mean over axes.x (columns) x axes.y (rows), the value written in each cell; ``human``: the value on the
    references, marked on the colour bar."""
    temps, tops = sorted(rows[axes.x].unique()), sorted(rows[axes.y].unique())
    panels = facets(rows, axes)
    finite = rows["mean"][np.isfinite(rows["mean"])]
    scale = LogNorm if log_scaled(info, finite) else Normalize
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if human is not None and np.isfinite(human) and (scale is Normalize or human > 0):  # the mark fits the bar
        lo, hi = min(lo, human), max(hi, human)
    norm = scale(lo, hi) if lo < hi else Normalize(lo - 1, hi + 1)  # one value (one setting): mid-scale
    cmap = "viridis" if info.get("direction", 1) > 0 else "viridis_r"
    titles = {}
    with rc_context(STYLE):
        width = min(0.6 + 0.62 * len(temps), 7.5) * len(panels) + 1.1
        fig = Figure(figsize=(width, 0.9 + 0.34 * len(tops)), layout="constrained")
        panes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, df) in zip(panes, panels):
            by_cell = {(getattr(r, axes.x), getattr(r, axes.y)): r for r in df.itertuples()}
            for i, t in enumerate(temps):
                for j, p in enumerate(tops):
                    r = by_cell.get((t, p))
                    if r is None or not np.isfinite(r.mean):
                        ax.add_patch(Rectangle((i, j), 1, 1, facecolor="#f2f2f2", edgecolor="white"))
                        ax.text(i + 0.5, j + 0.5, "–" if r is None else "n/a", ha="center", va="center", color="#888")
                        continue
                    color = ScalarMappable(norm, cmap).to_rgba(r.mean)
                    gid = f"c{len(titles)}"
                    ax.add_patch(Rectangle((i, j), 1, 1, facecolor=color, edgecolor="white", linewidth=1, gid=gid))
                    titles[gid] = tooltip(r, level)
                    light = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 0.55
                    ax.text(i + 0.5, j + 0.5, fmt(r.mean), ha="center", va="center", fontsize=7.5,
                            color="#111" if light else "white")
            ax.set_xlim(0, len(temps))
            ax.set_ylim(0, len(tops))
            ax.set_xticks(np.arange(len(temps)) + 0.5, [show_param(t) for t in temps])
            ax.set_yticks(np.arange(len(tops)) + 0.5, [show_param(p) for p in tops])
            ax.set_xlabel(axes.x)
            ax.set_ylabel(axes.y)
            ax.tick_params(length=0)
            for side in ("left", "bottom"):
                ax.spines[side].set_visible(False)
            if title:
                ax.set_title(title)
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=list(panes), fraction=0.04, pad=0.02, aspect=12)
        bar.ax.tick_params(labelsize=7)
        if human is not None and np.isfinite(human) and norm.vmin <= human <= norm.vmax:
            bar.ax.axhline(human, color="#d62728", linewidth=2)
            bar.ax.annotate("refs", (1.0, norm(human)), xycoords=("axes fraction", "axes fraction"),
                            xytext=(-14, 0), textcoords="offset points", fontsize=6.5, color="#d62728",
                            va="center", ha="right")
        if info.get("kind") in SEEN_AS:
            bar.set_label(f"{SEEN_AS[info['kind']]} →" if info.get("direction", 1) > 0 else
                          f"← {SEEN_AS[info['kind']]}", fontsize=7.5)
        return render(fig, prefix, titles)


def lines(rows: pd.DataFrame, info: dict, prefix: str, level: int, ylabel: str, reference: pd.DataFrame | None = None,
          reference_label: str = "", axes: Axes = TEXT_AXES, human: float | None = None) -> str:
    """Mean against axes.x, one line per axes.y value with its CI band; ``reference`` rows are drawn dashed;
    ``human``: the value on the references, a dotted horizontal line."""
    panels = facets(rows, axes)
    ref_panels = dict(facets(reference, axes)) if reference is not None else {}
    titles = {}
    tops = sorted(rows[axes.y].unique())
    colors = {p: f"C{i % 10}" for i, p in enumerate(tops)}
    with rc_context(STYLE):
        fig = Figure(figsize=(min(3.4 * len(panels) + 1.4, 11), 2.5), layout="constrained")
        panes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
        for ax, (title, df) in zip(panes, panels):
            for p, line in df.sort_values(axes.x).groupby(axes.y, sort=True):
                ax.plot(line[axes.x], line["mean"], color=colors[p], linewidth=1.6, label=f"{axes.y}={show_param(p)}")
                ax.fill_between(line[axes.x], line["ci_low"], line["ci_high"], color=colors[p], alpha=0.15,
                                linewidth=0)
                for r in line.itertuples():
                    gid = f"m{len(titles)}"
                    ax.plot([getattr(r, axes.x)], [r.mean], "o", color=colors[p], markersize=4, gid=gid)
                    titles[gid] = tooltip(r, level)
            if human is not None:
                ax.axhline(human, color="#444", linestyle=":", linewidth=1.2, label="references")
            if title in ref_panels:
                for p, line in ref_panels[title].sort_values(axes.x).groupby(axes.y, sort=True):
                    ax.plot(line[axes.x], line["mean"], color=colors.get(p, "gray"), linestyle="--",
                            linewidth=1, alpha=0.8)
            ax.set_xlabel(axes.x)
            if log_scaled(info, rows["mean"]):
                ax.set_yscale("log")
            ax.grid(axis="y", color="#e6e6e6", linewidth=0.6)
            if title:
                ax.set_title(title)
        panes[0].set_ylabel(ylabel)
        handles, labels = panes[0].get_legend_handles_labels()
        if reference is not None:
            handles.append(panes[0].plot([], [], color="gray", linestyle="--", linewidth=1)[0])
            labels.append(reference_label)
        fig.legend(handles, labels, loc="outside right upper")
        return render(fig, prefix, titles)


def pareto_front(x: np.ndarray, y: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Indices of the points no other point beats on both axes (directions dx, dy), sorted by x."""
    sx, sy = dx * x, dy * y
    keep = [i for i in range(len(x))
            if not np.any((sx >= sx[i]) & (sy >= sy[i]) & ((sx > sx[i]) | (sy > sy[i])))]
    return np.array(sorted(keep, key=lambda i: x[i]), dtype=int)


def tradeoff_points(xrows: pd.DataFrame, yrows: pd.DataFrame, xinfo: dict, yinfo: dict
                    ) -> tuple[pd.DataFrame, np.ndarray]:
    """The settings with both values defined (mean_x, mean_y, CIs), and the indices of the Pareto front."""
    both = xrows.merge(yrows, on="setting_id", suffixes=("_x", "_y"))
    both = both[np.isfinite(both["mean_x"]) & np.isfinite(both["mean_y"])].reset_index(drop=True)
    front = pareto_front(both["mean_x"].to_numpy(), both["mean_y"].to_numpy(), xinfo.get("direction", 1),
                         yinfo.get("direction", 1))
    return both, front


def tradeoff(both: pd.DataFrame, front: np.ndarray, xname: str, yname: str, xinfo: dict, yinfo: dict,
             prefix: str, label_all: bool, human: tuple[float, float] | None = None) -> str:
    """One point per setting (CI whiskers), the Pareto front drawn and its settings labelled; ``human``: the
    references' (x, y), a star."""
    x, y = both["mean_x"].to_numpy(), both["mean_y"].to_numpy()
    titles = {}
    with rc_context(STYLE):
        fig = Figure(figsize=(6.4, 4.2), layout="constrained")
        ax = fig.subplots()
        ax.errorbar(x, y, xerr=_err(both, "_x"), yerr=_err(both, "_y"), fmt="none", ecolor="#c8c8c8",
                    elinewidth=0.8, zorder=1)
        if len(front) > 1:
            ax.plot(x[front], y[front], color="#d62728", linewidth=1.2, linestyle="--", zorder=2,
                    label="Pareto front")
        on_front = set(front.tolist())
        labelled = on_front if label_all is False else set(range(len(x)))
        if len(labelled) > MAX_LABELS:  # every k-th point of the front; the tooltips name them all
            labelled = set(front[::math.ceil(len(front) / MAX_LABELS)].tolist())
        for i, r in enumerate(both.itertuples()):
            gid = f"s{i}"
            ax.plot([x[i]], [y[i]], "o", markersize=6 if i in on_front else 4.5, zorder=3, gid=gid,
                    color="#d62728" if i in on_front else "#1f77b4", markeredgecolor="white", markeredgewidth=0.6)
            titles[gid] = f"{r.setting_id}: {xname} {fmt(x[i])}, {yname} {fmt(y[i])}" + (
                " (on the Pareto front)" if i in on_front else "")
            if i in labelled:
                ax.annotate(r.setting_id, (x[i], y[i]), xytext=(4, 4), textcoords="offset points", fontsize=7,
                            color="#333" if i in on_front else "#777")
        if human is not None:
            ax.plot([human[0]], [human[1]], "*", markersize=12, color="#444", zorder=4, label="references")
            titles_gid = f"s{len(x)}"
            ax.lines[-1].set_gid(titles_gid)
            titles[titles_gid] = f"references: {xname} {fmt(human[0])}, {yname} {fmt(human[1])}"
        if log_scaled(xinfo, x):
            ax.set_xscale("log")
        if log_scaled(yinfo, y):
            ax.set_yscale("log")
        ax.set_xlabel(_axis_label(xname, xinfo))
        ax.set_ylabel(_axis_label(yname, yinfo))
        ax.grid(color="#ececec", linewidth=0.6)
        if len(front) > 1 or human is not None:
            ax.legend(loc="best")
        return render(fig, prefix, titles)


def render(fig: Figure, prefix: str, titles: dict[str, str]) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return inline_svg(buf.getvalue(), prefix, titles)


def _axis_label(name: str, info: dict) -> str:
    seen = SEEN_AS.get(info.get("kind", ""))
    if not seen:
        return name
    return f"{name}  ({'higher' if info.get('direction', 1) > 0 else 'lower'} = {seen})"


def _err(df: pd.DataFrame, suffix: str) -> np.ndarray | None:
    mean, low, high = (df[c + suffix].to_numpy() for c in ("mean", "ci_low", "ci_high"))
    if np.all(np.isnan(low)):
        return None
    return np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0).clip(min=0)


def show_param(v) -> str:
    """A knob's value in a table or a label; None: the knob of a setting nobody named (``unknown``)."""
    return "unknown" if v is None else v if isinstance(v, str) else f"{float(v):g}"


def over_time(rows: pd.DataFrame, run_ids: list[str], started: list[str], regressions: set[tuple[str, str]],
              info: dict, prefix: str, ylabel: str) -> str:
    """One line per setting across runs (oldest left) with CI bands; regressions marked with a red cross."""
    position = {r: i for i, r in enumerate(run_ids)}
    settings = list(dict.fromkeys(rows["setting_id"]))
    palette = "tab10" if len(settings) <= 10 else "tab20"
    titles = {}
    with rc_context(STYLE):
        fig = Figure(figsize=(min(6.5 + 0.35 * len(run_ids), 11), 3.6), layout="constrained")
        ax = fig.subplots()
        cmap = matplotlib.colormaps[palette]
        for k, sid in enumerate(settings):
            line = rows[rows["setting_id"] == sid].assign(x=lambda d: d["run_id"].map(position)).sort_values("x")
            color = cmap(k % cmap.N)
            ax.plot(line["x"], line["mean"], color=color, linewidth=1.4, label=sid, marker="o", markersize=3)
            ax.fill_between(line["x"], line["ci_low"], line["ci_high"], color=color, alpha=0.12, linewidth=0)
            for r in line.itertuples():
                bad = (r.run_id, sid) in regressions
                gid = f"p{len(titles)}"
                ax.plot([r.x], [r.mean], "X" if bad else "o", color="#d62728" if bad else color,
                        markersize=9 if bad else 3, zorder=4 if bad else 3, gid=gid)
                titles[gid] = f"{r.run_id} {sid}: {fmt(r.mean)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]" + (
                    " REGRESSION" if bad else "")
        ax.set_xticks(range(len(run_ids)), [s[5:16].replace("T", " ") for s in started], rotation=30, ha="right")
        if log_scaled(info, rows["mean"]):
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", color="#e6e6e6", linewidth=0.6)
        fig.legend(loc="outside right upper", fontsize=7, ncols=1 if len(settings) <= 16 else 2)
        return render(fig, prefix, titles)
