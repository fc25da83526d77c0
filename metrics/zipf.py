"""Zipf's coefficient (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration", Table 1;
``ari-holtzman/degen`` ``metrics/zipf.py``).

The tokens of all samples are counted together; the coefficient is minus the slope of the least-squares
line through (log rank, log frequency) of the ``max_rank`` most frequent tokens (ranks 1, 2, ... in
order of decreasing count, ties in any order: they share a frequency). Human English text is near 1;
a steeper (higher) coefficient means a vocabulary concentrated on fewer tokens. The paper pools all
generations of a decoding setting (``scope=setting``, the default) and counts GPT-2 tokens
(``tok=model``); ``tok=words`` counts words.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evalkit import tokenize
from evalkit.scoring.metric import Group, PooledMetric, Score


def zipf_coefficient(counts: Counter, max_rank: int) -> float:
    """Minus the slope of log frequency on log rank over the ``max_rank`` most frequent tokens; NaN with
    fewer than two distinct tokens."""
    freqs = np.sort(np.fromiter(counts.values(), dtype=float))[::-1][:max_rank]
    if freqs.size < 2:
        return float("nan")
    x, y = np.log(np.arange(1, freqs.size + 1)), np.log(freqs)
    slope = np.polyfit(x, y, 1)[0]
    return float(-slope) + 0.0  # no -0.0


class ZipfParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tok: tokenize.Tok = "words"
    max_rank: int = Field(5000, ge=2, le=10_000_000)  # the most frequent tokens fitted (the paper's code: 5000)
    scope: Literal["setting", "prompt"] = "setting"  # pool the setting's prompts, or one value per prompt


class Zipf(PooledMetric):
    name = "zipf"
    kind = "diversity"
    direction = -1
    definition = ("Zipf's coefficient: minus the slope of log frequency against log rank of the max_rank most "
                  "frequent tokens of the samples (pooled over a setting's prompts unless scope=prompt)")
    reference = "Holtzman et al. 2020, The Curious Case of Neural Text Degeneration (ari-holtzman/degen zipf.py)"
    Params = ZipfParams
    bounds = (0.0, float("inf"))  # frequencies fall with rank

    def compute_pooled(self, groups: list[Group]) -> Score:
        counts: Counter = Counter()
        for g in groups:
            for tokens in tokenize.sample_tokens(g, self.params.tok):
                counts.update(tokens)
        tokenize.forget()
        value = zipf_coefficient(counts, self.params.max_rank)
        if np.isnan(value):
            return Score.undefined(f"Zipf's coefficient needs at least two distinct tokens, got {len(counts)}")
        return Score(value)
