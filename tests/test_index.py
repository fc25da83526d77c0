"""The run index: recording, listing, concurrent writers, history, and the nightly loop end to end."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from evalkit.cli import app
from evalkit.history import load_history
from evalkit.index import RunIndex
from evalkit.rundir.reader import load_run

from compare_helpers import SETTINGS, fake_run, noisy_scores
from conftest import base_config

ROOT = Path(__file__).resolve().parents[1]


def nightly_runs(root: Path, drop_on: int | None = None, n: int = 4) -> list[Path]:
    """``n`` nightly runs of the same sweep; run ``drop_on`` loses 0.06 of distinct-2 at one setting."""
    rng = np.random.default_rng(0)
    out = []
    for night in range(n):
        shift = {(SETTINGS[3].id, "distinct_2[tok=words]"): -0.06} if night == drop_on else None
        out.append(fake_run(root, "nightly", noisy_scores(rng, shift=shift),
                            started_at=f"2026-11-{night + 1:02d}T02:00:00Z"))
    return out


def test_history_breaks_where_the_engine_changes(tmp_path):
    """A nightly job that moves from evalkit's engine to vLLM: the run where it moved is a break in the line
    (said why), not a regression, even where its numbers moved."""
    from evalkit.generation.base import ModelInfo

    paths = nightly_runs(tmp_path / "runs", n=2)
    vllm = ModelInfo(backend="vllm", id="test-model", sha256="ab" * 32, dtype="float32", engine="vllm 0.32.0")
    shift = {(SETTINGS[3].id, "distinct_2[tok=words]"): -0.2}
    moved = fake_run(tmp_path / "runs", "nightly", noisy_scores(np.random.default_rng(5), shift=shift),
                     started_at="2026-11-03T02:00:00Z", model=vllm)
    with RunIndex(tmp_path / "index.sqlite") as index:
        for p in [*paths, moved]:
            index.record(load_run(p))
        history = load_history(index, "nightly")
    assert list(history.breaks) == [moved.name] and "cross-engine comparison" in history.breaks[moved.name]
    assert history.regressions == set()


def test_record_and_list(tmp_path):
    paths = nightly_runs(tmp_path / "runs", n=2)
    other = fake_run(tmp_path / "runs", "other", noisy_scores(np.random.default_rng(1)))
    index_file = tmp_path / "index.sqlite"
    with RunIndex(index_file) as index:
        for p in [*paths, other]:
            index.record(load_run(p))
        index.record(load_run(paths[0]))  # recording again replaces, never duplicates
        runs = index.runs()
        assert list(runs["run_id"]) == [other.name, paths[0].name, paths[1].name]  # by start time
        assert set(index.runs(name="nightly")["run_id"]) == {p.name for p in paths}
        assert index.latest("nightly") == paths[1].name
        assert index.latest("nightly", exclude=paths[1].name) == paths[0].name
        row = index.get(paths[0].name)
        assert row["model_hash"] == "ab" * 32 and row["status"] == "complete" and len(row["config_hash"]) == 64
        scores = index.scores(paths[0].name)
        assert len(scores) == len(load_run(paths[0]).scores)
    cli = CliRunner()
    result = cli.invoke(app, ["runs", "--index", str(index_file), "--name", "nightly"])
    assert result.exit_code == 0 and paths[0].name in result.output and other.name not in result.output
    result = cli.invoke(app, ["runs", "--index", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 2 and "no run index at" in result.output
    # a run id from the index works where a run directory does
    result = cli.invoke(app, ["compare", paths[0].name, paths[1].name, "--index", str(index_file), "--format", "json"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("edit, what", [
    ("UPDATE scores SET value = 'abc' WHERE run_id = ?", "the scores (value) of run '{}' are damaged: 'abc' is no"),
    ("UPDATE aggregates SET mean = 'x' WHERE run_id = ?", "the aggregates (mean) of run '{}' are damaged: 'x' is"),
    ("UPDATE runs SET protocol = '{{bad' WHERE run_id = ?", "the protocol of run '{}' is damaged: not JSON"),
    ("UPDATE runs SET protocol = 'null' WHERE run_id = ?", "the protocol of run '{}' is damaged: JSON NoneType"),
    ("UPDATE runs SET metric_info = '[1, 2]' WHERE run_id = ?", "the metric_info of run '{}' is damaged: JSON list"),
    ("UPDATE runs SET metric_info = '{{\"m\": 3}}' WHERE run_id = ?", "the metric_info of run '{}' is damaged: a"),
])
def test_a_damaged_index_is_named_not_a_crash(edit, what, tmp_path):
    """An index edited by hand or damaged: compare and history name the run and what is damaged, exit 2."""
    paths = nightly_runs(tmp_path / "runs", n=2)
    index_file = tmp_path / "index.sqlite"
    with RunIndex(index_file) as index:
        for p in paths:
            index.record(load_run(p))
        index.db.execute(edit.format(), (paths[1].name,))
    message = f"error: index: {index_file}: " + what.format(paths[1].name)
    compared = CliRunner().invoke(app, ["compare", paths[0].name, paths[1].name, "--index", str(index_file)])
    history = CliRunner().invoke(app, ["history", "--name", "nightly", "--index", str(index_file), "-o",
                                       str(tmp_path / "h.html")])
    for result in (compared, history) if "aggregates" not in edit else (history,):  # compare reads no aggregates
        assert result.exit_code == 2, result.output
        assert result.output.strip().startswith(message) and "\n" not in result.output.strip(), result.output


WRITER = """
import sys
from evalkit.index import RunIndex
from evalkit.rundir.reader import load_run
with RunIndex(sys.argv[1]) as index:
    for path in sys.argv[2:]:
        index.record(load_run(path))
"""


@pytest.mark.slow
def test_two_writers_at_once_lose_nothing(tmp_path):
    rng = np.random.default_rng(0)
    paths = [fake_run(tmp_path / "runs", f"job{i % 2}", noisy_scores(rng, n_prompts=5)) for i in range(40)]
    index_file = tmp_path / "shared.sqlite"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(index_file), *map(str, paths[i::2])])
               for i in range(2)]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    db = sqlite3.connect(index_file)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 40
    per_run = 5 * len(SETTINGS) * 3
    assert db.execute("SELECT count(*) FROM scores").fetchone()[0] == 40 * per_run
    assert db.execute("SELECT count(*) FROM aggregates").fetchone()[0] == 40 * len(SETTINGS) * 3


def test_history_marks_the_regression(tmp_path):
    paths = nightly_runs(tmp_path / "runs", drop_on=2)
    index_file = tmp_path / "index.sqlite"
    with RunIndex(index_file) as index:
        for p in paths:
            index.record(load_run(p))
        history = load_history(index, "nightly")
    assert history.regressions == {(paths[2].name, SETTINGS[3].id, "distinct_2[tok=words]")}
    trend = history.trend("distinct_2[tok=words]")
    assert list(trend.index) == [p.name for p in paths]
    assert trend.loc[paths[2].name, SETTINGS[3].id] == pytest.approx(
        load_run(paths[2]).summary.set_index(["setting_id", "metric"]).loc[
            (SETTINGS[3].id, "distinct_2[tok=words]"), "mean"])
    out = tmp_path / "history.html"
    result = CliRunner().invoke(app, ["history", "--name", "nightly", "--index", str(index_file), "-o", str(out),
                                      "--metric", "distinct_2"])
    assert result.exit_code == 0, result.output
    assert "1 regression in 4 runs" in result.output
    html = out.read_text(encoding="utf-8")
    assert "://" not in html and "REGRESSION" in html and 'class="num regression"' in html
    result = CliRunner().invoke(app, ["history", "--name", "weekly", "--index", str(index_file)])
    assert result.exit_code == 2 and "no complete run named 'weekly'" in result.output
    result = CliRunner().invoke(app, ["history", "--name", "nightly", "--index", str(index_file), "--metric",
                                      "self_bleu[n=4"])
    assert result.exit_code == 2 and "--metric: expected NAME[KEY=VALUE,...]" in result.output, result.output
    for where, said in ((tmp_path, "is a directory, not a database file"),
                        (Path("/dev/null"), "is not a regular file (a FIFO or a device), not a database file")):
        result = CliRunner().invoke(app, ["runs", "--index", str(where)])
        assert result.exit_code == 2 and result.stderr.strip() == f"error: --index: {where} {said}", result.output
    empty = tmp_path / "empty.jsonl"  # a command that reads the index never makes one of an empty file
    empty.touch()
    result = CliRunner().invoke(app, ["runs", "--index", str(empty)])
    assert result.exit_code == 2 and f"--index: no run index at {empty}" in result.stderr, result.output
    assert empty.stat().st_size == 0


def test_nightly_loop_end_to_end(tiny_model, tmp_path, monkeypatch):
    """Two nights of a real (tiny) sweep: the first has no baseline, the second is gated on it."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "nightly.yaml"
    nightly = base_config(tiny_model, tmp_path / "runs", name="nightly", metrics=["distinct_2", "self_bleu"])
    cli = CliRunner()
    args = ["run", str(config), "--quiet", "--baseline", "latest", "--fail-on", "distinct_2:-0.5",
            "--junit", str(tmp_path / "gate.xml")]
    # 3 prompts: no change could fail the gate (smallest p 2/2^3), refused before the sweep, nothing written
    config.write_text(yaml.safe_dump(nightly), encoding="utf-8")
    few = cli.invoke(app, args)
    assert few.exit_code == 2 and "could never fail: with 3 prompts" in few.output, few.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "gate.xml").exists()
    # 6 prompts: the first night runs (one test would do: 2/2^6 < 0.05); the second knows its baseline's 6 settings,
    # 6 x 2/2^6 is not under 0.05 after Holm: refused before its sweep
    six = {**nightly, "name": "six",
           "prompts": nightly["prompts"] + ["Name a colour.", "Name a fruit.", "Name a city."]}
    config.write_text(yaml.safe_dump(six), encoding="utf-8")
    assert cli.invoke(app, args).exit_code == 0
    again = cli.invoke(app, args)
    assert again.exit_code == 2 and "with 6 prompts in common" in again.output and "over 6 tests" in again.output
    assert len(list((tmp_path / "runs").glob("*-six"))) == 1
    # 8 prompts: 6 settings' tests, 6 x 2/2^8 < 0.05 after Holm, the gate can fail
    nightly["prompts"] += [f"Name {thing}." for thing in ("a colour", "a fruit", "a city", "a tree", "a river")]
    (tmp_path / "gate.xml").unlink()
    config.write_text(yaml.safe_dump(nightly), encoding="utf-8")
    first = cli.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "nothing to compare" in first.output
    suite = ET.parse(tmp_path / "gate.xml").getroot()  # the first night's file too: its case skipped, and why
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("1", "0", "1")
    assert "nothing to compare" in suite.find("testcase/skipped").get("message")
    second = cli.invoke(app, [*args, "--set", "seed=2"])
    assert second.exit_code == 0, second.output
    assert "against" in second.output and "significant" in second.output
    suite = ET.parse(tmp_path / "gate.xml").getroot()
    assert int(suite.get("tests")) == 6 and suite.get("failures") == "0"
    with RunIndex(tmp_path / "runs" / "index.sqlite") as index:
        assert list(index.runs(name="nightly")["status"]) == ["complete", "complete"]
    result = cli.invoke(app, ["history", "--name", "nightly", "--index", str(tmp_path / "runs" / "index.sqlite")])
    assert result.exit_code == 0 and "0 regressions in 2 runs" in result.output
    bad = cli.invoke(app, ["run", str(config), "--quiet", "--fail-on", "distinct_2:-0.5"])
    assert bad.exit_code == 2 and "--fail-on and --junit need --baseline" in bad.output


def test_a_run_resumed_from_another_directory_stays_in_its_own_index(tiny_model, tmp_path, monkeypatch):
    """output_dir (and index) are relative to the working directory where the run started: its config.yaml keeps
    them absolute, so --resume from elsewhere records the run in the index beside it, not in a new one there."""
    import evalkit
    from evalkit import pipeline
    from evalkit.config import config_from_dict

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.delenv("EVALKIT_INDEX", raising=False)
    started, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    started.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(started)
    config = base_config(tiny_model, "runs", samples_per_prompt=1, max_new_tokens=2, grid={"temperature": [1.0]},
                         metrics=["distinct_1"])
    with monkeypatch.context() as stop_while_scoring:
        stop_while_scoring.setattr(pipeline, "score_samples", stopped)
        with pytest.raises(KeyboardInterrupt):
            evalkit.run_sweep(config_from_dict(config), progress=False, cache=False)
    (run_dir,) = (m.parent for m in (started / "runs").glob("*/manifest.json"))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["output_dir"] == str(started / "runs")
    monkeypatch.chdir(elsewhere)
    resumed = evalkit.run_sweep(None, resume=run_dir, progress=False, cache=False)
    assert resumed.manifest.status == "complete" and list(elsewhere.iterdir()) == []
    with RunIndex(started / "runs" / "index.sqlite", create=False) as index:
        runs = index.runs()
        assert list(runs["run_id"]) == [resumed.manifest.run_id] and list(runs["status"]) == ["complete"]


def test_nightly_config_is_valid():
    from evalkit.config import load_config

    config = load_config(ROOT / "configs" / "nightly.yaml")
    assert config.name == "nightly" and len(config.settings()) >= 4
