"""NoveltyBench's distinct_k and utility_k (Zhang et al. 2025, "NoveltyBench: Evaluating Language Models for
Humanlike Diversity"; novelty-bench/novelty-bench ``src/partition.py`` and ``src/score.py``).

The k samples of a group (k: the group's size) are partitioned into equivalence classes as the authors' code
does: in sample order, a sample joins the first existing class whose first member it is equivalent to, else it
opens a new class. Equivalence is a check named by ``check``:

- ``exact``: equal after normalizing (case folded, spaces collapsed, surrounding quotes and ``*`` and a final
  ``.``, ``!`` or ``?`` removed; :func:`evalkit_metrics.answers.normalize`);
- ``embedding``: cosine similarity of the sentence embeddings (``emb``) at least ``threshold``.

- ``judge``: the config's judge (its ``judge:`` section; docs/judge.md) asked whether the two are meaningfully
  different, so that a user who has seen one would likely benefit from seeing the other (NoveltyBench's judge
  question); equivalent where it answers ``[[no]]``. Each (class's first member, later sample) pair is asked once,
  the groups' pairs concurrently, in rounds of one class each (the authors' order; the same pairs as the
  sequential partition asks). A reply without exactly one verdict is *unparsed*: the group's partition would
  need a guess, so the group has no value (NaN), its reason counting the unparsed replies of the round, and it
  is not asked further.

NoveltyBench's own check is a fine-tuned DeBERTa classifier, or an LLM judge; a check is a plain entry of
:data:`CHECKS` (:func:`register_check`).

- distinct_k = the number of classes.
- utility_k = (1 - p) / (1 - p^k) * sum_{i=1..k} p^(i-1) * [sample i opens a class] * u_i, with patience
  p = 0.8 and u_i the sample's value of the per-sample metric ``quality`` (``accuracy``, ``pass_at_1``, a judge's
  score); a weighted mean, so it lies within the range of u (the paper's u is a reward model's 1-10 rating).
  Undefined where a sample that opens a class has no utility (it could not be judged: never counted as 0).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evalkit.errors import EvalkitError
from evalkit.scoring.metric import Group, Metric, Score
from evalkit_metrics import inner
from evalkit_metrics.answers import normalize
from evalkit_metrics.judge import UNPARSED
from evalkit_metrics.semantic import DEFAULT_EMBEDDER, embed, load_embedder

PATIENCE = 0.8  # the paper's


# the judge's question (check=judge): part of every verdict's cache key; a changed text is a new version
EQUIVALENCE_VERSION = "1"
EQUIVALENCE_SYSTEM = (
    "Please act as an impartial judge. Below are a user's request and two responses that an AI assistant gave to "
    "it. Determine whether the two responses are meaningfully different, so that a user who has seen one of them "
    "would likely benefit from seeing the other. Differences in wording or formatting alone do not make two "
    "responses meaningfully different. Begin with a short explanation, then output your final verdict by strictly "
    "following this format: \"[[yes]]\" if the responses are meaningfully different, \"[[no]]\" if they are not.")
EQUIVALENCE_USER = ("[Request]\n{request}\n\n[The Start of Response 1]\n{a}\n[The End of Response 1]\n\n"
                    "[The Start of Response 2]\n{b}\n[The End of Response 2]")
_DIFFERENT = re.compile(r"\[\[\s*(yes|no)\s*\]\]", re.IGNORECASE)


def equivalence_prompt(request: str, a: str, b: str) -> tuple[str, str]:
    """(system, user) messages asking whether ``a`` (a class's first member) and ``b`` differ meaningfully."""
    return EQUIVALENCE_SYSTEM, EQUIVALENCE_USER.format(request=request, a=a, b=b)


def parse_different(reply: str) -> bool | None:
    """True for ``[[yes]]`` (meaningfully different), False for ``[[no]]``, None: no verdict, or both."""
    found = {m.lower() for m in _DIFFERENT.findall(reply)}
    return found.pop() == "yes" if len(found) == 1 else None


class Check(Protocol):
    """Whether two samples of a group are equivalent (``i``: a class's first member, ``j``: a later sample). A check
    that can fail to decide (the judge) also has ``undefined(group) -> str | None``: why the group has no
    partition, None where it has one; a check without it always decides."""

    def prepare(self, groups: list[Group]) -> None: ...

    def equivalent(self, group: Group, i: int, j: int) -> bool: ...


class ExactCheck:
    def __init__(self, params: BaseModel):
        pass

    def prepare(self, groups: list[Group]) -> None:
        pass

    def equivalent(self, group: Group, i: int, j: int) -> bool:
        return normalize(group.texts[i]) == normalize(group.texts[j])


class EmbeddingCheck:
    def __init__(self, params: BaseModel):
        self.emb, self.threshold = params.emb, params.threshold

    def prepare(self, groups: list[Group]) -> None:
        load_embedder(self.emb)
        embed(self.emb, [t for g in groups for t in g.texts])  # one batched pass

    def equivalent(self, group: Group, i: int, j: int) -> bool:
        x = embed(self.emb, [group.texts[i], group.texts[j]])
        return float(x[0] @ x[1]) >= self.threshold


def _key(group: Group) -> tuple[str, str]:
    return group.prompt_id, group.setting.id


class JudgeCheck:
    """The config's judge asked, per pair, whether two samples differ meaningfully (bound by the metric's
    ``bind_judge``; :mod:`evalkit.scoring.judge` sends the requests and keeps the judge cache)."""

    def __init__(self, params: BaseModel):
        self.judge = None
        self.same: dict[tuple[str, str, int, int], bool] = {}  # (prompt, setting, i, j) -> equivalent
        self.failed: dict[tuple[str, str], str] = {}  # group -> why it has no partition
        self.done: set[tuple[str, str]] = set()

    def prepare(self, groups: list[Group]) -> None:
        """Partition every group not partitioned before, in rounds: each round opens one class per group (its first
        unplaced sample) and asks the judge, all groups' pairs at once, about it and each later unplaced sample."""
        todo = {_key(g): g for g in groups if g.texts and _key(g) not in self.done}
        placed = {k: [-1] * len(g.texts) for k, g in todo.items()}
        while todo:
            asked = []
            for k, g in todo.items():
                first = placed[k].index(-1)
                placed[k][first] = max(placed[k]) + 1
                asked += [(k, first, j) for j in range(first + 1, len(g.texts)) if placed[k][j] == -1]
            replies = self.judge.replies([equivalence_prompt(todo[k].prompt, todo[k].texts[i], todo[k].texts[j])
                                          for k, i, j in asked]) if asked else []
            unparsed: dict[tuple[str, str], list[str]] = {}
            for (k, i, j), reply in zip(asked, replies):
                different = parse_different(reply)
                if different is None:
                    unparsed.setdefault(k, []).append(reply)
                    continue
                self.same[(*k, i, j)] = not different
                if not different:
                    placed[k][j] = placed[k][i]
            for k, said in unparsed.items():
                of = sum(a[0] == k for a in asked)
                self.failed[k] = (f"{UNPARSED}: {len(said)} of the judge's {of} replies on this group's pairs held no "
                                  f"verdict ([[yes]] or [[no]]), so its partition is not guessed; the first: "
                                  f"{' '.join(said[0].split())[:200]!r}")
            self.done |= {k for k in todo if k in self.failed or -1 not in placed[k]}
            todo = {k: g for k, g in todo.items() if k not in self.done}

    def equivalent(self, group: Group, i: int, j: int) -> bool:
        if _key(group) not in self.done:
            self.prepare([group])
        return self.same[(*_key(group), i, j)]

    def undefined(self, group: Group) -> str | None:
        if _key(group) not in self.done:
            self.prepare([group])
        return self.failed.get(_key(group))

    def requests(self, groups: list[Group]) -> int:
        """At most k(k-1)/2 pairs per group not partitioned yet (every sample its own class)."""
        return sum(len(g.texts) * (len(g.texts) - 1) // 2 for g in groups if _key(g) not in self.done)


# check name -> factory taking the metric's parameters; which parameters a check reads is in CHECK_PARAMS
CHECKS: dict[str, Callable[[BaseModel], Check]] = {"exact": ExactCheck, "embedding": EmbeddingCheck,
                                                   "judge": JudgeCheck}
CHECK_PARAMS: dict[str, tuple[str, ...]] = {"exact": (), "embedding": ("threshold", "emb"), "judge": ()}


def register_check(name: str, factory: Callable[[BaseModel], Check], params: tuple[str, ...] = ()) -> None:
    """Add an equivalence check by name (refused if the name is taken); ``params``: the metric parameters it
    reads, which then appear in the metric's id."""
    if name in CHECKS:
        raise ValueError(f"equivalence check {name!r} is already registered")
    CHECKS[name] = factory
    CHECK_PARAMS[name] = params


def partition(k: int, equivalent: Callable[[int, int], bool]) -> list[int]:
    """Each of ``k`` samples' class, numbered in order of opening: sample j joins the first class whose first
    member i (i < j) is equivalent to it, else opens a class."""
    firsts: list[int] = []
    classes = []
    for j in range(k):
        found = next((c for c, i in enumerate(firsts) if equivalent(i, j)), None)
        if found is None:
            found = len(firsts)
            firsts.append(j)
        classes.append(found)
    return classes


def opens(classes: list[int]) -> list[bool]:
    """Whether each sample is the first of its class."""
    seen: set[int] = set()
    out = []
    for c in classes:
        out.append(c not in seen)
        seen.add(c)
    return out


def utility(classes: list[int], utilities: list[float], patience: float = PATIENCE) -> float:
    """(1 - p)/(1 - p^k) sum_i p^(i-1) [sample i opens a class] u_i (p = 1: the plain mean over the k samples);
    NaN where a sample that opens a class has an undefined utility."""
    k = len(classes)
    weights = patience ** np.arange(k)
    credited = np.array([u if new else 0.0 for u, new in zip(utilities, opens(classes))], dtype=float)
    return float((weights * credited).sum() / weights.sum())


class PartitionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    check: str = "exact"  # a name in CHECKS
    threshold: float = Field(0.9, ge=-1, le=1)  # check=embedding: cosine similarity at which two are one class
    emb: str = DEFAULT_EMBEDDER  # check=embedding: the sentence embedder

    @field_validator("check")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in CHECKS:
            raise ValueError(f"unknown equivalence check (known: {', '.join(CHECKS)})")
        return v

    @model_validator(mode="after")
    def _used(self):
        unused = sorted((self.model_fields_set & {"threshold", "emb"}) - set(CHECK_PARAMS[self.check]))
        if unused:
            raise ValueError(f"{unused[0]} is not read by check={self.check}")
        return self


class UtilityParams(PartitionParams):
    quality: str = "accuracy"  # a metric with per-sample values: each sample's utility u_i
    p: float = Field(PATIENCE, gt=0, le=1)  # patience: the chance that a user asks for one more sample

    @field_validator("quality")
    @classmethod
    def _quality(cls, v: str) -> str:
        return inner.validated(v)


class _Partitioned(Metric):
    Params = PartitionParams

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params)
        self.check = CHECKS[self.params.check](self.params)

    # ------------------------------------------------------------------ check=judge: the config's judge

    @property
    def asks_judge(self) -> bool:
        return self.params.check == "judge"

    @property
    def judge(self):
        """The judge bound to check=judge (evalkit.scoring.judge.Judge), else None."""
        return self.check.judge if self.asks_judge else None

    def bind_judge(self, judge, rubrics: dict) -> None:
        """Take the config's judge (check=judge; it has no rubric)."""
        self.check.judge = judge

    def judge_requests(self, groups: list[Group]) -> int:
        return self.check.requests(groups)

    def info(self) -> dict[str, object]:
        info = super().info()
        if self.judge is not None:
            info["judge"] = {**self.judge.record(), "asks": "equivalence", "prompts_version": EQUIVALENCE_VERSION,
                             "prompt_sha256": hashlib.sha256(
                                 (EQUIVALENCE_SYSTEM + "\0" + EQUIVALENCE_USER).encode()).hexdigest()}
        return info

    def check_signature(self) -> dict[str, object]:
        sig = {"check": self.params.check, **{k: getattr(self.params, k) for k in CHECK_PARAMS[self.params.check]}}
        if self.judge is not None:
            sig["judge"] = self.judge.model_id
        return sig

    def prepare(self) -> None:
        if self.params.check == "embedding":
            load_embedder(self.params.emb)
        if self.asks_judge:
            if self.judge is None:
                raise EvalkitError(f"{self.id} needs a judge: section in a sweep config (the judging model's base_url "
                                   "and id; see docs/judge.md); a file scored with evalkit score has none")
            self.judge.connect()

    def prepare_groups(self, groups: list[Group]) -> None:
        self.check.prepare(groups)

    def no_partition(self, group: Group) -> str | None:
        """Why the check gives ``group`` no partition (a judge's reply without a verdict), else None."""
        undefined = getattr(self.check, "undefined", None)  # optional in the Check protocol
        return undefined(group) if undefined is not None else None

    def classes(self, group: Group) -> list[int]:
        return partition(len(group.texts), lambda i, j: self.check.equivalent(group, i, j))


class DistinctK(_Partitioned):
    name = "distinct_k"
    kind = "diversity"
    definition = "number of equivalence classes among a group's k samples (per-sample: 1 where a sample opens one)"
    reference = "Zhang et al. 2025, NoveltyBench: Evaluating Language Models for Humanlike Diversity"

    def signature(self) -> dict[str, object]:
        return self.check_signature()

    def compute(self, group: Group) -> Score:
        if not group.texts:
            return Score.undefined("the group has no samples")
        if why := self.no_partition(group):
            return Score.undefined(why)
        classes = self.classes(group)
        return Score(float(max(classes) + 1), per_sample=tuple(float(o) for o in opens(classes)))


class UtilityK(_Partitioned):
    name = "utility_k"
    kind = "quality"
    definition = ("patience-discounted mean utility of the samples that open a new equivalence class: "
                  "(1-p)/(1-p^k) sum p^(i-1) [new] u_i")
    reference = "Zhang et al. 2025, NoveltyBench: Evaluating Language Models for Humanlike Diversity"
    Params = UtilityParams

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params)
        self.quality = inner.build(self.params.quality)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"texts"}) | self.quality.requires()

    @property
    def reference_row(self) -> bool:
        return False

    def signature(self) -> dict[str, object]:
        return {**self.check_signature(), "quality": self.quality.id, "p": f"{self.params.p:g}"}

    def prepare(self) -> None:
        super().prepare()
        self.quality.prepare()

    def prepare_groups(self, groups: list[Group]) -> None:
        super().prepare_groups(groups)
        self.quality.prepare_groups(groups)

    def compute(self, group: Group) -> Score:
        if not group.texts:
            return Score.undefined("the group has no samples")
        values, score = inner.per_sample(self.quality, group)
        if values is None:
            return Score.undefined(f"{self.quality.id} has no value per sample here: "
                                   f"{score.reason or 'it gives no per-sample values'}")
        if why := self.no_partition(group):
            return Score.undefined(why)
        classes = self.classes(group)
        missing = [i for i, (v, new) in enumerate(zip(values, opens(classes))) if new and math.isnan(v)]
        if missing:
            return Score.undefined(f"sample {missing[0]} opens a class and has no {self.quality.id} value")
        return Score(utility(classes, list(values), self.params.p))
