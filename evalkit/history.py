"""A sweep's history from the run index: a trend table and an offline HTML page with one line
per setting over time (CI bands), and regressions marked.

A regression is a significant change (paired permutation test, Holm-adjusted, as
``evalkit compare``) from the previous comparable run, in the bad direction of a diversity or
quality metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from evalkit.compare import RunData, compare_runs, matches
from evalkit.compare.stats import check_pattern
from evalkit.errors import EvalkitError, shown
from evalkit.index import RunIndex
from evalkit.rundir.protocol import cross_engine, differences


@dataclass
class History:
    name: str
    runs: pd.DataFrame  # complete runs, oldest first
    aggregates: pd.DataFrame  # index aggregates of those runs and metrics
    metrics: list[str]
    metric_info: dict[str, dict]
    regressions: set[tuple[str, str, str]] = field(default_factory=set)  # (run_id, setting_id, metric)
    breaks: dict[str, str] = field(default_factory=dict)  # run_id -> why it is not compared with the one before

    def n_regressions(self, run_id: str) -> int:
        return sum(1 for r, _, _ in self.regressions if r == run_id)

    def trend(self, metric: str) -> pd.DataFrame:
        """Runs (rows, oldest first) x settings (columns): the mean of ``metric``."""
        a = self.aggregates[self.aggregates["metric"] == metric]
        table = a.pivot_table(index="run_id", columns="setting_id", values="mean", sort=False)
        settings, recorded = list(dict.fromkeys(a["setting_id"])), set(a["run_id"])
        # every run that recorded the metric, undefined (NaN) where it is: pivot_table leaves such runs out
        return table.reindex(index=[r for r in self.runs["run_id"] if r in recorded], columns=settings)


def load_history(index: RunIndex, name: str, metrics: list[str] | None = None, *, alpha: float = 0.05,
                 seed: int = 0) -> History:
    runs = index.runs(name=name, status="complete").reset_index(drop=True)
    if runs.empty:
        raise EvalkitError(f"--name: no complete run named {shown(name)} in the run index {index.path}")
    aggregates = index.aggregates(list(runs["run_id"]))
    known = list(dict.fromkeys(aggregates["metric"]))
    if metrics:
        for pattern in metrics:
            check_pattern(pattern, "--metric")
            if not any(matches(pattern, m) for m in known):
                raise EvalkitError(f"--metric: {shown(pattern)} matches no metric of {shown(name)} "
                                   f"({', '.join(known)})")
        chosen = [m for m in known if any(matches(p, m) for p in metrics)]
    else:
        chosen = known
    aggregates = aggregates[aggregates["metric"].isin(chosen)]
    info: dict[str, dict] = {}
    sides = []
    for run_id in runs["run_id"]:
        row = index.get(run_id)
        run_info = row["metric_info"]
        info.update(run_info)
        sides.append(RunData(run_id, name, index.scores(run_id), row["protocol"], run_info))
    history = History(name, runs, aggregates, chosen, info)
    for before, after in zip(sides, sides[1:]):
        # another protocol, or another engine (evalkit's, vLLM's): a break in the line, not a regression
        engines = cross_engine(before.protocol, after.protocol)
        problems = differences(before.protocol, after.protocol) + ([engines] if engines else [])
        if problems:
            history.breaks[after.label] = "; ".join(problems)
            continue
        c = compare_runs(before, after, metrics=[m for m in chosen if m in set(after.scores["metric"])
                                                 and m in set(before.scores["metric"])] or None,
                         alpha=alpha, seed=seed)
        for r in c.table[c.table["significant"]].itertuples():
            meta = info.get(r.metric, {})
            if meta.get("kind") in ("diversity", "quality") and r.delta * meta.get("direction", 1) < 0:
                history.regressions.add((after.label, r.setting_id, r.metric))
    return history


def write_history_html(history: History, out: Path) -> Path:
    import jinja2

    from evalkit.version import __version__
    from evalkit.numbers import fmt
    from evalkit.report import charts
    from evalkit.report.build import nolink
    from evalkit.rundir.files import write_atomic

    env = jinja2.Environment(loader=jinja2.PackageLoader("evalkit.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    env.filters["nolink"] = nolink
    sections = []
    for i, metric in enumerate(history.metrics):
        rows = history.aggregates[history.aggregates["metric"] == metric]
        svg = charts.over_time(rows, list(history.runs["run_id"]), list(history.runs["started_at"]),
                               {(r, s) for r, s, m in history.regressions if m == metric},
                               history.metric_info.get(metric, {}), f"h{i}", metric.split("[")[0])
        trend = history.trend(metric)
        sections.append({"metric": metric, "svg": svg, "settings": list(trend.columns),
                         "rows": [(run_id, [(v, (run_id, s, metric) in history.regressions)
                                            for s, v in zip(trend.columns, values)])
                                  for run_id, values in zip(trend.index, trend.to_numpy())]})
    css = (Path(__file__).parent / "report" / "templates" / "report.css").read_text(encoding="utf-8")
    html = env.get_template("history.html.j2").render(history=history, sections=sections, css=css,
                                                        version=__version__)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, html.encode("utf-8"))
    return out
