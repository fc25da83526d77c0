"""EAD, expectation-adjusted distinct (Liu et al., ACL 2022, "Rethinking and Refining the Distinct Metric";
the authors' ``distinct.py``, linked from lsy641/Expectation-Adjusted-Distinct).

distinct-n divides the distinct n-grams N by the total C, so a longer group scores lower even when its words
are drawn just as freely. EAD divides N by its expectation instead: were the C tokens drawn uniformly from a
vocabulary of V types, the expected number of distinct ones is V (1 - ((V-1)/V)^C). So

    EAD = N / (V * (1 - ((V - 1) / V) ** C))

pooled over the group's samples, n-grams never crossing a sample's boundary. The authors' code computes it for
unigrams (n = 1, the default here) over whitespace tokens, with V given by the user. For n > 1, N and C count
n-grams and V stays the vocabulary's size (as Kirkman et al. 2024 average EAD over n = 1..5).

V is the parameter ``vocab``. The authors' rule: one method (here: one model under many sampling settings) uses
its own vocabulary, several pretrained models the largest of theirs. With ``tok=model`` that is the tokenizer's
vocabulary (``len(tokenizer)``: 49152 for SmolLM2); for word tokens, the size of a word vocabulary. The default,
30522 (BERT's WordPiece vocabulary), is only a default: V is part of the id, and EAD values with different V are
different numbers. Each term ((V-1)/V)^C is computed as exp(C log1p(-1/V)), exact to rounding for any C.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from evalkit import tokenize
from evalkit.scoring.metric import Group, Metric, Score
from evalkit_metrics.distinct import distinct_n


def expected_distinct(vocab: int, total: int) -> float:
    """The expected number of distinct types among ``total`` uniform draws from ``vocab`` types."""
    return -vocab * math.expm1(total * math.log1p(-1.0 / vocab))


def ead(unique: int, total: int, vocab: int) -> float:
    """Distinct n-grams over their expectation for ``total`` n-grams and a vocabulary of ``vocab`` (>= 2)."""
    return unique / expected_distinct(vocab, total)


class EADParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(1, ge=1, le=8)  # 1 as the authors' code
    tok: tokenize.Tok = "words"
    vocab: int = Field(30522, ge=2, le=10_000_000)  # V: the tokenizer's vocabulary for tok=model


class EAD(Metric):
    name = "ead"
    kind = "diversity"
    definition = "distinct n-grams / V(1 - ((V-1)/V)^C), C the group's n-grams, V the vocabulary size (pooled)"
    reference = ("Liu et al. 2022, Rethinking and Refining the Distinct Metric (EAD; "
                 "lsy641/Expectation-Adjusted-Distinct)")
    Params = EADParams

    def compute(self, group: Group) -> Score:
        unique, total = distinct_n(tokenize.sample_tokens(group, self.params.tok), self.params.n)
        if total == 0:
            return Score.undefined(f"no {self.params.n}-grams in the group")
        return Score(ead(unique, total, self.params.vocab))
