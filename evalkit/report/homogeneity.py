"""What the report shows of homogeneity (Infinity-Chat's "hivemind" measure, :mod:`evalkit_metrics.homogeneity`)
and of the notes metrics put on defined values (a Vendi score near its ceiling).

Homogeneity is drawn where a run lists the metric ``homogeneity``: its embedder is the one that metric names,
and the samples are embedded again (from the embedding cache when the report is written by the run itself).
A run gets its settings x settings table (the diagonal: a setting's similarity with itself, over distinct pairs);
a report of several runs also gets, per later run, the table against the first run, setting by setting.
"""

from __future__ import annotations

import math

from evalkit.numbers import fmt
from evalkit.report.data import RunView

NOTES_SHOWN = 3  # metrics' notes listed per run; the rest are in scores.parquet (column reason)


def embedder(view: RunView) -> str | None:
    """The embedder of the run's ``homogeneity`` metric, or None where it has none."""
    for m in view.metrics:
        name, _, params = m.partition("[")
        if name == "homogeneity":
            found = [p.split("=", 1)[1] for p in params.rstrip("]").split(",") if p.startswith("emb=")]
            return found[0] if found else None
    return None


def settings_matrix(view: RunView, emb: str) -> dict:
    from evalkit_metrics.homogeneity import settings_table

    table = settings_table(view.run.samples, emb)
    value = {}
    for r in table.itertuples():
        value[r.setting_a, r.setting_b] = value[r.setting_b, r.setting_a] = r.similarity
    settings = list(dict.fromkeys(table["setting_a"]))
    rows = [{"setting": a, "cells": [_cell(value.get((a, b), math.nan)) for b in settings]} for a in settings]
    return {"label": view.label, "settings": settings, "rows": rows, "emb": emb}


def runs_rows(base: RunView, new: RunView, emb: str) -> dict:
    from evalkit_metrics.homogeneity import runs_table

    table = runs_table(base.run.samples, new.run.samples, emb)
    rows = [{"setting": r.setting_id, "across": _cell(r.across), "within_base": _cell(r.within_base),
             "within_new": _cell(r.within_new), "n": int(r.n_prompts)} for r in table.itertuples()]
    return {"base": base.label, "new": new.label, "rows": rows, "emb": emb}


def _cell(v: float) -> dict:
    return {"text": fmt(v), "value": "" if v != v else v}


def homogeneity_section(views: list[RunView]) -> dict | None:
    """The runs' settings tables and the later runs' tables against the first; None where no run lists
    ``homogeneity``."""
    embs = {v.key: embedder(v) for v in views}
    runs = [settings_matrix(v, embs[v.key]) for v in views if embs[v.key]]
    base = views[0]
    pairs = [runs_rows(base, v, embs[v.key]) for v in views[1:] if embs[v.key] and embs[v.key] == embs[base.key]]
    return {"runs": runs, "pairs": pairs} if runs or pairs else None


def metric_notes(view: RunView) -> list[dict]:
    """Per metric whose defined group values carry a note (a reason beside a value: a Vendi score near its
    ceiling), how many groups have one and the first note, at most :data:`NOTES_SHOWN` metrics."""
    scores = view.run.scores
    if "reason" not in scores:
        return []
    noted = scores[scores["reason"].notna() & scores["value"].map(lambda v: math.isfinite(v))]
    out = []
    for metric, df in noted.groupby("metric", sort=False):
        total = int((scores["metric"] == metric).sum())
        out.append({"metric": metric, "n": len(df), "total": total, "note": str(df["reason"].iloc[0])})
    return out[:NOTES_SHOWN]
