"""The command line, in process (typer's runner) and as `python -m evalkit`."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import evalkit
from evalkit.cli import app

from conftest import base_config

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"evalkit {evalkit.__version__}"


def test_metrics_lists_definitions():
    result = runner.invoke(app, ["metrics"])
    assert result.exit_code == 0
    for text in ("distinct_n", "distinct_2[tok=words]", "mean_length[unit=tokens]", "Li et al. 2016"):
        assert text in result.stdout
    # every part of an id is listed: the parameters, and what the definition fixes (ent_n's natural log)
    lines = result.stdout.splitlines()
    ent = lines[next(i for i, line in enumerate(lines) if line.startswith("ent_n  ->  ent_4[tok=words,log=e]")) + 2]
    assert ent.startswith("    parameters: n=4, tok=words; fixed: log=e; reference:")


def test_run_prints_table_and_run_directory(tiny_model, tmp_path, write_config):
    path = write_config(base_config(tiny_model, tmp_path / "runs"))
    result = runner.invoke(app, ["run", str(path), "--quiet", "--set", "grid.temperature=[0.5]",
                                 "--set", "samples_per_prompt=2"])
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]  # beside the run index
    assert f"run directory: {run_dir}" in result.stdout
    assert "t0.5-p0.8" in result.stdout and "t0.5-p1" in result.stdout and "distinct_2" in result.stdout
    run = evalkit.load_run(run_dir)
    assert len(run.samples) == 3 * 2 * 2
    assert run.manifest.overrides == ["grid.temperature=[0.5]", "samples_per_prompt=2"]


@pytest.mark.parametrize("change, message", [
    ({"grid": {"top_p": [1.5]}}, "grid.top_p[0]: top_p must be in (0, 1] (1 means no filtering), got 1.5"),
    ({"metrics": ["self_blue"]}, "metrics[0]: unknown metric 'self_blue'"),
    ({"samples": 3}, "unknown key 'samples'"),
])
def test_bad_config_exits_2_with_one_line_and_no_run_dir(tiny_model, tmp_path, write_config, change, message):
    path = write_config({**base_config(tiny_model, tmp_path / "runs"), **change})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and message in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_exception(tmp_path, write_config):
    result = runner.invoke(app, ["run", str(write_config({"name": "x"})), "--debug"])
    assert result.exit_code != 0 and isinstance(result.exception, evalkit.ConfigError)


def test_config_or_preset_and_unknown_preset():
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2 and "give a config file or --preset NAME" in result.stderr
    result = runner.invoke(app, ["run", "--preset", "poetry"])
    assert result.exit_code == 2
    assert "unknown preset 'poetry' (presets: brainstorm, chat, code, creative, humaneval, math, qa)" in result.stderr


def test_presets_are_valid_configs_on_the_default_model():
    from evalkit.config import preset_names, preset_path
    from evalkit.prompts import load_prompts
    from evalkit.scoring.registry import default_registry

    for name in preset_names():
        config = evalkit.load_config(preset_path(name))
        assert config.model.id == "default" and len(config.settings()) >= 3  # humaneval: Chen et al.'s three
        assert len(load_prompts(config)) >= 4
        default_registry().create_all(config.metrics)
    code = evalkit.load_config(preset_path("code"))
    assert min(s.temperature for s in code.settings()) <= 0.2 and min(s.top_p for s in code.settings()) <= 0.1


def test_python_dash_m(tmp_path):
    done = subprocess.run([sys.executable, "-m", "evalkit", "run", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path / 'none.yaml'}: config file not found"
    assert not (tmp_path / "runs").exists()


def test_one_setting_sweeps_get_a_report(tiny_model, tmp_path, write_config):
    """The most common sweep there is ("my model at T=0.8"): every chart copes with one setting."""
    metrics = ["distinct_2", "self_bleu", "token_entropy", "mean_length", "perplexity", "nll"]
    path = write_config(base_config(tiny_model, tmp_path / "runs", grid={"temperature": [0.5], "top_p": [0.9]},
                                    metrics=metrics, report=True))
    result = runner.invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "runs").glob("*/report.html"))) == 1


def test_a_report_that_fails_leaves_a_complete_run_and_one_line(tiny_model, tmp_path, write_config, monkeypatch):
    import evalkit.report

    def broken(*args, **kwargs):
        raise RuntimeError("chart trouble")

    monkeypatch.setattr(evalkit.report, "write_report", broken)
    path = write_config(base_config(tiny_model, tmp_path / "runs", grid={"temperature": [0.5]}, report=True))
    result = runner.invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 3, result.output
    run_dir = next((tmp_path / "runs").glob("2*"))
    assert result.stderr.strip() == (f"error: the run is complete ({run_dir}), but its report failed (RuntimeError: "
                                     f"chart trouble); retry with: evalkit report {run_dir}")
    assert "Traceback" not in result.output and "run directory:" in result.stdout
    assert evalkit.load_run(run_dir).manifest.status == "complete"


def test_outputs_go_where_they_are_asked_to(tiny_model, tmp_path, write_config, monkeypatch):
    """Missing folders are made; a folder where a file should go is refused in one line (exit 2) with nothing
    left behind; ``~`` in output_dir is the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write_config(base_config(tiny_model, "~/runs", grid={"temperature": [0.5]}))
    assert runner.invoke(app, ["run", str(path), "--quiet"]).exit_code == 0
    run_dir = next((tmp_path / "home" / "runs").glob("2*"))
    assert not (Path.cwd() / "~").exists()
    for args in (["report", str(run_dir), "-o", str(tmp_path / "new" / "deep" / "r.html")],
                 ["compare", str(run_dir), str(run_dir), "-o", str(tmp_path / "cmp" / "a.txt"),
                  "--junit", str(tmp_path / "ci" / "reports" / "gate.xml")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "deep" / "r.html").is_file() and (tmp_path / "cmp" / "a.txt").is_file()
    assert (tmp_path / "ci" / "reports" / "gate.xml").is_file()
    (tmp_path / "taken").mkdir()
    result = runner.invoke(app, ["compare", str(run_dir), str(run_dir), "-o", str(tmp_path / "taken")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: -o: {tmp_path / 'taken'} is a directory; give a file name"
    assert list((tmp_path / "taken").iterdir()) == [] and not list(tmp_path.glob(".*.tmp"))


def test_a_crash_is_one_line_and_never_exit_1(tmp_path, monkeypatch):
    """Exit 1 means "regression" to a nightly gate: an unexpected error (a bug) exits 4, in one line."""
    from evalkit.index import RunIndex

    def broken(self, name=None):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(RunIndex, "runs", broken)
    RunIndex(tmp_path / "index.sqlite").close()
    result = CliRunner().invoke(app, ["runs", "--index", str(tmp_path / "index.sqlite")])
    assert result.exit_code == 4, result.output
    assert result.stderr.strip().splitlines() == [
        "error: unexpected ZeroDivisionError: division by zero (a bug in evalkit; --debug shows the traceback)"]
    debug = CliRunner().invoke(app, ["runs", "--index", str(tmp_path / "index.sqlite"), "--debug"])
    assert isinstance(debug.exception, ZeroDivisionError)


def test_ctrl_c_while_starting_is_one_line(tmp_path):
    """Ctrl-C while the command is still importing: `interrupted`, exit 130, no traceback."""
    code = ("import builtins\n"
            "real = builtins.__import__\n"
            "def stop(name, *a, **k):\n"
            "    if name == 'evalkit.cli':\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = stop\n"
            "from evalkit.launch import main\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code, "runs"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 130 and done.stderr == "interrupted\n", done.stderr
