"""EAD, Vendi of order q and RKE, NoveltyBench's distinct_k and utility_k, effective diversity and homogeneity:
each against its paper's definition written out here, against the vendi-score package, and by their properties.
Embedding metrics read a table of vectors here (the embedder itself is tested in test_semantic_metrics.py)."""

import math

import numpy as np
import pandas as pd
import pytest

from evalkit.checks import Checks
from evalkit.config import MetricSpec
from evalkit.errors import ConfigError
from evalkit.scoring.metric import Group
from evalkit.scoring.registry import default_registry
from evalkit.settings import Setting
from evalkit_metrics import homogeneity, noveltybench, semantic
from evalkit_metrics.distinct import distinct_n
from evalkit_metrics.ead import ead, expected_distinct
from evalkit_metrics.homogeneity import across, runs_table, settings_table, within
from evalkit_metrics.noveltybench import opens, partition, utility
from evalkit_metrics.semantic import rke, saturation_note, vendi


def metric(text):
    return default_registry().create(MetricSpec.model_validate(text))


def group(*texts, setting=None, prompt_id="p", checks=None):
    return Group(prompt_id=prompt_id, prompt="q", setting=setting or Setting(), texts=tuple(texts),
                 token_ids=tuple(() for _ in texts), checks=checks)


def unit(x):
    x = np.asarray(x, dtype=float)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def vectors(monkeypatch):
    """Embeddings from a table (text -> vector), normalized; every embedding metric reads it."""
    table: dict[str, np.ndarray] = {}

    def fake_embed(name, texts):
        return np.stack([table[t] / np.linalg.norm(table[t]) for t in texts])

    for module in (semantic, homogeneity, noveltybench):
        monkeypatch.setattr(module, "embed", fake_embed)
        monkeypatch.setattr(module, "load_embedder", lambda name: None, raising=False)
    return table


# ------------------------------------------------------------------------------------------------ EAD

def authors_ead(texts, vocab_size):
    """The authors' EAD (unigrams over whitespace tokens, pooled): distinct tokens over their expectation."""
    tokens = [t for s in texts for t in s.split()]
    return len(set(tokens)) / (vocab_size * (1 - ((vocab_size - 1) / vocab_size) ** len(tokens)))


@pytest.mark.parametrize("texts, vocab, expected", [
    (["a b a", "c"], 4, 3 / (4 * (1 - (3 / 4) ** 4))),  # 3 distinct of 4 tokens: 3 / 2.734375
    (["a a a a"], 2, 1 / (2 * (1 - 0.5 ** 4))),
    (["x"], 10, 1 / (10 * (1 - 0.9))),  # one token: its expectation is 1, EAD 1
])
def test_ead_hand_checked(texts, vocab, expected):
    score = metric(f"ead[tok=whitespace,vocab={vocab}]").compute(group(*texts))
    assert score.value == pytest.approx(expected, rel=1e-12) and score.reason is None


@pytest.mark.parametrize("seed", range(5))
def test_ead_equals_the_authors_formula(seed):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(int(rng.integers(5, 60)))]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for _ in range(int(rng.integers(1, 8)))]
    vocab = int(rng.integers(len(words), 50_000))
    got = metric(f"ead[tok=whitespace,vocab={vocab}]").compute(group(*texts)).value
    assert got == pytest.approx(authors_ead(texts, vocab), rel=1e-10)


def test_ead_of_bigrams_counts_bigrams_within_samples():
    # bigrams: (a b) (b a) | (a b): 2 distinct of 3
    assert metric("ead[n=2,tok=whitespace,vocab=5]").compute(group("a b a", "a b")).value == pytest.approx(
        2 / (5 * (1 - 0.8 ** 3)), rel=1e-12)


def test_ead_removes_distinct_s_length_penalty():
    """Tokens drawn uniformly from V types: EAD's mean is 1 at any length, distinct-1 falls with length."""
    rng = np.random.default_rng(0)
    vocab = 1000

    def means(length):
        draws = [rng.integers(0, vocab, size=length) for _ in range(200)]
        return (np.mean([ead(len(set(d)), length, vocab) for d in draws]),
                np.mean([len(set(d)) / length for d in draws]))

    (ead_short, d_short), (ead_long, d_long) = means(50), means(5000)
    assert abs(ead_short - 1) < 0.01 and abs(ead_long - 1) < 0.01
    assert d_short - d_long > 0.7  # distinct-1: about 0.98 against 0.20


def test_ead_expectation_is_exact_for_huge_counts():
    assert expected_distinct(30522, 10**12) == pytest.approx(30522, rel=1e-12)  # every type seen
    assert expected_distinct(10**7, 1) == pytest.approx(1.0, rel=1e-12)
    assert ead(30522, 10**12, 30522) == pytest.approx(1.0)


def test_ead_undefined_without_ngrams_and_id_names_v():
    m = metric("ead")
    assert m.id == "ead[n=1,tok=words,vocab=30522]"
    s = metric("ead[n=3]").compute(group("a b", "c"))
    assert math.isnan(s.value) and "3-grams" in s.reason
    assert distinct_n([["a", "b"]], 3) == (0, 0)


# --------------------------------------------------------------------------------------- Vendi, RKE

def eig_vendi(x, q):
    """Vendi of order q written out: eigenvalues of K/n (positive ones), the Renyi entropy of order q."""
    w = np.linalg.eigvalsh(x @ x.T / len(x))
    w = w[w > 1e-12]
    if q == 1:
        return math.exp(-(w * np.log(w)).sum())
    if q == math.inf:
        return 1 / w.max()
    return math.exp(math.log((w ** q).sum()) / (1 - q))


CASES = [(3, 5), (10, 32), (50, 384), (600, 16)]  # the last: more samples than dimensions (the d x d route)


@pytest.mark.parametrize("n, dim", CASES)
@pytest.mark.parametrize("q", [0.5, 1, 2, 3, math.inf])
def test_vendi_of_order_q_follows_its_definition(n, dim, q):
    x = unit(np.random.default_rng(n + dim).normal(size=(n, dim)))
    assert vendi(x, q) == pytest.approx(eig_vendi(x, q), rel=1e-9)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # vendi_score reads scipy.sparse.csr
@pytest.mark.parametrize("n, dim", CASES)
@pytest.mark.parametrize("q", [0.5, 1, 2, 3, "inf"])
def test_vendi_equals_the_vendi_score_package(n, dim, q):
    vs = pytest.importorskip("vendi_score.vendi")
    x = unit(np.random.default_rng(7 * n + dim).normal(size=(n, dim)))
    # score_K honours q (score_X does not). With more samples than dimensions, K/n has n - d zero eigenvalues
    # that come out as +-1e-17, and score_K keeps the positive ones: under q < 1 they add ~1e-6 (lambda^q); its
    # score_dual (the d x d matrix, as evalkit there) has none
    reference = vs.score_K(x @ x.T, q=q) if n <= dim else vs.score_dual(x, q=q)
    assert vendi(x, math.inf if q == "inf" else q) == pytest.approx(reference, rel=1e-8)
    if q == 2:
        assert rke(x) == pytest.approx(reference, rel=1e-8)


def test_two_samples_hand_checked():
    c = 0.5  # cosine of the two: eigenvalues of K/2 are (1 +- c)/2
    x = np.array([[1.0, 0.0], [c, math.sqrt(1 - c * c)]])
    assert rke(x) == pytest.approx(2 / (1 + c * c), rel=1e-12)  # 1 / (0.75^2 + 0.25^2) = 1.6
    assert vendi(x, math.inf) == pytest.approx(2 / (1 + c), rel=1e-12)
    assert vendi(x, 1) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_vendi_bounds_and_order(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 30))
    x = unit(rng.normal(size=(n, int(rng.integers(2, 40)))))
    x[: n // 3] = x[0]  # some duplicates
    values = [vendi(x, q) for q in (0.5, 1, 2, 4, math.inf)]
    assert all(1 - 1e-9 <= v <= n + 1e-9 for v in values)
    assert all(a >= b - 1e-9 for a, b in zip(values, values[1:]))  # non-increasing in q
    assert rke(x) <= vendi(x, 1) + 1e-9
    assert rke(x) == pytest.approx(vendi(x, 2), rel=1e-9)


@pytest.mark.parametrize("q", [0, 0.5, 1, 2, math.inf])
def test_identical_and_orthogonal_samples(q):
    assert vendi(np.ones((5, 4)) / 2, q) == pytest.approx(1.0)
    assert vendi(np.eye(6), q) == pytest.approx(6.0)


def test_saturation_note_above_half_the_sample_count(vectors):
    assert saturation_note(2.01, 4) is not None and saturation_note(2.0, 4) is None
    vectors.update({"a": np.array([1.0, 0, 0, 0]), "b": np.array([0, 1.0, 0, 0]), "c": np.array([0, 0, 1.0, 0]),
                    "a2": np.array([1.0, 0.01, 0, 0])})
    for name in ("vendi", "vendi[q=2]", "rke"):
        m = metric(name)
        spread, alike = m.compute(group("a", "b", "c")), m.compute(group("a", "a2", "a"))
        assert spread.value == pytest.approx(3.0) and "not converged" in spread.reason
        assert alike.value < 1.5 and alike.reason is None


def test_vendi_and_rke_ids():
    assert metric("vendi").id == "vendi[emb=all-MiniLM-L6-v2,q=1]"  # as before orders existed
    assert metric("vendi[q=inf]").id == "vendi[emb=all-MiniLM-L6-v2,q=inf]"
    assert metric("vendi[q=0.5]").id == "vendi[emb=all-MiniLM-L6-v2,q=0.5]"
    assert metric("rke").id == "rke[emb=all-MiniLM-L6-v2,kernel=cosine]"
    with pytest.raises(ConfigError, match="q"):
        metric("vendi[q=-1]")


# ------------------------------------------------------------------------------------------ NoveltyBench

def authors_partition(k, equivalent):
    """NoveltyBench's partition_responses loop: each unassigned sample opens a class and sweeps the later ones."""
    part = [-1] * k
    classes = 0
    for i in range(k):
        if part[i] >= 0:
            continue
        part[i] = classes
        for j in range(i + 1, k):
            if part[j] == -1 and equivalent(i, j):
                part[j] = classes
        classes += 1
    return part


@pytest.mark.parametrize("seed", range(20))
def test_partition_equals_the_authors_loop(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 12))
    same = rng.random((k, k)) < rng.random()  # any relation, not even transitive (a classifier's)
    same = same | same.T
    assert partition(k, lambda i, j: bool(same[i, j])) == authors_partition(k, lambda i, j: bool(same[i, j]))


def test_distinct_k_exact_check_hand_checked():
    g = group("A cat.", "a   cat", "dog", "Dog!", "bird", "*dog*")
    s = metric("distinct_k").compute(g)
    assert s.value == 3
    assert s.per_sample == (1, 0, 1, 0, 1, 0)


def test_distinct_k_embedding_check(vectors):
    vectors.update({"x": np.array([1.0, 0]), "x'": np.array([1.0, 0.2]), "y": np.array([0, 1.0]),
                    "y'": np.array([0.3, 1.0])})
    g = group("x", "y", "x'", "y'")  # cos(x, x') = 0.981, cos(y, y') = 0.958
    assert metric("distinct_k[check=embedding,threshold=0.95]").compute(g).value == 2
    assert metric("distinct_k[check=embedding,threshold=0.97]").compute(g).value == 3
    assert metric("distinct_k[check=embedding,threshold=0.99]").compute(g).value == 4


def paper_utility(classes, u, p):
    """utility_k of the paper: (1-p)/(1-p^k) sum_{i=1..k} p^(i-1) [c_i unseen before] u_i."""
    k = len(classes)
    return (1 - p) / (1 - p ** k) * sum(p ** i * u[i] for i in range(k) if classes[i] not in classes[:i])


@pytest.mark.parametrize("classes, u", [
    ([0, 0, 1, 1, 2], [1, 1, 0, 1, 1]),  # (1 + 0.8^4) * 0.2 / (1 - 0.8^5) = 0.41932...
    ([0, 1, 2, 3], [7, 3, 9, 1]),
    ([0, 0, 0], [5, 5, 5]),
    ([0], [4]),
])
def test_utility_k_equals_the_paper(classes, u):
    got = utility(classes, u, 0.8)
    assert got == pytest.approx(paper_utility(classes, u, 0.8), rel=1e-12)
    credited = [ui if new else 0 for ui, new in zip(u, opens(classes))]  # the authors' score.py form
    assert got == pytest.approx(np.average(credited, weights=0.8 ** np.arange(len(u))), rel=1e-12)


def test_utility_k_hand_value_and_limits():
    assert utility([0, 0, 1, 1, 2], [1, 1, 0, 1, 1]) == pytest.approx((1 + 0.8 ** 4) * 0.2 / (1 - 0.8 ** 5))
    assert utility([0, 1, 2], [1, 1, 1]) == pytest.approx(1.0)  # all novel and useful: the maximum
    assert utility([0, 1, 2], [1, 1, 1], 1.0) == pytest.approx(1.0)
    assert utility([0, 0, 0], [1, 1, 1], 1.0) == pytest.approx(1 / 3)  # p = 1: the plain mean


def test_utility_k_with_answer_accuracy():
    checks = Checks(answer="4", answer_format="number")
    g = group("The answer is 4.", "the answer is 4", "The answer is 5.", "The answer is 4. Sure!", checks=checks)
    m = metric("utility_k")
    assert m.id == "utility_k[check=exact,quality=accuracy[extract=flexible],p=0.8]"
    assert m.requires() == {"texts", "answers"}
    # classes 0 0 1 2; correct 1 1 0 1: new and correct are samples 0 and 3
    assert m.compute(g).value == pytest.approx(paper_utility([0, 0, 1, 2], [1, 1, 0, 1], 0.8), rel=1e-12)


def test_utility_k_undefined_without_per_sample_values():
    checks = Checks(answer="4", answer_format="number")
    s = metric("utility_k[quality=majority_vote]").compute(group("4", "5", checks=checks))
    assert math.isnan(s.value) and "per-sample" in s.reason


def test_checks_are_pluggable_by_name():
    class FirstWord:
        def __init__(self, params):
            pass

        def prepare(self, groups):
            pass

        def equivalent(self, g, i, j):
            return g.texts[i].split()[0] == g.texts[j].split()[0]

    noveltybench.register_check("first_word", FirstWord)
    try:
        assert metric("distinct_k[check=first_word]").compute(group("a b", "a c", "b a")).value == 2
        with pytest.raises(ValueError, match="already registered"):
            noveltybench.register_check("first_word", FirstWord)
    finally:
        del noveltybench.CHECKS["first_word"], noveltybench.CHECK_PARAMS["first_word"]
    with pytest.raises(ConfigError, match="unknown equivalence check"):
        metric("distinct_k[check=first_word]")
    with pytest.raises(ConfigError, match="threshold is not read by check=exact"):
        metric("distinct_k[threshold=0.5]")


# ------------------------------------------------------------------------------------ effective diversity

def test_effective_diversity_is_the_metric_of_the_passing_samples():
    checks = Checks(answer="4", answer_format="number")
    texts = ("The answer is 4", "The answer is 4", "maybe 5", "perhaps nine or 7")
    g = group(*texts, checks=checks)
    m = metric("effective[metric=distinct_1,quality=accuracy,min=1]")
    assert m.id == "effective[metric=distinct_1[tok=words],quality=accuracy[extract=flexible],min=1]"
    s = m.compute(g)
    assert s.value == pytest.approx(metric("distinct_1").compute(group(*texts[:2])).value)  # 4 of 8 = 0.5
    assert s.value == pytest.approx(0.5)
    assert metric("distinct_1").compute(g).value == pytest.approx(10 / 14)  # the wrong answers count in raw
    assert s.per_sample == (1, 1, 0, 0)
    assert metric("passing[quality=accuracy]").compute(g).value == 2


def test_effective_diversity_keeps_the_count_when_undefined():
    checks = Checks(answer="4", answer_format="number")
    s = metric("effective[metric=self_bleu,quality=accuracy]").compute(group("3", "5", "7", checks=checks))
    assert math.isnan(s.value) and s.reason.startswith("0 of 3 samples pass accuracy[extract=flexible] >= 1")


def test_effective_diversity_threshold_and_direction(vectors):
    vectors.update({"q": np.array([1.0, 0, 0]), "a": np.array([1.0, 0.1, 0]), "b": np.array([1.0, 0, 0.2]),
                    "c": np.array([0, 1.0, 0])})
    g = group("a", "b", "c")  # relevance to prompt "q": 0.995, 0.981, 0
    g = Group(prompt_id="p", prompt="q", setting=Setting(), texts=g.texts, token_ids=g.token_ids)
    m = metric("effective[metric=vendi,quality=relevance,min=0.5]")
    assert m.compute(g).per_sample == (1, 1, 0)
    assert m.compute(g).value == pytest.approx(vendi(unit([vectors["a"], vectors["b"]])))
    assert metric("effective[metric=self_bleu]").direction == -1  # as self-BLEU's: lower is more diverse


def test_effective_refuses_what_it_cannot_gate_on():
    with pytest.raises(ConfigError, match="unknown metric"):
        metric("effective[metric=nope]")
    with pytest.raises(ConfigError, match="pools the prompts"):
        metric("effective[quality=zipf]")
    for bar in ("nan", "inf", "-inf"):  # a bar no value passes, or every value: never a number a user meant
        for name in ("effective", "passing"):
            with pytest.raises(ConfigError, match="min: Input should be a finite number"):
                metric(f"{name}[quality=accuracy,min={bar}]")


# ------------------------------------------------------------------------------------------- homogeneity

@pytest.mark.parametrize("seed", range(4))
def test_across_and_within_are_pairwise_means(seed):
    rng = np.random.default_rng(seed)
    a, b = unit(rng.normal(size=(5, 8))), unit(rng.normal(size=(7, 8)))
    assert across(a, b) == pytest.approx(np.mean([x @ y for x in a for y in b]), rel=1e-12)
    pairs = [a[i] @ a[j] for i in range(5) for j in range(5) if i != j]
    assert within(a) == pytest.approx(np.mean(pairs), rel=1e-12)
    assert math.isnan(within(a[:1]))


def samples_frame(rows):
    return pd.DataFrame(rows, columns=["prompt_id", "setting_id", "text"])


def test_settings_and_runs_tables(vectors):
    vectors.update({"x": np.array([1.0, 0]), "y": np.array([0, 1.0]), "z": np.array([1.0, 1.0])})
    s = samples_frame([("p", "A", "x"), ("p", "A", "y"), ("p", "B", "x"), ("p", "B", "x"),
                       ("r", "A", "x"), ("r", "A", "x"), ("r", "B", "y"), ("r", "B", "y")])
    t = settings_table(s, "emb").set_index(["setting_a", "setting_b"])
    # p: A = {x, y}, B = {x, x}: across 1/2, within A 0, within B 1; r: A = {x, x}, B = {y, y}: across 0
    assert t.loc[("A", "B"), "similarity"] == pytest.approx((0.5 + 0.0) / 2)
    assert t.loc[("A", "A"), "similarity"] == pytest.approx((0.0 + 1.0) / 2)
    assert t.loc[("B", "B"), "similarity"] == pytest.approx(1.0)
    assert t.loc[("A", "B"), "n_prompts"] == 2 and ("B", "A") not in t.index
    new = samples_frame([("p", "A", "z"), ("p", "A", "z"), ("r", "A", "y"), ("q", "A", "x")])
    r = runs_table(s, new, "emb").set_index("setting_id")
    # p: base {x, y} . new {z, z}: mean over pairs of cos = 1/sqrt2; r: base {x, x} . {y}: 0 (q only in new)
    assert r.loc["A", "across"] == pytest.approx((1 / math.sqrt(2) + 0) / 2)
    assert r.loc["A", "n_prompts"] == 2 and "B" not in r.index
    assert r.loc["A", "within_new"] == pytest.approx(1.0)  # {z, z} on p; r's single sample has no pair


def test_homogeneity_metric_against_the_other_settings(vectors):
    vectors.update({"x": np.array([1.0, 0]), "y": np.array([0, 1.0])})
    a, b, c = Setting(temperature=0.5), Setting(temperature=1.0), Setting(temperature=1.5)
    groups = [group("x", "y", setting=a), group("x", "x", setting=b), group("y", "y", setting=c),
              group("x", setting=a, prompt_id="alone")]
    m = metric("homogeneity")
    m.prepare_groups(groups)
    s = m.compute(groups[0])
    # the other settings' means: (1, 0) and (0, 1): their mean (0.5, 0.5); x and y each 0.5
    assert s.value == pytest.approx(0.5) and s.per_sample == pytest.approx((0.5, 0.5))
    assert m.compute(groups[1]).value == pytest.approx((across(unit([[1, 0]]), unit([[1, 0], [0, 1]]))
                                                        + across(unit([[1, 0]]), unit([[0, 1]]))) / 2)
    alone = m.compute(groups[3])
    assert math.isnan(alone.value) and "no other setting" in alone.reason


# ---------------------------------------------------------------------------------------------- listing

def test_every_new_metric_is_listed_with_its_paper():
    registry = {e.name: e for e in default_registry().entries()}
    papers = {"ead": "Liu et al. 2022", "rke": "Jalali et al. 2023", "vendi": "Pasarkar & Dieng 2023",
              "distinct_k": "NoveltyBench", "utility_k": "NoveltyBench", "effective": "Shypula et al. 2025",
              "passing": "Shypula et al. 2025", "homogeneity": "Hivemind"}
    for name, paper in papers.items():
        assert paper in registry[name].cls.reference


# ------------------------------------------------------------------------- in a report and in compare

def scored_run(tmp_path, name, texts_of, metrics, answer=None):
    """A scored file: prompts p0, p1 under temperatures 0.5 and 1.0, the texts ``texts_of(prompt, t)``."""
    import json

    from evalkit.api import score_file

    rows = [{"prompt_id": p, "prompt": "q", "temperature": t, "top_p": 1.0, "sample_index": i, "text": text,
             **({"answer": answer} if answer is not None else {})}
            for p in ("p0", "p1") for t in (0.5, 1.0) for i, text in enumerate(texts_of(p, t))]
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return score_file(path, metrics, tmp_path / name, progress=False, index=tmp_path / "index.sqlite")


@pytest.fixture
def two_runs(tmp_path, vectors):
    vectors.update({"q": np.array([1.0, 1, 1]), "x": np.array([1.0, 0, 0]), "y": np.array([0, 1.0, 0]),
                    "z": np.array([0, 0, 1.0])})
    metrics = ["vendi", "homogeneity", "distinct_1"]
    base = scored_run(tmp_path, "base", lambda p, t: ["x", "y", "z"] if t == 1.0 else ["x", "x", "y"], metrics)
    new = scored_run(tmp_path, "new", lambda p, t: ["x", "x", "x"], metrics)
    return base, new


def test_report_shows_homogeneity_and_the_notes(two_runs):
    from evalkit.report.build import render_report

    base, new = two_runs
    scores = base.scores.set_index(["setting_id", "prompt_id", "metric"])
    orthogonal = scores.xs("vendi[emb=all-MiniLM-L6-v2,q=1]", level="metric").loc[("t1-p1", "p0")]
    assert orthogonal["value"] == pytest.approx(3.0) and orthogonal["reason"].startswith("not converged")
    html = render_report([base.path, new.path])
    assert "Homogeneity across settings and runs" in html and 'href="#homogeneity"' in html
    # base: t0.5 {x, x, y} against t1.0 {x, y, z}: mean(a) = (2, 1, 0)/3, mean(b) = (1, 1, 1)/3: 1/3
    assert '<td class="num" data-v="0.3333333333333333">' in html
    assert "on 4 of 4 groups (not converged: 1.89" in html  # 1.89 of {x, x, y} is above 3/2 too


def test_compare_with_homogeneity(two_runs):
    from typer.testing import CliRunner

    from evalkit.cli import app
    from evalkit.compare import compare_runs, load_side
    from evalkit.compare.format import as_json, as_markdown
    from evalkit.compare.homogeneity import runs_homogeneity

    base, new = two_runs
    a, b = load_side(base.path), load_side(new.path)
    c = compare_runs(a, b)
    c.homogeneity, c.homogeneity_embedder = runs_homogeneity(a, b)
    table = c.homogeneity.set_index("setting_id")
    # t1.0: {x, y, z} against {x, x, x}: 1/3; within base 0, within new 1
    assert table.loc["t1-p1", "across"] == pytest.approx(1 / 3)
    assert table.loc["t1-p1", "within_base"] == pytest.approx(0.0)
    assert table.loc["t1-p1", "within_new"] == pytest.approx(1.0)
    assert table.loc["t0.5-p1", "across"] == pytest.approx(2 / 3) and table.loc["t0.5-p1", "n_prompts"] == 2
    assert "| `t1-p1` | 0.333 | 0.000 | 1.000 | 2 |" in as_markdown(c, [])
    assert '"embedder": "all-MiniLM-L6-v2"' in as_json(c, [])
    result = CliRunner().invoke(app, ["compare", str(base.path), str(new.path), "--homogeneity"])
    assert result.exit_code == 0, result.output
    assert "homogeneity (embedder all-MiniLM-L6-v2)" in result.output


def test_a_scored_run_with_every_new_metric(tmp_path, vectors):
    """Through the pipeline: ids in the manifest, per-sample rows, and what each reads from the prompts' checks."""
    vectors.update({"q": np.array([1.0, 1, 1]), "4": np.array([1.0, 0, 0]), "the answer is 4": np.array([1.0, 0.1, 0]),
                    "5": np.array([0, 1.0, 0])})
    metrics = ["ead", "vendi[q=2]", "rke", "distinct_k", "utility_k", "effective[metric=distinct_1]", "passing",
               "homogeneity", "distinct_k[check=embedding,threshold=0.99]"]
    run = scored_run(tmp_path, "all", lambda p, t: ["4", "the answer is 4", "5"], metrics, answer=4)
    values = run.scores.groupby("metric")["value"].mean()
    assert set(values.index) == set(run.manifest.metrics) and len(values) == len(metrics)
    assert values["distinct_k[check=exact]"] == 3
    # cos("4", "the answer is 4") = 0.995: one class at 0.99
    assert values["distinct_k[check=embedding,threshold=0.99,emb=all-MiniLM-L6-v2]"] == 2
    assert values["passing[quality=accuracy[extract=flexible],min=1]"] == 2
    effective = "effective[metric=distinct_1[tok=words],quality=accuracy[extract=flexible],min=1]"
    assert values[effective] == pytest.approx(4 / 5)  # "4" and "the answer is 4": 4 types of 5 tokens
    assert values["utility_k[check=exact,quality=accuracy[extract=flexible],p=0.8]"] == pytest.approx(
        paper_utility([0, 1, 2], [1, 1, 0], 0.8))
    assert values["homogeneity[emb=all-MiniLM-L6-v2]"] == pytest.approx(within(unit(np.stack(
        [vectors["4"], vectors["the answer is 4"], vectors["5"]]))) * 2 / 3 + 1 / 3)
    assert run.manifest.metric_info[effective]["kind"] == "diversity"
    per = run.sample_scores[run.sample_scores["metric"].str.startswith("passing")]
    assert sorted(per["value"]) == [0] * 4 + [1] * 8
