"""distinct-n (Li et al., NAACL 2016, "A Diversity-Promoting Objective Function for
Neural Conversation Models").

Pooled over the group, as in the common implementation (``calc_diversity`` in
mgalley/DSTC7-End-to-End-Conversation-Modeling and microsoft/DialoGPT):
distinct n-grams / total n-grams, n-grams never crossing sample boundaries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from evalkit import tokenize
from evalkit.scoring.metric import Group, Metric, Score


def ngrams(tokens: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return zip(*(tokens[i:] for i in range(n)))


def distinct_n(samples: Iterable[Sequence[str]], n: int) -> tuple[int, int]:
    """(unique n-grams, total n-grams) over tokenized samples."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for tokens in samples:
        grams = list(ngrams(tokens, n))
        total += len(grams)
        seen.update(grams)
    return len(seen), total


class DistinctParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(2, ge=1, le=8)
    tok: tokenize.Tok = "words"


class DistinctN(Metric):
    name = "distinct_n"
    kind = "diversity"
    definition = "unique n-grams / total n-grams, pooled over the samples of a group"
    reference = "Li et al. 2016, A Diversity-Promoting Objective Function for Neural Conversation Models"
    Params = DistinctParams

    @property
    def base_name(self) -> str:
        return f"distinct_{self.params.n}"

    def signature(self) -> dict[str, object]:
        return {"tok": self.params.tok}

    def compute(self, group: Group) -> Score:
        unique, total = distinct_n(tokenize.sample_tokens(group, self.params.tok), self.params.n)
        if total == 0:
            return Score.undefined(f"no {self.params.n}-grams in the group")
        return Score(unique / total)
