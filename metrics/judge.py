"""A judge's score: an LLM rates each sample against a rubric (LLM-as-a-judge, Zheng et al. 2023, "Judging
LLM-as-a-Judge with MT-Bench and Chatbot Arena"; the prompts follow MT-Bench's single-answer and pairwise ones).

``judge_score[rubric=NAME]`` asks the model of the config's ``judge:`` section (a served model; see
docs/judge.md and :mod:`evalkit.scoring.judge`, which sends the requests and keeps the judge cache).

- ``mode: score``: each sample is rated on the rubric's scale (1 to 10 unless it says otherwise). The judge
  explains, then writes its rating as ``[[N]]``. A reply is parsed strictly: every ``[[number]]`` in it must
  give the same number and it must lie on the scale, else the sample is *unparsed*: no value (NaN, counted,
  its reply kept as the reason), never a guess. A sample's value is its rating, a group's the mean of its
  parsed ratings.
- ``mode: pairwise``: each sample is compared with the baseline setting's sample of the same prompt and
  index, twice, once in each order (position bias cancels): ``[[A]]``, ``[[B]]`` or ``[[C]]`` (a tie).
  The sample wins (1) only when both orders pick it, loses (0) only when both pick the baseline, and ties
  (0.5) otherwise; a reply without exactly one verdict leaves the sample unparsed. A group's value is the
  sample's win rate with ties counted half. The baseline's own samples are 0.5 and not sent.

A sample's per-sample value is what other metrics read as a quality bar (``effective[quality=judge_score...]``).
"""

from __future__ import annotations

import hashlib
import math
import re

from pydantic import BaseModel, ConfigDict, Field

from evalkit.errors import EvalkitError
from evalkit.scoring.metric import Group, Metric, Score
from evalkit_metrics.rubrics import RUBRICS, RUBRICS_VERSION

PROMPTS_VERSION = "1"  # the judge's prompt templates below: part of every verdict's cache key and of the manifest
REASON_CHARS = 600  # of a judge's reply kept as a sample's reason
UNPARSED = "unparsed"  # how a sample's reason starts when the judge's reply held no verdict (counted by reports)

SCORE_SYSTEM = (
    "Please act as an impartial judge and evaluate the response that an AI assistant gave to the user's request "
    "shown below. {rubric} Begin your evaluation with a short explanation. Be as objective as possible. After your "
    "explanation, you must rate the response on a scale of {lo} to {hi} by strictly following this format: "
    "\"[[rating]]\", for example: \"Rating: [[{example}]]\".")
SCORE_USER = ("[Request]\n{request}\n\n[The Start of the Assistant's Response]\n{response}\n"
              "[The End of the Assistant's Response]")
PAIR_SYSTEM = (
    "Please act as an impartial judge and evaluate the responses that two AI assistants gave to the user's request "
    "shown below. {rubric} Avoid any position bias: the order in which the responses are shown must not influence "
    "your decision. Do not let the length of the responses influence you. Be as objective as possible. Begin with a "
    "short explanation, then output your final verdict by strictly following this format: \"[[A]]\" if assistant A "
    "is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.")
PAIR_USER = ("[Request]\n{request}\n\n[The Start of Assistant A's Response]\n{a}\n[The End of Assistant A's "
             "Response]\n\n[The Start of Assistant B's Response]\n{b}\n[The End of Assistant B's Response]")

_RATING = re.compile(r"\[\[\s*([+-]?\d+(?:\.\d+)?)\s*\]\]")
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def score_prompt(rubric: str, scale: tuple[int, int], request: str, response: str) -> tuple[str, str]:
    """(system, user) messages asking for a rating of ``response`` to ``request``."""
    lo, hi = scale
    return (SCORE_SYSTEM.format(rubric=rubric, lo=lo, hi=hi, example=(lo + hi) // 2),
            SCORE_USER.format(request=request, response=response))


def pair_prompt(rubric: str, request: str, a: str, b: str) -> tuple[str, str]:
    """(system, user) messages asking which of ``a`` and ``b`` (shown in that order) answers ``request`` better."""
    return PAIR_SYSTEM.format(rubric=rubric), PAIR_USER.format(request=request, a=a, b=b)


def parse_rating(reply: str, scale: tuple[int, int]) -> float | None:
    """The rating a reply gives (``[[N]]``), or None: no ``[[number]]``, two that differ, or one off the scale."""
    found = {float(m) for m in _RATING.findall(reply)}
    if len(found) != 1:
        return None
    value = found.pop()
    return value if scale[0] <= value <= scale[1] else None


def parse_verdict(reply: str) -> str | None:
    """``A``, ``B`` or ``C`` (a tie) from a pairwise reply, or None: no verdict, or verdicts that differ."""
    found = set(_VERDICT.findall(reply))
    return found.pop() if len(found) == 1 else None


def both_orders(sample_first: str | None, baseline_first: str | None) -> float | None:
    """The sample's result from its two comparisons (shown first: it is A; shown second: it is B): 1 when both pick
    it, 0 when both pick the baseline, 0.5 otherwise (a tie, or orders that disagree); None when either is unparsed."""
    if sample_first is None or baseline_first is None:
        return None
    if sample_first == "A" and baseline_first == "B":
        return 1.0
    if sample_first == "B" and baseline_first == "A":
        return 0.0
    return 0.5


def squeezed(text: str, limit: int = REASON_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class JudgeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # a built-in rubric (evalkit_metrics.rubrics) or one of the config's judge.rubrics
    rubric: str = Field("helpfulness", min_length=1)


class JudgeScore(Metric):
    name = "judge_score"
    definition = ("an LLM judge's rating of each sample on a rubric's scale (mode score), or the sample's win rate "
                  "against the baseline setting's, both orders asked (mode pairwise); unparsed replies are no value")
    reference = ("Zheng et al. 2023, Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena (its single-answer and "
                 "pairwise prompts)")
    kind = "quality"
    Params = JudgeParams
    needs = frozenset({"texts", "prompts"})
    reference_row = False  # the references are not sent to the judge

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params)
        self.judge = None  # evalkit.scoring.judge.Judge, bound by bind_judge (a sweep's judge: section)
        self.rubric_text, self.rating_scale, self.own_rubric = "", (1, 10), False
        self._results: dict[tuple[str, str], list[tuple[float, str]]] = {}

    # ------------------------------------------------------------------ binding to the config's judge

    def bind_judge(self, judge, rubrics: dict[str, tuple[str, tuple[int, int]]]) -> None:
        """Take ``judge`` and this metric's rubric from the config's ``rubrics`` (name -> text, scale) or the built-in
        ones. Raises ValueError (naming the rubrics there are) for an unknown rubric."""
        name = self.params.rubric
        if name in rubrics:
            (self.rubric_text, self.rating_scale), self.own_rubric = rubrics[name], True
        elif name in RUBRICS:
            self.rubric_text, self.rating_scale = RUBRICS[name]
        else:
            import difflib

            known = sorted(set(RUBRICS) | set(rubrics))
            hint = difflib.get_close_matches(name, known, n=1)
            raise ValueError(f"unknown rubric {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                             + f"; built in: {', '.join(RUBRICS)}; the config's judge.rubrics: "
                             + (", ".join(sorted(rubrics)) or "none"))
        self.judge = judge
        lo, hi = self.rating_scale
        self.bounds = (0.0, 1.0) if judge.mode == "pairwise" else (float(lo), float(hi))

    def rubric_sha(self) -> str:
        return hashlib.sha256(f"{self.rubric_text}\n{self.rating_scale}".encode()).hexdigest()

    def signature(self) -> dict[str, object]:
        """The rubric (a config's own with its text's hash), the mode and baseline where pairwise, the judge's model."""
        sig: dict[str, object] = {"rubric": self.params.rubric + (f"@{self.rubric_sha()[:8]}" if self.own_rubric
                                                                  else "")}
        if self.judge is not None:
            if self.judge.mode == "pairwise":
                sig |= {"mode": "pairwise", "vs": self.judge.baseline}
            sig["judge"] = self.judge.model_id
        return sig

    def info(self) -> dict[str, object]:
        info = super().info()
        if self.judge is not None:
            info["judge"] = {**self.judge.record(), "prompts_version": PROMPTS_VERSION,
                             "rubric": {"name": self.params.rubric, "text": self.rubric_text,
                                        "scale": list(self.rating_scale), "sha256": self.rubric_sha(),
                                        "source": "judge.rubrics" if self.own_rubric
                                        else f"built in (rubrics version {RUBRICS_VERSION})"}}
        return info

    def prepare(self) -> None:
        if self.judge is None:
            raise EvalkitError(f"{self.id} needs a judge: section in a sweep config (the judging model's base_url and "
                               "id; see docs/judge.md); a file scored with evalkit score has none")
        self.judge.connect()

    # ------------------------------------------------------------------ judging

    def prepare_groups(self, groups: list[Group]) -> None:
        """Every sample's verdict, asked at once (the judge sends them concurrently; its cache answers some); a group
        judged before is not asked again."""
        if self.judge is None:
            return
        if self.judge.mode == "pairwise":
            self._pairwise(groups)
        else:
            self._rate(groups)

    def judge_requests(self, groups: list[Group]) -> int:
        """The verdicts :meth:`prepare_groups` asks for ``groups`` (the judging phase's total)."""
        todo = [g for g in groups if (g.prompt_id, g.setting.id) not in self._results]
        if self.judge.mode != "pairwise":
            return sum(len(g.texts) for g in todo)
        base = {g.prompt_id: len(g.texts) for g in groups if g.setting.id == self.judge.baseline}
        return sum(2 * min(len(g.texts), base.get(g.prompt_id, 0)) for g in todo if g.setting.id != self.judge.baseline)

    def _rate(self, groups: list[Group]) -> None:
        groups = [g for g in groups if (g.prompt_id, g.setting.id) not in self._results]  # judged once
        prompts = [score_prompt(self.rubric_text, self.rating_scale, g.prompt, t) for g in groups for t in g.texts]
        replies = iter(self.judge.replies(prompts))
        for g in groups:
            out = []
            for _ in g.texts:
                reply = next(replies)
                value = parse_rating(reply, self.rating_scale)
                out.append((math.nan, f"{UNPARSED}: {squeezed(reply, 200)!r}") if value is None
                           else (value, squeezed(reply)))
            self._results[(g.prompt_id, g.setting.id)] = out

    def _pairwise(self, groups: list[Group]) -> None:
        baseline = self.judge.baseline
        base = {g.prompt_id: g for g in groups if g.setting.id == baseline}
        groups = [g for g in groups if (g.prompt_id, g.setting.id) not in self._results]  # judged once
        asked, prompts = [], []
        for g in groups:
            other = base.get(g.prompt_id)
            for i, text in enumerate(g.texts):
                if g.setting.id == baseline or other is None or i >= len(other.texts):
                    continue
                asked.append((g, i))
                prompts += [pair_prompt(self.rubric_text, g.prompt, text, other.texts[i]),
                            pair_prompt(self.rubric_text, g.prompt, other.texts[i], text)]
        replies = self.judge.replies(prompts)
        verdicts = {(g.prompt_id, g.setting.id, i): (replies[2 * k], replies[2 * k + 1])
                    for k, (g, i) in enumerate(asked)}
        for g in groups:
            out = []
            for i in range(len(g.texts)):
                if g.setting.id == baseline:
                    out.append((0.5, "the baseline setting itself (not sent)"))
                    continue
                pair = verdicts.get((g.prompt_id, g.setting.id, i))
                if pair is None:
                    out.append((math.nan, f"no sample {i} of prompt {g.prompt_id!r} under the baseline {baseline}"))
                    continue
                first, second = (parse_verdict(r) for r in pair)
                value = both_orders(first, second)
                said = (f"sample shown first: {squeezed(pair[0], REASON_CHARS // 2)!r}; baseline shown first: "
                        f"{squeezed(pair[1], REASON_CHARS // 2)!r}")
                if value is None:
                    out.append((math.nan, f"{UNPARSED} ({said})"))
                else:
                    word = {1.0: "win (both orders)", 0.0: "loss (both orders)"}.get(value, "tie")
                    out.append((value, f"{word}: {said}"))
            self._results[(g.prompt_id, g.setting.id)] = out

    def compute(self, group: Group) -> Score:
        if self.judge is None:
            return Score.undefined(f"{self.id} has no judge (the config has no judge: section)")
        key = (group.prompt_id, group.setting.id)
        if key not in self._results:
            self.prepare_groups([group])
        results = self._results.get(key)
        if not results:
            return Score.undefined("no samples")
        values = tuple(v for v, _ in results)
        reasons = tuple(r for _, r in results)
        unparsed = sum(r.startswith(UNPARSED) for r in reasons)
        defined = [v for v in values if not math.isnan(v)]
        if not defined:
            why = (f"the judge's replies held no verdict for any of the {len(values)} samples ({unparsed} unparsed)"
                   if unparsed else reasons[0])
            return Score(math.nan, why, values, reasons)
        return Score(sum(defined) / len(defined), None, values, reasons)
