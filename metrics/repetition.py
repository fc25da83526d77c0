"""Repetition (Welleck et al., ICLR 2020, "Neural Text Generation with Unlikelihood Training";
``facebookresearch/unlikelihood_training`` ``custom/metrics.py``).

- seq-rep-n: for each sample (continuation, prompt excluded), 1 - unique n-grams / n-grams;
  the group value is the mean over samples that have at least one n-gram. Counts are not
  pooled and no n-gram is dropped (SimCTG's variant does both, and reports x100).
- rep-l: for each sample, the share of its tokens (after the first) that already occur among
  the previous ``l`` tokens; mean over the group.
"""

from __future__ import annotations


from pydantic import BaseModel, ConfigDict, Field

from evalkit import tokenize
from evalkit.scoring.metric import Group, Metric, Score
from evalkit_metrics.distinct import ngrams


class SeqRepParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(4, ge=1, le=8)
    tok: tokenize.Tok = "words"


def seq_rep(tokens: list[str], n: int) -> float:
    grams = list(ngrams(tokens, n))
    return 1 - len(set(grams)) / len(grams) if grams else float("nan")


class SeqRepN(Metric):
    name = "seq_rep_n"
    kind = "diversity"
    direction = -1
    definition = "1 - unique n-grams / n-grams within each sample, mean over the group"
    reference = "Welleck et al. 2020 (seq-rep-n)"
    Params = SeqRepParams

    @property
    def base_name(self) -> str:
        return f"seq_rep_{self.params.n}"

    def signature(self) -> dict[str, object]:
        return {"tok": self.params.tok}

    def compute(self, group: Group) -> Score:
        values = [seq_rep(tokens, self.params.n) for tokens in tokenize.sample_tokens(group, self.params.tok)]
        return Score.mean_of(values, f"no sample of the group has a {self.params.n}-gram")


class RepParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    l: int = Field(16, ge=1, le=1_000_000)  # noqa: E741  (the paper's name)
    tok: tokenize.Tok = "words"


def rep_l(tokens: list, window: int) -> float:
    if len(tokens) < 2:
        return float("nan")
    repeats = sum(tokens[i] in tokens[max(0, i - window):i] for i in range(1, len(tokens)))
    return repeats / (len(tokens) - 1)


class RepL(Metric):
    name = "rep_l"
    kind = "diversity"
    direction = -1
    definition = "share of a sample's tokens (after the first) already among its previous l tokens, mean over the group"
    reference = "Welleck et al. 2020 (rep/l)"
    Params = RepParams

    def compute(self, group: Group) -> Score:
        values = [rep_l(tokens, self.params.l) for tokens in tokenize.sample_tokens(group, self.params.tok)]
        return Score.mean_of(values, "no sample of the group has two tokens")
