"""MAUVE (Pillutla et al., NeurIPS 2021, "MAUVE: Measuring the Gap Between Neural Text and Human Text
using Divergence Frontiers"), computed by the ``mauve-text`` package on features evalkit makes.

p is the references (human text), q the samples: ``mauve.compute_mauve(p_features=..., q_features=...)``
quantizes both with k-means on their PCA-reduced features (``buckets`` clusters; ``auto``: a tenth of
the smaller side), and takes the area under the divergence curve. The features are sentence embeddings
(``emb``: all-MiniLM-L6-v2 by default, offline), not the paper's GPT-2-large last-token hidden states:
absolute values differ from the paper's (a 384-dimensional sentence-similarity space clusters texts by
topic and paraphrase, GPT-2-large's by the continuation a language model expects), so compare settings
within one featurizer, never with published numbers. With ``scope=setting`` (the default) the samples
of all the setting's prompts are pooled against the references of those prompts and the corpus; with
``scope=prompt`` each prompt's samples are compared with its own references.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evalkit.errors import EvalkitError
from evalkit.references import ReferenceSet
from evalkit.scoring.metric import Group, PooledMetric, Score
from evalkit_metrics.semantic import DEFAULT_EMBEDDER, embed, load_embedder

MODEL = "model"  # emb=model: the swept model's own hidden states
MIN_TEXTS = 20  # on each side: fewer make a quantization of one or two clusters, and a meaningless value


class MauveParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # the featurizer: a sentence-transformers model id or directory, or "model": the swept model's final hidden
    # state at each text's last token, the text read as a continuation of its prompt (local transformers models)
    emb: str = DEFAULT_EMBEDDER
    scope: Literal["setting", "prompt"] = "setting"
    buckets: Annotated[int, Field(ge=2, le=100_000)] | Literal["auto"] = "auto"  # k-means clusters (num_buckets)
    scaling: float = Field(5.0, gt=0, le=1000)  # mauve_scaling_factor
    explained_var: float = Field(0.9, gt=0, le=1)  # kmeans_explained_var: PCA keeps this share of the variance
    seed: int = Field(25, ge=0, le=2**31 - 1)  # the k-means seed (mauve-text's default)
    # blocks of its jackknife interval, each a recomputation that clusters both sides again (1,000 vs 1,000
    # texts take seconds); 0: no interval. Not in the id: it does not change the value
    ci_blocks: int = Field(20, ge=0, le=1000)


def mauve_value(p: np.ndarray, q: np.ndarray, params: MauveParams) -> float:
    """``mauve.compute_mauve`` on features p (references) and q (samples) with the metric's parameters."""
    import mauve

    with _native_stderr_silenced():  # faiss writes "WARNING clustering N points to K centroids" to fd 2
        out = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=params.buckets,
                                  mauve_scaling_factor=params.scaling, kmeans_explained_var=params.explained_var,
                                  seed=params.seed, verbose=False)
    return float(out.mauve)


@contextmanager
def _native_stderr_silenced():
    """File descriptor 2 goes to /dev/null for the duration (native libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Mauve(PooledMetric):
    name = "mauve"
    kind = "quality"
    definition = ("MAUVE between the samples and the references (area under the divergence frontier of their "
                  "k-means-quantized embeddings; 1: indistinguishable)")
    reference = "Pillutla et al. 2021, MAUVE (computed by the mauve-text package)"
    Params = MauveParams

    reference_row = False  # the references against themselves: 1 by definition
    bounds = (0.0, 1.0)

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        own = {"model_features"} if self.params.emb == MODEL else set()
        return frozenset({"texts", "reference_texts", *own})

    @property
    def interval_blocks(self) -> int:  # type: ignore[override]
        return self.params.ci_blocks

    def signature(self) -> dict[str, object]:
        p = self.params
        return {"emb": p.emb, "scope": p.scope, "buckets": p.buckets, "scaling": f"{p.scaling:g}",
                "explained_var": f"{p.explained_var:g}", "seed": p.seed}

    def prepare(self) -> None:
        try:
            import mauve  # noqa: F401
        except ImportError:
            raise EvalkitError("mauve needs the mauve-text package: pip install mauve-text faiss-cpu") from None
        if self.params.emb != MODEL:
            load_embedder(self.params.emb)

    def prepare_groups(self, groups: list[Group]) -> None:
        if self.params.emb == MODEL or not groups:
            return  # the pipeline computed the model's features
        references = groups[0].reference_set
        refs = references.pooled(g.prompt_id for g in groups) if references is not None else []
        embed(self.params.emb, [t for g in groups for t in g.texts] + refs)  # one batched pass

    def references_of(self, groups: list[Group], references: ReferenceSet | None = None) -> list[str]:
        """The reference texts the groups are compared with (see :meth:`keyed_references`)."""
        return [t for _, t in self.keyed_references(groups, references)]

    def keyed_references(self, groups: list[Group], references: ReferenceSet | None = None
                         ) -> list[tuple[str, str]]:
        """(prompt id, reference) the groups are compared with: pooled, the references of their prompts and the
        corpus (prompt id ""); per prompt, the prompt's own. ``references``: the groups' by default."""
        if references is None:
            references = groups[0].reference_set if groups else None
        if references is None:
            return []
        return references.keyed((g.prompt_id for g in groups), corpus=self.pooled)

    def compute_pooled(self, groups: list[Group]) -> Score:
        samples = [(g.prompt_id, t) for g in groups for t in g.texts]
        refs = self.keyed_references(groups)
        if len(samples) < MIN_TEXTS or len(refs) < MIN_TEXTS:
            where = "per prompt" if not self.pooled else "pooled over the setting's prompts"
            return Score.undefined(f"MAUVE needs at least {MIN_TEXTS} samples and {MIN_TEXTS} references "
                                   f"({where}), got {len(samples)} and {len(refs)}")
        buckets = self.params.buckets
        if buckets != "auto" and buckets > min(len(samples), len(refs)):
            return Score.undefined(f"mauve[buckets={buckets}] needs at least {buckets} texts on each side, got "
                                   f"{len(samples)} samples and {len(refs)} references")
        return Score(mauve_value(self.features(groups, refs), self.features(groups, samples), self.params))

    def features(self, groups: list[Group], texts: list[tuple[str, str]]) -> np.ndarray:
        """The features of (prompt id, text) pairs: sentence embeddings of the texts, or the model's hidden states
        the run computed (emb=model)."""
        if self.params.emb != MODEL:
            return embed(self.params.emb, [t for _, t in texts])
        store = groups[0].features
        if store is None:
            raise EvalkitError("mauve[emb=model] needs the model's hidden states, which this run did not compute")
        return np.stack([store[key] for key in texts])

    def for_interval(self, groups: list[Group]) -> Mauve:
        """With ``buckets=auto`` the cluster count follows the data's size (a tenth of the smaller side, at least
        2): the parts of the jackknife use the whole data's count, so that they differ in data, not in clusters."""
        if self.params.buckets != "auto":
            return self
        n = min(sum(len(g.texts) for g in groups), len(self.references_of(groups)))
        return Mauve(self.params.model_copy(update={"buckets": max(2, int(round(n / 10)))}))
