"""`evalkit score`: generations produced elsewhere, scored like a run."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import evalkit
from evalkit.cli import app
from evalkit.config import config_from_dict
from evalkit.errors import ConfigError, EvalkitError
from evalkit.api import score_file

from conftest import base_config

METRICS = ["distinct_1", "distinct_2", "self_bleu", "ent_n", "mtld", "seq_rep_n"]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_scores_equal_those_of_the_run_that_made_the_texts(tiny_model, tmp_path):
    run = evalkit.run_sweep(config_from_dict(base_config(tiny_model, tmp_path / "runs", metrics=METRICS)),
                            progress=False)
    rows = [{"prompt_id": r.prompt_id, "prompt": r.prompt, "temperature": r.temperature, "top_p": r.top_p,
             "sample_index": int(r.sample_index), "text": r.text, "extra": "ignored"}
            for r in run.samples.itertuples()][::-1]  # any order
    scored = score_file(write_rows(tmp_path / "gens.jsonl", rows), METRICS, tmp_path / "scored", progress=False)
    key = ["setting_id", "prompt_id", "metric"]
    a = run.scores.sort_values(key).reset_index(drop=True)
    b = scored.scores.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(run.summary.sort_values(["setting_id", "metric"]).reset_index(drop=True),
                                  scored.summary.sort_values(["setting_id", "metric"]).reset_index(drop=True))
    loaded = evalkit.load_run(tmp_path / "scored")
    assert loaded.manifest.kind == "scored" and loaded.manifest.n_samples == len(rows)


def test_cli_score(tmp_path):
    path = write_rows(tmp_path / "g.jsonl", [{"prompt": "q", "text": "a b c"}, {"prompt": "q", "text": "a b d"},
                                            {"prompt_id": 2, "temperature": 0.5, "text": "x y"},
                                            {"prompt_id": 2, "temperature": 0.5, "text": "x y"}])
    result = CliRunner().invoke(app, ["score", str(path), "--metrics", "distinct_1,self_bleu", "-o",
                                      str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    run = evalkit.load_run(tmp_path / "out")
    assert set(run.samples.setting_id) == {"unknown", "t0.5-p1"}  # prompt q's lines name no setting
    bleu = run.scores[(run.scores.metric == "self_bleu[n=4,smooth=method1,tok=words]")].set_index("prompt_id").value
    # two identical 2-token samples: p1 = p2 = 1, no 3- or 4-grams: method1 gives 0.1 each
    assert bleu["2"] == pytest.approx((1 * 1 * 0.1 * 0.1) ** 0.25, abs=1e-15)
    assert run.scores[run.scores.metric == "distinct_1[tok=words]"].set_index("prompt_id").value["q"] == 4 / 6


def test_rows_of_two_chain_orders_are_two_settings(tmp_path):
    """Every knob of a setting is read from a scored file's lines: the same temperature in two orders is two
    settings, never one."""
    path = write_rows(tmp_path / "g.jsonl", [{"prompt": "q", "temperature": 0.7, "text": "a b"},
                                            {"prompt": "q", "temperature": 0.7, "order": "vllm", "text": "a c"}])
    result = CliRunner().invoke(app, ["score", str(path), "--metrics", "distinct_1", "-o", str(tmp_path / "out"),
                                      "-q"])
    assert result.exit_code == 0, result.output
    run = evalkit.load_run(tmp_path / "out")
    assert sorted(run.samples.setting_id) == ["t0.7-p1", "t0.7-p1-ovllm"]
    assert sorted(s.params["order"] for s in run.manifest.settings) == ["auto", "vllm"]


def test_lines_without_a_setting_have_an_unknown_one_not_an_invented_one(tmp_path):
    """A line that gives no knob was sampled with a setting nobody said: it is ``unknown`` with null knobs in every
    table, no parameters in the manifest, and so in the report; a line that gives temperature 1 is t1-p1."""
    from evalkit.report.build import render_report

    path = write_rows(tmp_path / "g.jsonl", [{"prompt": "q", "text": "a b c"}, {"prompt": "q", "text": "a b d"},
                                            {"prompt": "q", "temperature": 1, "text": "a a"},
                                            {"prompt": "q", "temperature": 0.5, "top_k": 40, "text": "b b"}])
    run = score_file(path, ["distinct_1"], tmp_path / "out", progress=False)
    samples = run.samples.set_index("text")
    assert list(samples.setting_id) == ["unknown", "unknown", "t1-p1", "t0.5-p1-k40"]
    unknown = samples.loc["a b c"]
    assert unknown[["temperature", "top_p", "top_k", "min_p", "order"]].isna().all()
    assert samples.loc["b b", "top_k"] == 40 and samples.loc["a a", "temperature"] == 1.0
    assert {s.id: s.params for s in run.manifest.settings}["unknown"] == {}
    summary = run.summary.set_index("setting_id")
    assert summary.loc["unknown", ["temperature", "top_p"]].isna().all()
    assert summary.loc["unknown", "mean"] == pytest.approx(4 / 6)  # scored: only the setting is unknown
    render_report([run.path])  # a table of known and unknown knobs
    alone = score_file(write_rows(tmp_path / "u.jsonl", [{"prompt": "q", "text": "a b"}]), ["distinct_1"],
                       tmp_path / "alone", progress=False)
    html = render_report([alone.path])
    assert "unknown" in html and "t1-p1" not in html and "temperature: 1" not in html


@pytest.mark.parametrize("content, message", [
    ('{"prompt_id": "a", "text": "x"}\n{"prompt_id": "a", "text": \n', "line 2: invalid JSON"),
    ('{"prompt_id": "a"}\n', "line 1: text: Field required"),
    ('{"text": "x"}\n', "line 1: a row needs 'prompt_id' or 'prompt'"),
    ('{"prompt_id": "a", "text": "x", "temperature": -1}\n',
     "line 1: temperature: temperature must be a finite number >= 0"),
    ('{"prompt_id": "a", "text": "x", "sample_index": 0}\n{"prompt_id": "a", "text": "y", "sample_index": 0}\n',
     "line 2: duplicate sample_index"),
    ("\n\n", "the file has no generations"),
    ('{"prompt_id": "a", "text": "x", "text": "y"}\n', "line 1: key 'text' appears twice"),
    ('{"prompt_id": "a", "text": "x \\ud800"}\n', r"line 1: text: not valid Unicode text \(a lone surrogate"),
    ('{"prompt_id": "a", "text": "x", "references": [{"deep": "\\ud800"}]}\n',
     r"line 1: references: not valid Unicode text \(a lone surrogate"),
    ('{"prompt_id": "a", "text": ' + "[" * 100_000 + "]" * 100_000 + '}\n', "line 1: "),
    ('{"prompt_id": "a", "text": "x", "temperature": NaN}\n',
     "line 1: temperature: temperature must be a finite number >= 0"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "g.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        score_file(path, ["distinct_1"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["g.jsonl"]  # nothing half-written


def test_metrics_that_need_the_model_are_refused(tmp_path):
    path = write_rows(tmp_path / "g.jsonl", [{"prompt": "q", "text": "a"}])
    for name, needs in (("mean_length", "token_counts"), ("perplexity", "model_logprobs"),
                        ("token_entropy", "token_stats")):
        with pytest.raises(ConfigError, match=f"needs {needs}, which a file of texts does not have") as e:
            score_file(path, [name], tmp_path / "out", progress=False)
        # what it can measure instead, where there is such a metric
        assert ("(mean_length[unit=words] counts words)" in str(e.value)) == (name == "mean_length")


def test_existing_output_is_not_overwritten(tmp_path):
    path = write_rows(tmp_path / "g.jsonl", [{"prompt": "q", "text": "a"}])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(EvalkitError, match="exists and is not an empty directory"):
        score_file(path, ["distinct_1"], tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_a_scored_file_is_recorded_in_the_run_index(tmp_path, monkeypatch):
    from evalkit.index import RunIndex

    monkeypatch.delenv("EVALKIT_INDEX", raising=False)
    path = write_rows(tmp_path / "g.jsonl", [{"prompt": "q", "text": "a b c"}, {"prompt": "q", "text": "a b d"}])
    scored = score_file(path, ["distinct_1"], tmp_path / "out" / "scored", progress=False)
    with RunIndex(tmp_path / "out" / "index.sqlite", create=False) as db:
        runs = db.runs()
        assert list(runs["run_id"]) == [scored.manifest.run_id] and list(runs["status"]) == ["complete"]
        assert set(db.scores(scored.manifest.run_id)["metric"]) == {"distinct_1[tok=words]"}


def test_the_scores_folder_has_the_mode_of_any_new_folder(tmp_path):
    """It is written in a temporary folder and renamed into place: that folder is made as a run directory is (the
    umask's mode), not mkdtemp's 0700, which the rename would keep."""
    import os
    import stat

    path = write_rows(tmp_path / "g.jsonl", [{"prompt": "q", "text": "a b"}])
    umask = os.umask(0o022)
    try:
        run = score_file(path, ["distinct_1"], tmp_path / "out", progress=False)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(run.path.stat().st_mode) == 0o755
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
