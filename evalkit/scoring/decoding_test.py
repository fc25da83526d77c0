"""Checks on the metrics themselves: the decoding test (Tevet & Berant 2021, "Evaluating the Evaluation of
Diversity in Natural Language Generation").

Raising the temperature makes samples more diverse, so a diversity metric that does not move with it
measures something else. For each diversity metric of a run with at least three temperatures: per
prompt, Spearman's rho between the settings' temperatures and the metric's values (ties get average
ranks; other knobs that vary are pooled, so a grid that varies temperature alone gives the cleanest
test; a prompt on which the metric takes one value at every temperature counts as rho 0: it did not
move), then the mean over prompts with a percentile bootstrap CI over prompts. A pooled metric (one
value per setting) gets one rho over the settings and no CI. The sign is read against the metric's
direction (self-BLEU should fall as temperature rises), and each metric is flagged:

- ``ok``: the direction-signed mean rho is at least 0.5 and its CI stays above 0 (each threshold compared
  with a tolerance of 1e-9: scipy's rho of exactly 1/2 is 0.49999999999999994);
- ``wrong sign``: the signed rho's CI lies below 0 (a pooled metric, without a CI: the signed rho is
  -0.5 or less): the metric moves against temperature;
- ``weak``: anything between (a CI that reaches 0 either way, a small rho);
- ``undefined``: no prompt has the metric defined at three temperatures.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evalkit.scoring.aggregate import POOLED, bootstrap_ci
from evalkit.seeds import derive_seed

MIN_TEMPERATURES = 3
STRONG = 0.5  # the signed rho a metric needs to pass
# how far a rho may sit from a threshold and count as on it: scipy gives 0.49999999999999994 for a rho of exactly
# 1/2 (Pearson's r of the ranks, in floating point), which must pass as 0.5 does
TOLERANCE = 1e-9
COLUMNS = ["metric", "direction", "rho", "ci_low", "ci_high", "n_prompts", "verdict"]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr

    if np.unique(x).size < 2 or np.unique(y).size < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


def decoding_test(scores: pd.DataFrame, temperatures: dict[str, float], metric_info: dict[str, dict], *,
                  level: float = 0.95, resamples: int = 2000, seed: int = 0) -> pd.DataFrame | None:
    """One row per diversity metric (``COLUMNS``); None when the run has fewer than three temperatures.
    ``temperatures``: each setting's temperature by setting id; ``metric_info``: the manifest's."""
    if len(set(temperatures.values())) < MIN_TEMPERATURES:
        return None
    rows = []
    diversity = [m for m, info in metric_info.items() if info.get("kind") == "diversity"]
    for metric in diversity:
        direction = int(metric_info[metric].get("direction", 1))
        df = scores[(scores["metric"] == metric) & scores["setting_id"].isin(temperatures)]
        df = df[np.isfinite(df["value"].to_numpy(dtype=float))]
        rhos = []
        for _, prompt in df.groupby("prompt_id", sort=False):
            x = prompt["setting_id"].map(temperatures).to_numpy(dtype=float)
            if np.unique(x).size < MIN_TEMPERATURES:
                continue
            y = prompt["value"].to_numpy(dtype=float)
            rhos.append(0.0 if np.unique(y).size < 2 else spearman(x, y))  # a metric that does not move: rho 0
        rhos = np.asarray(rhos)
        pooled = bool(len(df)) and (df["prompt_id"] == POOLED).all()
        rho = float(rhos.mean()) if rhos.size else math.nan
        low, high = (math.nan, math.nan) if pooled else bootstrap_ci(
            rhos, level=level, resamples=resamples, seed=derive_seed(seed, "decoding-test", metric))
        rows.append({"metric": metric, "direction": direction, "rho": rho, "ci_low": low, "ci_high": high,
                     "n_prompts": 0 if pooled else int(rhos.size), "verdict": verdict(rho, low, high, direction)})
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict(rho: float, low: float, high: float, direction: int) -> str:
    if math.isnan(rho):
        return "undefined"
    signed = rho * direction
    strong = STRONG - TOLERANCE  # thresholds compared with a tolerance (see TOLERANCE)
    if math.isnan(low):  # a pooled metric: one rho, no interval
        return "ok" if signed >= strong else "wrong sign" if signed <= -strong else "weak"
    lo, hi = sorted((low * direction, high * direction))
    if hi < -TOLERANCE:
        return "wrong sign"
    return "ok" if signed >= strong and lo > TOLERANCE else "weak"


def run_decoding_test(run) -> pd.DataFrame | None:
    """The decoding test of a run (an :class:`evalkit.rundir.Run`), None without three temperatures."""
    manifest = run.manifest
    temperatures = {s.id: float(s.params["temperature"]) for s in manifest.settings if "temperature" in s.params}
    ci = manifest.ci
    return decoding_test(run.scores, temperatures, manifest.metric_info, level=ci["level"],
                         resamples=ci["resamples"], seed=ci["seed"])
