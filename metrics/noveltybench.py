"""NoveltyBench's distinct_k and utility_k (Zhang et al. 2025, "NoveltyBench: Evaluating Language Models for
Humanlike Diversity"; novelty-bench/novelty-bench ``src/partition.py`` and ``src/score.py``).

The k samples of a group (k: the group's size) are partitioned into equivalence classes as the authors' code
does: in sample order, a sample joins the first existing class whose first member it is equivalent to, else it
opens a new class. Equivalence is a check named by ``check``:

- ``exact``: equal after normalizing (case folded, spaces collapsed, surrounding quotes and ``*`` and a final
  ``.``, ``!`` or ``?`` removed; :func:`evalkit_metrics.answers.normalize`);
- ``embedding``: cosine similarity of the sentence embeddings (``emb``) at least ``threshold``.

NoveltyBench's own check is a fine-tuned DeBERTa classifier, or an LLM judge; a check is a plain entry of
:data:`CHECKS` (:func:`register_check`), so a judge-based one is added by name.

- distinct_k = the number of classes.
- utility_k = (1 - p) / (1 - p^k) * sum_{i=1..k} p^(i-1) * [sample i opens a class] * u_i, with patience
  p = 0.8 and u_i the sample's value of the per-sample metric ``quality`` (``accuracy``, ``pass_at_1``, a judge's
  score); a weighted mean, so it lies within the range of u (the paper's u is a reward model's 1-10 rating).
  Undefined where a sample that opens a class has no utility (it could not be judged: never counted as 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evalkit.scoring.metric import Group, Metric, Score
from evalkit_metrics import inner
from evalkit_metrics.answers import normalize
from evalkit_metrics.semantic import DEFAULT_EMBEDDER, embed, load_embedder

PATIENCE = 0.8  # the paper's


class Check(Protocol):
    """Whether two samples of a group are equivalent (``i``: a class's first member, ``j``: a later sample)."""

    def prepare(self, groups: list[Group]) -> None: ...

    def equivalent(self, group: Group, i: int, j: int) -> bool: ...


class ExactCheck:
    def __init__(self, params: BaseModel):
        pass

    def prepare(self, groups: list[Group]) -> None:
        pass

    def equivalent(self, group: Group, i: int, j: int) -> bool:
        return normalize(group.texts[i]) == normalize(group.texts[j])


class EmbeddingCheck:
    def __init__(self, params: BaseModel):
        self.emb, self.threshold = params.emb, params.threshold

    def prepare(self, groups: list[Group]) -> None:
        load_embedder(self.emb)
        embed(self.emb, [t for g in groups for t in g.texts])  # one batched pass

    def equivalent(self, group: Group, i: int, j: int) -> bool:
        x = embed(self.emb, [group.texts[i], group.texts[j]])
        return float(x[0] @ x[1]) >= self.threshold


# check name -> factory taking the metric's parameters; which parameters a check reads is in CHECK_PARAMS
CHECKS: dict[str, Callable[[BaseModel], Check]] = {"exact": ExactCheck, "embedding": EmbeddingCheck}
CHECK_PARAMS: dict[str, tuple[str, ...]] = {"exact": (), "embedding": ("threshold", "emb")}


def register_check(name: str, factory: Callable[[BaseModel], Check], params: tuple[str, ...] = ()) -> None:
    """Add an equivalence check by name (refused if the name is taken); ``params``: the metric parameters it
    reads, which then appear in the metric's id."""
    if name in CHECKS:
        raise ValueError(f"equivalence check {name!r} is already registered")
    CHECKS[name] = factory
    CHECK_PARAMS[name] = params


def partition(k: int, equivalent: Callable[[int, int], bool]) -> list[int]:
    """Each of ``k`` samples' class, numbered in order of opening: sample j joins the first class whose first
    member i (i < j) is equivalent to it, else opens a class."""
    firsts: list[int] = []
    classes = []
    for j in range(k):
        found = next((c for c, i in enumerate(firsts) if equivalent(i, j)), None)
        if found is None:
            found = len(firsts)
            firsts.append(j)
        classes.append(found)
    return classes


def opens(classes: list[int]) -> list[bool]:
    """Whether each sample is the first of its class."""
    seen: set[int] = set()
    out = []
    for c in classes:
        out.append(c not in seen)
        seen.add(c)
    return out


def utility(classes: list[int], utilities: list[float], patience: float = PATIENCE) -> float:
    """(1 - p)/(1 - p^k) sum_i p^(i-1) [sample i opens a class] u_i (p = 1: the plain mean over the k samples);
    NaN where a sample that opens a class has an undefined utility."""
    k = len(classes)
    weights = patience ** np.arange(k)
    credited = np.array([u if new else 0.0 for u, new in zip(utilities, opens(classes))], dtype=float)
    return float((weights * credited).sum() / weights.sum())


class PartitionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    check: str = "exact"  # a name in CHECKS
    threshold: float = Field(0.9, ge=-1, le=1)  # check=embedding: cosine similarity at which two are one class
    emb: str = DEFAULT_EMBEDDER  # check=embedding: the sentence embedder

    @field_validator("check")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in CHECKS:
            raise ValueError(f"unknown equivalence check (known: {', '.join(CHECKS)})")
        return v

    @model_validator(mode="after")
    def _used(self):
        unused = sorted((self.model_fields_set & {"threshold", "emb"}) - set(CHECK_PARAMS[self.check]))
        if unused:
            raise ValueError(f"{unused[0]} is not read by check={self.check}")
        return self


class UtilityParams(PartitionParams):
    quality: str = "accuracy"  # a metric with per-sample values: each sample's utility u_i
    p: float = Field(PATIENCE, gt=0, le=1)  # patience: the chance that a user asks for one more sample

    @field_validator("quality")
    @classmethod
    def _quality(cls, v: str) -> str:
        return inner.validated(v)


class _Partitioned(Metric):
    Params = PartitionParams

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params)
        self.check = CHECKS[self.params.check](self.params)

    def check_signature(self) -> dict[str, object]:
        return {"check": self.params.check, **{k: getattr(self.params, k) for k in CHECK_PARAMS[self.params.check]}}

    def prepare(self) -> None:
        if self.params.check == "embedding":
            load_embedder(self.params.emb)

    def prepare_groups(self, groups: list[Group]) -> None:
        self.check.prepare(groups)

    def classes(self, group: Group) -> list[int]:
        return partition(len(group.texts), lambda i, j: self.check.equivalent(group, i, j))


class DistinctK(_Partitioned):
    name = "distinct_k"
    kind = "diversity"
    definition = "number of equivalence classes among a group's k samples (per-sample: 1 where a sample opens one)"
    reference = "Zhang et al. 2025, NoveltyBench: Evaluating Language Models for Humanlike Diversity"

    def signature(self) -> dict[str, object]:
        return self.check_signature()

    def compute(self, group: Group) -> Score:
        if not group.texts:
            return Score.undefined("the group has no samples")
        classes = self.classes(group)
        return Score(float(max(classes) + 1), per_sample=tuple(float(o) for o in opens(classes)))


class UtilityK(_Partitioned):
    name = "utility_k"
    kind = "quality"
    definition = ("patience-discounted mean utility of the samples that open a new equivalence class: "
                  "(1-p)/(1-p^k) sum p^(i-1) [new] u_i")
    reference = "Zhang et al. 2025, NoveltyBench: Evaluating Language Models for Humanlike Diversity"
    Params = UtilityParams

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params)
        self.quality = inner.build(self.params.quality)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"texts"}) | self.quality.requires()

    @property
    def reference_row(self) -> bool:
        return False

    def signature(self) -> dict[str, object]:
        return {**self.check_signature(), "quality": self.quality.id, "p": f"{self.params.p:g}"}

    def prepare(self) -> None:
        super().prepare()
        self.quality.prepare()

    def prepare_groups(self, groups: list[Group]) -> None:
        super().prepare_groups(groups)
        self.quality.prepare_groups(groups)

    def compute(self, group: Group) -> Score:
        if not group.texts:
            return Score.undefined("the group has no samples")
        values, score = inner.per_sample(self.quality, group)
        if values is None:
            return Score.undefined(f"{self.quality.id} has no value per sample here: "
                                   f"{score.reason or 'it gives no per-sample values'}")
        classes = self.classes(group)
        missing = [i for i, (v, new) in enumerate(zip(values, opens(classes))) if new and math.isnan(v)]
        if missing:
            return Score.undefined(f"sample {missing[0]} opens a class and has no {self.quality.id} value")
        return Score(utility(classes, list(values), self.params.p))
