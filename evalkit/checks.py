"""Checks: what a prompt carries to judge a sample's correctness (a reference answer, or tests for code).

A prompt (inline, JSONL, or a row of ``evalkit score``) may carry:

- ``answer``: the reference answer, with ``answer_format``: ``number`` (compared as a number: 1,000 =
  1000 = 1000.0), ``choice`` (one letter, A to Z), ``exact`` (text, compared after normalizing case,
  spaces, quotes and final punctuation) or ``regex`` (``answer_pattern`` extracts the model's answer: its
  first group, or the whole match; compared as ``exact``). The format defaults to ``number`` when the
  answer is a number (``answer: 42``), else ``exact``.
- ``tests``: Python test code for a code prompt, with ``entry_point`` (the function the tests call) and
  optionally ``code_prefix`` (code put before the sample's, as HumanEval puts its prompt).

How a sample's answer and code are extracted is in :mod:`evalkit_metrics.answers` and
:mod:`evalkit_metrics.pass_at_k`.
"""

from __future__ import annotations

import ast
import keyword
import re
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from typing import Literal

AnswerFormat = Literal["number", "choice", "exact", "regex"]
FORMATS = ("number", "choice", "exact", "regex")


@dataclass(frozen=True)
class Checks:
    answer: str | None = None
    answer_format: AnswerFormat = "exact"
    answer_pattern: str | None = None
    tests: str | None = None
    entry_point: str | None = None
    code_prefix: str = ""
    # the samples continue the prompt as raw text (completion mode: no chat template applied), so a sample's code is
    # its whole text and a ``` in it (in a docstring or a comment) is code, not Markdown; set by the pipeline from
    # how the prompt was rendered, never by a prompt
    completion: bool = False

    def same_as(self, other: Checks) -> bool:
        """The same checks, a numeric answer compared by value (42, "42.0")."""
        if self.answer_format == other.answer_format == "number" and self.answer and other.answer:
            return (parse_number(self.answer) == parse_number(other.answer)
                    and replace(self, answer=None) == replace(other, answer=None))
        return self == other

    def as_json(self) -> dict:
        """The fields that are set (what a run's prompts.jsonl keeps; completion mode is its ``chat_template``)."""
        return {k: v for k, v in asdict(self).items()
                if v not in (None, "") and k != "completion" and not (k == "answer_format" and self.answer is None)}


CHECK_FIELDS = ("answer", "answer_format", "answer_pattern", "tests", "entry_point", "code_prefix")


def checks_of(item) -> Checks | None:
    """The validated checks of a prompt item or a score row (an object with the :data:`CHECK_FIELDS`)."""
    return make_checks(**{name: getattr(item, name) for name in CHECK_FIELDS})


def make_checks(answer: str | int | float | None = None, answer_format: str | None = None,
                answer_pattern: str | None = None, tests: str | None = None, entry_point: str | None = None,
                code_prefix: str | None = None) -> Checks | None:
    """Validated checks (None when none is given). Raises ValueError saying what is wrong."""
    if answer is None and tests is None:
        for name, value in (("answer_format", answer_format), ("answer_pattern", answer_pattern),
                            ("entry_point", entry_point), ("code_prefix", code_prefix)):
            if value is not None:
                needed = "tests" if name in ("entry_point", "code_prefix") else "an answer"
                raise ValueError(f"{name} is given without {needed}")
        return None
    if isinstance(answer, bool):
        raise ValueError(f"answer must be text or a number, got {str(answer).lower()}")
    fmt = answer_format or ("number" if isinstance(answer, (int, float)) else "exact")
    if fmt not in FORMATS:
        raise ValueError(f"answer_format must be one of {', '.join(FORMATS)}, got {answer_format!r}")
    text = None if answer is None else _answer_text(answer)
    if text is not None:
        _check_answer(text, fmt, answer_pattern)
    elif answer_format is not None or answer_pattern is not None:
        raise ValueError("answer_format and answer_pattern need an answer")
    if tests is not None:
        _check_tests(tests, entry_point, code_prefix)
    elif entry_point is not None or code_prefix is not None:
        raise ValueError("entry_point and code_prefix need tests")
    return Checks(answer=text, answer_format=fmt, answer_pattern=answer_pattern, tests=tests,
                  entry_point=entry_point, code_prefix=code_prefix or "")


def _answer_text(answer: str | int | float) -> str:
    if isinstance(answer, float) and answer != answer or answer in (float("inf"), float("-inf")):
        raise ValueError(f"answer must be a finite number, got {answer}")
    if isinstance(answer, float):  # 1e-07 as 0.0000001: numbers are written out in full
        from decimal import Decimal

        return format(Decimal(repr(answer)), "f")
    text = str(answer).strip()
    if not text:
        raise ValueError("answer is empty")
    return text


def _check_answer(text: str, fmt: str, pattern: str | None) -> None:
    if fmt == "regex":
        if not pattern:
            raise ValueError("answer_format regex needs an answer_pattern (a regular expression)")
        import regex  # the engine that searches it (evalkit_metrics.answers): one with a time limit

        try:
            compiled = regex.compile(pattern)
        except regex.error as e:
            raise ValueError(f"answer_pattern is not a regular expression ({e})") from None
        if compiled.groups > 1:
            raise ValueError(f"answer_pattern has {compiled.groups} groups: give at most one (the answer)")
    elif pattern is not None:
        raise ValueError(f"answer_pattern is only read with answer_format regex, not {fmt}")
    if fmt == "number" and parse_number(text) is None:
        token = _number_token(text)
        if token is not None and len(token) > MAX_NUMBER:  # a number, but longer than extraction reads
            raise ValueError(f"answer is a number of {len(token)} characters, and numbers of more than {MAX_NUMBER} "
                             "are not read (a sample's longer run of digits is no answer), so no sample could match "
                             "it: compare it as text (answer_format: exact)")
        raise ValueError(f"answer {text[:60]!r} is not a number (answer_format: number)")
    if fmt == "choice" and not re.fullmatch(r"\(?[A-Za-z]\)?\.?", text):
        raise ValueError(f"answer {text[:60]!r} is not one letter (answer_format: choice)")


def _check_tests(tests: str, entry_point: str | None, code_prefix: str | None) -> None:
    if not tests.strip():
        raise ValueError("tests are empty")
    if entry_point is None:
        raise ValueError("tests need an entry_point: the name of the function they test")
    if not entry_point.isidentifier() or keyword.iskeyword(entry_point):
        raise ValueError(f"entry_point must be a Python name, got {entry_point[:60]!r}")
    tree = _parsed(tests, "tests")
    if code_prefix is not None:
        _parsed(code_prefix, "code_prefix")
    if any(isinstance(n, ast.AsyncFunctionDef) and n.name == "check" for n in tree.body):
        raise ValueError("tests define async def check(candidate): it would never run; make it a plain def")
    check = check_function(tree)
    if check is not None:
        if not check.args.args and not check.args.posonlyargs and check.args.vararg is None:
            raise ValueError("tests define check() without a parameter: HumanEval's check(candidate) is called with "
                             "the entry point")
    elif not any(_runs(node) for node in tree.body):
        raise ValueError("tests run nothing at the top level (only definitions, imports or a __main__ block): give "
                         "asserts, such as assert f(1) == 2, or HumanEval's def check(candidate)")


def _parsed(code: str, what: str) -> ast.Module:
    verb = "does" if what == "code_prefix" else "do"
    try:
        return ast.parse(code, what)
    except SyntaxError as e:
        raise ValueError(f"{what} {verb} not compile (line {e.lineno}: {e.msg})") from None
    except ValueError as e:  # a NUL byte
        raise ValueError(f"{what} {verb} not compile ({e})") from None


def check_function(tree: ast.Module) -> ast.FunctionDef | None:
    """HumanEval's ``def check(candidate)`` at the top level of parsed tests, or None (one rule for the
    validation here and for the program that calls it)."""
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)


def _runs(node) -> bool:
    """Whether a top-level statement of the tests asserts or calls something when the program runs (outside
    definitions, and outside an ``if __name__ == "__main__":`` block: the program is not ``__main__``)."""
    if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
        return any(_runs(n) for n in node.orelse)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
        return False
    if isinstance(node, (ast.Assert, ast.Call, ast.Raise)):
        return True
    return any(_runs(child) for child in ast.iter_child_nodes(node))


# ---------------------------------------------------------------------------- numbers

_MINUS = "-\u2212"  # ASCII hyphen-minus, Unicode minus sign
# \frac{3}{4}, \dfrac{-1}{2}, -\frac12 (LaTeX's one-digit shorthand); then plain numbers
_FRAC_TEXT = r"[-+\u2212]?\\[dt]?frac(?:\{\s*[-+\u2212]?\d+\s*\}\{\s*\d+\s*\}|\d\d)"
_PLAIN = r"[-+\u2212]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?%?|[-+\u2212]?\$?\.\d+%?"
NUMBER = re.compile(f"{_FRAC_TEXT}|{_PLAIN}")
_FRAC = re.compile(r"([-+\u2212]?)\\[dt]?frac(?:\{\s*([-+\u2212]?\d+)\s*\}\{\s*(\d+)\s*\}|(\d)(\d))")


def parse_number(text: str) -> Fraction | None:
    """The exact value of a number written in ``text`` alone, or None: an optional sign, ``$``, thousands
    separated by commas (``1,234``), a decimal point, a fraction ``3/4`` or ``\\frac{3}{4}``, a trailing ``%``
    or period; LaTeX ``$...$`` and ``\\!``/``\\,`` spacing are ignored."""
    t = _number_token(text)
    return None if t is None else number_value(t)


def _number_token(text: str) -> str | None:
    """``text`` as one :data:`NUMBER` token (LaTeX and spacing dropped, as :func:`parse_number` reads it), or None."""
    t = text.strip().strip("$").replace("\\!", "").replace("\\,", "").replace("\\ ", "").replace("{,}", ",")
    t = t.strip().removesuffix(".").strip()
    return t if NUMBER.fullmatch(t) else None


MAX_NUMBER = 100  # characters: a longer run of digits is no number (degenerate samples repeat digits)


def number_value(token: str) -> Fraction | None:
    """The value of a token that :data:`NUMBER` matched (None for a zero denominator or a run of more than
    :data:`MAX_NUMBER` characters)."""
    if len(token) > MAX_NUMBER:
        return None
    m = _FRAC.fullmatch(token)
    if m:
        num, den = (m.group(2), m.group(3)) if m.group(2) is not None else (m.group(4), m.group(5))
        sign = -1 if m.group(1) and m.group(1) in _MINUS else 1
        num = num.replace("\u2212", "-")
        return sign * Fraction(int(num), int(den)) if int(den) else None
    t = token.replace(",", "").replace("$", "").removesuffix("%")
    sign = -1 if t[:1] in _MINUS else 1
    t = t.lstrip("+" + _MINUS)
    if "/" in t:
        num, den = t.split("/")
        return sign * Fraction(int(num), int(den)) if int(den) else None
    return sign * Fraction(t)


def show_number(value: Fraction) -> str:
    """A canonical spelling: ``42``, ``-0.5``, ``1/3`` (what majority vote counts)."""
    if value.denominator == 1:
        return str(value.numerator)
    try:
        decimal = value.numerator / value.denominator
    except OverflowError:
        return f"{value.numerator}/{value.denominator}"
    return repr(decimal) if Fraction(repr(decimal)) == value else f"{value.numerator}/{value.denominator}"
