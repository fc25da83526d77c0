"""Compare two runs setting by setting: the change of each metric, paired by prompt.

For a setting and a metric present in both runs, the per-prompt differences (new - base)
over the prompts both runs scored are resampled with a seeded percentile bootstrap; a change
whose CI excludes 0 is flagged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evalkit.scoring import bootstrap_ci
from evalkit.seeds import derive_seed
from evalkit.store import Run

DELTA_COLUMNS = ["setting_id", "metric", "base", "new", "delta", "ci_low", "ci_high", "n_prompts", "significant"]


def paired_deltas(base: Run, new: Run, *, level: float = 0.95, resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (setting, metric) both runs have, in the base run's order."""
    keys = ["setting_id", "prompt_id", "metric"]
    both = base.scores[keys + ["value"]].merge(new.scores[keys + ["value"]], on=keys, suffixes=("_base", "_new"))
    both = both[np.isfinite(both["value_base"]) & np.isfinite(both["value_new"])]
    rows = []
    for (sid, metric), df in both.groupby(["setting_id", "metric"], sort=False):
        diff = (df["value_new"] - df["value_base"]).to_numpy()
        low, high = bootstrap_ci(diff, level=level, resamples=resamples, seed=derive_seed(seed, "delta", sid, metric))
        rows.append({"setting_id": sid, "metric": metric, "base": float(df["value_base"].mean()),
                     "new": float(df["value_new"].mean()), "delta": float(diff.mean()), "ci_low": low,
                     "ci_high": high, "n_prompts": len(diff), "significant": bool(low > 0 or high < 0)})
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)
