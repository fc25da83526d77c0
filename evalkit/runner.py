"""One sweep: grid -> work units -> backend -> run directory -> scores -> summary.

Everything that can be checked without the model (config, metrics, prompts, output
directory, device, model path and hash) is checked before loading it, and the run
directory is created only once the model is loaded and every prompt fits its context:
a failed start leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from evalkit import store
from evalkit.backends import WorkUnit, check_model
from evalkit.config import SweepConfig, load_config
from evalkit.errors import ConfigError, EvalkitError
from evalkit.manifest import Manifest, SettingRecord, git_info, utc_now
from evalkit.parts import PartWriter, read_parts
from evalkit.progress import RichProgress, Silent
from evalkit.prompts import load_prompts
from evalkit.registry import default_registry, prepare_all
from evalkit.sampling import APPLICATION_ORDER
from evalkit.sample_cache import SampleCache, unit_key
from evalkit.scoring import score_run
from evalkit.metric import TEXT_NEEDS, VLM_NEEDS
from evalkit.seeds import derive_seed


def run_sweep(config: SweepConfig | str | Path | None, *, overrides: list[str] | None = None,
              progress: bool | object = True, cache: bool = True, resume: str | Path | None = None) -> store.Run:
    """Run a sweep and return the finished :class:`~evalkit.store.Run`.

    ``resume`` continues the run directory of a run that was stopped (its samples so far are
    kept, only the missing ones are generated); ``cache`` reuses samples generated before by
    any run with the same model, prompt, setting, seed and length (see :mod:`evalkit.sample_cache`).
    """
    resume_dir = Path(resume) if resume is not None else None
    if resume_dir is not None:
        config = _resume_config(resume_dir)
    elif not isinstance(config, SweepConfig):
        config = load_config(config, overrides)
    elif overrides:
        raise TypeError("overrides apply to a config file; edit the SweepConfig instead")
    ui = RichProgress() if progress is True else (Silent() if progress is False else progress)
    if config.model.backend == "diffusers":
        from evalkit.image_runner import run_image_sweep

        run = run_image_sweep(config, overrides=overrides or [], ui=ui, resume_dir=resume_dir,
                              as_given=_as_given(config), resolved=_resolved(config))
        _write_report(config, run.path, ui)
        return run

    # Checks that need no model.
    settings = config.settings()
    vlm = config.model.backend == "vlm"
    metrics = default_registry().create_all(config.metrics, source=config.source)
    offered = TEXT_NEEDS | VLM_NEEDS if vlm else TEXT_NEEDS
    for i, m in enumerate(metrics):
        missing = m.requires() - offered
        if missing:
            raise ConfigError(f"{m.id} needs {', '.join(sorted(missing))}, which a "
                              f"{'vision-language' if vlm else 'text'} sweep does not make", source=config.source,
                              path=f"metrics[{i}]")
    prepare_all(metrics, source=config.source)
    prompts = load_prompts(config)
    output_dir = Path(config.output_dir)
    store.check_writable(output_dir if resume_dir is None else resume_dir, config.source)
    checked = check_model(config)

    from evalkit.backends import load_backend

    timings: dict[str, float] = {}
    started = time.perf_counter()
    with ui.phase("loading") as phase:
        backend = load_backend(config, status=lambda msg: phase.update(status=msg), checked=checked)
        prepared = backend.prepare(prompts, chat_template=config.prompts.chat_template,
                                   system_prompt=config.prompts.system_prompt,
                                   max_new_tokens=config.max_new_tokens)
    timings["load_s"] = round(time.perf_counter() - started, 3)

    batch_size = backend.batch_size(config.batch_size, prepared, config.max_new_tokens)
    if resume_dir is not None:
        run_dir, manifest = resume_dir, store.load_run(resume_dir).manifest
        if manifest.model.get("sha256") != backend.info.sha256 or manifest.model.get("revision") != backend.info.revision:
            raise EvalkitError(f"--resume: {run_dir} was made with other model weights than {config.model.id!r} has now")
        manifest.status, manifest.error, manifest.ended_at = "running", None, None
    else:
        run_dir = store.create_run_dir(output_dir, config.name)
        manifest = Manifest(
            run_id=run_dir.name, name=config.name, started_at=utc_now(), git=git_info(),
            config_source=config.source, config_as_given=_as_given(config), overrides=list(overrides or []),
            model=vars(backend.info), device=backend.info.device, seed=config.seed,
            sampling_order=list(APPLICATION_ORDER),
            settings=[SettingRecord(id=s.id, params=s.params(),
                                    generation=backend.generation_params(s, config.max_new_tokens)) for s in settings],
            n_prompts=len(prompts), metrics=[m.id for m in metrics], metric_info={m.id: m.info() for m in metrics},
            batch_size=batch_size, stop=list(config.stop),
            ci={"method": "percentile bootstrap over prompts", "level": config.ci.level,
                "resamples": config.ci.resamples, "seed": config.seed},
        )
    with recorded(config, run_dir, manifest):
        if resume_dir is None:
            store.write_yaml(run_dir / "config.yaml", _resolved(config))
            store.write_atomic(run_dir / "prompts.jsonl", "".join(
                json.dumps({"id": p.prompt.id, "prompt": p.prompt.display, "rendered": p.rendered,
                            "n_tokens": len(p.token_ids), "chat_template": p.chat_template,
                            **(_image_fields(run_dir, p.prompt) if vlm else {})}, ensure_ascii=False)
                + "\n" for p in prepared).encode("utf-8"))
        store.write_manifest(run_dir, manifest)

        units = [WorkUnit(prompt=p, setting=s, sample_index=i, seed=derive_seed(config.seed, p.prompt.id, s.id, i))
                 for s in settings for p in prepared for i in range(config.samples_per_prompt)]
        started = time.perf_counter()
        samples, reused = _generate(run_dir, config, backend, units, batch_size, ui, cache)
        timings["generate_s"] = round(time.perf_counter() - started, 3)
        store.write_table(run_dir / "samples.parquet", samples)
        shutil.rmtree(run_dir / "parts", ignore_errors=True)

        started = time.perf_counter()
        score_run(run_dir, samples, settings, metrics, level=config.ci.level, resamples=config.ci.resamples,
                  seed=config.seed, ui=ui)
        timings["score_s"] = round(time.perf_counter() - started, 3)

        manifest.n_samples, manifest.timings = len(samples), {**manifest.timings, **timings}
        manifest.samples_reused = reused
        manifest.status, manifest.ended_at = "complete", utc_now()
        store.write_manifest(run_dir, manifest)
    _write_report(config, run_dir, ui)
    return store.Run(run_dir)


def _write_report(config: SweepConfig, run_dir: Path, ui) -> None:
    if config.report:  # the run is complete and kept whatever happens here; `evalkit report` redoes this
        from evalkit.report import write_report

        with ui.phase("report"):
            write_report([run_dir], run_dir / "report.html")


@contextmanager
def recorded(config: SweepConfig, run_dir: Path, manifest: Manifest):
    """Around a run's work: on an error or Ctrl-C the manifest says failed or interrupted (the run can
    be resumed); either way the run is recorded in the run index."""
    try:
        yield
    except BaseException as e:
        manifest.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        manifest.ended_at, manifest.error = utc_now(), f"{type(e).__name__}: {e}"
        store.write_manifest(run_dir, manifest)
        _record(config, run_dir, quiet=True)
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted(run_dir) from None
        raise
    _record(config, run_dir)


def _record(config: SweepConfig, run_dir: Path, quiet: bool = False) -> None:
    """Record the run in the run index; after a failure, never let the index hide the first error."""
    from evalkit.index import RunIndex, index_path

    try:
        with RunIndex(index_path(config.index, config.output_dir)) as index:
            index.record(store.Run(run_dir))
    except Exception:
        if not quiet:
            raise


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the samples made so far are kept and the run can be resumed."""

    def __init__(self, run_dir: Path):
        super().__init__(f"interrupted; resume with: evalkit run --resume {run_dir}")
        self.run_dir = run_dir


def _generate(run_dir: Path, config: SweepConfig, backend, units: list[WorkUnit], batch_size: int, ui,
              use_cache: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every unit's sample, in grid order: from the run's own parts, the sample cache, or the backend."""
    position = {(u.prompt.prompt.id, u.setting.id, u.sample_index): i for i, u in enumerate(units)}
    columns = store.SAMPLE_COLUMNS + (store.VLM_COLUMNS if config.model.backend == "vlm" else [])
    have = read_parts(run_dir, columns)
    done = {(r.prompt_id, r.setting_id, int(r.sample_index)) for r in have.itertuples()}
    todo = [u for u in units if (u.prompt.prompt.id, u.setting.id, u.sample_index) not in done]
    writer = PartWriter(run_dir, columns)
    model_id = backend.info.sha256 or backend.info.revision
    sample_cache = SampleCache() if use_cache and model_id else None
    keys = {id(u): unit_key(model_id, u, max_new_tokens=config.max_new_tokens, stop=list(config.stop),
                            eos=backend.info.eos_token_ids) for u in todo} if sample_cache else {}
    hits = sample_cache.get_many(list(keys.values())) if sample_cache else {}
    from_cache = [u for u in todo if keys.get(id(u)) in hits]
    to_make = [u for u in todo if keys.get(id(u)) not in hits]
    fresh: list[tuple[str, dict]] = []
    try:
        with ui.phase("generating", total=len(units)) as phase:
            phase.update(completed=len(done) + len(from_cache))
            for u in from_cache:
                writer.add(_row(u, hits[keys[id(u)]]))
            made = 0
            for g in backend.generate(to_make, max_new_tokens=config.max_new_tokens, batch_size=batch_size,
                                      stop=tuple(config.stop), progress=lambda n, step: phase.update(
                                          completed=len(done) + len(from_cache) + n, status=f"step {step}")):
                result = {"text": g.text, "token_ids": list(g.token_ids), "finish_reason": g.finish_reason,
                          **{name: g.stats.get(name, []) for name in store.STAT_COLUMNS}}
                writer.add(_row(g.unit, result))
                if sample_cache:
                    fresh.append((keys[id(g.unit)], result))
                made += 1
                phase.update(completed=len(done) + len(from_cache) + made)
    finally:
        writer.flush()
        if sample_cache:
            sample_cache.put_many(fresh)
            sample_cache.close()
    samples = read_parts(run_dir, columns)
    order = samples.apply(lambda r: position[(r.prompt_id, r.setting_id, int(r.sample_index))], axis=1)
    samples = samples.iloc[order.argsort(kind="stable")].reset_index(drop=True)
    reused = {"from_parts": len(done), "from_cache": len(from_cache), "generated": len(to_make)}
    return samples, reused


def _row(u: WorkUnit, result: dict) -> dict:
    p = u.prompt.prompt
    image = {"prompt_image": store.prompt_image_name(p.image, p.image_sha256), "references": list(p.references)} \
        if p.image else {}
    return {"prompt_id": p.id, "prompt": p.display, "setting_id": u.setting.id,
            **u.setting.params(), "sample_index": u.sample_index, "seed": u.seed, "text": result["text"],
            "num_new_tokens": len(result["token_ids"]), "finish_reason": result["finish_reason"],
            "token_ids": result["token_ids"], **{name: result.get(name, []) for name in store.STAT_COLUMNS}, **image}


def _image_fields(run_dir: Path, prompt) -> dict:
    """Copy the prompt's image into the run directory (the run keeps what it captioned); its prompts.jsonl fields."""
    return {"image": store.keep_prompt_image(run_dir, prompt.image, prompt.image_sha256), "image_source": prompt.image,
            "image_sha256": prompt.image_sha256, "references": list(prompt.references)}


def _resume_config(run_dir: Path) -> SweepConfig:
    if not (run_dir / "manifest.json").is_file() or not (run_dir / "config.yaml").is_file():
        raise EvalkitError(f"--resume: {run_dir} is not a run directory")
    manifest = store.load_run(run_dir).manifest
    if manifest.status == "complete":
        raise EvalkitError(f"--resume: {run_dir} is already complete")
    return load_config(run_dir / "config.yaml")


def _as_given(config: SweepConfig) -> dict:
    try:
        from evalkit.config import parse_yaml

        return parse_yaml(Path(config.source).read_text(encoding="utf-8"), config.source)
    except Exception:  # a config built in code has no file
        return config.model_dump(mode="json", exclude_unset=True)


def _resolved(config: SweepConfig) -> dict:
    """The config as run: defaults filled in, relative paths made absolute; loadable again."""
    data = config.model_dump(mode="json")
    if config.prompts.file:
        data["prompts"]["file"] = str(config.resolve_path(config.prompts.file).resolve())
    for item in data["prompts"]["items"] or []:  # inline image prompts (a prompt file's images follow the file)
        if item.get("image"):
            item["image"] = str(config.resolve_path(item["image"]).resolve())
    model_path = config.resolve_path(config.model.id)
    if config.model.id != "default" and model_path.exists():
        data["model"]["id"] = str(model_path.resolve())
    return data
