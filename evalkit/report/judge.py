"""The report's judge section: per ``judge_score`` metric, who judged and how, how many replies held no verdict,
and the judge's own words on the best and worst samples (generated text and the judge's reply are untrusted: the
template escapes them)."""

from __future__ import annotations

import math

from evalkit.report.data import RunView

SHOWN = 3  # samples shown at each end
UNPARSED = "unparsed"  # how a sample's reason starts when the judge's reply held no verdict (evalkit_metrics.judge)


def judge_sections(view: RunView) -> list[dict]:
    """One entry per judge metric of the run: the judge, the counts, the best and the worst samples."""
    out = []
    per = view.run.sample_scores
    samples = view.run.samples
    texts = {(str(r.setting_id), str(r.prompt_id), int(r.sample_index)): str(r.text) for r in samples.itertuples()}
    for metric in view.metrics:
        judge = view.info(metric).get("judge")
        if not judge or judge.get("asks") == "equivalence":  # distinct_k[check=judge]: no ratings to show
            continue
        rows = per[per["metric"] == metric]
        reasons = rows["reason"].fillna("").astype(str) if "reason" in rows else None
        unparsed = int(reasons.str.startswith(UNPARSED).sum()) if reasons is not None else 0
        scored = rows[rows["value"].map(lambda v: math.isfinite(float(v)))]
        if judge.get("mode") == "pairwise":  # the baseline's own samples are not judged
            scored = scored[scored["setting_id"] != judge.get("baseline")]
        ordered = scored.sort_values("value", ascending=False, kind="stable")

        def shown(part) -> list[dict]:
            return [{"setting": str(r.setting_id), "prompt": str(r.prompt_id), "index": int(r.sample_index),
                     "value": float(r.value), "reason": str(r.reason or ""),
                     "text": texts.get((str(r.setting_id), str(r.prompt_id), int(r.sample_index)), "")}
                    for r in part.itertuples()]

        best = shown(ordered.head(SHOWN))
        worst = shown(ordered.tail(min(SHOWN, max(len(ordered) - SHOWN, 0))).iloc[::-1])
        rubric = judge.get("rubric") or {}
        out.append({"metric": metric, "model": judge.get("id"), "base_url": judge.get("base_url"),
                    "api": judge.get("api"), "mode": judge.get("mode"), "baseline": judge.get("baseline"),
                    "rubric": rubric.get("name"), "rubric_text": rubric.get("text"), "scale": rubric.get("scale"),
                    "knobs": judge.get("sent_with_every_request") or {}, "n": len(rows), "unparsed": unparsed,
                    "parsed": len(scored), "best": best, "worst": worst})
    return out
