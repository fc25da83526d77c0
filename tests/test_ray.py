"""The Ray executor on a local Ray instance (``ray.init(num_cpus=2)``), started and stopped by the tests:
samples equal a local run's whatever the workers, workers killed part way, a driver killed with SIGKILL,
and the refusals at the start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import evalkit
from evalkit.cli import app
from evalkit.config import config_from_dict
from evalkit.errors import EvalkitError
from evalkit.progress import Silent

from conftest import base_config, held_run, wait_for_parts

ROOT = Path(__file__).resolve().parents[1]


def require_ray():
    try:
        import ray  # noqa: F401
    except ImportError as e:
        if os.environ.get("EVALKIT_REQUIRE_RAY") == "1":
            raise RuntimeError(f"EVALKIT_REQUIRE_RAY=1 but Ray is missing: {e}") from None
        pytest.skip("ray is not installed")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance for this module's runs (they find it initialised and leave it running)."""
    require_ray()
    import logging

    import ray

    # Ray starts its workers at niceness 15: on a machine busy with anything else they all but stop (a worker took
    # 17 minutes to load the tiny model beside two busy loops). The instances these tests start (here, and the ones
    # their subprocesses start, which inherit the environment) run their workers at the tests' own priority.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_worker_niceness", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 namespace="evalkit")
        try:
            yield ray
        finally:
            ray.shutdown()


def config(tiny_model: Path, out: Path, **executor) -> dict:
    extra = {"executor": {"kind": "ray", **executor}} if executor else {}
    return base_config(tiny_model, out, batch_size=6, metrics=["distinct_1", "nll", "mean_length"], **extra)


def sweep(cfg: dict, resume: Path | None = None, progress=False) -> evalkit.Run:
    if resume is not None:
        return evalkit.run_sweep(None, resume=resume, progress=progress, cache=False)
    return evalkit.run_sweep(config_from_dict(cfg), progress=progress, cache=False)


@pytest.fixture(scope="module")
def local_run(tiny_model, tmp_path_factory):
    return sweep(config(tiny_model, tmp_path_factory.mktemp("local")))


def same_run(a: evalkit.Run, b: evalkit.Run) -> None:
    pd.testing.assert_frame_equal(a.samples, b.samples)
    keys = ["prompt_id", "setting_id", "metric"]
    pd.testing.assert_frame_equal(a.scores.sort_values(keys).reset_index(drop=True),
                                  b.scores.sort_values(keys).reset_index(drop=True))
    pd.testing.assert_frame_equal(a.summary, b.summary)


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_runs_equal_a_local_run(ray_cluster, tiny_model, local_run, tmp_path, workers):
    import torch

    class Notes(Silent):
        def __init__(self):
            self.said = []

        def note(self, message):
            self.said.append(message)

    ui = Notes()
    run = sweep(config(tiny_model, tmp_path, workers=workers), progress=ui)
    same_run(local_run, run)
    # one CPU thread a worker, as many as the machine's in a local run: said (a larger model's float sums differ)
    local = torch.get_num_threads()
    assert ui.said == ([] if local == 1 else [
        f"the Ray workers run 1 CPU thread each and a local run {local}: float sums differ with the count, so a "
        "few samples may differ from a local run's (executor.cpus_per_worker sets it)"])
    ex = run.manifest.executor
    assert ex["kind"] == "ray" and ex["workers"] == workers and ex["shards"] == 9 and ex["workers_lost"] == 0
    assert ex["threads_per_worker"] == 1 and ex["address"].rpartition(":")[2].isdigit()  # the GCS, host:port
    assert local_run.manifest.executor == {"kind": "local"}
    assert ray_cluster.util.list_named_actors() == []  # the workers are gone with the run


def worker(ray, suffix: str):
    """The running sweep's worker whose name ends with ``suffix`` (names are evalkit-<run>-worker-<i>)."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("evalkit-") and a["name"].endswith(suffix)]
    assert len(names) == 1, names
    return ray.get_actor(names[0], namespace="evalkit")


class KillWorkers(Silent):
    """A progress display that kills Ray workers when the first sample arrives (what a crash or an
    out-of-memory kill does to them)."""

    def __init__(self, ray, names: list[str]):
        self.ray, self.names, self.done = ray, names, False

    @contextmanager
    def phase(self, description: str, total: int | None = None):
        outer = self

        class Phase:
            def update(self, *, completed: int | None = None, status: str | None = None) -> None:
                if description == "generating" and completed and not outer.done:
                    outer.done = True
                    for suffix in outer.names:
                        outer.ray.kill(worker(outer.ray, suffix))

            def advance(self, n: int = 1) -> None:
                pass

        yield Phase()


def test_a_killed_worker_has_its_shards_done_by_another(ray_cluster, tiny_model, local_run, tmp_path):
    killer = KillWorkers(ray_cluster, ["-worker-0"])
    run = evalkit.run_sweep(config_from_dict(config(tiny_model, tmp_path, workers=2)), progress=killer, cache=False)
    assert killer.done
    same_run(local_run, run)
    assert run.manifest.executor["workers_lost"] == 1 and run.manifest.executor["shards_retried"] >= 1


def test_every_worker_killed_stops_a_run_that_resumes_to_the_same_samples(ray_cluster, tiny_model, local_run,
                                                                           tmp_path):
    killer = KillWorkers(ray_cluster, ["-worker-0", "-worker-1"])
    with pytest.raises(EvalkitError, match=r"every Ray worker died \(\w+\); the shard from prompt '\w+'"):
        evalkit.run_sweep(config_from_dict(config(tiny_model, tmp_path, workers=2)), progress=killer, cache=False)
    run_dir = next(tmp_path.glob("2*"))
    assert evalkit.load_run(run_dir).manifest.status == "failed"
    kept = sum(len(pd.read_parquet(f)) for f in (run_dir / "parts").glob("*.parquet"))
    assert 0 < kept < 54
    resumed = sweep({}, resume=run_dir)
    assert resumed.manifest.samples_reused["from_parts"] > 0 and resumed.manifest.samples_reused["generated"] > 0
    same_run(local_run, resumed)


def test_a_driver_killed_with_sigkill_leaves_a_run_that_resumes(ray_cluster, tiny_model, tmp_path, write_config):
    longer = config(tiny_model, tmp_path / "runs", workers=1)
    longer.update(samples_per_prompt=8, max_new_tokens=16)  # parts enough that some are left to resume
    local = sweep({**longer, "executor": {"kind": "local"}, "output_dir": str(tmp_path / "local")})
    path = write_config(longer)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray instance
    # the driver held once it has written a part (a run on a loaded machine cannot end before it is killed)
    driver = subprocess.Popen([sys.executable, *held_run(1), "run", str(path), "-q", "--no-cache"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_parts(tmp_path / "runs", driver, pattern="2*/parts/*.parquet")
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and whatever it started
        driver.wait(600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    run_dir = next((tmp_path / "runs").glob("2*"))
    assert evalkit.load_run(run_dir).manifest.status == "running"  # killed: no chance to say so
    result = subprocess.run([sys.executable, "-m", "evalkit", "run", "--resume", str(run_dir), "-q", "--no-cache"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    resumed = evalkit.load_run(run_dir)
    assert resumed.manifest.samples_reused["from_parts"] > 0
    same_run(local, resumed)


def test_refusals_at_the_start(ray_cluster, tiny_model, tmp_path, write_config, monkeypatch):
    def refused(cfg: dict) -> str:
        result = CliRunner().invoke(app, ["run", str(write_config(cfg)), "-q"])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
        assert not (tmp_path / "runs").exists()
        return lines[0]

    runs = tmp_path / "runs"
    assert refused(config(tiny_model, runs, workers=0)).endswith(
        "executor.workers: Input should be greater than or equal to 1, got 0")
    assert refused(config(tiny_model, runs, workers=2, gpus_per_worker=1)).endswith(
        "executor.gpus_per_worker: 2 workers need 1 GPU each, 2 GPUs in all; the Ray cluster has 0")
    # one worker fits, three do not: the number of workers is what to change, not the CPUs of each
    assert refused(config(tiny_model, runs, workers=3)).endswith(
        "executor.workers: 3 workers need 1 CPU each, 3 CPUs in all; the Ray cluster has 2")
    assert refused(config(tiny_model, runs, workers=1, cpus_per_worker=3)).endswith(
        "executor.cpus_per_worker: 1 worker needs 3 CPUs; the Ray cluster has 2")
    # a number given by --set is said of --set, not of the file that never held it
    result = CliRunner().invoke(app, ["run", str(write_config(config(tiny_model, runs, workers=1))), "-q",
                                      "--set", "executor.workers=1000"])
    assert result.exit_code == 2 and result.stderr.strip() == (
        "error: --set: executor.workers: 1000 workers need 1 CPU each, 1000 CPUs in all; the Ray cluster has 2")
    assert refused(base_config(tiny_model, runs, executor={"workers": 2})).endswith(
        "executor.workers: only a ray executor has workers; this one is local, got workers set")
    monkeypatch.setitem(sys.modules, "ray", None)  # as where Ray is not installed
    assert refused(config(tiny_model, runs, workers=1)).endswith(
        "executor.kind: executor.kind ray needs Ray: pip install 'evalkit[ray]'")


def test_an_unreachable_address_is_refused_at_once(tiny_model, tmp_path, write_config):
    require_ray()
    from served_helpers import free_port

    address = f"127.0.0.1:{free_port()}"
    path = write_config(config(tiny_model, tmp_path / "runs", address=address))
    result = subprocess.run([sys.executable, "-m", "evalkit", "run", str(path), "-q"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith(f"executor.address: cannot reach Ray at {address}: Connection refused "
                                          "(is a Ray head started there, ray start --head?)"), result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_served_model_on_ray_workers(ray_cluster, llama_server, tmp_path):
    """Each worker checks the server and sends its share; the run keeps the endpoint's identity (cache, resume)."""
    import logging

    from conftest import served_config

    # Ray's workers read the key from the environment Ray was started in: start it again now that it is set
    ray_cluster.shutdown()
    ray_cluster.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     namespace="evalkit")
    local = sweep(served_config(llama_server.base_url, tmp_path / "local"))
    spread = sweep(served_config(llama_server.base_url, tmp_path / "ray", executor={"kind": "ray", "workers": 2}))
    texts = [{(r.prompt_id, r.setting_id, r.sample_index): r.text for r in run.samples.itertuples()}
             for run in (local, spread)]
    assert texts[0] == texts[1]
    assert spread.manifest.model["endpoint_id"] == local.manifest.model["endpoint_id"] is not None
    assert spread.manifest.model["server"]["sent_with_every_request"]["top_k"] == 0


def test_a_shard_past_its_retries_names_its_workers_in_the_right_number():
    from collections import deque
    from types import SimpleNamespace

    from evalkit.executors.ray_cluster import RayExecutor

    def lost_on(max_retries: int, losses: int) -> str:
        ex = RayExecutor.__new__(RayExecutor)  # no Ray needed: _lost reads the config, the actors and the counts
        ex.config = SimpleNamespace(executor=SimpleNamespace(max_retries=max_retries))
        ex.ray = SimpleNamespace(kill=lambda actor: None)
        ex.alive, ex.counts = ["a", "b", "c"], {"workers_lost": 0, "shards_retried": 0}
        shard = [SimpleNamespace(prompt=SimpleNamespace(prompt=SimpleNamespace(id="p")))]
        tries = {id(shard): 0}
        with pytest.raises(EvalkitError) as stopped:
            for actor in ex.alive[:losses]:
                ex._lost(actor, shard, tries, deque(), RuntimeError("died"))
        return str(stopped.value)

    assert lost_on(0, 1).startswith("the shard from prompt 'p' (1 samples) failed on 1 Ray worker (executor.")
    assert " failed on 2 Ray workers (executor.max_retries 1)" in lost_on(1, 2)


def test_shards_are_the_local_waves():
    from evalkit.executors.ray_cluster import shards
    from evalkit.generation.base import PreparedPrompt, WorkUnit
    from evalkit.prompts import Prompt
    from evalkit.settings import Setting

    prompts = {pid: PreparedPrompt(prompt=Prompt(id=pid, text=pid), rendered=pid, token_ids=(1,), chat_template=False)
               for pid in ("a", "b", "c")}
    units = [WorkUnit(prompt=prompts[pid], setting=Setting(temperature=t), sample_index=i, seed=i)
             for t in (0.5, 1.0) for pid in ("a", "b", "c") for i in range(2)]
    cut = shards(units, 5)
    assert [[u.prompt.prompt.id for u in s] for s in cut] == [["a"] * 4 + ["b"], ["b"] * 3 + ["c"] * 2, ["c"] * 2]
    assert sorted(map(id, (u for s in cut for u in s))) == sorted(map(id, units))
    per_prompt = shards(units, 3, per_prompt=True)
    assert [[u.prompt.prompt.id for u in s] for s in per_prompt] == [["a"] * 3, ["a"], ["b"] * 3, ["b"], ["c"] * 3,
                                                                    ["c"]]


def test_a_worker_error_reads_as_one_line():
    from evalkit.executors.ray_cluster import _died

    text = ("\x1b[36mray::Worker.__init__()\x1b[39m (pid=1, ip=127.0.0.1)\n  File \"x.py\", line 3, in load\n"
            "evalkit.errors.ConfigError: sweep.yaml: model.id: model path does not exist: /nope\n")
    assert str(_died(RuntimeError(text))) == "sweep.yaml: model.id: model path does not exist: /nope"
    oom = "ray::Worker.__init__()\n  File \"y.py\"\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"
    assert str(_died(RuntimeError(oom))) == ("a Ray worker could not run (RuntimeError): torch.OutOfMemoryError: "
                                            "CUDA out of memory. Tried to allocate 2 GiB")


def test_plan_says_where_generation_will_run(tiny_model, tmp_path, write_config):
    path = write_config(config(tiny_model, tmp_path / "runs", workers=3, gpus_per_worker=1, address="auto"))
    result = CliRunner().invoke(app, ["run", str(path), "--plan"])
    assert result.exit_code == 0, result.output
    assert "executor                        Ray at auto: 3 workers x 1 GPU, 1 CPU" in result.stdout.splitlines()
    assert not (tmp_path / "runs").exists()
