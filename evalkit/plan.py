"""The plan and check steps of a sweep, with nothing loaded, sent or written: the run's kind, settings, metrics,
prompts and references, each checked against the others (:func:`checked_inputs`; a scored file's metrics go through
the same :func:`checked_metrics`), its size, what its metrics need from the model, and what ``--plan`` prints."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from evalkit.config import SweepConfig
from evalkit.errors import ConfigError
from evalkit.generation import all_specs, spec_of
from evalkit.index import TABLES as INDEX_TABLES
from evalkit.index import index_path
from evalkit.kinds import RunKind, kind_of
from evalkit.prompts import load_prompts
from evalkit.references import ReferenceSet, load_references
from evalkit.rundir.files import check_database, check_writable
from evalkit.rundir.sample_cache import TABLES as CACHE_TABLES
from evalkit.rundir.sample_cache import cache_path
from evalkit.scoring.judge import bind_judges
from evalkit.scoring.judge import plan_lines as judge_plan_lines
from evalkit.scoring.references import require_references
from evalkit.scoring.registry import default_registry, require_checks


def checked_inputs(config: SweepConfig) -> tuple[RunKind, list, list, list, int, ReferenceSet | None]:
    """(kind, settings, metrics, prompts, samples, references) of ``config``, each checked against the others,
    with nothing loaded: the start that a run and its --plan share."""
    kind = kind_of(config)
    settings = config.settings()
    check_honoured(config, settings)
    metrics = default_registry().create_all(config.metrics, source=config.source)
    kind.check_metrics(metrics, config.source)
    bind_judges(metrics, config, settings)  # judge_score: the config's judge: section and the metric's rubric
    prompts = load_prompts(config)
    kind.check_prompts(prompts, config.source)

    def read_references() -> ReferenceSet | None:
        if config.references is None:
            return None
        return load_references(config.resolve_path(config.references.file), [p.id for p in prompts],
                               images="reference_images" in kind.needs, field="references.file",
                               config_source=config.source)

    references = checked_metrics(metrics, [p.checks for p in prompts if p.checks is not None], read_references,
                                 source=config.source)
    for i, m in enumerate(metrics):
        if "model_features" in m.requires() and config.executor.kind != "local":
            raise ConfigError(f"{m.id} reads the model's hidden states, which a {config.executor.kind} run does not "
                              "return: use executor: local, or a sentence embedder (emb=all-MiniLM-L6-v2)",
                              source=config.source, path=f"metrics[{i}]")
    return kind, settings, metrics, prompts, check_size(config, settings, prompts), references


def check_places(config: SweepConfig, resume_dir: Path | None = None, *, cache: bool = True) -> None:
    """Where the run will write (its output folder, or the run directory it resumes), the run index and the sample
    cache: usable, before anything is loaded or written."""
    check_writable(Path(config.output_dir) if resume_dir is None else resume_dir, config.source)
    from_env = config.index is None and bool(os.environ.get("EVALKIT_INDEX"))  # then it is not the config's doing
    check_database(index_path(config.index, config.output_dir), None if from_env else config.source,
                   "$EVALKIT_INDEX" if from_env else "index", INDEX_TABLES)
    if cache:
        check_database(cache_path(), None, "sample cache", CACHE_TABLES)


def check_honoured(config: SweepConfig, settings: list) -> None:
    """Refuse a setting that sets a knob, or names a chain order, that the backend does not honour: one line naming
    the backend, the knob and the backends that do honour it. Nothing is silently left out of a setting."""
    spec, specs = spec_of(config.model.backend), all_specs()
    for setting in settings:
        refused = spec.refusal(setting)
        if refused is None:
            continue
        knob, what = refused
        others = [s.name for s in specs if s.kind == spec.kind and s.refusal(setting) is None]
        explicit = list(config.grid.settings or [])
        where = f"grid.settings[{explicit.index(setting)}]" if setting in explicit else f"grid.{knob}"
        if knob in spec.knobs and knob != "order":  # a knob it has, in an order without a stage for it
            raise ConfigError(f"backend {spec.name} does not honour {what}, which setting {setting.id} sets",
                              source=config.source, path=where)
        raise ConfigError(f"backend {spec.name} does not honour {what}, which setting {setting.id} sets; "
                          + (f"backends that do: {', '.join(others)}" if others else "no backend does")
                          + " (evalkit backends lists each one's knobs)", source=config.source, path=where)


def checked_metrics(metrics: list, checks: Iterable, references: Callable[[], ReferenceSet | None], *,
                    source: str | None = None, where: str = "metrics[{}]", field: str = "references:"
                    ) -> ReferenceSet | None:
    """The checks of the metrics that a sweep and a scored file share: a metric that judges answers or runs tests
    needs prompts that carry them (``checks``), and one that compares with references needs references of its kind;
    ``references`` reads them (None: the run has none) between the two checks. The references."""
    require_checks(metrics, checks, source, where)
    loaded = references()
    require_references(metrics, loaded, source, where, field)
    return loaded


MAX_SAMPLES = 10_000_000  # in one run: a work unit each, and a row of the samples table


def check_size(config: SweepConfig, settings: list, prompts: list) -> int:
    """The samples a run would make; refused up front beyond :data:`MAX_SAMPLES`."""
    units = len(settings) * len(prompts) * config.samples_per_prompt
    if units > MAX_SAMPLES:
        raise ConfigError(f"{len(settings)} settings x {len(prompts)} prompts x {config.samples_per_prompt} make "
                          f"{units} samples, more than {MAX_SAMPLES} in one run: split the sweep",
                          source=config.source, path="samples_per_prompt")
    return units


def logprobs_wanted(metrics: list, source: str | None = None) -> int:
    """Top log-probabilities per token that the metrics need from a served model: the ``top`` of the metrics
    that need top_logprobs (one value per run), 1 when only the chosen tokens' are needed, else 0."""
    tops = {m.params.top for m in metrics if "top_logprobs" in m.requires()}
    if len(tops) > 1:
        raise ConfigError(f"metrics ask for top={' and top='.join(str(t) for t in sorted(tops))}: a run keeps one "
                          "set of top logprobs, so use one value", source=source, path="metrics")
    if tops:
        return tops.pop()
    return 1 if any("model_logprobs" in m.requires() for m in metrics) else 0

def describe(config: SweepConfig, *, cache: bool = True) -> list[tuple[str, str]]:
    """What a run of ``config`` would make and send, before anything is loaded, sent or written (``--plan``):
    (label, value) lines. Samples that the sample cache or a resumed run already holds are not made again."""
    kind, settings, metrics, prompts, units, references = checked_inputs(config)
    check_places(config, cache=cache)
    lines = [("settings", str(len(settings))), (kind.noun, str(len(prompts))),
             ("samples per prompt and setting", str(config.samples_per_prompt)), ("samples", str(units))]
    spec = spec_of(config.model.backend)
    if spec.plan_lines is not None:
        lines += spec.plan_lines(config, settings, prompts, units)
    elif "num_new_tokens" in kind.columns:
        lines.append(("new tokens, at most", str(units * config.max_new_tokens)))
    if any("tests" in m.requires() for m in metrics):
        tested = sum(p.checks is not None and p.checks.tests is not None for p in prompts)
        lines.append(("programs run in the sandbox, at most",
                      str(tested * len(settings) * config.samples_per_prompt)))
    ex = config.executor
    if ex.kind == "ray":
        lines.append(("executor", f"Ray at {ex.address or 'a new local instance'}: {ex.workers} worker"
                                  f"{'s' if ex.workers > 1 else ''} x {ex.gpus_per_worker:g} GPU, "
                                  f"{ex.cpus_per_worker:g} CPU"))
    if references is not None:
        info = references.info()
        lines.append(("references", f"{info['per_prompt']} {info['kind']} for {info['prompts']} prompts, "
                                    f"{info['corpus']} in the corpus ({references.source})"))
    lines += judge_plan_lines(metrics, config, prompts, settings, units)
    lines.append(("metrics", ", ".join(m.id for m in metrics)))
    return lines
