"""evalkit's Python API: run a sweep, or score samples made elsewhere. Both go through the one
pipeline (:mod:`evalkit.pipeline`); the command line is a thin layer over these functions."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from evalkit import pipeline
from evalkit.config import SweepConfig, load_config, metric_spec, parse_yaml
from evalkit.errors import ConfigError, EvalkitError
from evalkit.kinds.scored import SCORED, SCORED_CAPTIONS, read_generations
from evalkit.progress import RichProgress, Silent
from evalkit.prompts import sha256_of
from evalkit.rundir import Manifest, Run, RunWriter, SettingRecord, load_run
from evalkit.index import TABLES, index_path
from evalkit.inputs import check_path_text
from evalkit.rundir.files import check_database, check_writable
from evalkit.rundir.lock import RunLock
from evalkit.rundir.parts import check_parts_folder
from evalkit.rundir.manifest import ci_info, git_info, utc_now
from evalkit.scoring import score_samples
from evalkit.references import load_references
from evalkit.scoring.references import reference_values, require_references
from evalkit.scoring.registry import default_registry, prepare_all, require_checks
from evalkit.settings import APPLICATION_ORDER, Setting
from evalkit.generation.base import ModelInfo


def run_sweep(config: SweepConfig | str | Path | None, *, overrides: list[str] | None = None,
              progress: bool | object = True, cache: bool = True, resume: str | Path | None = None,
              check: Callable[[SweepConfig], None] | None = None) -> Run:
    """Run a sweep and return the finished :class:`~evalkit.rundir.Run`.

    ``resume`` continues the run directory of a run that was stopped (its samples so far are
    kept, only the missing ones are generated); ``cache`` reuses samples generated before by
    any run with the same model, prompt, setting, seed and length (see :mod:`evalkit.rundir.sample_cache`);
    ``check`` is called with the config before anything is loaded (the command line checks its gate there).
    """
    resume_dir = Path(resume) if resume is not None else None
    with ExitStack() as held:
        if resume_dir is not None:
            config = _resume_config(resume_dir, held)
        elif not isinstance(config, SweepConfig):
            config = load_config(config, overrides)
        elif overrides:
            raise TypeError("overrides apply to a config file; edit the SweepConfig instead")
        if check is not None:
            check(config)
        ui = RichProgress() if progress is True else (Silent() if progress is False else progress)
        return pipeline.run_sweep(config, ui=ui, cache=cache, resume_dir=resume_dir, overrides=overrides,
                                  as_given=_as_given(config), resolved=_resolved(config))


def plan_sweep(config: SweepConfig | str | Path, *, overrides: list[str] | None = None) -> list[tuple[str, str]]:
    """What running ``config`` would make and send (settings, samples, requests, most tokens), as
    (label, value) lines, with nothing loaded, sent or written."""
    if not isinstance(config, SweepConfig):
        config = load_config(config, overrides)
    return pipeline.describe(config)


def score_file(path: str | Path, metric_names: list[str], output: str | Path, *, seed: int = 0, level: float = 0.95,
               resamples: int = 2000, name: str | None = None, progress: bool = True,
               index: str | Path | None = None, references: str | Path | None = None) -> Run:
    """Score a JSONL file of generations (see :mod:`evalkit.kinds.scored`) into ``output`` (which must not exist
    yet, or be empty): the same tables as a run, so ``evalkit.load_run`` reads it like any run, and the
    run index records it (``index``, else $EVALKIT_INDEX, else ``index.sqlite`` beside ``output``); ``references``: a
    JSONL file of reference texts (see :mod:`evalkit.references`) for the metrics that compare with them."""
    path, output = Path(path).expanduser(), Path(output).expanduser()
    check_path_text(output, "-o")
    source = str(path)
    if not metric_names:
        raise ConfigError("name at least one metric", path="--metrics")
    specs = [metric_spec(m) for m in metric_names if m.strip()]
    metrics = default_registry().create_all(specs, source="--metrics")
    samples, checks = read_generations(path)
    images = "prompt_image" in samples
    kind = SCORED_CAPTIONS if images else SCORED
    kind.check_metrics(metrics, None, where="--metrics")
    require_checks(metrics, checks.values(), where="--metrics")
    reference_set = None
    if references is not None:
        check_path_text(Path(references), "--references")
        reference_set = load_references(Path(references), set(samples["prompt_id"]), images=False,
                                        field="--references")
    require_references(metrics, reference_set, where="--metrics", field="--references")
    prepare_all(metrics, source="--metrics")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise EvalkitError(f"-o: {output} exists and is not an empty directory")
    parent = output.parent if output.parent != Path("") else Path(".")
    check_writable(parent, field="-o")
    check_database(index_path(index, parent), field="index", tables=TABLES)  # before anything is scored or written
    settings = list(dict.fromkeys(Setting(**{k: r[k] for k in ("temperature", "top_p", "top_k", "min_p")})
                                  for r in samples.to_dict("records")))
    ui = RichProgress() if progress else Silent()

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        writer = RunWriter(tmp, Manifest(
            kind=kind.name, run_id=output.name, name=name or _name_of(path), started_at=utc_now(), git=git_info(),
            config_source=source, config_as_given={"file": str(path.resolve()), "metrics": metric_names},
            model=ModelInfo(backend="external", id="external", source=str(path.resolve())), device="n/a", seed=seed,
            sampling_order=list(APPLICATION_ORDER),
            settings=[SettingRecord(id=s.id, params=s.params(), generation={}) for s in settings],
            n_prompts=int(samples["prompt_id"].nunique()), batch_size=0,
            metrics=[m.id for m in metrics], metric_info={m.id: m.info() for m in metrics},
            ci=ci_info(level, resamples, seed)))
        writer.write_manifest()
        if images:  # the scores' directory keeps the images, like a run
            kept = {src: writer.keep_prompt_image(src, sha256_of(Path(src))) for src in set(samples["prompt_image"])}
            samples = samples.assign(prompt_image=samples["prompt_image"].map(kept))
        writer.write_samples(samples)
        if checks:  # what judged the samples stays with the scores
            first = samples.drop_duplicates("prompt_id")
            writer.write_prompts([{"id": pid, "prompt": text, **({"checks": checks[pid].as_json()} if pid in checks
                                                                  else {})}
                                  for pid, text in zip(first["prompt_id"], first["prompt"])])
        writer.write_scores(*score_samples(tmp, samples, settings, metrics, level=level, resamples=resamples,
                                           seed=seed, ui=ui, checks=checks, references=reference_set))
        if reference_set is not None:
            first = samples.drop_duplicates("prompt_id")
            writer.manifest.references = {**reference_set.info(), "values": reference_values(
                metrics, reference_set, dict(zip(first["prompt_id"], first["prompt"])), settings[0])}
            writer.write_manifest()
        writer.write_config({"name": writer.manifest.name, "scored_from": str(path.resolve()),
                             "metrics": [m.id for m in metrics], "seed": seed,
                             "ci": {"level": level, "resamples": resamples}})
        writer.complete(n_samples=len(samples))
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pipeline.record_in_index(output, str(index) if index is not None else None, parent)
    return load_run(output)


def _name_of(path: Path) -> str:
    """A run name from a file's name: the characters a sweep's name may have (letters, digits, . _ -)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._")[:80] or "scored"


def _resume_config(run_dir: Path, held: ExitStack) -> SweepConfig:
    """The config of a stopped run, whose lock ``held`` then holds: a second writer is refused here."""
    check_path_text(run_dir, "--resume")
    if not (run_dir / "manifest.json").is_file() or not (run_dir / "config.yaml").is_file():
        raise EvalkitError(f"--resume: {run_dir} is not a run directory")
    held.enter_context(RunLock(run_dir))
    manifest = load_run(run_dir).manifest
    if manifest.status == "complete":
        raise EvalkitError(f"--resume: {run_dir} is already complete")
    check_parts_folder(run_dir)  # said now, before the model loads
    if manifest.config_sha256 and sha256_of(run_dir / "config.yaml") != manifest.config_sha256:
        raise EvalkitError(f"--resume: {run_dir / 'config.yaml'} was edited after the run started: a resumed run "
                           "must be the same sweep; put it back, or start a new run with the edited config")
    return load_config(run_dir / "config.yaml")


def _as_given(config: SweepConfig) -> dict:
    try:
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
    if config.references is not None:
        data["references"]["file"] = str(config.resolve_path(config.references.file).resolve())
    model_path = config.resolve_path(config.model.id)
    if config.model.id != "default" and model_path.exists():
        data["model"]["id"] = str(model_path.resolve())
    return data
