"""Lexical, n-gram entropy, repetition and token-statistics metrics."""

import math
import random

import pytest
from lexicalrichness import LexicalRichness

from evalkit.config import MetricSpec
from evalkit.scoring.metric import Group
from evalkit.scoring.registry import default_registry
from evalkit.settings import Setting
from evalkit_metrics.lexical import mattr, mtld, ttr
from evalkit_metrics.repetition import seq_rep


def metric(name, **params):
    return default_registry().create(MetricSpec(name=name, params=params))


def group(*texts, stats=None):
    return Group(prompt_id="p", prompt="q", setting=Setting(), texts=texts, token_ids=tuple(() for _ in texts),
                 stats=stats or {})


def random_texts(seed, count=80):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        vocab = [f"w{i}" for i in range(rng.choice([2, 5, 10, 40, 400]))]
        out.append([rng.choice(vocab) for _ in range(rng.randint(1, 160))])
    return out


@pytest.mark.parametrize("seed", range(3))
def test_ttr_mattr_mtld_match_lexicalrichness(seed):
    for tokens in random_texts(seed):
        lr = LexicalRichness(tokens, preprocessor=None, tokenizer=None)
        assert ttr(tokens) == pytest.approx(lr.ttr, abs=1e-12)
        assert mtld(tokens) == pytest.approx(lr.mtld(threshold=0.72), abs=1e-9)
        for window in (10, 50):
            if len(tokens) >= window:
                assert mattr(tokens, window) == pytest.approx(lr.mattr(window_size=window), abs=1e-12)
            else:  # shorter than the window: the text's TTR (lexicalrichness raises here)
                assert mattr(tokens, window) == ttr(tokens)


@pytest.mark.parametrize("tokens, expected", [
    (list("abcd"), 4.0),  # all distinct: one factor, MTLD = number of tokens
    (list("aaaa"), None),  # closes a factor at the second token in both directions
])
def test_mtld_edges(tokens, expected):
    value = mtld(tokens)
    lr = LexicalRichness(tokens, preprocessor=None, tokenizer=None).mtld()
    assert value == pytest.approx(lr)
    if expected is not None:
        assert value == expected


def test_ent_n_hand_checked():
    # unigrams of "a a b" + "b": a:2, b:2 -> entropy log 2
    assert metric("ent_n", n=1).compute(group("a a b", "b")).value == pytest.approx(math.log(2), abs=1e-15)
    # bigrams of "a b c" and "a b": ab:2, bc:1 -> -(2/3 log 2/3 + 1/3 log 1/3)
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert metric("ent_n", n=2).compute(group("a b c", "a b")).value == pytest.approx(expected, abs=1e-15)
    assert metric("ent_n", n=2).id == "ent_2[tok=words,log=e]"
    assert "no 3-grams" in metric("ent_n", n=3).compute(group("a b", "c")).reason


def test_seq_rep_hand_checked():
    assert seq_rep(list("abab"), 2) == pytest.approx(1 - 2 / 3)  # ab ba ab
    assert seq_rep(list("abcd"), 2) == 0
    assert math.isnan(seq_rep(["a"], 2))
    score = metric("seq_rep_n", n=2).compute(group("a b a b", "a b c d", "x"))
    assert score.value == pytest.approx((1 / 3 + 0) / 2) and math.isnan(score.per_sample[2])


def test_rep_l_hand_checked():
    from evalkit_metrics.repetition import rep_l

    assert rep_l(list("abab"), 16) == pytest.approx(2 / 3)  # b new; a and b repeat
    assert rep_l(list("abca"), 2) == 0  # the second a is 3 tokens back
    assert rep_l(list("abca"), 3) == pytest.approx(1 / 3)
    score = metric("rep_l", l=2).compute(group("a b a", "x"))
    assert metric("rep_l", l=2).id == "rep_l[l=2,tok=words]"
    assert score.value == pytest.approx(0.5) and math.isnan(score.per_sample[1])


def test_lexical_metrics_average_samples_and_skip_empty():
    score = metric("ttr").compute(group("a a b b", "a b", ""))
    assert score.value == pytest.approx(0.75) and math.isnan(score.per_sample[2])
    assert math.isnan(metric("mtld").compute(group("", "")).value)
    assert metric("mattr", window=2).id == "mattr[tok=words,window=2]"


def test_token_statistics_metrics():
    stats = {"logprob_model": ((-1.0, -3.0), (-2.0,)), "logprob_sampling": ((-0.5, -0.5), (0.0,)),
             "entropy_model": ((2.0, 4.0), (1.0,)), "entropy_sampling": ((1.0, 1.0), (0.0,))}
    g = group("x y", "z", stats=stats)
    assert metric("token_entropy").compute(g).value == pytest.approx((3.0 + 1.0) / 2)
    assert metric("token_entropy", dist="sampling").compute(g).value == pytest.approx(0.5)
    assert metric("nll").compute(g).per_sample == (2.0, 2.0)
    assert metric("perplexity").compute(g).value == pytest.approx(math.exp(6 / 3))
    assert metric("perplexity", dist="sampling").compute(g).value == pytest.approx(math.exp(1 / 3))
    missing = metric("nll").compute(group("x"))
    assert math.isnan(missing.value) and "no token statistics" in missing.reason
