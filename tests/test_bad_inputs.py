"""Every bad input of the README's table, through the CLI: exit 2, one line that matches the
README, no traceback, no run directory."""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evalkit.cli import app
from evalkit.rundir.lock import RunLock

from conftest import base_config

ROOT = Path(__file__).resolve().parents[1]


def readme_table() -> dict[str, str]:
    """case -> message, from the bad-input table of docs/sweeps.md (the README links it)."""
    text = (ROOT / "docs" / "sweeps.md").read_text(encoding="utf-8")
    section = text[text.index("## Bad inputs"):]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| .*? \| `(error: .*?)` \|$", section, re.M)
    return dict(rows)


def as_pattern(message: str) -> re.Pattern:
    parts = re.split(r"<[^>]+>", message)
    return re.compile("^" + ".+".join(re.escape(p) for p in parts) + "$")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_case(case: str, tmp_path: Path, tiny_model: Path) -> tuple[list[str], Path]:
    runs = tmp_path / "runs"
    config = base_config(tiny_model, runs)
    path = tmp_path / "sweep.yaml"
    extra: list[str] = []
    if case == "invalid-yaml":
        path.write_text("name: t\nprompts: [a, b\ngrid: {}\n")
        return [str(path)], runs
    if case == "duplicate-key":
        path.write_text(yaml.safe_dump(config) + "samples_per_prompt: 2\nsamples_per_prompt: 3\n")
        return [str(path)], runs
    if case == "config-device":
        return ["/dev/zero"], runs
    if case in ("number-digits", "nested"):
        extra_line = "seed: " + "9" * 5000 if case == "number-digits" else "x: " + "[" * 20000 + "]" * 20000
        path.write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "seed"}) + extra_line + "\n")
        return [str(path)], runs
    if case == "lone-surrogate":
        path.write_text(yaml.safe_dump(config).replace("prompt: Write a short story.",
                                                       'prompt: "Write \\ud800 a story."'))
        return [str(path)], runs
    if case == "not-gguf":
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "model.gguf").write_text("not a model")
        path.write_text(yaml.safe_dump({**config, "model": {"id": str(tmp_path / "m"), "gguf_file": "model.gguf"}}))
        return [str(path)], runs
    if case == "resume-locked":  # a stopped run that another writer holds
        stopped = tmp_path / "stopped"
        stopped.mkdir()
        (stopped / "manifest.json").write_text("{}")
        (stopped / "config.yaml").write_text(yaml.safe_dump(config))
        HELD.append(RunLock(stopped).acquire())
        return ["--resume", str(stopped)], runs
    gate = {"fail-on-metric": ["--baseline", "latest", "--fail-on", "self_bleu:+0.01"],
            "baseline-missing": ["--baseline", "20990101T000000Z-nope"],
            "junit-dir": ["--baseline", "latest", "--junit", str(tmp_path)],
            "junit-device": ["--baseline", "latest", "--junit", "/dev/null"]}
    if case in gate:
        path.write_text(yaml.safe_dump(config))
        return [str(path), *gate[case]], runs
    if case == "index-env":
        MONKEY.setenv("EVALKIT_INDEX", str(tmp_path))
        path.write_text(yaml.safe_dump(config))
        return [str(path)], runs
    if case == "cache-not-db":
        (tmp_path / "cache.sqlite").write_text("not a database, just text\n" * 10)
        MONKEY.setenv("EVALKIT_SAMPLE_CACHE", str(tmp_path / "cache.sqlite"))
        path.write_text(yaml.safe_dump(config))
        return [str(path)], runs
    changes = {
        "unknown-key": {"grid": {"temprature": [0.7]}},
        "wrong-type": {"samples_per_prompt": "four"},
        "temperature": {"grid": {"temperature": [-0.5]}},
        "top-p": {"grid": {"top_p": [1.5]}},
        "top-k": {"grid": {"top_k": [-1]}},
        "order-stage": {"grid": {"top_n_sigma": [1.0]}},
        "order-list": {"grid": {"settings": [{"top_p": 0.9, "order": ["top_k", "temperature"]}]}},
        "qualifier": {"grid": {"xtc_threshold": [0.2]}},
        "no-setting": {"grid": {"mirostat": [2], "top_k": [40], "order": ["llama_cpp"]}},
        "min-p": {"grid": {"min_p": [1.0]}},
        "samples": {"samples_per_prompt": 0},
        "seed-range": {"seed": 2**64},
        "infinite": {"ci": {"level": float("nan")}},
        "bool-number": {"samples_per_prompt": True},
        "index-special": {"index": "/dev/null"},
        "top-k-range": {"grid": {"top_k": [2**40]}},
        "resamples-range": {"ci": {"resamples": 10**9}},
        "grid-size": {"grid": {"temperature": [i / 10 for i in range(100)],
                               "top_p": [(i + 1) / 100 for i in range(100)],
                               "top_k": list(range(20))}},
        "sweep-size": {"samples_per_prompt": 100_000, "grid": {"temperature": [i / 10 for i in range(40)]}},
        "index-dir": {"index": str(tmp_path)},
        "index-not-db": {"index": str(tmp_path / "bad.jsonl")},
        "unknown-metric": {"metrics": ["distinct_1", "self_blue"]},
        "empty-prompts": {"prompts": []},
        "prompt-file-missing": {"prompts": {"file": "missing.jsonl"}},
        "prompt-package": {"prompts": {"file": "package:no_such_package/x.jsonl"}},
        "prompt-file-json": {"prompts": {"file": "bad.jsonl"}},
        "prompt-file-utf8": {"prompts": {"file": "latin1.jsonl"}},
        "model-path": {"model": {"id": str(tmp_path / "no-model")}},
        "model-hash": {"model": {"id": str(tiny_model), "sha256": "0" * 64}},
        "prompt-too-long": {"max_new_tokens": 120},
        "device": {"model": {"id": str(tiny_model), "device": "cuda"}},
        "output-dir": {"output_dir": str(tmp_path / "a-file" / "runs")},
        "image-metric": {"metrics": ["distinct_1", "clip_image_diversity"]},
        "prompt-image": {"model": {"backend": "vlm", "id": str(tiny_model)},
                         "prompts": [{"id": "cat", "image": "missing.png", "prompt": "What is it?"}]},
        "tests-compile": {"prompts": [{"id": "add", "prompt": "Write add(a, b).", "entry_point": "add",
                                       "tests": "assert add(1, 2) == 3\nassert add(2, 2) =="}]},
        "tests-entry-point": {"prompts": [{"id": "add", "prompt": "Write add(a, b).",
                                           "tests": "assert add(1, 2) == 3"}]},
        "answer-format": {"prompts": [{"id": "sum", "prompt": "1 + 2?", "answer": "three", "answer_format": "number"}]},
        "code-metric": {"metrics": ["distinct_1", "pass_at_k[k=1]"]},
        "reference-metric": {"metrics": ["distinct_1", "mauve"]},
        "reference-prompt": {"metrics": ["zipf"], "references": "refs.jsonl"},
        "ray-workers": {"executor": {"kind": "ray", "workers": 0}},
        "ray-address": {"executor": {"kind": "ray", "address": f"127.0.0.1:{closed_port()}"}},
        "unhonoured-knob": {"model": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "id": "smollm2"},
                            "grid": {"order": ["sglang"]}},
        "unknown-backend": {"model": {"backend": "hff"}},
        "other-backends-field": {"model": {"backend": "hf", "base_url": "http://127.0.0.1:9/v1"}},
        "served-credentials": {"model": {"backend": "openai", "base_url": "http://user:secret@127.0.0.1:9/v1",
                                         "id": "smollm2"}},
        "served-key": {"model": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "id": "smollm2",
                                 "api_key_env": "EVALKIT_UNSET_KEY"}},
        "served-entropy": {"model": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "id": "smollm2"},
                           "metrics": ["distinct_1", "token_entropy"]},
        "served-unreachable": {"model": {"backend": "openai", "base_url": f"http://127.0.0.1:{closed_port()}/v1",
                                         "id": "smollm2"}},
        "judge-missing": {"metrics": ["distinct_1", "judge_score[rubric=story]"]},
        "judge-rubric": {"metrics": ["distinct_1", "judge_score[rubric=stroy]"],
                         "judge": {"base_url": "http://127.0.0.1:9/v1", "id": "judge"}},
        "vllm-missing": {"model": {"backend": "vllm", "id": str(tiny_model)}},
        "vllm-engine-args": {"model": {"backend": "vllm", "id": str(tiny_model), "engine_args": {"seed": 7}}},
        "vlm-model": {"model": {"backend": "vlm", "id": str(tiny_model)},
                      "prompts": [{"id": "house", "image": str(ROOT / "configs/images/house.png"),
                                   "prompt": "What is it?"}]},
    }[case]
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": \n')
    (tmp_path / "latin1.jsonl").write_bytes('{"id": "a", "prompt": "caf\u00e9"}\n'.encode("latin-1"))
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "refs.jsonl").write_text('{"prompt_id": "en", "text": "x"}\n{"prompt_id": "fr", "text": "y"}\n')
    path.write_text(yaml.safe_dump({**config, **changes}, allow_unicode=True))
    return [str(path), *extra], runs


CASES = ["invalid-yaml", "duplicate-key", "unknown-key", "wrong-type", "temperature", "top-p", "top-k", "min-p",
         "samples", "seed-range", "infinite", "bool-number", "config-device", "number-digits", "nested",
         "lone-surrogate", "not-gguf", "index-special", "top-k-range", "resamples-range", "grid-size", "sweep-size",
         "index-dir",
         "index-not-db", "index-env", "cache-not-db", "fail-on-metric", "baseline-missing", "junit-dir", "junit-device",
         "resume-locked",
         "unknown-metric", "empty-prompts", "prompt-file-missing", "prompt-package", "prompt-file-json",
         "prompt-file-utf8",
         "model-path", "model-hash", "prompt-too-long", "device", "output-dir", "image-metric", "prompt-image",
         "tests-compile", "tests-entry-point", "answer-format", "code-metric", "reference-metric",
         "reference-prompt", "vlm-model", "served-credentials",
         "served-key", "served-entropy", "served-unreachable", "judge-missing", "judge-rubric", "vllm-missing",
         "vllm-engine-args",
         "unhonoured-knob", "order-stage", "order-list", "qualifier", "no-setting", "unknown-backend",
         "other-backends-field",
         "ray-workers", "ray-address"]


def test_readme_lists_every_case():
    assert sorted(readme_table()) == sorted(CASES)


HELD: list = []  # run locks a case holds while the command runs
MONKEY = pytest.MonkeyPatch()


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, tmp_path, tiny_model):
    import torch

    if case == "device" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if case.startswith("ray-") and case != "ray-workers":
        pytest.importorskip("ray")
    if case == "vllm-missing" and importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    try:
        args, runs = make_case(case, tmp_path, tiny_model)
        result = CliRunner().invoke(app, ["run", *args])
    finally:
        MONKEY.undo()
        while HELD:
            HELD.pop().release()
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert as_pattern(readme_table()[case]).match(lines[0]), (lines[0], readme_table()[case])
    assert not runs.exists() or not any(runs.iterdir())


def test_every_config_error_is_shown_one_line_each(tmp_path, tiny_model):
    """A missing field and a typo: both said in one run, not one per run."""
    config = base_config(tiny_model, tmp_path / "runs", grid={"temprature": [0.7], "topp": [0.9]},
                         samples_per_prompt=0)
    del config["prompts"]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: prompts: Field required",
        f"error: {path}: grid: unknown key 'temprature' (did you mean 'temperature'?)",
        f"error: {path}: grid: unknown key 'topp' (did you mean 'top_p'?)",  # every unknown key of a section
        f"error: {path}: samples_per_prompt: Input should be greater than or equal to 1, got 0",
    ]


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_a_model_cache_that_is_not_a_folder_is_one_line(where, tmp_path, tiny_model, monkeypatch):
    """$EVALKIT_CACHE (where the embedded model's conversion is kept) naming a file, or a path under one."""
    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    monkeypatch.setenv("EVALKIT_CACHE", str(blocker if where == "file" else blocker / "evalkit"))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**base_config(tiny_model, tmp_path / "runs"), "model": "default"}))
    result = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: $EVALKIT_CACHE: {blocker} is not a folder; point EVALKIT_CACHE at a folder"
    assert not (tmp_path / "runs").exists()
