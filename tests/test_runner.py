"""End to end on a tiny randomly initialised Llama built in code: run_sweep and the run directory."""

import json

import pandas as pd
import pytest
import yaml

import evalkit
from evalkit.config import config_from_dict
from evalkit.errors import ConfigError, EvalkitError
from evalkit.settings import APPLICATION_ORDER, Setting, chain_labels

from conftest import base_config


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return evalkit.run_sweep(config_from_dict(base_config(tiny_model, out)), progress=False)


def test_run_directory_contents(tiny_run):
    files = {p.name for p in tiny_run.path.iterdir()}
    assert files == {"config.yaml", "manifest.json", "prompts.jsonl", "samples.parquet", "scores.parquet",
                     "sample_scores.parquet", "summary.csv"}
    assert tiny_run.path.name.endswith("Z-tiny") and tiny_run.path.name[:8].isdigit()


def test_samples_table(tiny_run):
    s = tiny_run.samples
    assert len(s) == 3 * 6 * 3  # prompts x settings x samples
    assert list(s.columns) == ["prompt_id", "prompt", "setting_id", *Setting.model_fields, "sample_index", "seed",
                               "text", "num_new_tokens", "finish_reason", "token_ids",
                               "logprob_model", "logprob_sampling", "entropy_model", "entropy_sampling", "n_kept",
                               "entropy_model_top"]
    assert list(dict.fromkeys(s.setting_id)) == ["t0-p0.8", "t0-p1", "t0.7-p0.8", "t0.7-p1", "t1.3-p0.8", "t1.3-p1"]
    assert list(s.prompt_id[:9]) == ["en"] * 3 + ["zh"] * 3 + ["p2"] * 3  # grid order: setting, prompt, sample
    assert set(s.prompt_id) == {"en", "zh", "p2"}
    assert all(sorted(v) == [0, 1, 2] for v in s.groupby(["prompt_id", "setting_id"]).sample_index.agg(list))
    assert s.seed.is_unique  # one derived seed per sample
    assert (s.num_new_tokens == s.token_ids.map(len)).all()
    assert s.finish_reason.isin(["eos", "length"]).all()
    assert (s[s.finish_reason == "length"].num_new_tokens == 8).all()
    assert (s.num_new_tokens <= 8).all()


def test_greedy_samples_are_identical_and_sampled_ones_differ(tiny_run):
    s = tiny_run.samples
    greedy = s[s.temperature == 0].groupby(["prompt_id", "setting_id"]).text.nunique()
    assert (greedy == 1).all()
    hot = s[s.temperature == 1.3].groupby(["prompt_id", "setting_id"]).text.nunique()
    assert (hot > 1).all()


def test_same_config_and_seed_reproduce_the_samples(tiny_model, tiny_run, tmp_path):
    again = evalkit.run_sweep(config_from_dict(base_config(tiny_model, tmp_path)), progress=False, cache=False)
    assert again.manifest.samples_reused == {"from_parts": 0, "from_cache": 0, "generated": 54}
    pd.testing.assert_frame_equal(again.samples, tiny_run.samples)
    other = evalkit.run_sweep(config_from_dict(base_config(tiny_model, tmp_path, seed=2)), progress=False,
                              cache=False)
    assert (other.samples.text != tiny_run.samples.text).any()


def test_scores_and_summary(tiny_run):
    scores = tiny_run.scores
    assert list(scores.columns) == ["setting_id", "prompt_id", "metric", "value", "reason"]
    assert set(scores.metric) == {"distinct_1[tok=words]", "distinct_2[tok=words]", "mean_length[unit=tokens]"}
    assert len(scores) == 6 * 3 * 3
    summary = tiny_run.summary
    assert len(summary) == 6 * 3
    row = summary[(summary.setting_id == "t0.7-p1") & (summary.metric == "mean_length[unit=tokens]")].iloc[0]
    per_prompt = tiny_run.samples[tiny_run.samples.setting_id == "t0.7-p1"].groupby("prompt_id").num_new_tokens.mean()
    assert row["mean"] == pytest.approx(per_prompt.mean())
    assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["n_prompts"] == 3
    per_sample = tiny_run.sample_scores
    assert len(per_sample) == len(tiny_run.samples)  # mean_length gives one value per sample


def test_manifest_records_what_ran(tiny_run, tiny_model):
    m = tiny_run.manifest
    assert m.status == "complete" and m.ended_at >= m.started_at
    assert m.packages["torch"] and m.packages["transformers"] and m.python
    assert m.model["source"] == "local" and m.model["device"] == "cpu" and m.model["dtype"] == "float32"
    assert len(m.model["sha256"]) == 64
    assert m.seed == 1 and m.n_samples == 54 and m.n_prompts == 3
    gen = {s.id: s.generation for s in m.settings}
    assert gen["t0-p1"]["greedy"] is True and gen["t0.7-p0.8"]["greedy"] is False
    assert gen["t0.7-p0.8"]["top_p"] == 0.8 and gen["t0.7-p0.8"]["top_k"] == 0
    assert gen["t0.7-p0.8"]["order"] == list(chain_labels(APPLICATION_ORDER))
    assert m.batch_size == 64 and m.model["rng"].startswith("evalkit engine")
    assert m.sampling_order == list(chain_labels(APPLICATION_ORDER))
    core = [k for k in m.sampling_order if k in ("temperature", "top_k", "top_p", "min_p")]
    assert core == ["temperature", "top_k", "top_p", "min_p"]
    resolved = yaml.safe_load((tiny_run.path / "config.yaml").read_text())
    assert resolved["model"]["id"] == str(tiny_model) and resolved["samples_per_prompt"] == 3
    evalkit.load_config(tiny_run.path / "config.yaml")  # the resolved config loads again


def test_chat_template_applied_and_recorded(tiny_run):
    prompts = [json.loads(line) for line in (tiny_run.path / "prompts.jsonl").read_text().splitlines()]
    assert [p["id"] for p in prompts] == ["en", "zh", "p2"]
    assert all(p["chat_template"] for p in prompts)
    assert prompts[1]["rendered"] == "<|im_start|>user\n描述秋天的早晨。<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_off_and_system_prompt(tiny_model, tmp_path):
    data = base_config(tiny_model, tmp_path, grid={"temperature": [0.0]}, samples_per_prompt=1)
    data["prompts"] = {"items": ["Hello there"], "chat_template": False, "system_prompt": "Be brief."}
    run = evalkit.run_sweep(config_from_dict(data), progress=False)
    assert run.prompts.rendered.tolist() == ["Be brief.\n\nHello there"]
    data["prompts"]["chat_template"] = True
    run = evalkit.run_sweep(config_from_dict(data), progress=False)
    assert run.prompts.rendered.tolist() == [
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"]


def test_model_without_template(tiny_model_no_template, tmp_path):
    data = base_config(tiny_model_no_template, tmp_path, grid={"temperature": [0.0]}, samples_per_prompt=1)
    run = evalkit.run_sweep(config_from_dict(data), progress=False)  # auto: plain text
    assert run.prompts.rendered.tolist()[0] == "Write a short story."
    data["prompts"] = {"items": ["x"], "chat_template": True}
    with pytest.raises(ConfigError, match="has no chat template"):
        evalkit.run_sweep(config_from_dict(data), progress=False)


def test_failures_before_generation_leave_no_run_directory(tiny_model, tmp_path):
    out = tmp_path / "runs"
    cases = [
        (dict(max_new_tokens=200), "exceeds the model's context of 128 tokens"),
        (dict(model={"id": str(tmp_path / "missing")}), "model path does not exist"),
        (dict(model={"id": str(tiny_model), "device": "cuda"}), "'cuda' was requested but no CUDA GPU"),
        (dict(metrics=["distinct_9"]), "unknown metric 'distinct_9'"),
    ]
    import torch

    for change, message in cases:
        if "cuda" in message and torch.cuda.is_available():
            continue
        with pytest.raises(EvalkitError, match=message):
            evalkit.run_sweep(config_from_dict({**base_config(tiny_model, out), **change}), progress=False)
        assert not out.exists() or not any(out.iterdir()), change


def test_unwritable_output_dir(tiny_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EvalkitError, match="exists and is not a directory"):
        evalkit.run_sweep(config_from_dict(base_config(tiny_model, blocker / "runs")), progress=False)


def test_load_run_refuses_other_directories(tmp_path):
    with pytest.raises(EvalkitError, match="not a run directory"):
        evalkit.load_run(tmp_path)


def test_a_run_made_before_chain_orders_existed_still_reads_reports_and_compares(tiny_run, tmp_path):
    """A run directory written before a knob existed (no `order` column, no `order` in the manifest's settings or
    config) loads with the knob at its neutral value, gets a report, and compares with a run made now."""
    import shutil

    from evalkit.compare import RunData, compare_runs
    from evalkit.report import write_report

    old = tmp_path / "old-run"
    shutil.copytree(tiny_run.path, old)
    samples = pd.read_parquet(old / "samples.parquet").drop(columns=["order"])
    samples.to_parquet(old / "samples.parquet", index=False)
    manifest = json.loads((old / "manifest.json").read_text())
    for s in manifest["settings"]:
        del s["params"]["order"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["grid"]["order"]
    config["model"].update({"base_url": None, "concurrency": 8, "tensor_parallel_size": 1})  # the flat section
    (old / "config.yaml").write_text(yaml.safe_dump(config))

    run = evalkit.load_run(old)
    assert "order" not in run.samples and [s.id for s in run.manifest.settings] == [
        s.id for s in tiny_run.manifest.settings]
    write_report([old], tmp_path / "report.html")
    assert "t0.7-p0.8" in (tmp_path / "report.html").read_text(encoding="utf-8")
    result = compare_runs(RunData.from_run(run), RunData.from_run(tiny_run), permutations=200, resamples=200)
    assert result.protocol_differences == [] and result.not_compared == [] and len(result.table) > 0
