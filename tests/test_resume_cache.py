"""Nothing lost: kill -9 and Ctrl-C part way, resume, and get the samples of an uninterrupted
run; the sample cache; NaN logits keep the samples already made."""

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import yaml

import evalkit
from evalkit.config import config_from_dict
from evalkit.generation.engine import DecodeError

from conftest import base_config, held_run, wait_for_parts

COMPARE = ["prompt_id", "setting_id", "sample_index", "seed", "text", "token_ids", "finish_reason"]


def slow_config(tiny_model, out):
    # batch_size 1: one sample per decode, so the run lasts long enough to be stopped part way
    return base_config(tiny_model, out, samples_per_prompt=6, max_new_tokens=24, batch_size=1)


HOLD_AFTER = 2  # parts written before a held run sleeps (conftest.held_run)


def start(config_path, cwd, env, release=None):
    """``evalkit run`` of the config, held once it has written HOLD_AFTER parts (conftest.held_run)."""
    command = [sys.executable, *held_run(HOLD_AFTER, release), "run", str(config_path), "--no-cache", "-q"]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def frame(run):
    s = run.samples[COMPARE].copy()
    s["token_ids"] = s["token_ids"].map(list)
    return s.sort_values(["setting_id", "prompt_id", "sample_index"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return evalkit.run_sweep(config_from_dict(slow_config(tiny_model, out)), progress=False, cache=False)


@pytest.mark.parametrize("how", ["kill", "ctrl-c", "sigterm"])
def test_stopped_run_resumes_to_the_same_samples(how, tiny_model, tmp_path, uninterrupted):
    out = tmp_path / "runs"
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(slow_config(tiny_model, out)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = start(path, tmp_path, env)
    try:
        run_dir = wait_for_parts(out, proc, minimum=HOLD_AFTER)
        proc.send_signal({"kill": signal.SIGKILL, "ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM}[how])
        _, stderr = proc.communicate(timeout=600)  # a hung stop only: the run is held, not slow
    finally:
        proc.kill()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] != "complete" and not (run_dir / "samples.parquet").exists()
    if how != "kill":  # SIGTERM too: stopped like Ctrl-C, never left marked running
        assert proc.returncode == (130 if how == "ctrl-c" else 143)
        assert manifest["status"] == "interrupted"
        word = "interrupted" if how == "ctrl-c" else "terminated"
        assert stderr.strip().splitlines()[-1] == f"{word}; resume with: evalkit run --resume {run_dir}"
        assert "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    kept = len(pd.concat([pd.read_parquet(p) for p in (run_dir / "parts").glob("part-*.parquet")]))
    assert 0 < kept < len(uninterrupted.samples)

    done = subprocess.run([sys.executable, "-m", "evalkit", "run", "--resume", str(run_dir), "--no-cache", "-q"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    resumed = evalkit.load_run(run_dir)
    assert resumed.manifest.status == "complete"
    assert resumed.manifest.samples_reused["from_parts"] == kept
    assert resumed.manifest.samples_reused["generated"] == len(uninterrupted.samples) - kept
    pd.testing.assert_frame_equal(frame(resumed), frame(uninterrupted))
    assert not (run_dir / "parts").exists()


def test_a_run_started_without_the_cache_resumes_without_it(tiny_model, tmp_path, uninterrupted):
    """--no-cache is the run's: a resume that does not repeat it still takes no sample from the sample cache,
    which here holds every sample of the sweep."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EVALKIT_SAMPLE_CACHE": str(tmp_path / "cache.sqlite")}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(slow_config(tiny_model, tmp_path / "cached")))
    filled = subprocess.run([sys.executable, "-m", "evalkit", "run", str(path), "-q"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert filled.returncode == 0, filled.stderr
    out = tmp_path / "runs"
    path.write_text(yaml.safe_dump(slow_config(tiny_model, out)))
    proc = start(path, tmp_path, env)  # with --no-cache
    try:
        run_dir = wait_for_parts(out, proc, minimum=HOLD_AFTER)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert json.loads((run_dir / "manifest.json").read_text())["sample_cache"] is False
    done = subprocess.run([sys.executable, "-m", "evalkit", "run", "--resume", str(run_dir)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "started with --no-cache: its resume takes no sample from the sample cache" in done.stderr + done.stdout
    resumed = evalkit.load_run(run_dir)
    assert resumed.manifest.samples_reused["from_cache"] == 0
    assert resumed.manifest.samples_reused["generated"] == len(uninterrupted.samples) - resumed.manifest.samples_reused[
        "from_parts"] > 0
    pd.testing.assert_frame_equal(frame(resumed), frame(uninterrupted))


def test_a_second_writer_is_refused_and_the_first_finishes(tiny_model, tmp_path, uninterrupted):
    """--resume of a run another process is still writing is refused in one line, up front, and the
    first process completes its run untouched; the lock goes with the process that held it."""
    out = tmp_path / "runs"
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(slow_config(tiny_model, out)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    release = tmp_path / "release"
    proc = start(path, tmp_path, env, release=release)  # still writing, however slow the machine
    try:
        run_dir = wait_for_parts(out, proc, minimum=HOLD_AFTER)
        second = subprocess.run([sys.executable, "-m", "evalkit", "run", "--resume", str(run_dir), "-q"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip() == (f"error: --resume: {run_dir} is being written by process {proc.pid}; "
                                         "wait for it to end, or stop it and resume then")
        with pytest.raises(evalkit.EvalkitError, match="is being written by process"):
            evalkit.run_sweep(None, resume=run_dir, progress=False)
        release.touch()
        _, stderr = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    first = evalkit.load_run(run_dir)
    assert first.manifest.status == "complete" and first.manifest.n_samples == len(uninterrupted.samples)
    pd.testing.assert_frame_equal(frame(first), frame(uninterrupted))
    assert not (run_dir / ".lock").exists()


def test_resume_refuses_a_complete_run(uninterrupted):
    with pytest.raises(evalkit.EvalkitError, match="is already complete"):
        evalkit.run_sweep(None, resume=uninterrupted.path, progress=False)


def test_a_run_stopped_while_it_scores_resumes_without_sampling_again(tiny_model, tmp_path, monkeypatch,
                                                                     uninterrupted):
    """samples.parquet is written before scoring, but the parts stay until the run is complete: Ctrl-C
    during scoring loses no sample, and --resume (without the sample cache) makes none again."""
    from evalkit import pipeline

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "score_samples", stopped)
    out = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        evalkit.run_sweep(config_from_dict(slow_config(tiny_model, out)), progress=False, cache=False)
    (run_dir,) = (m.parent for m in out.glob("*/manifest.json"))
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    resumed = evalkit.run_sweep(None, resume=run_dir, progress=False, cache=False)
    assert resumed.manifest.samples_reused["generated"] == 0
    assert resumed.manifest.samples_reused["from_parts"] == len(uninterrupted.samples)
    pd.testing.assert_frame_equal(frame(resumed), frame(uninterrupted))
    assert not (run_dir / "parts").exists()


def test_cache_generates_only_new_settings(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_SAMPLE_CACHE", str(tmp_path / "cache.sqlite"))
    first = evalkit.run_sweep(config_from_dict(base_config(tiny_model, tmp_path, grid={"temperature": [0.7]})),
                              progress=False)
    assert first.manifest.samples_reused == {"from_parts": 0, "from_cache": 0, "generated": 9}
    second = evalkit.run_sweep(config_from_dict(base_config(tiny_model, tmp_path, grid={"temperature": [0.7, 1.3]})),
                               progress=False)
    assert second.manifest.samples_reused == {"from_parts": 0, "from_cache": 9, "generated": 9}
    from evalkit.cli import _print_summary, out

    with out.capture() as captured:
        _print_summary(second)
    assert "(9 from the sample cache)" in captured.get()
    again = second.samples[second.samples.setting_id == "t0.7-p1"].reset_index(drop=True)
    pd.testing.assert_frame_equal(again, first.samples)
    off = evalkit.run_sweep(config_from_dict(base_config(tiny_model, tmp_path, grid={"temperature": [0.7]})),
                            progress=False, cache=False)
    assert off.manifest.samples_reused["from_cache"] == 0
    longer = evalkit.run_sweep(config_from_dict(base_config(tiny_model, tmp_path, grid={"temperature": [0.7]},
                                                            max_new_tokens=9)), progress=False)
    assert longer.manifest.samples_reused["from_cache"] == 0  # max_new_tokens is part of the key


def test_cache_keys_hold_the_dtype_device_and_cpu_threads(tiny_model, tmp_path, monkeypatch):
    """A sample made in float32 is not a bfloat16 one, nor one made with another number of CPU threads
    (their float sums differ): the cache never hands one out as the other."""
    import torch

    monkeypatch.setenv("EVALKIT_SAMPLE_CACHE", str(tmp_path / "cache.sqlite"))

    def run(**model):
        cfg = base_config(tiny_model, tmp_path, grid={"temperature": [0.7]})
        cfg["model"] = {**cfg["model"], **model}
        return evalkit.run_sweep(config_from_dict(cfg), progress=False)

    assert run(dtype="float32").manifest.samples_reused["generated"] == 9
    half = run(dtype="bfloat16")
    assert half.manifest.samples_reused["from_cache"] == 0 and half.manifest.model["dtype"] == "bfloat16"
    assert run(dtype="float32").manifest.samples_reused["from_cache"] == 9
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        other = run(dtype="float32")
    finally:
        torch.set_num_threads(threads)
    assert other.manifest.samples_reused["from_cache"] == 0 and other.manifest.model["threads"] == threads + 1


def test_a_cache_found_damaged_past_its_header_is_set_aside_with_a_note(tiny_model, tmp_path, monkeypatch):
    """The up-front check reads the header; a file damaged further in (cut short) is found when it is opened:
    the run makes its samples without it, and says so, rather than failing after its directory exists."""
    from evalkit.progress import Silent

    class Notes(Silent):
        said: list[str] = []

        def note(self, message):
            self.said.append(message)

    cache = tmp_path / "cache.sqlite"
    monkeypatch.setenv("EVALKIT_SAMPLE_CACHE", str(cache))
    config = base_config(tiny_model, tmp_path / "runs", grid={"temperature": [0.7, 1.3]}, max_new_tokens=40)
    first = evalkit.run_sweep(config_from_dict(config), progress=False)
    size = cache.stat().st_size
    assert size > 8192
    with open(cache, "r+b") as f:
        f.truncate(4096)  # the header and the first page only
    ui = Notes()
    again = evalkit.run_sweep(config_from_dict(config), progress=ui)
    assert again.manifest.status == "complete" and again.manifest.samples_reused["generated"] == len(first.samples)
    assert len(ui.said) == 1 and ui.said[0].startswith(f"the sample cache {cache} cannot be read (")
    pd.testing.assert_frame_equal(frame(again), frame(first))


def test_nan_logits_stop_the_run_and_keep_samples(tiny_model, tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    forward = LlamaForCausalLM.forward
    calls = []

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 60:
            out.logits[0, -1, 3] = float("nan")
        return out

    monkeypatch.setattr(LlamaForCausalLM, "forward", poisoned)
    config = config_from_dict(slow_config(tiny_model, tmp_path / "runs"))
    with pytest.raises(DecodeError, match=r"NaN logits for prompt '\w+', setting t[\d.]+-p[\d.]+, sample \d+, at "
                                          r"decode step \d+"):
        evalkit.run_sweep(config, progress=False, cache=False)
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]  # beside the run index
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "NaN logits" in manifest["error"]
    kept = pd.concat([pd.read_parquet(p) for p in (run_dir / "parts").glob("part-*.parquet")])
    assert len(kept) >= 2  # every sample finished before the bad step is kept
    monkeypatch.setattr(LlamaForCausalLM, "forward", forward)
    resumed = evalkit.run_sweep(None, resume=run_dir, progress=False, cache=False)
    assert resumed.manifest.status == "complete"


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stop_that_lands_in_a_finalizer_still_stops_the_run(how):
    """Python prints and drops an exception raised inside a __del__: a Ctrl-C that arrives there would be lost. The
    command's handler remembers it, and the run's next step raises it again."""
    code = f"""
import gc, signal, sys
from evalkit.errors import stop_on_signal
from evalkit.progress import Phase

class Finalized:
    def __del__(self):
        stop_on_signal(signal.{'SIGINT' if how == 'ctrl-c' else 'SIGTERM'})  # the signal arrives here

Finalized()
gc.collect()
print("went on", flush=True)
try:
    Phase().update(completed=1)
except KeyboardInterrupt as e:
    print("stopped", type(e).__name__, getattr(e, "exit_code", 130))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" in done.stderr  # Python did drop it where it was raised
    expected = "KeyboardInterrupt 130" if how == "ctrl-c" else "Terminated 143"
    assert done.stdout.splitlines() == ["went on", f"stopped {expected}"]
