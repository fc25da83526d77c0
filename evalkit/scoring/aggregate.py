"""Aggregation over the tidy scores table: per setting and metric, the mean over prompts of the
group values and a percentile bootstrap confidence interval that resamples prompts with a seeded
generator."""

from __future__ import annotations

import numpy as np
import pandas as pd

from evalkit.prompts import POOLED  # the prompt id of a pooled metric's value (no prompt may have it)
from evalkit.seeds import derive_seed
from evalkit.settings import Setting, shown_knobs


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
              seed: int, pooled: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per setting and metric, over the prompts' group values: mean, bootstrap CI, standard deviation
    (ddof=1), prompts scored and prompts whose value is undefined (NaN, skipped). A pooled metric's row
    (prompt id :data:`POOLED`) is its value, with the CI and prompt count of ``pooled``
    (:func:`evalkit.scoring.groups.pooled_intervals`)."""
    params = {s.id: s.params() for s in settings}
    intervals = {} if pooled is None else {(r.setting_id, r.metric): r for r in pooled.itertuples()}
    rows = []
    for (sid, metric), df in scores.groupby(["setting_id", "metric"], sort=False):
        vals = df["value"].to_numpy(dtype=float)
        if len(df) == 1 and df["prompt_id"].iloc[0] == POOLED:
            ci = intervals.get((sid, metric))
            n = int(ci.n_prompts) if ci is not None else 0
            defined = bool(np.isfinite(vals[0]))
            rows.append({"setting_id": sid, **params[sid], "metric": metric, "mean": float(vals[0]),
                         "ci_low": ci.ci_low if ci is not None else float("nan"),
                         "ci_high": ci.ci_high if ci is not None else float("nan"), "std": float("nan"),
                         "n_prompts": n if defined else 0, "n_undefined": 0 if defined else n})
            continue
        ok = vals[~np.isnan(vals)]
        low, high = bootstrap_ci(ok, level=level, resamples=resamples, seed=derive_seed(seed, "ci", sid, metric))
        rows.append({"setting_id": sid, **params[sid], "metric": metric,
                     "mean": float(ok.mean()) if ok.size else float("nan"), "ci_low": low, "ci_high": high,
                     "std": float(ok.std(ddof=1)) if ok.size > 1 else float("nan"),
                     "n_prompts": int(ok.size), "n_undefined": int(vals.size - ok.size)})
    setting_columns = shown_knobs(settings)
    columns = ["setting_id", *setting_columns, "metric", "mean", "ci_low", "ci_high", "std", "n_prompts",
               "n_undefined"]
    return pd.DataFrame(rows, columns=columns)
