"""Ent-n (Zhang et al., NeurIPS 2018, "Generating Informative and Diverse Conversational Responses
via Adversarial Information Maximization"; ``calc_entropy`` in DSTC7/DialoGPT ``metrics.py``).

-sum p(g) log p(g) over the empirical distribution of the n-grams of the group, pooled over
its samples (n-grams never cross samples), natural log.
"""

from __future__ import annotations

import math
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from evalkit import tokenize
from evalkit.scoring.metric import Group, Metric, Score
from evalkit_metrics.distinct import ngrams


class EntParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(4, ge=1, le=8)
    tok: tokenize.Tok = "words"


class EntN(Metric):
    name = "ent_n"
    kind = "diversity"
    definition = "entropy (nats) of the group's pooled n-gram frequency distribution"
    reference = "Zhang et al. 2018 (Ent-n)"
    Params = EntParams

    @property
    def base_name(self) -> str:
        return f"ent_{self.params.n}"

    def signature(self) -> dict[str, object]:
        return {"tok": self.params.tok, "log": "e"}

    def compute(self, group: Group) -> Score:
        counts: Counter = Counter()
        for tokens in tokenize.sample_tokens(group, self.params.tok):
            counts.update(ngrams(tokens, self.params.n))
        total = sum(counts.values())
        if total == 0:
            return Score.undefined(f"no {self.params.n}-grams in the group")
        return Score(-sum(c / total * math.log(c / total) for c in counts.values()))
