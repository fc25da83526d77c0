"""Answer extraction, accuracy, majority vote and the pass@k estimator, against hand computations."""

import math
from fractions import Fraction

import pytest

from evalkit.checks import Checks, make_checks, parse_number
from evalkit.scoring.metric import Group
from evalkit.settings import Setting
from evalkit_metrics import answers
from evalkit_metrics.answers import Accuracy, MajorityVote, extract, majority
from evalkit_metrics.pass_at_k import extract_code, pass_at_k, program

NUMBER = make_checks(answer=42)


@pytest.mark.parametrize("text, value", [
    ("42", 42), ("-7", -7), ("\u22127", -7), ("+3", 3), ("1,234", 1234), ("1,234,567.5", Fraction(2469135, 2)),
    ("$1,000", 1000), ("42.", 42), ("42.0", 42), ("0.5", Fraction(1, 2)), (".5", Fraction(1, 2)),
    ("3/4", Fraction(3, 4)), ("\\frac{3}{4}", Fraction(3, 4)), ("\\dfrac{-1}{2}", Fraction(-1, 2)), ("50%", 50),
    ("$42$", 42), ("10\\,000", 10000), ("1{,}000", 1000), ("-\\frac{1}{2}", Fraction(-1, 2)),
    ("\\frac12", Fraction(1, 2)),
    ("\u2212\\tfrac{3}{4}", Fraction(-3, 4)),
    ("abc", None), ("1,23", None), ("", None), ("4 2", None), ("1/0", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text, mode, expected", [
    # GSM8K's marker, "the answer is", \boxed{} (the last marker wins over numbers after it)
    ("She has 3 apples, then 5 more. #### 8", "strict", "8"),
    ("So 6 * 7 = 42.\nThe answer is 42.", "strict", "42"),
    ("The answer is: -12", "flexible", "-12"),
    ("Final answer: $1,200.", "strict", "1200"),
    ("We get \\boxed{\\frac{84}{2}} so 21 is wrong", "strict", "42"),
    ("\\boxed{42} and later \\boxed{41}", "strict", "41"),
    ("\\boxed{{42}}", "strict", "42"),
    ("The answer is 42 apples, not 43", "strict", "42"),
    # no marker: strict takes the text only when it is the answer alone; flexible takes the last number
    ("42.", "strict", "42"),
    ("It is 40, or maybe 42.", "strict", None),
    ("It is 40, or maybe 42.", "flexible", "42"),
    ("Costs went from 1,000 to 2,500.", "flexible", "2500"),
    ("no numbers here", "flexible", None),
    ("-3.50", "strict", "-3.5"),
    ("\\boxed{-\\frac{84}{2}}", "strict", "-42"),
    ("#### -\\frac{84}{2}", "strict", "-42"),
    ("so $-\\frac{84}{2}$", "flexible", "-42"),
    ("\\boxed{1{,}042}", "strict", "1042"),
    ("The answer is: 42", "strict", "42"),
    ("The answer isn't 41; it is 42.", "flexible", "42"),
    # a Markdown heading is no GSM8K marker; the last marker in the text wins, whichever kind
    ("#### Step 1: add\n#### Step 2: total\nThe answer is 42.", "strict", "42"),
    ("#### Step 2\nSo the answer is 42.", "strict", "42"),
    ("The answer is 41.\n#### 42", "strict", "42"),
    ("#### Notes\nnothing to add", "strict", None),
    # a worked sum: its result, not its first term; an = elsewhere is no sum
    ("The answer is: 12 - 5 + 35 = 42", "strict", "42"),
    ("To find the answer: 50 - 8 = 42.", "strict", "42"),
    ("The answer is 42 (since x=3)", "strict", "42"), ("The answer is 42 (x >= 5)", "strict", "42"),
    # GSM8K's marker goes first, whatever follows it
    ("#### 42\nThe answer is below", "strict", "42"),
    # "answer:" alone on its line: the next non-empty line (as docs/tasks.md says), and only that line
    ("Answer:\n\n42\n43", "strict", "42"),
])
def test_number_extraction(text, mode, expected):
    assert extract(text, NUMBER, mode) == expected


@pytest.mark.parametrize("text, mode, expected", [
    ("The answer is (B).", "strict", "B"), ("Answer: C", "strict", "C"), ("(D)", "strict", "D"), ("a.", "strict", "A"),
    ("I pick (A) over (C) in the end", "flexible", "C"), ("I pick (A) over (C) in the end", "strict", None),
    ("\\boxed{E}", "strict", "E"), ("A cat sat", "flexible", None),
    ("The answer is (b).", "strict", "B"), ("The answer is c.", "strict", "C"),
    ("Answer: I believe it is C", "strict", "C"),
    ("Answer: C is right", "strict", "C"), ("Answer: it is A.", "strict", "A"), ("Answer: b) Canberra", "strict", "B"),
    # A is a choice like any other: leading the span, before a reason or another letter
    ("The answer is A because Sydney is big.", "strict", "A"), ("The answer is A, not B.", "strict", "A"),
    ("The answer is B because Canberra.", "strict", "B"), ("Answer: I think it is D", "strict", "D"),
    ("Answer: A lot depends, but B", "strict", "B"), ("Answer: A is right", "strict", "A"),
    # without a marker, flexible takes a bare letter alone too (as strict does), not a letter inside a sentence
    ("B", "flexible", "B"), ("b.", "flexible", "B"), ("I think B", "flexible", None),
    # a hedge names no answer: the letter taken is one of alternatives the span joins ("A or B" scored 1 for B)
    ("The answer is A or B", "flexible", None), ("The answer is B or C.", "strict", None),
    ("Answer: (a) or (b)", "flexible", None), ("The answer is either A or B", "flexible", None),
    ("Answer: A, B or C", "flexible", None), ("Answer: B/C", "flexible", None), ("Answer: A & B", "flexible", None),
    ("The answer is A or maybe B", "flexible", None), ("The answer is (B) and (C)", "flexible", None),
    # other letters beside the answer are no hedge
    ("The answer is B. A and C are wrong.", "strict", "B"), ("Answer: A and C are both wrong, so B", "strict", "B"),
    ("The answer is B, not (C)", "strict", "B"), ("The answer is (B) or, in other words, B", "strict", "B"),
])
def test_choice_extraction(text, mode, expected):
    assert extract(text, make_checks(answer="B", answer_format="choice"), mode) == expected


def test_exact_and_regex_extraction():
    exact = make_checks(answer="Paris")
    assert extract("The answer is **Paris**.", exact) == "paris"
    assert extract("  paris!  ", exact) == "paris"
    assert extract("Paris, France", exact) == "paris, france"
    assert extract("The answer is: Canberra.", exact) == "canberra"
    regex = make_checks(answer="yes", answer_format="regex", answer_pattern=r"verdict: (\w+)")
    assert extract("verdict: no ... verdict: Yes", regex) == "yes"
    assert extract("nothing", regex) is None
    whole = make_checks(answer="ab12", answer_format="regex", answer_pattern=r"[a-z]+\d+")
    assert extract("id ab12.", whole) == "ab12"
    optional = make_checks(answer="no", answer_format="regex", answer_pattern=r"verdict:\s*(yes|no)?")
    assert extract("verdict: maybe", optional) is None and extract("verdict: no.", optional) == "no"


def test_a_pattern_that_backtracks_catastrophically_gives_up_with_its_reason(monkeypatch):
    # (a|aa)+$ on 32 a's and a "!" takes about a Fibonacci(32) of steps: seconds of CPU time, 100 times the limit
    # set here (the limit counts CPU time, so a loaded machine does not trip it early)
    monkeypatch.setattr(answers, "PATTERN_CPU_S", 0.02)
    slow = make_checks(answer="a", answer_format="regex", answer_pattern=r"(a|aa)+$")
    accuracy = Accuracy(Accuracy.Params())
    s = accuracy.compute(group(["a", "a" * 32 + "!", "a"], slow))
    assert math.isnan(s.value) and "answer_pattern '(a|aa)+$' gave up after 0.02 s of CPU time" in s.reason
    assert "prompt 'p'" in s.reason and "\n" not in s.reason
    # the pattern is not searched again: another prompt's group with it is unscored for the same reason, at once
    again = accuracy.compute(group(["a"], slow, pid="q"))
    assert math.isnan(again.value) and again.reason == s.reason
    assert math.isnan(MajorityVote(MajorityVote.Params()).compute(group(["a" * 32 + "!"], slow)).value)
    # the pattern: nested repeats that the regex engine matches without backtracking (no answer, at once)
    nested = make_checks(answer="a", answer_format="regex", answer_pattern=r"(a+)+$")
    assert extract("a" * 34 + "!", nested) is None and extract("xaaa", nested) == "aaa"


@pytest.mark.parametrize("kwargs, message", [
    ({"answer": "forty"}, None),  # exact by default for text
    ({"answer": "forty", "answer_format": "number"}, "is not a number"),
    ({"answer": "BB", "answer_format": "choice"}, "is not one letter"),
    # a number longer than extraction reads is a number still: said so, and how to compare it instead
    ({"answer": "9" * 5000, "answer_format": "number"},
     r"^answer is a number of 5000 characters, and numbers of more than 100 are not read .* \(answer_format: exact\)$"),
    ({"answer": int("7" * 200)}, "answer is a number of 200 characters"),
    ({"answer": "x", "answer_format": "regex"}, "needs an answer_pattern"),
    ({"answer": "x", "answer_format": "regex", "answer_pattern": "(a)(b)"}, "at most one"),
    ({"answer": "x", "answer_format": "regex", "answer_pattern": "("}, "not a regular expression"),
    ({"answer": "x", "answer_pattern": "a"}, "only read with answer_format regex"),
    ({"answer": "  "}, "answer is empty"),
    ({"answer": True}, "text or a number"),
    ({"answer": "x", "answer_format": "roman"}, "must be one of"),
    ({"tests": "assert f(1) == 1"}, "need an entry_point"),
    ({"tests": "assert f(1) ==", "entry_point": "f"}, r"do not compile \(line 1"),
    ({"tests": "assert True", "entry_point": "not a name"}, "must be a Python name"),
    ({"entry_point": "f"}, "without tests"),
    ({"answer_format": "number"}, "without an answer"),
    ({"tests": "assert True", "entry_point": "class"}, "must be a Python name"),
    ({"tests": "def check():\n    assert True", "entry_point": "f"}, r"check\(\) without a parameter"),
    ({"tests": "def test_f():\n    assert f(1) == 1", "entry_point": "f"}, "tests run nothing at the top level"),
    ({"tests": "import unittest\nclass T(unittest.TestCase):\n    def test(self):\n        assert f()\n"
               "if __name__ == '__main__':\n    unittest.main()", "entry_point": "f"}, "tests run nothing"),
    ({"tests": "assert f(1) == 1", "entry_point": "f", "code_prefix": "def f(:"}, "code_prefix does not compile"),
])
def test_bad_checks(kwargs, message):
    if message is None:
        assert make_checks(**kwargs).answer_format == "exact"
        return
    with pytest.raises(ValueError, match=message):
        make_checks(**kwargs)


def test_checks_compare_numeric_answers_by_value_and_write_floats_out():
    assert make_checks(answer=0.0000001).answer == "0.0000001"
    assert make_checks(answer=42).same_as(make_checks(answer="42.0", answer_format="number"))
    assert not make_checks(answer=42).same_as(make_checks(answer=43))
    assert not make_checks(answer="42").same_as(make_checks(answer=42))  # text against a number


def group(texts, checks, pid="p"):
    return Group(prompt_id=pid, prompt="q", setting=Setting(temperature=1.0), texts=tuple(texts), token_ids=(),
                 checks=checks)


def test_accuracy_per_sample_and_mean():
    g = group(["#### 1,000", "The answer is 1000.0", "I think 999", "1000", "nothing"],
              make_checks(answer="1000", answer_format="number"))
    s = Accuracy(Accuracy.Params()).compute(g)
    assert s.per_sample == (1.0, 1.0, 0.0, 1.0, 0.0) and s.value == pytest.approx(0.6)
    strict = Accuracy(Accuracy.Params(extract="strict")).compute(group(["It is 40 or 1000"], make_checks(answer=1000)))
    assert strict.value == 0.0
    undefined = Accuracy(Accuracy.Params()).compute(group(["1"], None))
    assert math.isnan(undefined.value) and "has no answer" in undefined.reason


def test_majority_vote_counts_values_and_breaks_ties_by_first_appearance():
    assert majority(["42", None, "41", "41", None, None]) == "41"  # no answer never votes
    assert majority(["7", "8", "8", "7"]) == "7"  # tie: the first to appear
    assert majority([None, None]) is None
    mv = MajorityVote(MajorityVote.Params())
    # 42, 42.0 and "#### 42" are one answer (numbers vote by value): 3 votes against two for 41
    assert mv.compute(group(["42", "41", "The answer is 42.0", "41", "#### 42"], NUMBER)).value == 1.0
    assert mv.compute(group(["41", "42", "41"], NUMBER)).value == 0.0
    assert mv.compute(group(["no", "idea"], NUMBER)).value == 0.0  # no sample has an answer: wrong


def direct_pass_at_k(n, c, k):
    """1 - C(n-c, k) / C(n, k), exactly (math.comb is 0 when k > n - c)."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (5, 0, 5), (5, 5, 5), (5, 2, 5), (10, 3, 1), (10, 3, 5),
                                     (10, 0, 1), (10, 10, 1), (20, 1, 10), (200, 13, 1), (200, 13, 10), (200, 13, 100),
                                     (200, 199, 2), (1000, 7, 500)])
def test_pass_at_k_equals_the_direct_computation(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(direct_pass_at_k(n, c, k), rel=1e-12, abs=1e-15)


def test_pass_at_1_is_the_pass_rate_and_bad_arguments_raise():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    for n, c, k in ((3, 1, 4), (3, 4, 1), (3, 1, 0)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_code_extraction_and_program():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nand ```x```") == "def f():\n    return 1\n"
    assert extract_code("```\nunclosed = 1\n") == "unclosed = 1\n"
    assert extract_code("def f(): return 2") == "def f(): return 2"
    he = Checks(tests="def check(candidate):\n    assert candidate(2) == 3\n", entry_point="inc",
                code_prefix="def inc(x):\n    \"\"\"x + 1\"\"\"\n")
    p = program("    return x + 1\n", he)
    assert p.prefix == he.code_prefix and p.code == "    return x + 1\n" and p.entry_point == "inc"
    assert p.tests.startswith(he.tests) and p.tests.rstrip().endswith("check(inc)")
    plain = Checks(tests="assert inc(2) == 3", entry_point="inc")
    assert "check(" not in program("def inc(x): return x + 1", plain).tests
