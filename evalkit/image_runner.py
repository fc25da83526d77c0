"""A text-to-image sweep: every prompt under every setting, N images each, written as PNG files
into ``<run dir>/images/`` as they are made (each one atomically, so a killed run keeps every
image it finished and ``--resume`` makes only the missing ones), then scored with the CLIP
metrics and aggregated like a text sweep.

Image ``i`` of a prompt under a setting has the seed ``derive_seed(seed, prompt id, setting id, i)``;
the samples table records it with the image's path (relative to the run directory). The same seed,
setting and ``image.batch_size`` give the same PNG bytes, whatever else the grid holds and however
a run was resumed; another batch size may change pixels by a rounding step (CPU float32 kernels).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pandas as pd

from evalkit import store
from evalkit.config import SweepConfig
from evalkit.errors import ConfigError
from evalkit.metric import IMAGE_NEEDS
from evalkit.manifest import Manifest, SettingRecord, git_info, utc_now
from evalkit.prompts import load_prompts
from evalkit.registry import default_registry, prepare_all
from evalkit.scoring import score_run
from evalkit.seeds import derive_seed



def image_path(prompt_id: str, setting_id: str, index: int) -> str:
    return f"images/{setting_id}/{prompt_id}-{index:03d}.png"


def run_image_sweep(config: SweepConfig, *, overrides: list[str], ui, resume_dir: Path | None,
                    as_given: dict, resolved: dict) -> store.Run:
    from evalkit.runner import recorded

    settings = config.settings()
    metrics = default_registry().create_all(config.metrics, source=config.source)
    for i, m in enumerate(metrics):
        missing = set(m.requires()) - IMAGE_NEEDS
        if missing:
            raise ConfigError(f"{m.id} needs {', '.join(sorted(missing))}, which a text-to-image sweep does not make",
                              source=config.source, path=f"metrics[{i}]")
    prepare_all(metrics, source=config.source)
    prompts = load_prompts(config)
    for p in prompts:
        if p.messages is not None:
            raise ConfigError(f"prompt {p.id!r}: a text-to-image prompt is plain text, not chat messages",
                              source=config.source, path="prompts")
    store.check_writable(Path(config.output_dir) if resume_dir is None else resume_dir, config.source)

    from evalkit.backends.diffusers_backend import DiffusersBackend
    from evalkit.backends.hf import resolve_device

    device = resolve_device(config.model.device, config.source)
    local = config.resolve_path(config.model.id)
    started = time.perf_counter()
    with ui.phase("loading"):
        backend = DiffusersBackend(local if local.exists() else config.model.id, device=device,
                                   dtype=config.model.dtype)
    timings = {"load_s": round(time.perf_counter() - started, 3)}
    model = {"backend": "diffusers", "id": config.model.id, "source": "local" if local.exists() else "hub",
             "path": str(local.resolve()) if local.exists() else None, "revision": config.model.revision,
             "sha256": None, "dtype": backend.dtype, "device": device}

    if resume_dir is not None:
        run_dir, manifest = resume_dir, store.load_run(resume_dir).manifest
        manifest.status, manifest.error, manifest.ended_at = "running", None, None
    else:
        run_dir = store.create_run_dir(Path(config.output_dir), config.name)
        manifest = Manifest(
            run_id=run_dir.name, name=config.name, started_at=utc_now(), git=git_info(), config_source=config.source,
            config_as_given=as_given, overrides=list(overrides or []), model=model, device=device, seed=config.seed,
            sampling_order=["guidance_scale", "num_inference_steps", "scheduler", "eta"],
            settings=[SettingRecord(id=s.id, params=s.params(), generation={
                **s.params(), "width": config.image.width, "height": config.image.height,
                "negative_prompt": config.image.negative_prompt}) for s in settings],
            n_prompts=len(prompts), metrics=[m.id for m in metrics],
            metric_info={m.id: m.info() for m in metrics}, batch_size=config.image.batch_size,
            ci={"method": "percentile bootstrap over prompts", "level": config.ci.level,
                "resamples": config.ci.resamples, "seed": config.seed})
    with recorded(config, run_dir, manifest):
        if resume_dir is None:
            store.write_yaml(run_dir / "config.yaml", resolved)
            store.write_atomic(run_dir / "prompts.jsonl", "".join(
                json.dumps({"id": p.id, "prompt": p.display}, ensure_ascii=False) + "\n" for p in prompts).encode())
        store.write_manifest(run_dir, manifest)
        started = time.perf_counter()
        rows, made = _generate(run_dir, config, backend, prompts, settings, ui)
        timings["generate_s"] = round(time.perf_counter() - started, 3)
        samples = pd.DataFrame(rows)
        store.write_table(run_dir / "samples.parquet", samples)
        started = time.perf_counter()
        score_run(run_dir, samples, settings, metrics, level=config.ci.level, resamples=config.ci.resamples,
                  seed=config.seed, ui=ui)
        timings["score_s"] = round(time.perf_counter() - started, 3)
        manifest.n_samples, manifest.timings = len(samples), {**manifest.timings, **timings}
        manifest.samples_reused = {"from_parts": len(samples) - made, "from_cache": 0, "generated": made}
        manifest.status, manifest.ended_at = "complete", utc_now()
        store.write_manifest(run_dir, manifest)
    return store.Run(run_dir)


def _generate(run_dir: Path, config: SweepConfig, backend, prompts, settings, ui) -> tuple[list[dict], int]:
    """Make every missing image (in batches of ``image.batch_size`` seeds); the samples rows in grid order."""
    n = config.samples_per_prompt
    rows, made = [], 0
    with ui.phase("generating", total=len(prompts) * len(settings) * n) as phase:
        for s in settings:
            for p in prompts:
                seeds = [derive_seed(config.seed, p.id, s.id, i) for i in range(n)]
                paths = [run_dir / image_path(p.id, s.id, i) for i in range(n)]
                todo = [i for i in range(n) if not paths[i].is_file()]
                phase.advance(n - len(todo))
                size = config.image.batch_size
                for start in range(0, len(todo), size):
                    batch = todo[start:start + size]
                    # every call has batch_size images (short batches padded with a repeated seed, whose image is
                    # dropped): CPU kernels round differently for other batch shapes, and an image must not
                    # depend on how many others were missing when it was made
                    padded = [seeds[i] for i in batch] + [seeds[batch[-1]]] * (size - len(batch))
                    images = backend.generate(p.display, s, padded, width=config.image.width,
                                              height=config.image.height, negative_prompt=config.image.negative_prompt)
                    for i, image in zip(batch, images):
                        _save_png(image, paths[i])
                    made += len(batch)
                    phase.advance(len(batch))
                rows += [{"prompt_id": p.id, "prompt": p.display, "setting_id": s.id, **s.params(), "sample_index": i,
                          "seed": seeds[i], "text": "", "image_path": image_path(p.id, s.id, i),
                          "width": config.image.width, "height": config.image.height} for i in range(n)]
    return rows, made


def _save_png(image, path: Path) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_atomic(path, buf.getvalue())
