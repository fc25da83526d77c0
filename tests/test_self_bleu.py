"""self-BLEU against nltk's sentence_bleu over all other samples (the definition), to 1e-12."""

import math
import random
import warnings

import nltk
import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from evalkit.config import MetricSpec
from evalkit.scoring.metric import Group
from evalkit.scoring.registry import default_registry
from evalkit.settings import Setting
from evalkit_metrics.self_bleu import self_bleu

NLTK_VERSION = nltk.__version__  # reference values come from this nltk


def reference(samples, n, smooth):
    smoothing = SmoothingFunction().method1 if smooth == "method1" else SmoothingFunction().method0
    out = []
    for i, hyp in enumerate(samples):
        refs = [s for j, s in enumerate(samples) if j != i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(sentence_bleu(refs, hyp, weights=(1 / n,) * n, smoothing_function=smoothing))
    return out


def random_group(rng: random.Random):
    vocab = [f"w{i}" for i in range(rng.choice([3, 6, 20, 200]))]
    size = rng.randint(2, 14)
    group = [[rng.choice(vocab) for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 15, 30]))] for _ in range(size)]
    if rng.random() < 0.3:  # exact duplicates stay among the references
        group.append(list(rng.choice(group)))
    return group


@pytest.mark.parametrize("smooth", ["method1", "none"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_matches_nltk_on_random_corpora(n, smooth):
    rng = random.Random(n * 10 + (smooth == "none"))
    for _ in range(60):
        group = random_group(rng)
        ours = self_bleu(group, n, smooth)
        theirs = reference(group, n, smooth)
        for sample, a, b in zip(group, ours, theirs):
            if not sample:
                assert math.isnan(a)  # nltk gives 0 to an empty hypothesis; evalkit leaves it undefined
            else:
                assert abs(a - b) <= 1e-12, (group, a, b)


@pytest.mark.parametrize("group, n, expected", [
    ([["a", "b"], ["a", "b"]], 2, [1.0, 1.0]),  # duplicates score 1
    ([["a"], ["b"]], 1, [0.0, 0.0]),  # no unigram in common: nltk's 0, before smoothing
    # hypothesis [a, b, c] against [a, b]: p1 = 2/3, p2 = 1/2, no brevity penalty (3 > 2)
    ([["a", "b", "c"], ["a", "b"]], 2, [math.sqrt(2 / 3 * 1 / 2), None]),
])
def test_hand_checked(group, n, expected):
    got = self_bleu(group, n, "method1")
    for g, e in zip(got, expected):
        if e is not None:
            assert g == pytest.approx(e, abs=1e-15)


def test_second_hypothesis_hand_checked():
    # [a, b] against [a, b, c]: p1 = 1, p2 = 1, closest reference length 3 > 2: bp = exp(1 - 3/2)
    assert self_bleu([["a", "b", "c"], ["a", "b"]], 2)[1] == pytest.approx(math.exp(-0.5), abs=1e-15)


def test_large_group_is_not_truncated():
    rng = random.Random(0)
    group = [[rng.choice("abcdefgh") for _ in range(rng.randint(1, 12))] for _ in range(700)]
    ours = self_bleu(group, 3)
    sample_idx = [0, 350, 699]  # spot-check against nltk beyond Texygen's 500-sample cut
    for i in sample_idx:
        refs = group[:i] + group[i + 1:]
        theirs = sentence_bleu(refs, group[i], weights=(1 / 3,) * 3, smoothing_function=SmoothingFunction().method1)
        assert abs(ours[i] - theirs) <= 1e-12


def test_metric_plugin_defined_results():
    metric = default_registry().create(MetricSpec(name="self_bleu"))
    assert metric.id == "self_bleu[n=4,smooth=method1,tok=words]"

    def group(*texts):
        return Group(prompt_id="p", prompt="q", setting=Setting(), texts=texts, token_ids=tuple(() for _ in texts))

    one = metric.compute(group("only one"))
    assert math.isnan(one.value) and "at least two samples" in one.reason
    empty = metric.compute(group("", ""))
    assert math.isnan(empty.value) and empty.reason == "every sample of the group is empty"
    mixed = metric.compute(group("the cat sat on the mat", "the cat sat on the mat", ""))
    assert mixed.value == pytest.approx(1.0) and math.isnan(mixed.per_sample[2])
    cjk = metric.compute(group("秋天的早晨", "秋天的晚上"))
    assert 0 < cjk.value < 1
    assert np.isfinite(cjk.per_sample).all()
