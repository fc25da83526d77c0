"""The one sweep, for every run kind: plan -> check (nothing loaded) -> load -> generate -> score -> finalize.

Everything that can be checked without the model (config, metrics, prompts, output directory,
device, model path and hash) is checked before loading it, and the run directory is created
only once the model is loaded and every prompt is accepted: a failed start leaves nothing behind.
Samples come from the run's own parts (``--resume``), from outputs it kept (images), from the
sample cache, or from the generator through an executor; the pipeline alone writes them, through
:class:`~evalkit.rundir.RunWriter`. The plan and check steps are :mod:`evalkit.plan`; a file of samples made
elsewhere (:mod:`evalkit.scored_pipeline`) shares the checks of the metrics and the end (:func:`score_and_complete`).
"""

from __future__ import annotations

import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from evalkit.config import SweepConfig
from evalkit.errors import EvalkitError, Stopped, shown
from evalkit.executors import executor_for
from evalkit.generation import Abilities, WorkUnit
from evalkit.generation.base import Generator, PreparedPrompt
from evalkit.index import index_path
from evalkit.kinds import RunKind
from evalkit.plan import check_places, checked_inputs, logprobs_wanted
from evalkit.rundir import Manifest, Run, RunWriter, SettingRecord
from evalkit.rundir.manifest import Reused, ci_info, git_info, utc_now
from evalkit.rundir.sample_cache import CachedGeneration, SampleCache, model_identity, unit_key
from evalkit.scoring import score_samples
from evalkit.references import ReferenceSet
from evalkit.scoring.judge import judge_of
from evalkit.scoring.references import CORPUS, reference_values
from evalkit.scoring.registry import prepare_all
from evalkit.seeds import derive_seed


@dataclass
class Sweep:
    """What the generation step of one sweep works with: the config and its kind, the run directory's writer, the
    executor and the generator it loaded, the rows per step, whether the sample cache is used, and the UI."""

    config: SweepConfig
    kind: RunKind
    writer: RunWriter
    executor: object  # evalkit.executors: check, load, run, close, abilities
    generator: Generator
    batch_size: int
    use_cache: bool
    ui: object

    def cached_generation(self) -> CachedGeneration:
        """The executor's generation behind the sample cache (none when the cache is off or the weights unknown)."""
        model_id = model_identity(self.generator.info)
        cache = SampleCache() if self.use_cache and model_id else None
        eos = self.generator.info.eos_token_ids
        return CachedGeneration(cache, lambda u: unit_key(model_id, u, self.kind.decides(u, self.config, eos)),
                                self.kind.cached)


@dataclass(frozen=True)
class Scoring:
    """What scoring a run's samples takes, a sweep's or a scored file's: its settings and metrics, the bootstrap's
    level, resamples and seed, the prompts' checks and texts (by id), the references, and what the model gave for
    them where it is loaded here (hidden states, reference log-probabilities and token ids)."""

    settings: list
    metrics: list
    level: float
    resamples: int
    seed: int
    checks: dict
    references: ReferenceSet | None
    prompts: dict[str, str]
    features: dict | None = None
    ref_logprobs: dict | None = None
    ref_token_ids: dict | None = None


def run_sweep(config: SweepConfig, *, ui, cache: bool = True, resume_dir: Path | None = None,
              overrides: list[str] | None = None, as_given: dict | None = None, resolved: dict | None = None) -> Run:
    """Run (or continue, with ``resume_dir``) the sweep ``config`` describes; the finished run."""
    # check: nothing is loaded or written yet
    kind, settings, metrics, prompts, _, references = checked_inputs(config)
    checks = {p.id: p.checks for p in prompts if p.checks is not None}
    prepare_all(metrics, source=config.source)  # loads embedders, probes the sandbox: after the cheap checks
    if resume_dir is not None and cache and not Run(resume_dir).manifest.sample_cache:
        ui.note("the run was started with --no-cache: its resume takes no sample from the sample cache either")
        cache = False
    check_places(config, resume_dir, cache=cache)
    executor = executor_for(config)
    checked = executor.check()
    writer = None
    try:

        # load
        started = time.perf_counter()
        with ui.phase("loading") as phase:
            generator = executor.load(checked, status=lambda msg: phase.update(status=msg))
            for line in executor.notes:
                ui.note(line)
            prepared = generator.prepare(prompts, chat_template=config.prompts.chat_template,
                                         system_prompt=config.prompts.system_prompt,
                                         max_new_tokens=config.max_new_tokens)
            generator.check(settings, prepared, logprobs=logprobs_wanted(metrics, config.source),
                            max_new_tokens=config.max_new_tokens, status=lambda msg: phase.update(status=msg))
        timings = {"load_s": round(time.perf_counter() - started, 3)}
        batch_size = generator.batch_size(config.batch_size, prepared, config.max_new_tokens)

        if resume_dir is not None:
            writer = RunWriter.reopen(resume_dir)
            recorded_weights = writer.manifest.model.weights_id
            if recorded_weights is not None and recorded_weights != generator.info.weights_id:
                what = ("another endpoint, server or set of knobs" if generator.info.endpoint_id
                        else "other model weights")
                raise EvalkitError(f"--resume: {resume_dir} was made with {what} than {config.model.id!r} has now")
            if writer.manifest.model.engine_name != generator.info.engine_name:  # evalkit's, or a vLLM version
                raise EvalkitError(f"--resume: {resume_dir} was sampled by {writer.manifest.model.engine_name}, and "
                                   f"this run would sample by {generator.info.engine_name}: its samples would mix two "
                                   "engines")
        else:
            writer = RunWriter.create(Path(config.output_dir), new_manifest(
                config, kind, generator, settings, metrics, len(prepared), batch_size, overrides, as_given or {},
                sample_cache=cache))
        writer.manifest.executor = executor.record()  # a failed run says where it ran too
        with recorded(config, writer):
            if resume_dir is None:
                writer.write_config(resolved or {})
                writer.write_prompts([kind.prompt_line(p, writer) for p in prepared])
            else:
                writer.check_prompts([kind.prompt_line(p, writer) for p in prepared])
            writer.write_manifest()
            started = time.perf_counter()
            sweep = Sweep(config, kind, writer, executor, generator, batch_size, cache, ui)
            samples, reused = generate(sweep, plan(config, prepared, settings))
            timings["generate_s"] = round(time.perf_counter() - started, 3)
            writer.manifest.executor = executor.record()
            ref_logprobs = reference_logprobs(executor.abilities, references, prepared, metrics, ui)
            ref_token_ids = reference_token_ids(executor.abilities, references, metrics)
            features = model_features(executor.abilities, samples, references, prepared, metrics, ui)
            executor.close()  # the workers are freed before scoring
            raw = {p.prompt.id for p in prepared if not p.chat_template}  # completion mode: the text is the code
            checks = {pid: replace(c, completion=True) if pid in raw else c for pid, c in checks.items()}
            scoring = Scoring(settings, metrics, config.ci.level, config.ci.resamples, config.seed, checks, references,
                              {p.prompt.id: p.prompt.display for p in prepared}, features, ref_logprobs, ref_token_ids)
            run = score_and_complete(writer, samples, scoring, ui, timings=timings, reused=reused)
    finally:
        executor.close()
        if writer is not None:
            writer.close()
    if config.report:
        try:
            write_report(run.path, ui)
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM while the report is drawn: the run itself is complete
            stopped = Interrupted(run.path, getattr(e, "exit_code", 130))
            stopped.args = (f"{'terminated' if stopped.exit_code == 143 else 'interrupted'} while writing the report; "
                            f"the run is complete ({run.path}); write its report with: evalkit report {run.path}",)
            raise stopped from None
        except Exception as e:  # the run is complete whatever happens to its report
            run.report_error = (f"the run is complete ({run.path}), but its report failed ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else 'no message'}); retry with: evalkit report "
                                f"{run.path}")
    return run


def score_and_complete(writer: RunWriter, samples: pd.DataFrame, scoring: Scoring, ui, *,
                       timings: dict[str, float] | None = None, reused: Reused | None = None) -> Run:
    """The end that a sweep and a scored file share: the samples table written and scored (scores, per-sample
    scores, summary), the references' own values in the manifest, and the run complete. With ``timings``, the
    seconds scoring took are its ``score_s``."""
    s = scoring
    writer.write_samples(samples)
    started = time.perf_counter()
    writer.write_scores(*score_samples(writer.path, samples, s.settings, s.metrics, level=s.level,
                                       resamples=s.resamples, seed=s.seed, ui=ui, checks=s.checks,
                                       references=s.references, features=s.features))
    if (judge := judge_of(s.metrics)) is not None:
        writer.manifest.judge = judge.usage()  # written with the complete manifest below
    if s.references is not None:
        writer.manifest.references = {**s.references.info(), "values": reference_values(
            s.metrics, s.references, s.prompts, s.settings[0], s.ref_logprobs, s.ref_token_ids)}
        writer.write_manifest()
    if timings is not None:
        timings["score_s"] = round(time.perf_counter() - started, 3)
    return writer.complete(n_samples=len(samples), timings=timings, reused=reused)


def reference_logprobs(abilities: Abilities, references: ReferenceSet | None, prepared: list[PreparedPrompt],
                       metrics: list, ui) -> dict[str, list[tuple[float, ...]]] | None:
    """Each per-prompt reference text's per-token log-probabilities under the model, by prompt id, where a
    metric reads them (nll, perplexity) and the model is loaded here (a local transformers model); else None."""
    score = abilities.score_continuations
    if (references is None or references.images or not references.by_prompt or score is None
            or not any("model_logprobs" in m.requires() for m in metrics)):
        return None
    by_id = {p.prompt.id: p for p in prepared}
    out = {}
    with ui.phase("references under the model", total=len(references.by_prompt)) as phase:
        for pid, texts in references.by_prompt.items():
            out[pid] = score(by_id[pid], list(texts))
            phase.advance(1)
    return out


def reference_token_ids(abilities: Abilities, references: ReferenceSet | None, metrics: list
                        ) -> dict[str, list[tuple[int, ...]]] | None:
    """The model's token ids of each reference text, by prompt id (the corpus's under CORPUS), where a metric
    counts model tokens (tok=model) and the model's tokenizer is loaded here; else None."""
    tokenize = abilities.tokenize_texts
    if (references is None or references.images or tokenize is None
            or not any("token_ids" in m.requires() for m in metrics)):
        return None
    out = {pid: tokenize(list(texts)) for pid, texts in references.by_prompt.items()}
    if references.corpus:
        out[CORPUS] = tokenize(list(references.corpus))
    return out


def model_features(abilities: Abilities, samples: pd.DataFrame, references: ReferenceSet | None,
                   prepared: list[PreparedPrompt], metrics: list, ui) -> dict[tuple[str, str], object] | None:
    """The model's features of every sample and reference text by (prompt id, text) ("" for the corpus),
    where a metric reads them (``mauve[emb=model]``) and the model is loaded here; None otherwise."""
    embed = abilities.embed_continuations
    if embed is None or not any("model_features" in m.requires() for m in metrics):
        return None
    by_id = {p.prompt.id: p for p in prepared}
    todo: dict[str, list[str]] = {}
    for pid, text in zip(samples["prompt_id"].astype(str), samples["text"]):
        todo.setdefault(pid, []).append(text)
    if references is not None and not references.images:
        for pid, texts in references.by_prompt.items():
            todo.setdefault(pid, []).extend(texts)
        todo.setdefault("", []).extend(references.corpus)
    out: dict[tuple[str, str], object] = {}
    with ui.phase("hidden states of the texts", total=sum(len(set(v)) for v in todo.values())) as phase:
        for pid, texts in todo.items():
            unique = list(dict.fromkeys(texts))
            for text, vector in zip(unique, embed(by_id.get(pid), unique)):
                out[(pid, text)] = vector
            phase.advance(len(unique))
    return out


def new_manifest(config: SweepConfig, kind: RunKind, generator: Generator, settings: list, metrics: list,
                 n_prompts: int, batch_size: int, overrides: list[str] | None, as_given: dict,
                 sample_cache: bool = True) -> Manifest:
    """The manifest a new run of ``config`` starts with (a benchmark's synthetic run takes it too)."""
    return Manifest(
        kind=kind.name, run_id="", name=config.name, started_at=utc_now(), git=git_info(),
        config_source=config.source, config_as_given=as_given, overrides=list(overrides or []),
        model=generator.info, device=generator.info.device or "n/a", seed=config.seed,
        sampling_order=list(kind.sampling_order),
        settings=[SettingRecord(id=s.id, params=s.params(),
                                generation=generator.generation_params(s, config.max_new_tokens)) for s in settings],
        n_prompts=n_prompts, metrics=[m.id for m in metrics], metric_info={m.id: m.info() for m in metrics},
        batch_size=batch_size, stop=list(config.stop),
        ci=ci_info(config.ci.level, config.ci.resamples, config.seed), sample_cache=sample_cache)


def plan(config: SweepConfig, prompts: list[PreparedPrompt], settings: list) -> list[WorkUnit]:
    """Every work unit of the sweep in grid order; a unit's seed derives from (seed, prompt, setting, index)."""
    return [WorkUnit(prompt=p, setting=s, sample_index=i, seed=derive_seed(config.seed, p.prompt.id, s.id, i))
            for s in settings for p in prompts for i in range(config.samples_per_prompt)]


def generate(sweep: Sweep, units: list[WorkUnit]) -> tuple[pd.DataFrame, Reused]:
    """Every unit's sample, in grid order: from the run's parts or kept outputs, the sample cache, or the generator."""
    writer, kind, config, ui = sweep.writer, sweep.kind, sweep.config, sweep.ui
    columns = list(kind.columns)
    set_aside: list[str] = []
    made_before = writer.read_parts(columns, set_aside)
    texts = {u.prompt.prompt.id: u.prompt.prompt.display for u in units}
    other = made_before[made_before["prompt"] != made_before["prompt_id"].map(texts)]
    if len(other):  # the prompts changed under a stopped run (its prompts.jsonl lost, its prompt file edited)
        raise EvalkitError(f"--resume: the samples made before for prompt {shown(other['prompt_id'].iloc[0])} answer "
                           "another prompt (or one the sweep no longer has): a resumed run must be the same sweep; "
                           "start a new run")
    done = {(r.prompt_id, r.setting_id, int(r.sample_index)) for r in made_before.itertuples()}
    for name in set_aside:
        ui.note(f"{writer.path / 'parts' / name} is damaged: set aside as {name}.damaged; its samples are made again")
    parts = writer.parts(columns)
    todo, kept = [], 0
    for u in units:
        if u.key in done:
            continue
        row = kind.recovered(u, config, writer)
        if row is None:
            todo.append(u)
        else:
            parts.add(row)
            kept += 1
    cached = sweep.cached_generation()
    from_cache, to_make = cached.split(todo)
    if note := cached.note():
        ui.note(note)
    info = sweep.generator.info
    if from_cache and info.server.get("names_its_weights") is False:
        ui.note(f"{len(from_cache)} samples from the sample cache: {info.path} gives no fingerprint or weights for "
                f"{shown(info.id)}, so they are taken for the model it served before under that name "
                "(--no-cache after changing it)")
    before = len(done) + kept + len(from_cache)
    try:
        with ui.phase("generating", total=len(units)) as phase:
            phase.update(completed=len(done) + kept)
            for u, result in from_cache:
                parts.add(kind.row(u, result, writer, config))
            phase.update(completed=before)
            records = sweep.executor.run(
                to_make, max_new_tokens=config.max_new_tokens, batch_size=sweep.batch_size, stop=tuple(config.stop),
                progress=lambda n, s: phase.update(completed=before + n,
                                                   status=f"step {s}" if isinstance(s, int) else s))
            with closing(records):  # closed at once on an error: a backend stops its work in flight
                for made, (unit, result) in enumerate(cached.through(records), 1):
                    parts.add(kind.row(unit, result, writer, config))
                    phase.update(completed=before + made)
    finally:
        parts.flush()
        cached.close()
        if note := cached.note():  # found damaged while it was written
            ui.note(note)
    position = {u.key: i for i, u in enumerate(units)}
    samples = writer.read_parts(columns)
    order = [position[(r.prompt_id, r.setting_id, int(r.sample_index))] for r in samples.itertuples()]
    samples = samples.iloc[pd.Series(order).argsort(kind="stable").to_numpy()].reset_index(drop=True)
    return samples, Reused(from_parts=len(done) + kept, from_cache=len(from_cache), generated=len(to_make))


def write_report(run_dir: Path, ui) -> None:
    """The run is complete and kept whatever happens here; `evalkit report` redoes this."""
    from evalkit.report import write_report as write

    with ui.phase("report"):
        write([run_dir], run_dir / "report.html")


@contextmanager
def recorded(config: SweepConfig, writer: RunWriter):
    """Around a run's work: on an error or Ctrl-C the manifest says failed or interrupted (the run can
    be resumed); either way the run is recorded in the run index."""
    try:
        yield
    except BaseException as e:
        if isinstance(e, Stopped):  # a fault outside the run (a server's): resumable, and the line says how
            e.resumable(writer.path)
        writer.fail(e)
        record_in_index(writer.path, config.index, config.output_dir, quiet=True)
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted(writer.path, getattr(e, "exit_code", 130)) from None
        raise
    record_in_index(writer.path, config.index, config.output_dir)


def record_in_index(run_dir: Path, index: str | None, output_dir: str | Path, quiet: bool = False) -> None:
    """Record the run in the run index; after a failure, never let the index hide the first error."""
    from evalkit.index import RunIndex

    try:
        with RunIndex(index_path(index, output_dir)) as db:
            db.record(Run(run_dir))
    except Exception:
        if not quiet:
            raise


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the samples made so far are kept and the run can be resumed."""

    def __init__(self, run_dir: Path, exit_code: int = 130):
        what = "terminated" if exit_code == 143 else "interrupted"
        super().__init__(f"{what}; resume with: evalkit run --resume {run_dir}")
        self.run_dir = run_dir
        self.exit_code = exit_code
