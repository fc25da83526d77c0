"""Effective diversity (Shypula et al. 2025, "Evaluating the Diversity and Quality of LLM Generated Content"):
a diversity metric computed only among the samples of a group that pass a quality bar, so that diverse but
wrong samples do not count as diversity. Preference-tuned models have lower raw but higher effective diversity.

``effective[metric=distinct_2,quality=accuracy,min=1]``: the group's samples whose per-sample ``quality`` value
is at least ``min`` (an undefined value fails: a sample that could not be judged does not pass) form a group of
their own, and ``metric`` is computed on it. ``quality`` is any metric with per-sample values: ``accuracy``
(answer correct: 1), ``pass_at_1`` (tests pass: 1), ``relevance``, a judge's score. Its per-sample values are the
pass marks (1 or 0), so ``sample_scores.parquet`` says which samples counted; ``passing[quality=...,min=...]``
is the number that passed, the count to read beside it. Undefined where the passing samples are too few for
``metric`` (its own reason, with the count).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evalkit.scoring.metric import Group, Metric, Score
from evalkit_metrics import inner


class QualityBar(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    quality: str = "accuracy"  # a metric with per-sample values, as listed in metrics:
    min: float = Field(1.0, allow_inf_nan=False)  # a sample passes when its quality value is at least this

    @field_validator("quality")
    @classmethod
    def _quality(cls, v: str) -> str:
        return inner.validated(v)


class EffectiveParams(QualityBar):
    metric: str = "distinct_2"  # the diversity metric computed among the passing samples

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return inner.validated(v)


class _Gated(Metric):
    """A metric of the samples that pass ``quality >= min``."""

    Params = QualityBar

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params)
        self.quality = inner.build(self.params.quality)

    @property
    def needs(self) -> frozenset[str]:
        return self.quality.requires()

    @property
    def reference_row(self) -> bool:  # references carry no answers or tests to judge
        return False

    def prepare(self) -> None:
        self.quality.prepare()

    def prepare_groups(self, groups: list[Group]) -> None:
        self.quality.prepare_groups(groups)

    def marks(self, group: Group) -> tuple[list[bool] | None, str | None]:
        """Which samples pass, or None with the reason when the quality metric gives no per-sample values."""
        values, score = inner.per_sample(self.quality, group)
        if values is None:
            why = score.reason or "it gives no per-sample values"
            return None, f"{self.quality.id} has no value per sample here: {why}"
        return inner.passing(values, self.params.min), None

    def bar(self) -> str:
        return f"{self.quality.id} >= {self.params.min:g}"


class Passing(_Gated):
    name = "passing"
    kind = "descriptive"
    definition = "number of a group's samples whose per-sample quality is at least min (read beside effective)"
    reference = "Shypula et al. 2025, Evaluating the Diversity and Quality of LLM Generated Content"

    def signature(self) -> dict[str, object]:
        return {"quality": self.quality.id, "min": f"{self.params.min:g}"}

    def compute(self, group: Group) -> Score:
        keep, why = self.marks(group)
        if keep is None:
            return Score.undefined(why)
        return Score(float(sum(keep)), per_sample=tuple(float(k) for k in keep))


class Effective(_Gated):
    name = "effective"
    kind = "diversity"
    definition = "a diversity metric computed among the samples of a group whose per-sample quality is at least min"
    reference = "Shypula et al. 2025, Evaluating the Diversity and Quality of LLM Generated Content"
    Params = EffectiveParams

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params)
        self.metric = inner.build(self.params.metric)

    @property
    def needs(self) -> frozenset[str]:
        return self.quality.requires() | self.metric.requires()

    @property
    def direction(self):  # as the inner metric's (self-BLEU: lower is more diverse)
        return self.metric.direction

    def signature(self) -> dict[str, object]:
        return {"metric": self.metric.id, "quality": self.quality.id, "min": f"{self.params.min:g}"}

    def prepare(self) -> None:
        super().prepare()
        self.metric.prepare()

    def prepare_groups(self, groups: list[Group]) -> None:
        super().prepare_groups(groups)
        self.metric.prepare_groups(groups)  # a superset of every subgroup's samples (embeddings are cached by text)

    def compute(self, group: Group) -> Score:
        keep, why = self.marks(group)
        if keep is None:
            return Score.undefined(why)
        marks = tuple(float(k) for k in keep)
        score = self.metric.compute(inner.subgroup(group, keep))
        count = f"{sum(keep)} of {len(keep)} samples pass {self.bar()}"
        if score.reason:
            return Score(score.value, f"{count}: {score.reason}", per_sample=marks)
        return Score(score.value, per_sample=marks)
