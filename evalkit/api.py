"""evalkit's Python API: run a sweep, or score samples made elsewhere. Both go through the one
pipeline (:mod:`evalkit.pipeline`); the command line is a thin layer over these functions."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path

from evalkit import pipeline, scored_pipeline
from evalkit.calibrate import calibrate, sampler_families  # noqa: F401 (calibrate: part of the Python API)
from evalkit.config import SweepConfig, load_config, parse_yaml
from evalkit.errors import ConfigError, EvalkitError
from evalkit.inputs import check_path_text
from evalkit.plan import describe
from evalkit.progress import RichProgress, Silent
from evalkit.prompts import sha256_of
from evalkit.rundir import Run, load_run
from evalkit.rundir.lock import RunLock
from evalkit.rundir.parts import check_parts_folder


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
        _check_calibrate(config)
        if check is not None:
            check(config)
        ui = RichProgress() if progress is True else (Silent() if progress is False else progress)
        with _said_of_set(config, overrides):
            return pipeline.run_sweep(config, ui=ui, cache=cache, resume_dir=resume_dir, overrides=overrides,
                                      as_given=_as_given(config), resolved=_resolved(config))


def plan_sweep(config: SweepConfig | str | Path, *, overrides: list[str] | None = None, cache: bool = True,
               check: Callable[[SweepConfig], None] | None = None) -> list[tuple[str, str]]:
    """What running ``config`` would make and send (settings, samples, requests, most tokens), as
    (label, value) lines, with nothing loaded, sent or written; every check a run makes before it loads anything
    (``check``: as :func:`run_sweep`'s)."""
    if not isinstance(config, SweepConfig):
        config = load_config(config, overrides)
    _check_calibrate(config)
    if check is not None:
        check(config)
    with _said_of_set(config, overrides):
        return describe(config, cache=cache)


def _check_calibrate(config: SweepConfig) -> None:
    """A ``calibrate:`` section is read by ``evalkit calibrate`` only, and checked by every command."""
    if config.calibrate is not None:
        sampler_families(config.calibrate, config.source)


@contextmanager
def _said_of_set(config: SweepConfig, overrides: list[str] | None):
    """A problem found after loading (a metric, a prompt, a path) in a value that ``--set`` gave is said of
    ``--set``, as the config's own validation does, not of the file that never held it."""
    keys = [o.partition("=")[0].strip() for o in overrides or []]
    try:
        yield
    except ConfigError as e:
        path = e.path or ""
        if keys and e.source == config.source and path and any(
                path == k or path.startswith((k + ".", k + "[")) for k in keys):
            raise ConfigError(e.detail, source="--set", path=e.path) from None
        raise


def score_file(path: str | Path, metric_names: list[str], output: str | Path, *, seed: int = 0, level: float = 0.95,
               resamples: int = 2000, name: str | None = None, progress: bool = True,
               index: str | Path | None = None, references: str | Path | None = None) -> Run:
    """Score a JSONL file of generations (see :mod:`evalkit.kinds.scored`) into ``output`` (which must not exist
    yet, or be empty): the same tables as a run, so ``evalkit.load_run`` reads it like any run, and the
    run index records it (``index``, else $EVALKIT_INDEX, else ``index.sqlite`` beside ``output``); ``references``: a
    JSONL file of reference texts (see :mod:`evalkit.references`) for the metrics that compare with them."""
    return scored_pipeline.score_file(Path(path).expanduser(), metric_names, Path(output).expanduser(), seed=seed,
                                      level=level, resamples=resamples, name=name,
                                      ui=RichProgress() if progress else Silent(), index=index, references=references)


def _resume_config(run_dir: Path, held: ExitStack) -> SweepConfig:
    """The config of a stopped run, whose lock ``held`` then holds: a second writer is refused here."""
    check_path_text(run_dir, "--resume")
    if not (run_dir / "manifest.json").is_file():
        raise EvalkitError(f"--resume: {run_dir} is not a run directory")
    if not (run_dir / "config.yaml").is_file():
        raise EvalkitError(f"--resume: {run_dir / 'config.yaml'} is missing: the run's config is needed to continue it "
                           "(put it back, or start a new run)")
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
    for name, rubric in (config.judge.rubrics if config.judge is not None else {}).items():  # the judge's own
        if rubric.file is not None:
            data["judge"]["rubrics"][name]["file"] = str(config.resolve_path(rubric.file).resolve())
    model_path = config.resolve_path(config.model.id)
    if config.model.id != "default" and model_path.exists():
        data["model"]["id"] = str(model_path.resolve())
    # relative to the working directory: a run resumed from another one still writes to these (its run index)
    data["output_dir"] = str(Path(config.output_dir).expanduser().resolve())
    if config.index is not None:
        data["index"] = str(Path(config.index).expanduser().resolve())
    return data


def backends() -> list[dict]:
    """What every backend is and can do, one dict each (``evalkit backends``): its kind, engine, whether it runs
    remotely, the sampling knobs it honours (a setting that sets another is refused before a run), the chain
    orders it applies (``auto``: its own, ``own_order``), and the metric inputs its samples offer: its kind's (texts,
    prompts, checks, references) and those it supplies itself (``supplied``: token ids, per-token statistics, ...)."""
    from evalkit.generation import all_specs
    from evalkit.kinds import KINDS

    return [{**row, "metric_inputs": sorted(KINDS[spec.kind].needs | spec.needs), "supplied": row["metric_inputs"]}
            for spec, row in ((spec, spec.as_row()) for spec in all_specs())]


def conformance(config: str | Path, *, overrides: list[str] | None = None, settings: list[str] | None = None,
                draws: int = 2000, reference: str | None = None, progress: bool | object = True):
    """Whether the config's backend samples from the distribution it claims, for its settings (or ``settings``: ids
    or ``KNOB=VALUE,...``): a :class:`evalkit.conformance.Report` (see :mod:`evalkit.conformance`)."""
    from evalkit import conformance as conformance_check

    ui = RichProgress() if progress is True else (Silent() if progress is False else progress)
    return conformance_check.run(config, overrides=overrides, settings=settings, draws=draws, reference=reference,
                                 ui=ui)
