"""Prompts with checks, end to end: sweeps and `evalkit score` with accuracy, majority vote and pass@k."""

import json
import math

import pytest
from typer.testing import CliRunner

import evalkit
from evalkit.api import score_file
from evalkit.cli import app
from evalkit.config import config_from_dict
from evalkit.errors import ConfigError
from evalkit.prompts import load_prompts
from evalkit.sandbox import Sandbox
from evalkit_metrics.answers import correct
from evalkit_metrics.pass_at_k import pass_at_k

from conftest import base_config, write_jsonl

ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
HE_PREFIX = 'def add(a, b):\n    """Return a + b."""\n'
HE_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 0) == 0\n"


def test_score_file_with_answers_and_tests(tmp_path, sandboxed):
    rows = [
        # code: 2 of 3 samples pass (a fenced block, a bare function); the third is wrong
        {"prompt_id": "add", "prompt": "Write add(a, b).", "tests": ADD_TESTS, "entry_point": "add",
         "text": "Sure:\n```python\ndef add(a, b):\n    return a + b\n```"},
        {"prompt_id": "add", "text": "def add(a, b):\n    return b + a", "tests": ADD_TESTS, "entry_point": "add"},
        {"prompt_id": "add", "text": "def add(a, b):\n    return a - b"},
        # HumanEval style: the completion continues the prompt (code_prefix)
        {"prompt_id": "he", "prompt": HE_PREFIX, "tests": HE_TEST, "entry_point": "add", "code_prefix": HE_PREFIX,
         "text": "    return a + b\n"},
        {"prompt_id": "he", "text": "    while True:\n        pass\n"},
        {"prompt_id": "he", "text": "    import os\n    os.remove('/etc/hostname')\n"},
        # math: 1,000 and 1000.0 are right; 999 is wrong; majority 1000
        {"prompt_id": "m", "prompt": "10 * 100?", "answer": "1000", "answer_format": "number",
         "text": "10 * 100 = 1,000.\n#### 1,000"},
        {"prompt_id": "m", "text": "The answer is 1000.0"},
        {"prompt_id": "m", "text": "I get 999"},
    ]
    path = write_jsonl(tmp_path / "gens.jsonl", rows)
    metrics = ["pass_at_k[k=1,timeout=2]", "pass_at_k[k=2,timeout=2]", "accuracy", "majority_vote"]
    run = score_file(path, metrics, tmp_path / "scored", progress=False)
    scores = run.scores.set_index(["prompt_id", "metric"])["value"]
    assert scores[("add", "pass_at_1[timeout=2]")] == pytest.approx(2 / 3)
    assert scores[("add", "pass_at_2[timeout=2]")] == pytest.approx(pass_at_k(3, 2, 2)) == 1.0
    assert scores[("he", "pass_at_1[timeout=2]")] == pytest.approx(1 / 3)
    assert scores[("he", "pass_at_2[timeout=2]")] == pytest.approx(1 - 1 / 3)  # 1 - C(2,2)/C(3,2)
    assert scores[("m", "accuracy[extract=flexible]")] == pytest.approx(2 / 3)
    assert scores[("m", "majority_vote[extract=flexible]")] == 1.0
    # a prompt without the check has no value, with a reason
    reasons = run.scores.set_index(["prompt_id", "metric"])["reason"]
    assert math.isnan(scores[("m", "pass_at_1[timeout=2]")])
    assert "has no tests" in reasons[("m", "pass_at_1[timeout=2]")]
    assert "has no answer" in reasons[("add", "accuracy[extract=flexible]")]
    # per-sample passes are kept; the checks that judged them stay with the scores
    per = run.sample_scores[run.sample_scores["metric"] == "pass_at_1[timeout=2]"]
    assert per.sort_values(["prompt_id", "sample_index"])["value"].tolist() == [1, 1, 0, 1, 0, 0]
    kept = [json.loads(line) for line in (tmp_path / "scored" / "prompts.jsonl").read_text().splitlines()]
    assert {p["id"]: p.get("checks", {}).get("entry_point") for p in kept} == {"add": "add", "he": "add", "m": None}


def test_the_cli_scores_the_issue_command(tmp_path, sandboxed):
    rows = [{"prompt_id": "q", "prompt": "2+2?", "answer": 4, "text": t} for t in ("4", "four", "#### 4")]
    rows += [{"prompt_id": "c", "prompt": "sq", "tests": "assert sq(3) == 9", "entry_point": "sq",
              "text": f"def sq(x): return x * {m}"} for m in ("x", "2", "x", "x", "x")]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    result = CliRunner().invoke(app, ["score", str(path), "--metrics",
                                      "pass_at_k[k=1],pass_at_k[k=5],accuracy,majority_vote", "-o",
                                      str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    s = evalkit.load_run(tmp_path / "out").scores.set_index(["prompt_id", "metric"])["value"]
    assert s[("c", "pass_at_1[timeout=3]")] == pytest.approx(4 / 5) and s[("c", "pass_at_5[timeout=3]")] == 1.0
    assert s[("q", "accuracy[extract=flexible]")] == pytest.approx(2 / 3)


def test_pass_at_k_beyond_the_samples_is_undefined(tmp_path, sandboxed):
    path = write_jsonl(tmp_path / "g.jsonl", [{"prompt_id": "c", "prompt": "x", "tests": "assert f() == 1",
                                               "entry_point": "f", "text": "def f(): return 1"}] * 1)
    run = score_file(path, ["pass_at_k[k=2]"], tmp_path / "o", progress=False)
    row = run.scores.iloc[0]
    assert math.isnan(row["value"]) and row["reason"] == "pass@2 needs at least 2 samples per prompt and setting, got 1"


def test_a_sweep_with_checks_scores_its_own_samples(tiny_model, tmp_path, sandboxed):
    prompts = [{"id": "sum", "prompt": "What is 2 + 3?", "answer": 5},
               {"id": "pick", "prompt": "Pick A or B.", "answer": "B", "answer_format": "choice"},
               {"id": "code", "prompt": "Write inc(x).", "tests": "assert inc(1) == 2", "entry_point": "inc"}]
    config = base_config(tiny_model, tmp_path / "runs", prompts=prompts, samples_per_prompt=3,
                         metrics=["accuracy", "majority_vote[extract=strict]", "pass_at_k[k=1]", "pass_at_k[k=3]"])
    run = evalkit.run_sweep(config_from_dict(config), progress=False)
    samples, scores = run.samples, run.scores.set_index(["setting_id", "prompt_id", "metric"])["value"]
    checks = {p.id: p.checks for p in load_prompts(config_from_dict(config))}
    for (sid, pid), df in samples.groupby(["setting_id", "prompt_id"]):
        if pid == "code":
            # random weights write no working code: every sample fails, and pass@k says so
            assert scores[(sid, pid, "pass_at_1[timeout=3]")] == 0.0 == scores[(sid, pid, "pass_at_3[timeout=3]")]
            continue
        expected = sum(correct(t, checks[pid]) for t in df["text"]) / len(df)
        assert scores[(sid, pid, "accuracy[extract=flexible]")] == pytest.approx(expected)
        assert math.isnan(scores[(sid, pid, "pass_at_1[timeout=3]")])
    kept = [json.loads(line) for line in (run.path / "prompts.jsonl").read_text().splitlines()]
    assert kept[0]["checks"] == {"answer": "5", "answer_format": "number"}
    assert kept[2]["checks"]["tests"] == "assert inc(1) == 2"


# a completion whose docstring shows a fenced example: in completion mode it is code, fences and all
FENCED_DOCSTRING = '    """Add.\n\n    ```python\n    >>> add(1, 2)\n    ```\n    """\n    return a + b\n'


def test_fences_in_completion_mode_code_are_code_not_markup(tmp_path, sandboxed):
    from dataclasses import replace

    from evalkit.checks import make_checks
    from evalkit_metrics.pass_at_k import program

    he = make_checks(tests=HE_TEST, entry_point="add", code_prefix=HE_PREFIX)
    completion = replace(he, completion=True)
    assert FENCED_DOCSTRING in program(FENCED_DOCSTRING, completion).code
    assert program(FENCED_DOCSTRING, he).code.count(">>> add") == 1  # chat mode: the fenced block is the code
    passed = [o.passed for o in Sandbox().run_many([program(FENCED_DOCSTRING, completion),
                                                    program(FENCED_DOCSTRING, he)])]
    assert passed == [True, False]
    assert completion.as_json() == he.as_json()  # prompts.jsonl keeps the prompt's checks; chat_template says the mode


@pytest.mark.parametrize("chat_template, completion", [(False, True), ("auto", False)])
def test_a_sweep_scores_code_by_how_its_prompts_were_rendered(tiny_model, tmp_path, monkeypatch, chat_template,
                                                               completion):
    import evalkit.pipeline

    seen = {}
    score = evalkit.pipeline.score_and_complete
    monkeypatch.setattr(evalkit.pipeline, "score_and_complete",
                        lambda writer, samples, scoring, ui, **kw: seen.update(scoring.checks) or
                        score(writer, samples, scoring, ui, **kw))
    prompts = {"items": [{"id": "he", "prompt": HE_PREFIX, "tests": HE_TEST, "entry_point": "add",
                          "code_prefix": HE_PREFIX}, {"id": "n", "prompt": "2+2?", "answer": 4}],
               "chat_template": chat_template}
    config = base_config(tiny_model, tmp_path / "runs", prompts=prompts, samples_per_prompt=1, max_new_tokens=2,
                         grid={"temperature": [1.0]}, metrics=["accuracy"])
    run = evalkit.run_sweep(config_from_dict(config), progress=False)
    assert {pid: c.completion for pid, c in seen.items()} == {"he": completion, "n": completion}
    kept = [json.loads(line) for line in (run.path / "prompts.jsonl").read_text().splitlines()]
    assert [p["chat_template"] for p in kept] == [not completion] * 2 and "completion" not in kept[0]["checks"]


def test_humaneval_and_gsm8k_files(tmp_path):
    he = write_jsonl(tmp_path / "he.jsonl", [{"task_id": "HumanEval/0", "prompt": HE_PREFIX, "test": HE_TEST,
                                              "entry_point": "add", "canonical_solution": "    return a + b\n"}])
    gsm = write_jsonl(tmp_path / "gsm.jsonl", [
        {"question": "Tom has 3 boxes of 400 pens. How many pens?",
         "answer": "3 * 400 = <<3*400=1200>>1200\n#### 1,200"},
        {"question": "It is 5 degrees below zero.", "answer": "#### -5"}])
    p = load_prompts(config_from_dict({"name": "t", "prompts": {"file": str(he), "format": "humaneval"}}))
    assert p[0].id == "HumanEval/0" and p[0].text == HE_PREFIX
    assert (p[0].checks.tests, p[0].checks.entry_point, p[0].checks.code_prefix) == (HE_TEST, "add", HE_PREFIX)
    g = load_prompts(config_from_dict({"name": "t", "prompts": {"file": str(gsm), "format": "gsm8k"}}))
    assert [q.id for q in g] == ["p0", "p1"] and [q.checks.answer for q in g] == ["1,200", "-5"]
    assert correct("So 1200 pens.", g[0].checks) and correct("The answer is -5.", g[1].checks)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"task_id": "X/1", "prompt": "def f():", "entry_point": "f"}])
    with pytest.raises(ConfigError, match=r"bad.jsonl: line 1: a humaneval line needs task_id, prompt, test, "
                                          r"entry_point; missing test$"):
        load_prompts(config_from_dict({"name": "t", "prompts": {"file": str(bad), "format": "humaneval"}}))
    no_hashes = write_jsonl(tmp_path / "nh.jsonl", [{"question": "q", "answer": "just 5"}])
    with pytest.raises(ConfigError, match="line 1: a gsm8k answer ends in '#### N'"):
        load_prompts(config_from_dict({"name": "t", "prompts": {"file": str(no_hashes), "format": "gsm8k"}}))


@pytest.mark.parametrize("prompt, message", [
    ({"id": "broken", "prompt": "x", "tests": "assert f(1) ==", "entry_point": "f"},
     "prompts.items[0]: prompt 'broken': tests do not compile (line 1: invalid syntax)"),
    ({"id": "no-entry", "prompt": "x", "tests": "assert f(1) == 1"},
     "prompts.items[0]: prompt 'no-entry': tests need an entry_point: the name of the function they test"),
    ({"id": "nan", "prompt": "x", "answer": "lots", "answer_format": "number"},
     "prompts.items[0]: prompt 'nan': answer 'lots' is not a number (answer_format: number)"),
])
def test_bad_checks_are_refused_at_the_start_naming_the_prompt(prompt, message, tmp_path, write_config):
    path = write_config({"name": "t", "prompts": [prompt], "metrics": ["distinct_1"],
                         "output_dir": str(tmp_path / "runs")})
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and result.output.strip() == f"error: {path}: {message}"
    assert not (tmp_path / "runs").exists()


def test_a_code_metric_without_tests_is_refused_naming_the_metric(tmp_path, write_config):
    path = write_config({"name": "t", "prompts": [{"prompt": "x", "answer": 1}],
                         "metrics": ["accuracy", "pass_at_k[k=1]"], "output_dir": str(tmp_path / "runs")})
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {path}: metrics[1]: pass_at_1[timeout=3] needs prompts with tests, and "
                                     "no prompt has tests")
    rows = write_jsonl(tmp_path / "g.jsonl", [{"prompt_id": "a", "text": "x"}])
    result = CliRunner().invoke(app, ["score", str(rows), "--metrics", "majority_vote", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--metrics: majority_vote[extract=flexible] needs prompts with an answer" in \
        result.output


def test_score_rows_of_one_prompt_must_agree_on_checks(tmp_path):
    rows = [{"prompt_id": "a", "text": "1", "answer": 1}, {"prompt_id": "a", "text": "2", "answer": 2}]
    with pytest.raises(ConfigError, match=r"line 2: prompt 'a' has other checks \(answer, tests\) than on line 1"):
        score_file(write_jsonl(tmp_path / "g.jsonl", rows), ["accuracy"], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()



def test_the_report_draws_pass_at_k_against_temperature(tmp_path, sandboxed):
    from evalkit.report import write_report

    rows = []
    for t, right in ((0.2, (1, 1, 0, 0)), (0.8, (1, 0, 0, 0)), (1.2, (0, 0, 0, 1))):
        for i, ok in enumerate(right):
            rows.append({"prompt_id": "c", "prompt": "inc", "temperature": t, "sample_index": i,
                         "tests": "assert inc(1) == 2", "entry_point": "inc",
                         "text": f"def inc(x): return x + {1 if ok else 2}"})
    run = score_file(write_jsonl(tmp_path / "g.jsonl", rows), ["pass_at_k[k=1]", "pass_at_k[k=3]"], tmp_path / "o",
                     progress=False)
    means = run.summary.set_index(["setting_id", "metric"])["mean"]
    assert means[("t0.2-p1", "pass_at_1[timeout=3]")] == 0.5 and means[("t0.2-p1", "pass_at_3[timeout=3]")] == 1.0
    assert means[("t1.2-p1", "pass_at_3[timeout=3]")] == pytest.approx(pass_at_k(4, 1, 3)) == 0.75
    html = write_report([run.path], tmp_path / "r.html").read_text()
    section = html[html.index('<section id="pass-at-k">'):]
    section = section[:section.index("</section>")]
    assert "<svg" in section and "k=1" in section and "k=3" in section
    no_code = score_file(write_jsonl(tmp_path / "n.jsonl", [{"prompt_id": "a", "text": "x y"}]), ["distinct_1"],
                         tmp_path / "n", progress=False)
    assert 'id="pass-at-k"' not in write_report([no_code.path], tmp_path / "n.html").read_text()


def test_a_text_to_image_sweep_refuses_checks():
    from evalkit.kinds import TEXT_TO_IMAGE

    config = config_from_dict({"name": "t", "model": {"backend": "diffusers", "id": "some/model"},
                               "prompts": [{"id": "cat", "prompt": "a cat", "answer": 1}]})
    with pytest.raises(ConfigError, match="prompt 'cat' has an answer or tests, which judge texts"):
        TEXT_TO_IMAGE.check_prompts(load_prompts(config), config.source)


def test_the_summary_table_tells_two_variants_of_one_metric_apart(tmp_path):
    rows = [{"prompt_id": "q", "prompt": "2+2?", "answer": 4, "text": t} for t in ("It is 4 or 5", "4")]
    result = CliRunner().invoke(app, ["score", str(write_jsonl(tmp_path / "g.jsonl", rows)), "--metrics",
                                      "accuracy,accuracy[extract=strict],majority_vote", "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "setting" in line)
    assert "accuracy[extract=flexible]" in header and "accuracy[extract=strict]" in header
    assert "majority_vote[" not in header and "majority_vote" in header


def test_the_plan_counts_the_programs_to_run():
    from evalkit.api import plan_sweep

    config = config_from_dict({"name": "t", "samples_per_prompt": 3, "grid": {"temperature": [0.2, 0.8]},
                               "prompts": [{"id": "a", "prompt": "x", "tests": "assert f() == 1", "entry_point": "f"},
                                           {"id": "b", "prompt": "y"}], "metrics": ["pass_at_k[k=2]"]})
    assert dict(plan_sweep(config))["programs run in the sandbox, at most"] == "6"  # 1 prompt x 2 settings x 3
