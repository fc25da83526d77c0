"""Damaged or edited run directories: one line that names the file and what to do, never a traceback;
a damaged part is set aside on --resume and its samples made again."""

import io
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

import evalkit
from evalkit.cli import app
from evalkit.config import config_from_dict
from evalkit.progress import RichProgress

from conftest import base_config

COMPARE = ["prompt_id", "setting_id", "sample_index", "seed", "text", "token_ids"]


@pytest.fixture(scope="module")
def complete(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return evalkit.run_sweep(config_from_dict(base_config(tiny_model, out)), progress=False, cache=False)


def truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGE = {
    "samples-truncated": (lambda d: truncate(d / "samples.parquet"), "samples.parquet: cannot be read ("),
    "scores-missing": (lambda d: (d / "scores.parquet").unlink(), "scores.parquet: missing: the run directory is "
                                                                  "incomplete or damaged"),
    "summary-empty": (lambda d: (d / "summary.csv").write_text(""), "summary.csv: cannot be read (No columns to "
                                                                     "parse from file)"),
    "summary-columns": (lambda d: (d / "summary.csv").write_text("x,y\n1,2\n"),
                        "summary.csv: no setting_id, metric, mean, ci_low, ci_high column: the file is damaged"),
    "manifest-not-json": (lambda d: (d / "manifest.json").write_text('{"run_id": '), "manifest.json: not JSON ("),
    "manifest-fields": (lambda d: (d / "manifest.json").write_text('{"run_id": "x"}'),
                        "manifest.json: name: Field required: not the manifest of a run"),
    "config-not-mapping": (lambda d: (d / "config.yaml").write_text("- a list\n"),
                           "config.yaml: not a sweep config (a YAML mapping), got list"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_run_is_one_line(case, complete, tmp_path):
    run_dir = tmp_path / complete.path.name
    shutil.copytree(complete.path, run_dir)
    damage, message = DAMAGE[case]
    damage(run_dir)
    result = CliRunner().invoke(app, ["report", str(run_dir), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: {run_dir}/") and message in lines[0], lines[0]
    assert lines[0].endswith("run the sweep again (the sample cache gives back the samples it made), or --resume "
                             "it if it never completed")
    assert not (tmp_path / "r.html").exists()


class StopAfter(RichProgress):
    """Progress that stops the run (as Ctrl-C does) once ``after`` samples are made."""

    def __init__(self, after: int):
        super().__init__(Console(file=io.StringIO()))
        self.after = after

    @contextmanager
    def phase(self, description, total=None):
        with super().phase(description, total) as inner:
            after = self.after

            class Stopping:
                def update(self, *, completed=None, status=None):
                    inner.update(completed=completed, status=status)
                    if description == "generating" and completed and completed >= after:
                        raise KeyboardInterrupt

                def advance(self, n=1):
                    inner.advance(n)

            yield Stopping()


def stopped_run(config: dict, after: int):
    with pytest.raises(KeyboardInterrupt):
        evalkit.run_sweep(config_from_dict(config), progress=StopAfter(after), cache=False)
    (run_dir,) = Path(config["output_dir"]).glob("2*")
    return run_dir


@pytest.mark.slow
def test_a_damaged_part_is_set_aside_and_its_samples_made_again(tiny_model, tmp_path, complete, monkeypatch):
    monkeypatch.setattr("evalkit.rundir.parts.PART_ROWS", 4)
    run_dir = stopped_run(base_config(tiny_model, tmp_path / "runs", batch_size=1), after=13)
    parts = sorted((run_dir / "parts").glob("part-*.parquet"))
    assert len(parts) >= 3
    truncate(parts[1])
    shown = io.StringIO()
    resumed = evalkit.run_sweep(None, resume=run_dir, progress=RichProgress(Console(file=shown, width=400)),
                                cache=False)
    assert f"note: {parts[1]} is damaged: set aside as {parts[1].name}.damaged; its samples are made again" in \
        shown.getvalue()
    assert resumed.manifest.status == "complete"
    assert resumed.manifest.samples_reused["generated"] == len(complete.samples) - resumed.manifest.samples_reused[
        "from_parts"]
    frame = lambda run: run.samples[COMPARE].assign(token_ids=run.samples["token_ids"].map(list)).sort_values(  # noqa
        ["setting_id", "prompt_id", "sample_index"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(frame(resumed), frame(complete))


@pytest.mark.slow
def test_parts_that_are_a_file_and_lost_prompts_on_resume(tiny_model, tmp_path, complete):
    run_dir = stopped_run(base_config(tiny_model, tmp_path / "runs", batch_size=1), after=5)
    (run_dir / "prompts.jsonl").unlink()  # lost: written again from the config and the model
    shutil.rmtree(run_dir / "parts")
    (run_dir / "parts").write_text("x")
    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2 and result.stderr.strip() == (
        f"error: {run_dir / 'parts'}: not a folder (the run directory is damaged): move it away, and --resume makes "
        "the samples it held again"), result.output
    (run_dir / "parts").unlink()
    resumed = evalkit.run_sweep(None, resume=run_dir, progress=False, cache=False)
    assert resumed.manifest.status == "complete" and len(resumed.prompts) == 3
    assert (run_dir / "prompts.jsonl").read_bytes() == (complete.path / "prompts.jsonl").read_bytes()


def test_an_edited_config_is_refused_on_resume(tiny_model, tmp_path):
    run_dir = stopped_run(base_config(tiny_model, tmp_path / "runs", batch_size=1), after=5)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["max_new_tokens"] = 9
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    before = (run_dir / "manifest.json").read_text()
    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (f"error: --resume: {run_dir / 'config.yaml'} was edited after the run started: a "
                                     "resumed run must be the same sweep; put it back, or start a new run with the "
                                     "edited config")
    assert (run_dir / "manifest.json").read_text() == before
    assert json.loads(before)["status"] == "interrupted"
    (run_dir / "config.yaml").unlink()
    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2 and result.stderr.strip() == (
        f"error: --resume: {run_dir / 'config.yaml'} is missing: the run's config is needed to continue it (put it "
        "back, or start a new run)")


def test_an_edited_prompt_file_is_refused_on_resume(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Write a poem."}\n{"id": "b", "prompt": "Name a bird."}\n')
    config = base_config(tiny_model, tmp_path / "runs", prompts={"file": str(prompts)}, batch_size=1)
    run_dir = stopped_run(config, after=2)
    prompts.write_text('{"id": "a", "prompt": "Write a song."}\n{"id": "b", "prompt": "Name a bird."}\n')
    with pytest.raises(evalkit.EvalkitError, match="the prompts differ from those in .*prompts.jsonl"):
        evalkit.run_sweep(None, resume=run_dir, progress=False, cache=False)


def test_a_lost_prompts_file_does_not_let_prompts_change_on_resume(tiny_model, tmp_path):
    """prompts.jsonl gone and the prompt file edited: the samples made before answer another prompt, so the
    resumed run is refused rather than mixing two prompts under one id."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Write a poem."}\n{"id": "b", "prompt": "Name a bird."}\n')
    run_dir = stopped_run(base_config(tiny_model, tmp_path / "runs", prompts={"file": str(prompts)}, batch_size=1),
                          after=4)
    (run_dir / "prompts.jsonl").unlink()
    prompts.write_text('{"id": "a", "prompt": "Write a song."}\n{"id": "b", "prompt": "Name a bird."}\n')
    with pytest.raises(evalkit.EvalkitError, match="the samples made before for prompt 'a' answer another prompt"):
        evalkit.run_sweep(None, resume=run_dir, progress=False, cache=False)
