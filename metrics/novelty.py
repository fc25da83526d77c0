"""Novelty, a creativity proxy: the share of a sample's n-grams (occurrences) that appear
neither in its prompt nor, when ``corpus`` names a text file (one document per line), in
that reference corpus; mean over the samples of the group that have an n-gram.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evalkit import tokenize
from evalkit.scoring.metric import Group, Metric, Score
from evalkit_metrics.distinct import ngrams


@lru_cache(maxsize=4)
def corpus_ngrams(path: str, n: int, tok: str) -> frozenset:
    split = tokenize.get(tok)
    grams: set = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            grams.update(ngrams(split(line), n))
    return frozenset(grams)


class NoveltyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(2, ge=1, le=8)
    tok: tokenize.TextTok = "words"  # not model: the prompt and the corpus have no model token ids
    corpus: str | None = None  # a UTF-8 text file, one document per line

    @field_validator("corpus")
    @classmethod
    def _exists(cls, v: str | None) -> str | None:
        if v is None:
            return v
        path = Path(v).expanduser()
        if not path.exists():
            raise ValueError("no such corpus file")
        if path.is_dir():
            raise ValueError("a directory, not a corpus file")
        if not path.is_file():
            raise ValueError("not a regular file (a FIFO or a device), not a corpus file")
        return str(path)


class Novelty(Metric):
    name = "novelty"
    kind = "diversity"
    definition = "share of a sample's n-grams found neither in its prompt nor in the reference corpus"
    reference = "creativity proxy (n-gram novelty)"
    needs = frozenset({"texts", "prompts"})
    Params = NoveltyParams

    def signature(self) -> dict[str, object]:
        sig: dict[str, object] = {"n": self.params.n, "tok": self.params.tok}
        if self.params.corpus:
            sig["corpus"] = Path(self.params.corpus).name
        return sig

    def compute(self, group: Group) -> Score:
        split = tokenize.get(self.params.tok)
        n = self.params.n
        known = set(ngrams(split(group.prompt), n))
        if self.params.corpus:
            known |= corpus_ngrams(str(Path(self.params.corpus).resolve()), n, self.params.tok)
        values = []
        for text in group.texts:
            grams = list(ngrams(split(text), n))
            values.append(sum(g not in known for g in grams) / len(grams) if grams else math.nan)
        return Score.mean_of(values, f"no sample of the group has a {n}-gram")
