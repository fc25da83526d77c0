"""One sweep: grid -> work units -> backend -> run directory -> scores -> summary.

Everything that can be checked without the model (config, metrics, prompts, output
directory, device, model path and hash) is checked before loading it, and the run
directory is created only once the model is loaded and every prompt fits its context:
a failed start leaves nothing behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from evalkit import store
from evalkit.backends import WorkUnit, check_model
from evalkit.config import SweepConfig, load_config
from evalkit.errors import ConfigError
from evalkit.manifest import Manifest, SettingRecord, git_info, utc_now
from evalkit.progress import RichProgress, Silent
from evalkit.prompts import load_prompts
from evalkit.registry import default_registry, prepare_all
from evalkit.sampling import APPLICATION_ORDER
from evalkit.scoring import score_run
from evalkit.seeds import derive_seed


def run_sweep(config: SweepConfig | str | Path, *, overrides: list[str] | None = None,
              progress: bool | object = True) -> store.Run:
    """Run a sweep and return the finished :class:`~evalkit.store.Run`."""
    if not isinstance(config, SweepConfig):
        config = load_config(config, overrides)
    elif overrides:
        raise TypeError("overrides apply to a config file; edit the SweepConfig instead")
    ui = RichProgress() if progress is True else (Silent() if progress is False else progress)

    # Checks that need no model.
    settings = config.settings()
    metrics = default_registry().create_all(config.metrics, source=config.source)
    for i, m in enumerate(metrics):
        if "images" in m.requires():
            raise ConfigError(f"{m.id} needs images, which a text sweep does not make", source=config.source,
                              path=f"metrics[{i}]")
    prepare_all(metrics)
    prompts = load_prompts(config)
    output_dir = Path(config.output_dir)
    store.check_writable(output_dir)
    check_model(config)

    from evalkit.backends import load_backend

    timings: dict[str, float] = {}
    started = time.perf_counter()
    with ui.phase("loading") as phase:
        backend = load_backend(config, status=lambda msg: phase.update(status=msg))
        prepared = backend.prepare(prompts, chat_template=config.prompts.chat_template,
                                   system_prompt=config.prompts.system_prompt,
                                   max_new_tokens=config.max_new_tokens)
    timings["load_s"] = round(time.perf_counter() - started, 3)

    batch_size = backend.batch_size(config.batch_size, prepared, config.max_new_tokens)
    run_dir = store.create_run_dir(output_dir, config.name)
    raw = _as_given(config)
    manifest = Manifest(
        run_id=run_dir.name, name=config.name, started_at=utc_now(), git=git_info(),
        config_source=config.source, config_as_given=raw, overrides=list(overrides or []),
        model=vars(backend.info), device=backend.info.device, seed=config.seed,
        sampling_order=list(APPLICATION_ORDER),
        settings=[SettingRecord(id=s.id, params=s.params(),
                                generation=backend.generation_params(s, config.max_new_tokens)) for s in settings],
        n_prompts=len(prompts), metrics=[m.id for m in metrics], batch_size=batch_size, stop=list(config.stop),
        ci={"method": "percentile bootstrap over prompts", "level": config.ci.level,
            "resamples": config.ci.resamples, "seed": config.seed},
    )
    try:
        store.write_yaml(run_dir / "config.yaml", _resolved(config))
        store.write_manifest(run_dir, manifest)
        store.write_atomic(run_dir / "prompts.jsonl", "".join(
            json.dumps({"id": p.prompt.id, "prompt": p.prompt.display, "rendered": p.rendered,
                        "n_tokens": len(p.token_ids), "chat_template": p.chat_template}, ensure_ascii=False) + "\n"
            for p in prepared).encode("utf-8"))

        units = [WorkUnit(prompt=p, setting=s, sample_index=i, seed=derive_seed(config.seed, p.prompt.id, s.id, i))
                 for s in settings for p in prepared for i in range(config.samples_per_prompt)]
        started = time.perf_counter()
        position = {id(u): i for i, u in enumerate(units)}
        rows = []
        with ui.phase("generating", total=len(units)) as phase:
            for g in backend.generate(units, max_new_tokens=config.max_new_tokens, batch_size=batch_size,
                                      stop=tuple(config.stop),
                                      progress=lambda done, step: phase.update(completed=done, status=f"step {step}")):
                u = g.unit
                rows.append({"_position": position[id(u)], "prompt_id": u.prompt.prompt.id, "prompt": u.prompt.prompt.display,
                             "setting_id": u.setting.id, **u.setting.params(), "sample_index": u.sample_index,
                             "seed": u.seed, "text": g.text, "num_new_tokens": len(g.token_ids),
                             "finish_reason": g.finish_reason, "token_ids": list(g.token_ids),
                             **{name: g.stats.get(name, []) for name in store.STAT_COLUMNS}})
                phase.update(completed=len(rows))
        timings["generate_s"] = round(time.perf_counter() - started, 3)
        rows.sort(key=lambda r: r.pop("_position"))  # backends finish in their own order; store in the grid's
        samples = pd.DataFrame(rows, columns=store.SAMPLE_COLUMNS)
        store.write_table(run_dir / "samples.parquet", samples)

        started = time.perf_counter()
        score_run(run_dir, samples, settings, metrics, level=config.ci.level, resamples=config.ci.resamples,
                  seed=config.seed, ui=ui)
        timings["score_s"] = round(time.perf_counter() - started, 3)

        manifest.n_samples, manifest.timings = len(samples), timings
        manifest.status, manifest.ended_at = "complete", utc_now()
        store.write_manifest(run_dir, manifest)
    except BaseException as e:
        manifest.status, manifest.ended_at = "failed", utc_now()
        manifest.error = f"{type(e).__name__}: {e}"
        store.write_manifest(run_dir, manifest)
        raise
    return store.Run(run_dir)


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
    model_path = config.resolve_path(config.model.id)
    if config.model.id != "default" and model_path.exists():
        data["model"]["id"] = str(model_path.resolve())
    return data
