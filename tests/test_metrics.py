"""Built-in metrics against hand-computed values."""

import math

import pytest

from evalkit import tokenize
from evalkit.config import MetricSpec
from evalkit.scoring.metric import Group, Score
from evalkit.scoring.registry import Registry, default_registry
from evalkit.settings import Setting


def group(*texts, token_ids=None):
    ids = token_ids if token_ids is not None else tuple(() for _ in texts)
    return Group(prompt_id="p", prompt="q", setting=Setting(), texts=tuple(texts), token_ids=tuple(ids))


def metric(name, **params):
    return default_registry().create(MetricSpec(name=name, params=params))


@pytest.mark.parametrize("texts, n, tok, expected", [
    (["a b a b"], 1, "words", 2 / 4),
    (["a b a b"], 2, "words", 2 / 3),  # ab, ba, ab
    (["a b", "a b"], 2, "words", 1 / 2),  # n-grams never cross samples (crossing would give 2/3)
    (["a b c", "c b a"], 1, "words", 3 / 6),
    (["a b c", "c b a"], 3, "words", 2 / 2),
    (["Hi, hi!", "hi"], 1, "words", 4 / 5),  # Hi , hi ! hi: case kept, punctuation split
    (["Hi, hi!", "hi"], 1, "whitespace", 3 / 3),  # "Hi," "hi!" "hi"
    (["你好你好", "你好"], 1, "words", 2 / 6),  # CJK characters are tokens
    (["你好你好", "你好"], 1, "whitespace", 2 / 2),  # without spaces a sentence is one token
    (["你好你好"], 2, "chars", 2 / 3),
])
def test_distinct_n_hand_checked(texts, n, tok, expected):
    score = metric("distinct_n", n=n, tok=tok).compute(group(*texts))
    assert score.value == pytest.approx(expected, abs=1e-15) and score.reason is None


def test_distinct_aliases_fix_n_and_name_carries_tokenizer():
    assert metric("distinct_1").id == "distinct_1[tok=words]"
    assert metric("distinct_4", tok="chars").id == "distinct_4[tok=chars]"
    assert metric("distinct_2").compute(group("a b a b")).value == pytest.approx(2 / 3)


def test_distinct_undefined_groups_are_nan_with_reason():
    score = metric("distinct_3").compute(group("a b", ""))
    assert math.isnan(score.value) and score.reason == "no 3-grams in the group"


def test_mean_length_in_tokens_and_words():
    g = group("one two three", "four, five", token_ids=[(1, 2, 3), (4, 5, 6, 7, 8)])
    tokens = metric("mean_length").compute(g)
    assert tokens.value == 4.0 and tokens.per_sample == (3.0, 5.0)
    words = metric("mean_length", unit="words").compute(g)
    assert words.value == 3.0 and words.per_sample == (3.0, 3.0)
    assert metric("mean_length", unit="words").id == "mean_length[unit=words]"


def test_nan_score_needs_a_reason():
    with pytest.raises(ValueError):
        Score(float("nan"))


def test_registry_refuses_duplicates():
    registry = Registry()
    registry.register("x", type(metric("mean_length")))
    with pytest.raises(ValueError, match="already registered"):
        registry.register("x", type(metric("mean_length")))


@pytest.mark.parametrize("text, expected", [
    ("Don't stop, well-known cats!", ["Don't", "stop", ",", "well-known", "cats", "!"]),
    ("秋天的早晨。", ["秋", "天", "的", "早", "晨", "。"]),
    ("GPT-4o 说：你好", ["GPT-4o", "说", "：", "你", "好"]),
    ("カタカナ and 한국어", ["カ", "タ", "カ", "ナ", "and", "한국어"]),
    ("  \n ", []),
])
def test_word_tokenizer(text, expected):
    assert tokenize.words(text) == expected


def test_model_token_option_uses_token_ids():
    g = group("completely different words", "here", token_ids=[(5, 6, 5, 6), (7, 8)])
    score = metric("distinct_n", n=1, tok="model").compute(g)
    assert score.value == pytest.approx(4 / 6)  # ids 5 6 5 6 7 8
    assert metric("distinct_n", tok="model").id == "distinct_2[tok=model]"
    assert "token_ids" in metric("self_bleu", tok="model").requires()
    assert "token_ids" not in metric("self_bleu").requires()
    assert metric("self_bleu", n=2, tok="model").compute(
        group("a", "b", token_ids=[(1, 2), (1, 2)])).value == pytest.approx(1.0)
