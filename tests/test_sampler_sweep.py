"""A sweep over the samplers of every engine order through evalkit's engine: one decode for the whole grid, the
run directory's tables and report carry every knob, a rerun reads the sample cache, and a run written before these
knobs existed still reads, compares and reports."""

import json

import pandas as pd
import pytest

from typer.testing import CliRunner

import evalkit
from evalkit.cli import app
from evalkit.config import config_from_dict
from evalkit.settings import Setting

from conftest import base_config

SETTINGS = [
    {"temperature": 0.8},
    {"temperature": 0.8, "typical_p": 0.5, "epsilon_cutoff": 1e-3, "eta_cutoff": 1e-3},
    {"temperature": 0.8, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_tokens": 6},
    {"temperature": 0.8, "top_n_sigma": 1.0, "xtc_probability": 0.5, "xtc_threshold": 0.01, "top_p": 0.9,
     "presence_penalty": 0.5, "frequency_penalty": 0.3, "order": "llama_cpp"},
    {"temperature": 0.8, "mirostat": 2, "mirostat_tau": 3.0, "order": "llama_cpp"},
    {"temperature": 0.8, "top_k": 20, "top_p": 0.6, "min_p": 0.05, "repetition_penalty": 1.2, "order": "sglang"},
    {"temperature": 0.8, "top_k": 20, "repetition_penalty": 1.2, "penalty_scope": 3,
     "order": [["top_k", "top_p"], "repetition_penalty", "temperature"]},
]


@pytest.fixture(scope="module")
def sampler_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = base_config(tiny_model, out, grid={"settings": SETTINGS}, report=True, max_new_tokens=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVALKIT_SAMPLE_CACHE", str(out / "cache.sqlite"))
        yield evalkit.run_sweep(config_from_dict(config), progress=False), config


def test_every_setting_is_sampled_with_its_knobs_in_the_tables(sampler_run):
    run, _ = sampler_run
    samples = pd.read_parquet(run.path / "samples.parquet")
    ids = [Setting(**s).id for s in SETTINGS]
    assert list(dict.fromkeys(samples.setting_id)) == ids
    assert (samples.groupby("setting_id").size() == 3 * 3).all()
    for setting_id, group in samples.groupby("setting_id"):
        row = group.iloc[0]
        setting = Setting(**{k: row[k] for k in Setting.model_fields})
        assert setting.id == setting_id  # the table's knob columns give the setting back
    min_tokens = samples[samples.min_tokens == 6]
    assert (min_tokens.num_new_tokens >= 6).all()  # no end of sequence before min_tokens
    ngram = samples[samples.no_repeat_ngram_size == 2]
    for ids_ in ngram.token_ids:
        pairs = list(zip(ids_[:-1], ids_[1:]))
        assert len(pairs) == len(set(pairs))  # no bigram of the output repeats
    summary = pd.read_csv(run.path / "summary.csv")
    for knob in ("typical_p", "top_n_sigma", "mirostat", "penalty_scope", "order"):
        assert knob in summary.columns
    manifest = json.loads((run.path / "manifest.json").read_text())
    generation = {s["id"]: s["generation"] for s in manifest["settings"]}
    assert generation[ids[4]]["order"][-2:] == ["temperature", "mirostat"]
    assert generation[ids[5]]["order"][-1] == "top_k+top_p+min_p"
    report = (run.path / "report.html").read_text()
    assert "top_n_sigma" in report and "mirostat" in report


def test_a_rerun_reads_every_sample_from_the_cache(sampler_run, tmp_path, monkeypatch):
    run, config = sampler_run
    monkeypatch.setenv("EVALKIT_SAMPLE_CACHE", str(run.path.parent / "cache.sqlite"))
    again = evalkit.run_sweep(config_from_dict({**config, "output_dir": str(tmp_path)}), progress=False)
    first = pd.read_parquet(run.path / "samples.parquet")
    second = pd.read_parquet(again.path / "samples.parquet")
    assert first.text.tolist() == second.text.tolist()
    assert again.manifest.samples_reused == {"from_parts": 0, "from_cache": len(first), "generated": 0}


def test_a_run_written_before_the_new_knobs_reads_compares_and_reports(tiny_model, tmp_path):
    """An older run: its samples table and manifest have the core knobs only. It loads, reports, and compares with
    a run of the same config made now; its setting ids are unchanged."""
    config = config_from_dict(base_config(tiny_model, tmp_path))
    old, new = (evalkit.run_sweep(config, progress=False) for _ in range(2))
    samples = pd.read_parquet(old.path / "samples.parquet")
    core = {"temperature", "top_p", "top_k", "min_p", "order"}
    samples.drop(columns=[k for k in Setting.model_fields if k not in core]).to_parquet(old.path / "samples.parquet")
    manifest = json.loads((old.path / "manifest.json").read_text())
    for s in manifest["settings"]:
        s["params"] = {k: v for k, v in s["params"].items() if k in core}
    (old.path / "manifest.json").write_text(json.dumps(manifest))
    reread = evalkit.load_run(old.path)
    assert [s.id for s in reread.manifest.settings] == ["t0-p0.8", "t0-p1", "t0.7-p0.8", "t0.7-p1", "t1.3-p0.8",
                                                        "t1.3-p1"]
    result = CliRunner().invoke(app, ["report", str(old.path)])
    assert result.exit_code == 0, result.output
    assert (old.path / "report.html").is_file()
    result = CliRunner().invoke(app, ["compare", str(old.path), str(new.path)])
    assert result.exit_code == 0, result.output
    assert "t0.7-p0.8" in result.output
