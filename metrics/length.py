"""Mean length of the samples of a group, in model tokens or in words."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from evalkit import tokenize
from evalkit.scoring.metric import Group, Metric, Score


class LengthParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    unit: Literal["tokens", "words"] = "tokens"  # tokens: new model tokens, end-of-sequence excluded


class MeanLength(Metric):
    name = "mean_length"
    definition = "mean sample length (new model tokens without the end-of-sequence token, or words)"
    reference = "descriptive statistic"
    Params = LengthParams

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"texts", "token_counts"} if self.params.unit == "tokens" else {"texts"})

    def compute(self, group: Group) -> Score:
        if self.params.unit == "tokens":
            lengths = [float(n) for n in group.num_tokens] or [float(len(t)) for t in group.token_ids]
        else:
            lengths = [float(len(tokenize.words(t))) for t in group.texts]
        if not lengths:
            return Score.undefined("the group has no samples")
        return Score(sum(lengths) / len(lengths), per_sample=tuple(lengths))
