"""A file of samples made elsewhere (``evalkit score``) through the pipeline's checks and its end: the metrics are
checked like a sweep's (:func:`evalkit.plan.checked_metrics`), the samples scored and the run completed like a
sweep's (:func:`evalkit.pipeline.score_and_complete`), and the run recorded in the run index. Nothing is generated;
the run directory is written in a temporary folder beside ``output`` and renamed into place once complete."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from evalkit.config import metric_spec
from evalkit.errors import ConfigError, EvalkitError
from evalkit.generation.base import ModelInfo
from evalkit.index import TABLES, index_path
from evalkit.inputs import check_path_text
from evalkit.kinds.base import UnknownSetting
from evalkit.kinds.scored import SCORED, SCORED_CAPTIONS, read_generations
from evalkit.pipeline import Scoring, record_in_index, score_and_complete
from evalkit.plan import checked_metrics
from evalkit.prompts import sha256_of
from evalkit.references import ReferenceSet, load_references
from evalkit.rundir import Manifest, Run, RunWriter, SettingRecord, load_run
from evalkit.rundir.files import check_database, check_writable
from evalkit.rundir.manifest import ci_info, git_info, utc_now
from evalkit.scoring.registry import default_registry, prepare_all
from evalkit.settings import APPLICATION_ORDER, chain_labels, Setting


def score_file(path: Path, metric_names: list[str], output: Path, *, seed: int, level: float, resamples: int,
               name: str | None, ui, index: str | Path | None, references: str | Path | None) -> Run:
    """Score the JSONL file of generations ``path`` into the run directory ``output`` (see
    :func:`evalkit.api.score_file`); everything is checked before anything is scored or written."""
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

    def read_references() -> ReferenceSet | None:
        if references is None:
            return None
        check_path_text(Path(references), "--references")
        return load_references(Path(references), set(samples["prompt_id"]), images=False, field="--references")

    reference_set = checked_metrics(metrics, checks.values(), read_references, where="--metrics",
                                    field="--references")
    prepare_all(metrics, source="--metrics")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise EvalkitError(f"-o: {output} exists and is not an empty directory")
    parent = output.parent if output.parent != Path("") else Path(".")
    check_writable(parent, field="-o")
    check_database(index_path(index, parent), field="index", tables=TABLES)  # before anything is scored or written
    settings = list(dict.fromkeys(UnknownSetting() if r["setting_id"] == UnknownSetting.ID
                                  else Setting(**{k: r[k] for k in Setting.model_fields})
                                  for r in samples.to_dict("records")))

    output.parent.mkdir(parents=True, exist_ok=True)
    # made as a run directory is (the umask's mode; mkdtemp's would be 0700, kept by the rename)
    tmp = output.parent / f".{output.name}.{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        writer = RunWriter(tmp, Manifest(
            kind=kind.name, run_id=output.name, name=name or _name_of(path), started_at=utc_now(), git=git_info(),
            config_source=source, config_as_given={"file": str(path.resolve()), "metrics": metric_names},
            model=ModelInfo(backend="external", id="external", source=str(path.resolve())), device="n/a", seed=seed,
            sampling_order=list(chain_labels(APPLICATION_ORDER)),
            settings=[SettingRecord(id=s.id, params={k: v for k, v in s.params().items() if v is not None},
                                    generation={}) for s in settings],  # unknown: no parameter recorded
            n_prompts=int(samples["prompt_id"].nunique()), batch_size=0,
            metrics=[m.id for m in metrics], metric_info={m.id: m.info() for m in metrics},
            ci=ci_info(level, resamples, seed)))
        writer.write_manifest()
        if images:  # the scores' directory keeps the images, like a run
            kept = {src: writer.keep_prompt_image(src, sha256_of(Path(src))) for src in set(samples["prompt_image"])}
            samples = samples.assign(prompt_image=samples["prompt_image"].map(kept))
        first = samples.drop_duplicates("prompt_id")
        if checks:  # what judged the samples stays with the scores
            writer.write_prompts([{"id": pid, "prompt": text, **({"checks": checks[pid].as_json()} if pid in checks
                                                                  else {})}
                                  for pid, text in zip(first["prompt_id"], first["prompt"])])
        writer.write_config({"name": writer.manifest.name, "scored_from": str(path.resolve()),
                             "metrics": [m.id for m in metrics], "seed": seed,
                             "ci": {"level": level, "resamples": resamples}})
        prompts = dict(zip(first["prompt_id"], first["prompt"])) if reference_set is not None else {}
        score_and_complete(writer, samples, Scoring(settings, metrics, level, resamples, seed, checks, reference_set,
                                                    prompts), ui)
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record_in_index(output, str(index) if index is not None else None, parent)
    return load_run(output)


def _name_of(path: Path) -> str:
    """A run name from a file's name: the characters a sweep's name may have (letters, digits, . _ -)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._")[:80] or "scored"
