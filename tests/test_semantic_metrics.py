"""Semantic diversity, Vendi, relevance (real all-MiniLM-L6-v2 from its wheel, offline) and novelty."""

import math

import numpy as np
import pytest
import scipy.linalg
from sklearn.metrics.pairwise import cosine_distances

from evalkit.config import MetricSpec
from evalkit.scoring.metric import Group
from evalkit.scoring.registry import default_registry
from evalkit.settings import Setting
from evalkit_metrics.semantic import mean_pairwise_distance, vendi


def metric(name, **params):
    return default_registry().create(MetricSpec(name=name, params=params))


def group(*texts, prompt="q"):
    return Group(prompt_id="p", prompt=prompt, setting=Setting(), texts=texts, token_ids=tuple(() for _ in texts))


def normalized(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n, dim", [(2, 3), (7, 16), (40, 384)])
def test_pairwise_distance_is_the_off_diagonal_mean_of_sklearn(n, dim):
    x = normalized(np.random.default_rng(n).normal(size=(n, dim)))
    d = cosine_distances(x)
    assert mean_pairwise_distance(x) == pytest.approx(d[~np.eye(n, dtype=bool)].mean(), abs=1e-12)


@pytest.mark.parametrize("n, dim", [(3, 5), (10, 32), (50, 384)])
def test_vendi_follows_its_definition(n, dim):
    x = normalized(np.random.default_rng(dim).normal(size=(n, dim)))
    w = scipy.linalg.eigvalsh(x @ x.T / n)  # as vendi_score.score_X: eigenvalues of K / n, q = 1
    w = w[w > 0]
    assert vendi(x) == pytest.approx(np.exp(-(w * np.log(w)).sum()), rel=1e-10)
    assert 1 - 1e-9 <= vendi(x) <= n + 1e-9


def test_vendi_bounds_hand_checked():
    assert vendi(np.ones((5, 4)) / 2) == pytest.approx(1.0)  # identical samples
    assert vendi(np.eye(6)) == pytest.approx(6.0)  # orthogonal samples


@pytest.mark.slow
def test_real_embedder_orders_groups_sensibly():
    paraphrases = group("The cat sat on the mat.", "A cat was sitting on the mat.", "On the mat sat a cat.")
    unrelated = group("The cat sat on the mat.", "Stock markets fell sharply today.", "复杂的数学证明需要时间。")
    div = metric("semantic_diversity")
    assert div.id == "semantic_diversity[emb=all-MiniLM-L6-v2]"
    assert div.compute(paraphrases).value < div.compute(unrelated).value
    v = metric("vendi")
    assert v.id == "vendi[emb=all-MiniLM-L6-v2,q=1]"
    low, high = v.compute(paraphrases).value, v.compute(unrelated).value
    assert 1 <= low < high <= 3
    same = v.compute(group("Hello there.", "Hello there.", "Hello there."))
    assert same.value == pytest.approx(1.0, abs=1e-4)
    rel = metric("relevance").compute(group("Cats like to sleep in the sun.", "Interest rates rose again.",
                                            prompt="Tell me about cats."))
    assert rel.per_sample[0] > rel.per_sample[1]
    assert math.isnan(div.compute(group("only one")).value)


def test_novelty_hand_checked(tmp_path):
    g = group("the cat sat down", "a new idea", "x", prompt="the cat sat")
    score = metric("novelty", n=2).compute(g)
    # "the cat sat down": the cat, cat sat in the prompt; sat down new -> 1/3; "a new idea": 2/2
    assert score.per_sample[:2] == (pytest.approx(1 / 3), 1.0) and math.isnan(score.per_sample[2])
    assert score.value == pytest.approx((1 / 3 + 1) / 2)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a new idea every day\nsomething else\n", encoding="utf-8")
    with_corpus = metric("novelty", n=2, corpus=str(corpus))
    assert with_corpus.id == "novelty[n=2,tok=words,corpus=corpus.txt]"
    assert with_corpus.compute(g).per_sample[1] == 0.0


def test_novelty_refuses_a_missing_corpus(tmp_path):
    from evalkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"corpus: no such corpus file, got '/"):
        metric("novelty", corpus=str(tmp_path / "none.txt"))
    with pytest.raises(ConfigError, match=r"corpus: a directory, not a corpus file"):
        metric("novelty", corpus=str(tmp_path))


def test_missing_embedder_fails_before_generation(tmp_path):
    from evalkit.config import config_from_dict
    from evalkit.errors import EvalkitError
    from evalkit.scoring.registry import default_registry as registry
    from evalkit.scoring.registry import prepare_all

    config = config_from_dict({"name": "t", "prompts": ["a"],
                               "metrics": [{"name": "vendi", "emb": str(tmp_path / "no-such-model")}]})
    with pytest.raises(EvalkitError, match="cannot load the embedder"):
        prepare_all(registry().create_all(config.metrics))
