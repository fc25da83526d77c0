"""Metrics from the engine's per-token statistics (see the samples table).

``dist=model`` reads the model's own distribution (temperature 1, unfiltered);
``dist=sampling`` the distribution each token was actually drawn from (after temperature
and truncation). The end-of-sequence token is not included.

A served model (``model.backend: openai``) returns log-probabilities, not distributions: the chosen
token's (enough for ``nll`` and ``perplexity`` with ``dist=model``, as the server computes them) and
the top N. ``token_entropy[dist=model,top=N]`` is then -sum p log p over those N tokens per step: a
lower bound of the entropy (the tail is left out), never the entropy itself.

- token_entropy: mean entropy (nats) per token of each sample, mean over the group.
- nll: mean negative log-likelihood (nats) per token of each sample, mean over the group.
- perplexity: exp of the mean NLL over every token of the group (per sample: exp of its own).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evalkit.scoring.metric import Group, Metric, Score


class DistParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    dist: Literal["model", "sampling"] = "model"


class EntropyParams(DistParams):
    # entropy over the top-N tokens only (what a server's top-N logprobs allow; a lower bound); none: exact
    top: int | None = Field(None, ge=1, le=20)

    @model_validator(mode="after")
    def _model_only(self) -> EntropyParams:
        if self.top is not None and self.dist != "model":
            raise ValueError(f"top=N reads a server's top-N logprobs of the model's distribution: use dist=model, "
                             f"got dist={self.dist}")
        return self


class _TokenStat(Metric):
    Params = DistParams
    column: str  # "entropy" or "logprob"

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        if getattr(self.params, "top", None) is not None:
            return frozenset({"top_logprobs"})
        if self.column == "logprob" and self.params.dist == "model":
            return frozenset({"model_logprobs"})  # the chosen token's log-probability: a server gives it too
        return frozenset({"token_stats"})

    @property
    def stat_column(self) -> str:
        if getattr(self.params, "top", None) is not None:
            return f"{self.column}_{self.params.dist}_top"
        return f"{self.column}_{self.params.dist}"

    def signature(self) -> dict[str, object]:
        return {k: v for k, v in self.params.model_dump().items() if v is not None}

    def _per_token(self, group: Group) -> list[list[float]] | None:
        stats = group.stats.get(self.stat_column) if group.stats else None
        if stats is None:
            return None
        return [[-v for v in sample] if self.column == "logprob" else list(sample) for sample in stats]

    def info(self) -> dict[str, object]:
        # likelihood under the model is a quality proxy; under the sampling distribution it only describes
        return {**super().info(), "kind": self.kind if self.params.dist == "model" else "descriptive"}

    def compute(self, group: Group) -> Score:
        per_token = self._per_token(group)
        if per_token is None:
            return Score.undefined("no token statistics (generations scored from text only)")
        return self.reduce(per_token)

    def reduce(self, per_token: list[list[float]]) -> Score:
        values = [sum(s) / len(s) if s else float("nan") for s in per_token]
        return Score.mean_of(values, "no sample of the group has a token")


class TokenEntropy(_TokenStat):
    name = "token_entropy"
    Params = EntropyParams
    definition = ("mean entropy (nats) per generated token of the model's or the sampling distribution; with top=N, "
                  "-sum p log p over the N most likely tokens only (a lower bound)")
    reference = "Shannon entropy; temperature vs entropy: Holtzman et al. 2020"
    column = "entropy"


class NLL(_TokenStat):
    name = "nll"
    kind = "quality"
    direction = -1
    definition = "mean negative log-likelihood (nats) per generated token under the model or sampling distribution"
    reference = "negative log-likelihood"
    column = "logprob"


class Perplexity(_TokenStat):
    name = "perplexity"
    kind = "quality"
    direction = -1
    scale = "log"
    definition = "exp of the mean NLL over all generated tokens of the group"
    reference = "perplexity (Jelinek et al. 1977)"
    column = "logprob"

    def reduce(self, per_token: list[list[float]]) -> Score:
        values = tuple(math.exp(sum(s) / len(s)) if s else float("nan") for s in per_token)
        tokens = [v for s in per_token for v in s]
        if not tokens:
            return Score.undefined("no sample of the group has a token", per_sample=values)
        return Score(math.exp(sum(tokens) / len(tokens)), per_sample=values)
