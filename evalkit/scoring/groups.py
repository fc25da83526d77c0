"""Apply metrics to the groups of a samples table (one group: the samples of one prompt under one setting).

Tables are long-form (one value per row). Aggregation is a separate step over the
scores table: the mean over prompts of the group values, and a percentile bootstrap
confidence interval that resamples prompts with a seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import math

import numpy as np
import pandas as pd

from evalkit import tokenize
from evalkit.checks import Checks
from evalkit.generation.base import STAT_COLUMNS
from evalkit.references import ReferenceSet
from evalkit.scoring.aggregate import POOLED, aggregate
from evalkit.scoring.judge import judging
from evalkit.scoring.metric import Group, Metric
from evalkit.seeds import derive_seed
from evalkit.settings import ImageSetting, Setting



def groups_of(samples: pd.DataFrame, setting_type: type | None = None,
              checks: dict[str, Checks] | None = None, references: ReferenceSet | None = None,
              features: dict | None = None, settings: list | None = None) -> list[Group]:
    """One Group per (prompt, setting), samples in sample-index order, prompts in first-seen order; settings of
    ``setting_type`` (default: the type whose parameters the samples' columns hold), or the one of ``settings``
    with the samples' setting id (a setting its columns do not give: ``unknown``); ``checks`` by prompt id;
    ``references``: the run's, given to every group."""
    out = []
    known = {s.id: s for s in settings or ()}
    checks = checks or {}
    ordered = samples.sort_values("sample_index", kind="stable")
    make = setting_type or (ImageSetting if set(ImageSetting.model_fields) <= set(samples.columns) else Setting)
    for (pid, sid), df in ordered.groupby(["prompt_id", "setting_id"], sort=False):
        first = df.iloc[0]
        setting = known[sid] if sid in known else make(**{c: first[c] for c in make.model_fields
                                                            if c in first})  # a knob newer than the run: neutral
        stats = {c: tuple(tuple(float(v) for v in vals) for vals in df[c]) for c in STAT_COLUMNS if c in df}
        images = tuple(str(p) for p in df["image_path"]) if "image_path" in df else ()
        prompt_image = str(first["prompt_image"]) if "prompt_image" in df else None
        captions = tuple(str(r) for r in first["references"]) if "references" in df else ()
        out.append(Group(prompt_id=str(pid), prompt=str(first["prompt"]), setting=setting,
                         texts=tuple(df["text"]), token_ids=tuple(tuple(int(t) for t in ids) for ids in df["token_ids"])
                         if "token_ids" in df else (),
                         num_tokens=tuple(int(n) for n in df["num_new_tokens"])
                         if "num_new_tokens" in df and df["num_new_tokens"].notna().all() else (),
                         stats=stats, images=images, prompt_image=prompt_image, references=captions,
                         checks=checks.get(str(pid)), reference_set=references, features=features))
    return out


def by_setting(groups: list[Group]) -> dict[str, list[Group]]:
    """The groups of each setting (its prompts), settings in first-seen order."""
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(g.setting.id, []).append(g)
    return out


def score_groups(groups: list[Group], metrics: list[Metric],
                 advance: Callable[[int], None] = lambda n: None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, sample_scores): group values and, where a metric gives them, per-sample values. A pooled
    metric has one row per setting, with prompt id :data:`POOLED`."""
    rows, sample_rows = [], []
    for m in metrics:
        m.prepare_groups(groups)
    for sid, setting_groups in by_setting(groups).items():
        for m in metrics:
            if m.pooled:
                s = m.compute_pooled(setting_groups)
                rows.append({"setting_id": sid, "prompt_id": POOLED, "metric": m.id, "value": float(s.value),
                             "reason": s.reason})
    for g in groups:
        for m in metrics:
            if m.pooled:
                continue
            s = m.compute(g)
            rows.append({"setting_id": g.setting.id, "prompt_id": g.prompt_id, "metric": m.id,
                         "value": float(s.value), "reason": s.reason})
            why = s.per_sample_reasons or ()
            for i, v in enumerate(s.per_sample or ()):
                sample_rows.append({"setting_id": g.setting.id, "prompt_id": g.prompt_id, "sample_index": i,
                                    "metric": m.id, "value": float(v), "reason": why[i] if i < len(why) else None})
        tokenize.forget()  # a group's texts were split once for all its metrics; the next group's are others
        advance(1)
    scores = pd.DataFrame(rows, columns=["setting_id", "prompt_id", "metric", "value", "reason"])
    sample_scores = pd.DataFrame(sample_rows, columns=["setting_id", "prompt_id", "sample_index", "metric", "value",
                                                       "reason"])
    return scores, sample_scores


def score_samples(run_dir: Path, samples: pd.DataFrame, settings: list, metrics: list[Metric], *, level: float,
                  resamples: int, seed: int, ui, checks: dict[str, Checks] | None = None,
                  references: ReferenceSet | None = None, features: dict | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(scores, sample_scores, summary) of every group of ``samples`` (image paths relative to ``run_dir``),
    with the prompts' ``checks`` by prompt id and the run's ``references``."""
    for column in ("image_path", "prompt_image"):  # stored relative to the run directory
        if column in samples:
            samples = samples.assign(**{column: [str(Path(run_dir) / p) for p in samples[column]]})
    groups = groups_of(samples, type(settings[0]) if settings else Setting, checks, references, features, settings)
    judging(groups, metrics, ui)  # the judge's requests, in their own phase; scoring then reads the verdicts
    with ui.phase("scoring", total=len(groups)) as phase:
        scores, sample_scores = score_groups(groups, metrics, advance=phase.advance)
    pooled = [m for m in metrics if m.pooled]
    intervals = None
    if pooled:
        with ui.phase("pooled intervals", total=len(pooled)) as phase:
            intervals = pooled_intervals(groups, pooled, scores, level=level, seed=seed, advance=phase.advance)
    return scores, sample_scores, aggregate(scores, settings, level=level, resamples=resamples, seed=seed,
                                            pooled=intervals)


def pooled_intervals(groups: list[Group], metrics: list[Metric], scores: pd.DataFrame, *, level: float,
                     seed: int, advance: Callable[[int], None] = lambda n: None) -> pd.DataFrame:
    """Per setting and pooled metric: a delete-a-group jackknife interval over prompts, and the number of
    prompts pooled. The setting's prompts are split at random (seeded) into G = min(prompts, the metric's
    ``interval_blocks``) blocks; the value is recomputed G times, each without one block; the standard error is
    sqrt((G-1)/G * sum (v_g - mean v)^2) and the interval the value -/+ Student's t(G-1) quantile times it.
    Not a bootstrap: resampling prompts with replacement duplicates texts, which shifts statistics of a pooled
    corpus (Zipf's coefficient, MAUVE's clusters) so that the bootstrap interval may not even hold the value."""
    from scipy.stats import t as student_t

    rows = []
    values = {(r.setting_id, r.metric): r.value for r in scores[scores["prompt_id"] == POOLED].itertuples()}
    settings = by_setting(groups)
    for m in metrics:
        for sid, setting_groups in settings.items():
            low = high = float("nan")
            n = len(setting_groups)
            blocks = min(n, m.interval_blocks)
            value = values.get((sid, m.id), np.nan)
            if blocks >= 2 and np.isfinite(value):
                rng = np.random.default_rng(derive_seed(seed, "ci", sid, m.id))
                parts = np.array_split(rng.permutation(n), blocks)
                fixed = m.for_interval(setting_groups)
                left_out = [fixed.compute_pooled([g for i, g in enumerate(setting_groups) if i not in dropped]).value
                            for dropped in map(set, parts)]
                v = np.asarray(left_out, dtype=float)
                if np.isfinite(v).all():
                    se = math.sqrt((blocks - 1) / blocks * float(((v - v.mean()) ** 2).sum()))
                    half = float(student_t.ppf((1 + level) / 2, blocks - 1)) * se
                    low, high = max(value - half, m.bounds[0]), min(value + half, m.bounds[1])
            rows.append({"setting_id": sid, "metric": m.id, "ci_low": low, "ci_high": high, "n_prompts": n,
                         "blocks": blocks})
        advance(1)
    return pd.DataFrame(rows, columns=["setting_id", "metric", "ci_low", "ci_high", "n_prompts", "blocks"])
