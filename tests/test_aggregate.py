"""Aggregation (evalkit.scoring.aggregate): per-setting means with seeded bootstrap intervals."""

import math

import numpy as np
import pandas as pd
import pytest

from evalkit.settings import Setting
from evalkit.scoring import aggregate, bootstrap_ci


def test_bootstrap_of_two_values_matches_hand_computation():
    # Resampled means of [0, 1] are 0, 0.5, 1 with probability 1/4, 1/2, 1/4:
    # the central 95% interval is [0, 1] and the central 40% interval is [0.5, 0.5].
    assert bootstrap_ci(np.array([0.0, 1.0]), level=0.95, resamples=20000, seed=0) == (0.0, 1.0)
    assert bootstrap_ci(np.array([0.0, 1.0]), level=0.40, resamples=20000, seed=0) == (0.5, 0.5)


def test_bootstrap_is_seeded_and_degenerate_cases_are_defined():
    values = np.random.default_rng(3).normal(size=30)
    a = bootstrap_ci(values, level=0.95, resamples=1000, seed=7)
    assert a == bootstrap_ci(values, level=0.95, resamples=1000, seed=7)
    assert a != bootstrap_ci(values, level=0.95, resamples=1000, seed=8)
    assert a[0] < values.mean() < a[1]
    assert bootstrap_ci(np.full(5, 0.25), level=0.95, resamples=500, seed=0) == (0.25, 0.25)
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([1.0]), level=0.95, resamples=500, seed=0))


def test_bootstrap_coverage_of_a_normal_mean():
    # With 40 prompts the percentile interval should cover the true mean about 95% of the time.
    rng = np.random.default_rng(11)
    hits = sum(lo <= 0.0 <= hi for lo, hi in (
        bootstrap_ci(rng.normal(size=40), level=0.95, resamples=1000, seed=i) for i in range(300)))
    assert 0.88 <= hits / 300 <= 0.99


def test_aggregate_skips_undefined_values_and_counts_them():
    s1, s2 = Setting(temperature=0.5), Setting(temperature=1.0)
    scores = pd.DataFrame([
        {"setting_id": s1.id, "prompt_id": "a", "metric": "m", "value": 0.2, "reason": None},
        {"setting_id": s1.id, "prompt_id": "b", "metric": "m", "value": 0.4, "reason": None},
        {"setting_id": s1.id, "prompt_id": "c", "metric": "m", "value": float("nan"), "reason": "empty"},
        {"setting_id": s2.id, "prompt_id": "a", "metric": "m", "value": 0.9, "reason": None},
    ])
    summary = aggregate(scores, [s1, s2], level=0.95, resamples=500, seed=0).set_index("setting_id")
    assert summary.loc[s1.id, "mean"] == pytest.approx(0.3)
    assert summary.loc[s1.id, "std"] == pytest.approx(math.sqrt(0.02))  # ddof=1 over 0.2 and 0.4
    assert math.isnan(summary.loc[s2.id, "std"])
    assert summary.loc[s1.id, "n_prompts"] == 2 and summary.loc[s1.id, "n_undefined"] == 1
    assert summary.loc[s1.id, "temperature"] == 0.5 and summary.loc[s2.id, "top_p"] == 1.0
    assert summary.loc[s2.id, "mean"] == 0.9 and math.isnan(summary.loc[s2.id, "ci_low"])
