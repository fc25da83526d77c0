"""Apply metrics to groups, and aggregate group values per setting with bootstrap CIs.

Tables are long-form (one value per row). Aggregation is a separate step over the
scores table: the mean over prompts of the group values, and a percentile bootstrap
confidence interval that resamples prompts with a seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from evalkit import store
from evalkit.metric import Group, Metric
from evalkit.image_settings import ImageSetting
from evalkit.sampling import Setting



def groups_of(samples: pd.DataFrame) -> list[Group]:
    """One Group per (prompt, setting), samples in sample-index order, prompts in first-seen order."""
    out = []
    ordered = samples.sort_values("sample_index", kind="stable")
    make = ImageSetting if "guidance_scale" in samples else Setting
    for (pid, sid), df in ordered.groupby(["prompt_id", "setting_id"], sort=False):
        first = df.iloc[0]
        setting = make(**{c: first[c] for c in make.model_fields})
        stats = {c: tuple(tuple(float(v) for v in vals) for vals in df[c]) for c in store.STAT_COLUMNS if c in df}
        images = tuple(str(p) for p in df["image_path"]) if "image_path" in df else ()
        prompt_image = str(first["prompt_image"]) if "prompt_image" in df else None
        references = tuple(str(r) for r in first["references"]) if "references" in df else ()
        out.append(Group(prompt_id=str(pid), prompt=str(first["prompt"]), setting=setting,
                         texts=tuple(df["text"]), token_ids=tuple(tuple(int(t) for t in ids) for ids in df["token_ids"])
                         if "token_ids" in df else (),
                         stats=stats, images=images, prompt_image=prompt_image, references=references))
    return out


def score_groups(groups: list[Group], metrics: list[Metric],
                 advance: Callable[[int], None] = lambda n: None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, sample_scores): group values and, where a metric gives them, per-sample values."""
    rows, sample_rows = [], []
    for m in metrics:
        m.prepare_groups(groups)
    for g in groups:
        for m in metrics:
            s = m.compute(g)
            rows.append({"setting_id": g.setting.id, "prompt_id": g.prompt_id, "metric": m.id,
                         "value": float(s.value), "reason": s.reason})
            for i, v in enumerate(s.per_sample or ()):
                sample_rows.append({"setting_id": g.setting.id, "prompt_id": g.prompt_id, "sample_index": i,
                                    "metric": m.id, "value": float(v)})
        advance(1)
    scores = pd.DataFrame(rows, columns=["setting_id", "prompt_id", "metric", "value", "reason"])
    sample_scores = pd.DataFrame(sample_rows, columns=["setting_id", "prompt_id", "sample_index", "metric", "value"])
    return scores, sample_scores


def bootstrap_ci(values: np.ndarray, *, level: float, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; NaN when fewer than two values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def aggregate(scores: pd.DataFrame, settings: list[Setting], *, level: float, resamples: int,
              seed: int) -> pd.DataFrame:
    """Per setting and metric, over the prompts' group values: mean, bootstrap CI, standard deviation
    (ddof=1), prompts scored and prompts whose value is undefined (NaN, skipped)."""
    from evalkit.seeds import derive_seed

    params = {s.id: s.params() for s in settings}
    rows = []
    for (sid, metric), df in scores.groupby(["setting_id", "metric"], sort=False):
        vals = df["value"].to_numpy(dtype=float)
        ok = vals[~np.isnan(vals)]
        low, high = bootstrap_ci(ok, level=level, resamples=resamples, seed=derive_seed(seed, "ci", sid, metric))
        rows.append({"setting_id": sid, **params[sid], "metric": metric,
                     "mean": float(ok.mean()) if ok.size else float("nan"), "ci_low": low, "ci_high": high,
                     "std": float(ok.std(ddof=1)) if ok.size > 1 else float("nan"),
                     "n_prompts": int(ok.size), "n_undefined": int(vals.size - ok.size)})
    setting_columns = list((settings[0] if settings else Setting()).params())
    columns = ["setting_id", *setting_columns, "metric", "mean", "ci_low", "ci_high", "std", "n_prompts",
               "n_undefined"]
    return pd.DataFrame(rows, columns=columns)


def score_run(run_dir, samples: pd.DataFrame, settings: list[Setting], metrics: list[Metric], *, level: float,
              resamples: int, seed: int, ui) -> None:
    """Score every group of ``samples`` and write scores, per-sample scores and the summary into ``run_dir``."""
    for column in ("image_path", "prompt_image"):  # stored relative to the run directory
        if column in samples:
            samples = samples.assign(**{column: [str(Path(run_dir) / p) for p in samples[column]]})
    groups = groups_of(samples)
    with ui.phase("scoring", total=len(groups)) as phase:
        scores, sample_scores = score_groups(groups, metrics, advance=phase.advance)
    summary = aggregate(scores, settings, level=level, resamples=resamples, seed=seed)
    store.write_table(run_dir / "scores.parquet", scores)
    store.write_table(run_dir / "sample_scores.parquet", sample_scores)
    store.write_table(run_dir / "summary.csv", summary)
