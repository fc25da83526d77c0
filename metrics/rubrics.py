"""The rubrics ``judge_score`` ships (``judge_score[rubric=NAME]``): what the judge rates, in its own words, and
the scale of its ratings. A config adds its own under ``judge.rubrics`` (docs/judge.md). The text of a rubric is
part of what it measures: a changed text is a new version (``RUBRICS_VERSION``), recorded with every run."""

from __future__ import annotations

RUBRICS_VERSION = "1"

# name -> (text, (lowest, highest))
RUBRICS: dict[str, tuple[str, tuple[int, int]]] = {
    "helpfulness": (
        "Rate how helpful the response is to the user's request: whether it does what was asked, and its accuracy, "
        "relevance, depth and level of detail.", (1, 10)),
    "story": (
        "Rate the response as a piece of short fiction continuing or answering the request: coherence of plot and "
        "characters, vivid and specific language, originality, and fluent, grammatical prose. A response that "
        "repeats itself or drifts off topic scores low.", (1, 10)),
    "advice": (
        "Rate the response as advice: whether it is correct, safe, specific enough to act on, and fits the "
        "situation the user describes. Vague or generic tips score low.", (1, 10)),
    "creativity": (
        "Rate the creativity of the response: ideas that are original and surprising yet still fit the request. "
        "Fluency matters only as far as it lets the ideas come through.", (1, 10)),
    "fluency": (
        "Rate only the language of the response: grammatical, natural, fluent text without repetition or "
        "broken sentences. Ignore whether it is correct or helpful.", (1, 10)),
}
