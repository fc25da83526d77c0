"""self-BLEU (Zhu et al., SIGIR 2018, "Texygen: A Benchmarking Platform for Text Generation Models").

For each sample of a group: nltk ``sentence_bleu(references=every other sample of the
group, hypothesis=the sample)`` with uniform weights up to ``n`` and, by default,
smoothing method1 (epsilon 0.1) as in Texygen's ``utils/metrics/SelfBleu.py``; the group
value is the mean over samples. Other samples are excluded by index, so a duplicate of
the hypothesis stays among its references. Nothing is truncated (Texygen's "fast" mode
keeps only 500 samples).

The same numbers as nltk, without its O(N^2) loop over reference sets: for each n-gram,
the largest count among the *other* samples is the group maximum, except for the one
sample that holds that maximum alone, which sees the second largest; the closest
reference length comes from the sorted lengths. An empty sample has no BLEU as a
hypothesis (NaN, where nltk returns 0) but still counts as a reference.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evalkit import tokenize
from evalkit.scoring.metric import Group, Metric, Score

EPSILON = 0.1  # nltk SmoothingFunction().method1 default


def _gram_ids(tokens: np.ndarray, sample: np.ndarray, position: np.ndarray, lengths: np.ndarray, n: int):
    """(sample index, n-gram id) of every n-gram of order n, ids shared across samples."""
    ids = tokens
    starts = np.flatnonzero(position + n <= lengths[sample])
    for k in range(1, n):  # extend (k)-gram ids by one token: unique over (previous id, next token)
        key = ids[starts] * (tokens.max(initial=0) + 1) + tokens[starts + k]
        ids = np.empty_like(tokens)
        ids[starts] = np.unique(key, return_inverse=True)[1]
    return sample[starts], ids[starts]


def _clipped_matches(sample: np.ndarray, gram: np.ndarray, n_samples: int) -> np.ndarray:
    """Per sample: sum over its n-grams of min(count, largest count among the other samples)."""
    if gram.size == 0:
        return np.zeros(n_samples, dtype=np.int64)
    key, count = np.unique(gram.astype(np.int64) * n_samples + sample, return_counts=True)
    g, s = key // n_samples, key % n_samples
    order = np.lexsort((-count, g))
    g, s, count = g[order], s[order], count[order]
    first = np.r_[True, g[1:] != g[:-1]]
    group_start = np.flatnonzero(first)
    span = np.diff(np.r_[group_start, g.size])
    top = count[group_start]
    second = np.where(span > 1, count[np.minimum(group_start + 1, g.size - 1)], 0)
    which = np.repeat(np.arange(group_start.size), span)
    alone = (span == 1) | (second < top)  # the maximum is held by one sample only
    holds_top = first  # sorted by count descending: the first entry of each n-gram holds the maximum
    others = np.where(holds_top & alone[which], second[which], top[which])
    return np.bincount(s, weights=np.minimum(count, others), minlength=n_samples).astype(np.int64)


def _closest_other_length(lengths: np.ndarray) -> np.ndarray:
    """nltk's closest reference length among the other samples: nearest, ties to the shorter."""
    values, counts = np.unique(lengths, return_counts=True)
    pos = np.searchsorted(values, lengths)
    shared = counts[pos] > 1  # another sample has the same length
    below = np.where(pos > 0, values[np.maximum(pos - 1, 0)], -(1 << 40))
    above = np.where(pos + 1 < values.size, values[np.minimum(pos + 1, values.size - 1)], 1 << 40)
    nearest = np.where(lengths - below <= above - lengths, below, above)
    return np.where(shared, lengths, nearest)


def self_bleu(samples: Sequence[Sequence[str]], n: int = 4, smoothing: str = "method1") -> np.ndarray:
    """Per-sample self-BLEU of a group of tokenized samples; NaN for empty samples.

    Raises ValueError for fewer than two samples (a hypothesis needs references).
    """
    n_samples = len(samples)
    if n_samples < 2:
        raise ValueError("self-BLEU needs at least two samples")
    vocab: dict[str, int] = {}
    flat = [vocab.setdefault(t, len(vocab)) for s in samples for t in s]
    lengths = np.array([len(s) for s in samples], dtype=np.int64)
    tokens = np.array(flat, dtype=np.int64)
    sample = np.repeat(np.arange(n_samples), lengths)
    position = np.arange(tokens.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)

    weight = 1 / n
    log_sum = np.zeros(n_samples)
    unigram_matches = None
    for k in range(1, n + 1):
        matches = _clipped_matches(*_gram_ids(tokens, sample, position, lengths, k), n_samples)
        if k == 1:
            unigram_matches = matches
        total = np.maximum(1, lengths - k + 1)
        if smoothing == "method1":
            precision = np.where(matches > 0, matches / total, EPSILON / total)
        else:
            precision = np.where(matches > 0, matches / total, sys.float_info.min)
        log_sum += weight * np.log(precision)
    ref = _closest_other_length(lengths)
    hyp = lengths.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = np.where(lengths > ref, 1.0, np.where(lengths == 0, 0.0, np.exp(1 - ref / hyp)))
    scores = np.where(unigram_matches == 0, 0.0, bp * np.exp(log_sum))
    return np.where(lengths == 0, np.nan, scores)


class SelfBleuParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(4, ge=1, le=8)  # uniform weights 1/n up to n-grams of order n
    smooth: Literal["method1", "none"] = "method1"  # nltk SmoothingFunction method1 (epsilon 0.1) or none
    tok: tokenize.Tok = "words"


class SelfBleu(Metric):
    name = "self_bleu"
    kind = "diversity"
    direction = -1
    definition = "mean over samples of BLEU(sample, references = the other samples of the group); higher = less diverse"
    reference = "Zhu et al. 2018, Texygen (SelfBleu); nltk sentence_bleu"
    Params = SelfBleuParams

    def compute(self, group: Group) -> Score:
        if len(group.texts) < 2:
            return Score.undefined("self-BLEU needs at least two samples in the group")
        per_sample = self_bleu(tokenize.sample_tokens(group, self.params.tok), self.params.n, self.params.smooth)
        return Score.mean_of(per_sample.tolist(), "every sample of the group is empty")
