"""Answer accuracy and majority vote: is a sample's final answer the prompt's reference answer?

The final answer is extracted from a sample's text by these rules (``extract=strict|flexible``):

1. A *marked* answer, the last one in the text: the content of the last ``\\boxed{...}`` (braces
   balanced); else the text after the last ``####`` (GSM8K's; not a Markdown heading such as ``#### Step
   2``, where a word follows it); else the text after the last "answer is", "answer is:" or "answer:" (any
   case: "The answer is 42", "Final answer: B") up to the end of its line, or the next non-empty line where
   nothing follows the marker on its own line ("Answer:" and "42" below it).
2. Read under the prompt's ``answer_format``: ``number`` takes the first number of the marked span, or
   where the span opens with a sum worked out ("12 - 5 + 9 = 16") the number after its ``=``
   (1,234.5, 1{,}000, -3, $40, 3/4, -\\frac{3}{4}, \\frac12, 50%; a trailing period is not a decimal
   point) and compares values exactly (42 = 42.0 = 42.00); ``choice`` takes the letter the span names
   (:func:`choice_in`: alone, leading, in parentheses, or closing the span; none where the span hedges,
   "A or B", "B/C": a span naming more than one choice is no answer); ``exact`` takes
   the whole span; ``regex`` ignores markers and takes the last match of ``answer_pattern`` (its group,
   or the whole match; a group that took nothing is no answer), searched by the ``regex`` engine with a
   limit of :data:`PATTERN_CPU_S` seconds of CPU time per sample: a pattern that backtracks catastrophically
   leaves its groups unscored, with the reason, rather than hanging the run. Text is compared after
   normalizing: case folded, spaces collapsed, surrounding quotes, ``*`` and a final ``.``, ``!`` or ``?``
   removed.
3. Without a marker, ``strict`` takes the whole text only when it is the answer alone ("42.", "(B)", a bare
   letter "B" or "b."); ``flexible`` takes that too, else the last number in the text (as
   lm-evaluation-harness's GSM8K "flexible-extract"), the last capital letter in parentheses "(B)", or for
   ``exact`` the whole text. A number of more than 100 characters is no answer (degenerate samples repeat
   digits).

A sample with no extractable answer is wrong. Majority vote (self-consistency, Wang et al. 2023) votes
over the samples that have an answer (numbers by value); a tie goes to the answer that appeared first
in sample-index order; a group in which no sample has an answer scores 0.
"""

from __future__ import annotations

import abc
import re
from collections import Counter
from typing import Literal

import regex
from pydantic import BaseModel, ConfigDict

from evalkit.checks import NUMBER, Checks, number_value, parse_number, show_number
from evalkit.scoring.metric import Group, Metric, Score

Extract = Literal["flexible", "strict"]
_MARKER = re.compile(r"answer\s*(?:is\b\s*:?|:)", re.IGNORECASE)
_LONE_CHOICE = re.compile(r"\s*\(?([A-Za-z])\)?[.:!]?\s*")
_HASHES = re.compile(r"####(?![ \t]*[A-Za-z]{2})")  # GSM8K's marker; "#### Step 2" is a Markdown heading
# at the start of a marked span: "(b)", "b)", "C is right", "A, not B", "A because ..." (a capital other than the
# word I; A only where no word follows it but a reason: "A lot depends" and "A cat" are the article)
_LEADING_CHOICE = re.compile(r"\s*(?:\(([A-Za-z])\)|([A-Za-z])\)|([B-HJ-Z])(?![A-Za-z])|"
                             r"(A)(?![A-Za-z])(?:(?!\s+[a-z])|(?=\s+(?:because|since|as|is|was)\b)))")
# a sum worked out at the start of a marked span: "12 - 5 + 9 = 16"
_WORKED = re.compile(r"\s*-?\$?[\d.,]+(?:\s*[-+*/\u00d7\u00f7x]\s*-?\$?[\d.,]+)+\s*=(?!=)")
_PAREN_CHOICE = re.compile(r"\(([A-Z])\)")  # "(C)" anywhere (a capital: f(x) is no choice)
_CLOSING_CHOICE = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])(?!\s+[a-z])")  # "it is C", "C." (not "A cat")
# choices joined as alternatives: "A or B", "(a) and (b)", "B/C", "A, B or maybe C" (a hedge: no answer)
_CHOICE = r"(?:\(([A-Za-z])\)|(?<![A-Za-z])([A-Z])(?![A-Za-z]))"
_JOIN = r"(?:\s*,\s*(?:(?:and|or)\s+)?|\s*[/&]\s*|\s+(?:and/or|or|and)\s+)(?:(?:maybe|perhaps|possibly|also)\s+)?"
_ALTERNATIVES = re.compile(f"{_CHOICE}(?:{_JOIN}{_CHOICE})+")
# CPU seconds one sample's answer_pattern search may take. The regex engine counts this process's CPU time (C's
# clock()), not the wall clock, so a loaded machine does not trip it; nested repeats such as (a|aa)+$ do.
PATTERN_CPU_S = 1.0


class PatternTimeout(Exception):
    """An ``answer_pattern`` search ran past :data:`PATTERN_CPU_S` seconds of CPU time on a sample."""


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None when there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unclosed


def marked(text: str) -> str | None:
    """The marked final answer's span (rule 1), or None."""
    box = boxed(text)
    if box is not None:
        return box
    for marker in (_HASHES, _MARKER):  # GSM8K's marker first, then "the answer is"
        last = None
        for last in marker.finditer(text):
            pass
        if last is not None:
            return text[last.end():].strip().split("\n", 1)[0]
    return None


def normalize(text: str) -> str:
    """Case folded, spaces collapsed, surrounding quotes and ``*`` and a final ``.``, ``!`` or ``?`` removed."""
    t, before = " ".join(text.split()), None
    while t != before:
        before, t = t, t.strip(" *`\"'\u201c\u201d\u2018\u2019").rstrip(".!?")
    return t.casefold()


def extract(text: str, checks: Checks, mode: Extract = "flexible") -> str | None:
    """The sample's final answer in canonical form (numbers as ``show_number``), or None when there is none."""
    fmt = checks.answer_format
    if fmt == "regex":
        try:
            matches = list(regex.finditer(checks.answer_pattern or "", text, timeout=PATTERN_CPU_S))
        except TimeoutError:
            raise PatternTimeout(checks.answer_pattern) from None
        if not matches:
            return None
        m = matches[-1]
        found = m.group(1) if m.re.groups else m.group(0)
        return normalize(found) or None if found is not None else None  # an optional group that took nothing
    span = marked(text)
    if fmt == "number":
        if span is not None:
            value = _first_number(span)
        elif mode == "flexible":
            found = [number_value(m.group(0)) for m in NUMBER.finditer(text)]
            found = [v for v in found if v is not None]
            value = found[-1] if found else None
        else:
            value = parse_number(text)
        return None if value is None else show_number(value)
    if fmt == "choice":
        if span is not None:
            return choice_in(span)
        lone = _LONE_CHOICE.fullmatch(text)
        if lone:
            return lone.group(1).upper()
        if mode == "flexible":
            found = _PAREN_CHOICE.findall(text)
            return found[-1] if found else None
        return None
    answer = normalize(span if span is not None else text)
    return answer or None


def choice_in(span: str) -> str | None:
    """The letter a marked span names: the span's lone letter ("c."); else the letter it starts with, in
    parentheses ("(b)", "b)") or a capital other than the word I ("C is right", "B, not (C)"; A where no word
    follows it but a reason: "A, not B", "A because ..."; "A lot" is the article);
    else its first capital in parentheses ("I pick (C)"); else its last capital letter that no lowercase
    word follows ("I think it is C"). None when that letter is one of alternatives the span names, joined by
    "or", "and", "/", "&" or commas ("A or B", "(b) and (c)", "B, C"): a hedge names no answer ("A, not B" is A)."""
    m = _LONE_CHOICE.fullmatch(span) or _LEADING_CHOICE.match(span) or _PAREN_CHOICE.search(span)
    if m:
        letter = next(g for g in m.groups() if g).upper()
    else:
        found = _CLOSING_CHOICE.findall(span)
        letter = found[-1] if found else None
    return None if letter is not None and _hedged(letter, span) else letter


def _hedged(letter: str, span: str) -> bool:
    """Whether ``letter`` is one of alternatives that the span names ("A or B", "(b) and (c)", "B/C"): a hedge."""
    for m in _ALTERNATIVES.finditer(span):
        named = {"".join(g).upper() for g in re.findall(_CHOICE, m.group(0))}
        if letter in named and len(named) > 1:
            return True
    return False


def _first_number(span: str):
    whole = parse_number(span)
    if whole is not None:
        return whole
    worked = _WORKED.match(span)  # "12 - 5 + 9 = 16": the result, not the sum's first term
    m = (worked and NUMBER.search(span, worked.end())) or NUMBER.search(span)
    return number_value(m.group(0)) if m else None


def reference(checks: Checks) -> str:
    """The prompt's answer in the same canonical form as :func:`extract`."""
    fmt = checks.answer_format
    if fmt == "number":
        return show_number(parse_number(checks.answer))
    if fmt == "choice":
        return _LONE_CHOICE.fullmatch(checks.answer).group(1).upper()
    return normalize(checks.answer)


def correct(text: str, checks: Checks, mode: Extract = "flexible") -> bool:
    return extract(text, checks, mode) == reference(checks)


def majority(answers: list[str | None]) -> str | None:
    """The most frequent answer (None never votes); a tie goes to the one that appeared first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


class ExtractParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    extract: Extract = "flexible"


class _AnswerMetric(Metric):
    """What accuracy and majority vote share: each sample's extracted answer against the prompt's."""

    kind = "quality"
    Params = ExtractParams
    needs = frozenset({"texts", "answers"})

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params)
        self._timed_out: dict[str, str] = {}  # answer_pattern -> why it gave up: it is not searched again

    def compute(self, group: Group) -> Score:
        if group.checks is None or group.checks.answer is None:
            return Score.undefined(f"prompt {group.prompt_id!r} has no answer")
        if not group.texts:
            return Score.undefined("no samples")
        pattern = group.checks.answer_pattern
        if pattern in self._timed_out:
            return Score.undefined(self._timed_out[pattern])
        try:
            answers = [extract(t, group.checks, self.params.extract) for t in group.texts]
        except PatternTimeout:
            shown = pattern if len(pattern) <= 60 else pattern[:57] + "..."
            self._timed_out[pattern] = (
                f"answer_pattern {shown!r} gave up after {PATTERN_CPU_S:g} s of CPU time on a sample of prompt "
                f"{group.prompt_id!r}: it backtracks catastrophically (nested repeats such as (a|aa)+$); no score "
                "where it is the pattern")
            return Score.undefined(self._timed_out[pattern])
        return self.judge(answers, reference(group.checks))

    @abc.abstractmethod
    def judge(self, answers: list[str | None], ref: str) -> Score:
        """The group's score from its samples' answers (None: no answer) and the reference."""


class Accuracy(_AnswerMetric):
    name = "accuracy"
    definition = "share of a group's samples whose extracted final answer equals the prompt's answer"
    reference = ("final-answer accuracy, as in GSM8K (Cobbe et al. 2021) and the min-p paper (Nguyen et al. 2024); "
                 "extraction rules in evalkit_metrics.answers")

    def judge(self, answers: list[str | None], ref: str) -> Score:
        return Score.mean_of([float(a == ref) for a in answers], "no samples")


class MajorityVote(_AnswerMetric):
    name = "majority_vote"
    definition = ("1 when the most frequent extracted answer of a group (ties: the first to appear) equals the "
                  "prompt's answer, else 0")
    reference = "self-consistency: Wang et al. 2023, Self-Consistency Improves Chain of Thought Reasoning in LLMs"

    def judge(self, answers: list[str | None], ref: str) -> Score:
        return Score(float(majority(answers) == ref))
