"""Property tests: arbitrary unicode, empty, identical and long samples never crash a metric,
and every defined value lies in its range."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from evalkit.config import MetricSpec
from evalkit.scoring.metric import Group
from evalkit.scoring.registry import default_registry
from evalkit.settings import Setting

RANGES = {
    "distinct_1": (0, 1), "distinct_2": (0, 1), "self_bleu": (0, 1), "ttr": (0, 1), "mattr": (0, 1),
    "mtld": (0, math.inf), "ent_n": (0, math.inf), "seq_rep_n": (0, 1), "rep_l": (0, 1),
    "mean_length": (0, math.inf),
}
METRICS = {name: default_registry().create(MetricSpec(name=name)) for name in RANGES}
METRICS["mean_length"] = default_registry().create(MetricSpec(name="mean_length", params={"unit": "words"}))

text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="ab ", max_size=400),  # long, repetitive
    st.sampled_from(["", " ", "秋天的早晨。", "<script>alert(1)</script>", "a", "\u200b\u0301", "🙂🙂 🙂"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(text, min_size=1, max_size=8), st.booleans())
def test_metrics_are_defined_or_nan_with_reason_and_in_range(texts, duplicate):
    if duplicate:
        texts = texts + texts[:1]
    group = Group(prompt_id="p", prompt="q", setting=Setting(), texts=tuple(texts),
                  token_ids=tuple(() for _ in texts))
    for name, metric in METRICS.items():
        score = metric.compute(group)
        low, high = RANGES[name]
        if math.isnan(score.value):
            assert score.reason
        else:
            assert low <= score.value <= high + 1e-12, (name, texts, score)
        for v in score.per_sample or ():
            assert math.isnan(v) or low <= v <= high + 1e-12, (name, texts, v)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.integers(1, 20), st.integers(0, 2**32 - 1), st.booleans())
def test_vendi_lies_between_one_and_n(n, dim, seed, duplicates):
    import numpy as np

    from evalkit_metrics.semantic import mean_pairwise_distance, vendi

    x = np.random.default_rng(seed).normal(size=(n, dim))
    if duplicates:
        x[n // 2:] = x[0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert 1 - 1e-9 <= vendi(x) <= n + 1e-9
    if n > 1:
        assert -1e-12 <= mean_pairwise_distance(x) <= 2 + 1e-12
