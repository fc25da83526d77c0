"""Lexical diversity of each sample, averaged over the group: TTR, MATTR, MTLD.

- TTR: types / tokens.
- MATTR (Covington & McFall 2010): mean TTR over every window of ``window`` tokens; a text
  shorter than the window gets its TTR (as ``lexical_diversity`` and TAALED do;
  ``lexicalrichness`` raises there instead).
- MTLD (McCarthy & Jarvis 2010), as the ``lexicalrichness`` package computes it: walking
  the tokens, a factor closes when the running TTR falls to <= ``threshold`` (0.72); a
  final partial factor adds (1 - TTR) / (1 - threshold); the value is tokens / factors,
  averaged over the forward and backward passes; a text whose TTR never falls to the
  threshold counts as one factor when all its tokens are distinct.

An empty sample has no value (NaN); the group value is the mean of the defined ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from evalkit import tokenize
from evalkit.scoring.metric import Group, Metric, Score

NAN = float("nan")


def ttr(tokens: Sequence[str]) -> float:
    return len(set(tokens)) / len(tokens) if tokens else NAN


def mattr(tokens: Sequence[str], window: int = 50) -> float:
    if not tokens:
        return NAN
    if len(tokens) <= window:
        return ttr(tokens)
    counts = Counter(tokens[:window])
    types = len(counts)
    total = types
    for i in range(window, len(tokens)):
        out, new = tokens[i - window], tokens[i]
        counts[out] -= 1
        if counts[out] == 0:
            types -= 1
        if counts[new] == 0:
            types += 1
        counts[new] += 1
        total += types
    return total / window / (len(tokens) - window + 1)


def _mtld_pass(tokens: Sequence[str], threshold: float) -> float:
    terms: set[str] = set()
    counter, factors, value = 0, 0.0, 1.0
    for token in tokens:
        counter += 1
        terms.add(token)
        value = len(terms) / counter
        if value <= threshold:
            counter, terms, factors = 0, set(), factors + 1
    if counter > 0:
        factors += (1 - value) / (1 - threshold)
    if factors == 0:
        whole = len(set(tokens)) / len(tokens)
        factors = 1 if whole == 1 else (1 - whole) / (1 - threshold)
    return len(tokens) / factors


def mtld(tokens: Sequence[str], threshold: float = 0.72) -> float:
    if not tokens:
        return NAN
    return (_mtld_pass(tokens, threshold) + _mtld_pass(tokens[::-1], threshold)) / 2


class _LexicalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tok: tokenize.Tok = "words"


class MattrParams(_LexicalParams):
    window: int = Field(50, ge=1, le=1_000_000)


class MtldParams(_LexicalParams):
    threshold: float = Field(0.72, gt=0, lt=1)


class _PerSample(Metric):
    """A per-sample statistic averaged over the samples of the group that define it."""

    def value(self, tokens: list[str]) -> float:
        raise NotImplementedError

    def compute(self, group: Group) -> Score:
        values = [self.value(tokens) for tokens in tokenize.sample_tokens(group, self.params.tok)]
        return Score.mean_of(values, "every sample of the group is empty")


class TTR(_PerSample):
    name = "ttr"
    kind = "diversity"
    definition = "type-token ratio of each sample (types / tokens), mean over the group"
    reference = "Templin 1957"
    Params = _LexicalParams

    def value(self, tokens: list[str]) -> float:
        return ttr(tokens)


class MATTR(_PerSample):
    name = "mattr"
    kind = "diversity"
    definition = "moving-average TTR over windows of `window` tokens (TTR if shorter), mean over the group"
    reference = "Covington & McFall 2010"
    Params = MattrParams

    def value(self, tokens: list[str]) -> float:
        return mattr(tokens, self.params.window)


class MTLD(_PerSample):
    name = "mtld"
    kind = "diversity"
    definition = "tokens per factor (TTR falls to <= threshold), forward and backward averaged; mean over the group"
    reference = "McCarthy & Jarvis 2010; lexicalrichness variant"
    Params = MtldParams

    def value(self, tokens: list[str]) -> float:
        return mtld(tokens, self.params.threshold)
