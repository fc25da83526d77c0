"""The Ray executor: a sweep's generation on the actors of a Ray cluster (``executor.kind: ray``).

- Each of ``executor.workers`` actors loads the model once (``gpus_per_worker`` GPUs and
  ``cpus_per_worker`` CPUs each). The driver loads nothing: the first actor renders and tokenizes
  the prompts and reports what was loaded, so a driver without a GPU can run a sweep of a large model.
- The driver plans the work units as a local run does and cuts them into shards in prompt order,
  ``batch_size`` at a time, so a prompt's shared prefill still pays. Each actor has at most two
  shards queued; records come back shard by shard and the driver alone writes the run directory, so
  parts, ``--resume``, the sample cache, the manifest and the run index behave as in a local run.
- A sample's random stream comes from its own seed, and on CPU evalkit's engine gives a sample the same
  tokens whatever rows share its batch (:mod:`evalkit.generation.slots`), so the samples equal a local
  run's whatever the number of workers: to the bit where a worker runs as many threads as the local run
  (``cpus_per_worker``: a matrix product's float sums split by thread count); with fewer, a rare sample
  can differ. On a GPU a shard's batches are not the local run's, and a rare sample can differ too.
- An actor that dies (killed, out of memory) has its unfinished shards given to the actors still alive,
  at most ``executor.max_retries`` times each; with no actor left, or a shard past its retries, the run
  stops naming it, with every finished sample kept (``--resume`` continues). Ctrl-C and any error kill
  the actors; a Ray instance that the executor started is shut down.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from evalkit.config import SweepConfig
from evalkit.errors import ConfigError, EvalkitError
from evalkit.generation import Abilities, check_model, load_backend, spec_of
from evalkit.generation.base import Generator, ModelInfo, PreparedPrompt, SampleRecord, WorkUnit

NAMESPACE = "evalkit"  # actors are named evalkit-<run>-worker-<i> in this namespace
IN_FLIGHT = 2  # shards queued per actor


class Worker:
    """One Ray actor: one copy of the model, generating the shards it is given."""

    def __init__(self, config: SweepConfig, checked: tuple):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.generator = load_backend(config, checked=checked)

    def info(self) -> ModelInfo:
        return self.generator.info

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def prepare(self, prompts, **options) -> list[PreparedPrompt]:
        return self.generator.prepare(prompts, **options)

    def check(self, settings, prompts, **options) -> None:
        self.generator.check(settings, prompts, **options)

    def generation_params(self, setting, max_new_tokens: int) -> dict[str, Any]:
        return self.generator.generation_params(setting, max_new_tokens)

    def batch_size(self, requested, prompts, max_new_tokens: int) -> int:
        return self.generator.batch_size(requested, prompts, max_new_tokens)

    def generate(self, units: list[WorkUnit], max_new_tokens: int, batch_size: int,
                 stop: tuple[str, ...]) -> list[SampleRecord]:
        return list(self.generator.generate(units, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop))


class RemoteGenerator:
    """The :class:`~evalkit.generation.base.Generator` the pipeline sees: its calls go to the first actor,
    but for ``check``, which every actor makes (what a served model's check finds shapes its requests)."""

    def __init__(self, actors: list, ray):
        self._actors, self._actor, self._ray = actors, actors[0], ray
        self.info = self._call("info")

    def _call(self, name: str, *args, **kwargs):
        return _get(self._ray, getattr(self._actor, name).remote(*args, **kwargs))

    def prepare(self, prompts, *, chat_template, system_prompt, max_new_tokens) -> list[PreparedPrompt]:
        return self._call("prepare", prompts, chat_template=chat_template, system_prompt=system_prompt,
                          max_new_tokens=max_new_tokens)

    def check(self, settings, prompts, *, logprobs: int = 0, max_new_tokens: int = 0, status=lambda msg: None) -> None:
        refs = [a.check.remote(settings, prompts, logprobs=logprobs, max_new_tokens=max_new_tokens)
                for a in self._actors]
        for ref in refs:
            _get(self._ray, ref)
        # what the check found is part of what was loaded (a served model's endpoint id): read it again
        self.info = same_everywhere([_get(self._ray, a.info.remote()) for a in self._actors])

    def generation_params(self, setting, max_new_tokens: int) -> dict[str, Any]:
        return self._call("generation_params", setting, max_new_tokens)

    def batch_size(self, requested, prompts, max_new_tokens: int) -> int:
        return self._call("batch_size", requested, prompts, max_new_tokens)

    def generate(self, *args, **kwargs):
        raise NotImplementedError("a Ray run generates through RayExecutor.run")


def same_everywhere(infos: list[ModelInfo]) -> ModelInfo:
    """The first worker's ModelInfo, once every worker is shown to have loaded the same thing."""
    first = infos[0]
    for i, info in enumerate(infos[1:], 1):
        for field in ("weights_id", "device", "dtype", "backend", "engine"):
            if getattr(info, field) != getattr(first, field):
                raise EvalkitError(f"Ray workers 0 and {i} loaded different models: {field} {getattr(first, field)!r} "
                                   f"and {getattr(info, field)!r} (every node must have the same weights and device)")
    return first


def _get(ray, ref):
    """``ray.get``; an error raised in a worker: evalkit's own as itself (one line), others unchanged; a worker
    that could not start or died: one line saying why."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        _reraise(e)
    except ray.exceptions.RayError as e:
        raise _died(e) from None


def _reraise(e) -> None:
    """An error raised in a worker's method: evalkit's own as itself (one line), any other unchanged."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, EvalkitError):
        raise cause from None
    raise e


def _died(e) -> EvalkitError:
    """A worker that died or could not start: evalkit's own error where it was one, else the last line of the cause."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        name, sep, message = line.partition(": ")
        if sep and name.rsplit(".", 1)[-1] in ("EvalkitError", "ConfigError", "ServerError"):
            return EvalkitError(message)
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return EvalkitError(f"a Ray worker could not run ({type(e).__name__}): {(errors or lines or ['no detail'])[-1]}")


def _reachable(address: str, source: str | None) -> None:
    """Refuse at once an address where nothing listens (Ray itself would keep trying for minutes)."""
    import socket

    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except ValueError:
        raise ConfigError(f"a Ray address is auto, host:port or ray://host:port, got {address!r}", source=source,
                          path="executor.address") from None
    except OSError as e:
        raise ConfigError(f"cannot reach Ray at {address}: {e.strerror or type(e).__name__} (is a Ray head started "
                          "there, ray start --head?)", source=source, path="executor.address") from None


def lost_worker(ray) -> tuple[type, ...]:
    """The errors that mean a worker (or its node, or what it made) is gone: its shards go to others."""
    names = ("RayActorError", "OutOfMemoryError", "NodeDiedError", "ObjectLostError", "WorkerCrashedError",
             "LocalRayletDiedError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


def shards(units: list[WorkUnit], size: int, per_prompt: bool = False) -> list[list[WorkUnit]]:
    """The units ordered by prompt (first seen first), then ``size`` at a time (within one prompt with
    ``per_prompt``): a prompt's units go together, so its prefill is shared (a shard may end in the middle of one
    prompt and start the next)."""
    order: dict[str, list[WorkUnit]] = {}
    for u in units:
        order.setdefault(u.prompt.prompt.id, []).append(u)
    size = max(1, size)
    groups = list(order.values()) if per_prompt else [[u for group in order.values() for u in group]]
    return [group[i:i + size] for group in groups for i in range(0, len(group), size)]


class RayExecutor:
    def __init__(self, config: SweepConfig):
        try:
            import ray
        except ImportError:
            raise ConfigError("executor.kind ray needs Ray: pip install 'evalkit[ray]'", source=config.source,
                              path="executor.kind") from None
        self.ray = ray
        self.config = config
        self.actors: list = []
        self.alive: list = []
        self.started_ray = False
        self.counts = {"shards": 0, "shards_retried": 0, "workers_lost": 0}
        self.threads: int | None = None  # torch's CPU threads in a worker
        self.notes: list[str] = []  # what the user should read once the workers are loaded
        # the workers' models score, tokenize and embed nothing for the driver: a Ray run has no optional abilities
        self.abilities = Abilities()

    def check(self) -> tuple:
        """The model located and hashed here; the device is resolved by each worker, where it loads."""
        return check_model(self.config, device=False)

    def load(self, checked: tuple, status: Callable[[str], None] = lambda msg: None) -> Generator:
        ray, ex = self.ray, self.config.executor
        status("connecting to Ray" if ex.address else "starting a local Ray instance")
        self._connect()
        self._check_resources()
        status(f"starting {ex.workers} Ray worker{'s' if ex.workers > 1 else ''}, each loading the model")
        worker = ray.remote(Worker)
        options = dict(num_cpus=ex.cpus_per_worker, num_gpus=ex.gpus_per_worker, namespace=NAMESPACE, max_restarts=0,
                       max_task_retries=0)
        run = uuid.uuid4().hex[:8]  # two sweeps on one cluster never share a worker name
        for i in range(ex.workers):
            self.actors.append(worker.options(name=f"evalkit-{run}-worker-{i}", **options).remote(
                self._worker_config(), checked))
        self.alive = list(self.actors)
        # every worker loaded, and loaded the same (a failure says why now, not mid-run)
        same_everywhere([_get(ray, a.info.remote()) for a in self.actors])
        generator = RemoteGenerator(self.actors, ray)
        self.threads = _get(ray, self.actors[0].threads.remote())
        if generator.info.device == "cpu" and not spec_of(self.config.model.backend).remote:
            import torch

            if self.threads != torch.get_num_threads():  # a matrix product's float sums split by thread
                self.notes.append(f"the Ray workers run {self.threads} CPU thread{'s' if self.threads > 1 else ''} "
                                  f"each and a local run {torch.get_num_threads()}: float sums differ with the count, "
                                  "so a few samples may differ from a local run's (executor.cpus_per_worker sets it)")
        return generator

    def _worker_config(self) -> SweepConfig:
        """The config the workers load: with no GPU given to them, on the CPU (Ray does not hide a node's GPUs
        from an actor that asked for none)."""
        config, ex = self.config, self.config.executor
        if ex.gpus_per_worker or spec_of(config.model.backend).remote:
            return config
        if config.model.device == "cuda":
            raise ConfigError("model.device cuda needs GPUs for the Ray workers: set executor.gpus_per_worker",
                              source=config.source, path="executor.gpus_per_worker")
        return config.model_copy(update={"model": config.model.model_copy(update={"device": "cpu"})})

    def _connect(self) -> None:
        ray, ex = self.ray, self.config.executor
        if ray.is_initialized():
            return
        import logging

        if ex.address and ex.address != "auto":
            _reachable(ex.address, self.config.source)
        self.started_ray = True  # shut down on the way out, however far init gets
        import signal
        import threading

        main = threading.current_thread() is threading.main_thread()
        on_term = signal.getsignal(signal.SIGTERM) if main else None
        try:
            ray.init(address=ex.address or "local", include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, namespace=NAMESPACE)
            if main and on_term is not None:  # Ray installs its own (sys.exit): SIGTERM stays a clean stop
                signal.signal(signal.SIGTERM, on_term)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = ex.address or "a local instance"
            raise ConfigError(f"cannot reach Ray at {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                              source=self.config.source, path="executor.address") from None

    def _check_resources(self) -> None:
        ex = self.config.executor
        total = self.ray.cluster_resources()
        for what, per in (("GPU", ex.gpus_per_worker), ("CPU", ex.cpus_per_worker)):
            need, have = per * ex.workers, float(total.get(what, 0))
            if need > have:
                # the number that does not fit: one worker's own need, or else the number of workers
                field = ("gpus_per_worker" if what == "GPU" else "cpus_per_worker") if per > have else "workers"
                plural = "s" if need != 1 else ""
                asked = (f"1 worker needs {need:g} {what}{plural}" if ex.workers == 1 else
                         f"{ex.workers} workers need {per:g} {what} each, {need:g} {what}{plural} in all")
                raise ConfigError(f"{asked}; the Ray cluster has {have:g}", source=self.config.source,
                                  path=f"executor.{field}")

    def run(self, units: list[WorkUnit], *, max_new_tokens: int, batch_size: int, stop: tuple[str, ...],
            progress: Callable[[int, int | str], None]) -> Iterator[SampleRecord]:
        ray, ex = self.ray, self.config.executor
        # a vision-language model's prompts are images: a shard holds one, so no worker prefills an image twice
        queue = deque(shards(units, batch_size, per_prompt=self.config.kind == "image-to-text"))
        self.counts["shards"] += len(queue)
        tries = {id(s): 0 for s in queue}
        in_flight: dict[Any, tuple[list[WorkUnit], Any]] = {}
        started, done, tokens = time.perf_counter(), 0, 0

        def submit(actor) -> None:
            while queue and sum(1 for _, a in in_flight.values() if a is actor) < IN_FLIGHT:
                shard = queue.popleft()
                in_flight[actor.generate.remote(shard, max_new_tokens, batch_size, stop)] = (shard, actor)

        for actor in self.alive:
            submit(actor)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                shard, actor = in_flight.pop(ref)
                try:
                    records = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    _reraise(e)
                except lost_worker(ray) as e:
                    self._lost(actor, shard, tries, queue, e)
                    continue
                for record in records:
                    done += 1
                    tokens += len(record.token_ids) if record.num_tokens is None else record.num_tokens
                    yield record
                if actor in self.alive:
                    submit(actor)
            for actor in self.alive:  # shards given back by a dead actor go to the live ones
                submit(actor)
            elapsed = max(time.perf_counter() - started, 1e-9)
            progress(done, f"{done / elapsed:.1f} samples/s, {tokens / elapsed:.0f} tok/s, "
                           f"{len(self.alive)}/{ex.workers} workers")

    def _lost(self, actor, shard: list[WorkUnit], tries: dict, queue: deque, error) -> None:
        """An actor died: its shard goes back to the queue, within its retries, while an actor is alive."""
        if actor in self.alive:
            self.alive.remove(actor)
            self.counts["workers_lost"] += 1
            try:  # one that is only unreachable would keep its GPU until the end
                self.ray.kill(actor)
            except Exception:
                pass
        self.counts["shards_retried"] += 1
        u = shard[0]
        what = f"the shard from prompt {u.prompt.prompt.id!r} ({len(shard)} samples)"
        tries[id(shard)] += 1
        if tries[id(shard)] > self.config.executor.max_retries:
            workers = f"{tries[id(shard)]} Ray worker{'s' if tries[id(shard)] > 1 else ''}"
            raise EvalkitError(f"{what} failed on {workers} (executor.max_retries "
                               f"{self.config.executor.max_retries}); the samples made so far are kept")
        if not self.alive:
            raise EvalkitError(f"every Ray worker died ({type(error).__name__}); {what} and others are unfinished, "
                               "the samples made so far are kept")
        queue.appendleft(shard)

    def record(self) -> dict:
        """Where generation ran, for the manifest."""
        ex = self.config.executor
        try:
            address = self.ray.get_runtime_context().gcs_address
        except Exception:  # not connected (yet)
            address = ex.address or "local"
        return {"kind": "ray", "ray": self.ray.__version__, "address": address,
                "workers": ex.workers, "gpus_per_worker": ex.gpus_per_worker, "cpus_per_worker": ex.cpus_per_worker,
                "threads_per_worker": self.threads, **self.counts}

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors, self.alive = [], []
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False
