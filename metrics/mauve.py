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
from evalkit.scoring.metric import Group, Metric, Score
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


def model_features(groups: list[Group], references, corpus: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(references, samples) features from the run's store of the model's hidden states (the corpus's too
    where ``corpus``)."""
    store = groups[0].features
    if store is None:
        raise EvalkitError("mauve[emb=model] needs the model's hidden states, which this run did not compute")
    refs = [store[(pid, t)] for pid in dict.fromkeys(g.prompt_id for g in groups)
            for t in references.by_prompt.get(pid, ())] + [store[("", t)] for t in references.corpus if corpus]
    return np.stack(refs), np.stack([store[(g.prompt_id, t)] for g in groups for t in g.texts])


class Mauve(Metric):
    name = "mauve"
    kind = "quality"
    definition = ("MAUVE between the samples and the references (area under the divergence frontier of their "
                  "k-means-quantized embeddings; 1: indistinguishable)")
    reference = "Pillutla et al. 2021, MAUVE (computed by the mauve-text package)"
    Params = MauveParams

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        own = {"model_features"} if self.params.emb == MODEL else set()
        return frozenset({"texts", "reference_texts", *own})

    @property
    def interval_blocks(self) -> int:
        return self.params.ci_blocks
    reference_row = False  # the references against themselves: 1 by definition
    bounds = (0.0, 1.0)

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

    @property
    def pooled(self) -> bool:
        return self.params.scope == "setting"

    def prepare_groups(self, groups: list[Group]) -> None:
        if self.params.emb == MODEL:
            return  # the pipeline computed the model's features
        references = groups[0].reference_set if groups else None
        refs = [] if references is None else self.references_of(groups, references) if self.pooled else [
            t for g in groups for t in references.by_prompt.get(g.prompt_id, ())]
        embed(self.params.emb, [t for g in groups for t in g.texts] + refs)  # one batched pass

    def compute_pooled(self, groups: list[Group]) -> Score:
        references = groups[0].reference_set if groups else None
        samples = [t for g in groups for t in g.texts]
        refs = self.references_of(groups, references)
        if len(samples) < MIN_TEXTS or len(refs) < MIN_TEXTS:
            where = "per prompt" if not self.pooled else "pooled over the setting's prompts"
            return Score.undefined(f"MAUVE needs at least {MIN_TEXTS} samples and {MIN_TEXTS} references "
                                   f"({where}), got {len(samples)} and {len(refs)}")
        buckets = self.params.buckets
        if buckets != "auto" and buckets > min(len(samples), len(refs)):
            return Score.undefined(f"mauve[buckets={buckets}] needs at least {buckets} texts on each side, got "
                                   f"{len(samples)} samples and {len(refs)} references")
        if self.params.emb == MODEL:
            p, q = model_features(groups, references, corpus=self.pooled)
        else:
            p, q = embed(self.params.emb, refs), embed(self.params.emb, samples)
        return Score(mauve_value(p, q, self.params))

    def references_of(self, groups: list[Group], references) -> list[str]:
        """Pooled: the references of the groups' prompts and the corpus; per prompt: the prompt's own."""
        if references is None:
            return []
        if self.pooled:
            return references.pooled(g.prompt_id for g in groups)
        return list(references.by_prompt.get(groups[0].prompt_id, ()))

    def compute(self, group: Group) -> Score:
        return self.compute_pooled([group])

    def for_interval(self, groups: list[Group]) -> Mauve:
        """With ``buckets=auto`` the cluster count follows the data's size (a tenth of the smaller side, at least
        2): the parts of the jackknife use the whole data's count, so that they differ in data, not in clusters."""
        if self.params.buckets != "auto":
            return self
        references = groups[0].reference_set if groups else None
        n = min(sum(len(g.texts) for g in groups), len(self.references_of(groups, references)))
        return Mauve(self.params.model_copy(update={"buckets": max(2, int(round(n / 10)))}))
