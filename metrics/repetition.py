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


LOOP_MAX_LEN = 90  # the longest phrase tested (Holtzman et al.'s code)
LOOP_MIN_LEN = 3  # a loop of a shorter phrase ...
LOOP_MIN_SHORT_REPEATS = 51  # ... counts only when it repeats at least this often


def ends_in_loop(tokens: list, max_len: int = LOOP_MAX_LEN) -> bool:
    """Whether the tokens end in a repeating loop: of the phrase lengths n = 1..max_len, take the one whose
    last n tokens repeat back-to-back most often at the end (the shortest such n on ties); it is a loop
    when that phrase occurs at least twice in a row and is at least 3 tokens long, or occurs 51 times or more."""
    rev = list(reversed(tokens))
    best_n, best_repeats = 0, 0
    for n in range(1, min(max_len, len(rev)) + 1):
        phrase, repeats = rev[:n], 1
        while rev[n * repeats:n * (repeats + 1)] == phrase:
            repeats += 1
        if repeats > best_repeats:
            best_n, best_repeats = n, repeats
    return best_repeats > 1 and (best_n >= LOOP_MIN_LEN or best_repeats >= LOOP_MIN_SHORT_REPEATS)


class LoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tok: tokenize.Tok = "words"


class Repetition(Metric):
    name = "repetition"
    kind = "diversity"
    direction = -1
    definition = ("share of samples that end in a repeating loop (a phrase of 3 to 90 tokens repeated at least "
                  "twice back-to-back at the end, or a shorter one at least 51 times)")
    reference = "Holtzman et al. 2020, The Curious Case of Neural Text Degeneration (ari-holtzman/degen repetition.py)"
    Params = LoopParams

    def compute(self, group: Group) -> Score:
        loops = tuple(float(ends_in_loop(t)) for t in tokenize.sample_tokens(group, self.params.tok))
        if not loops:
            return Score.undefined("the group has no samples")
        return Score(sum(loops) / len(loops), per_sample=loops)
