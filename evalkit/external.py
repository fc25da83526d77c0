"""Score generations produced elsewhere (an API, another harness): ``evalkit score FILE.jsonl``.

Each line of the file is one sample: ``text`` (required), the prompt as ``prompt_id`` and/or
``prompt`` (at least one), optionally the setting it was sampled with (``temperature``,
``top_p``, ``top_k``, ``min_p``; defaults 1, 1, 0, 0) and ``sample_index`` (else the order
within its group). Captions of images add ``image`` (a path relative to the file) and may add
``references`` (reference captions); every row of a prompt names the same image. Other fields
are ignored. Metrics take parameters in brackets: ``clip_score[text=sample,prefix=no]``. The
output directory gets the same tables as a run (samples, scores, per-sample scores, summary,
manifest, and the images), so ``evalkit.load_run`` reads it like any run.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from evalkit import store
from evalkit.config import MetricSpec
from evalkit.errors import ConfigError, EvalkitError, first_error
from evalkit.manifest import Manifest, SettingRecord, git_info, utc_now
from evalkit.metric import VLM_NEEDS
from evalkit.prompts import read_jsonl_lines, sha256_of
from evalkit.progress import RichProgress, Silent
from evalkit.registry import default_registry, prepare_all
from evalkit.sampling import APPLICATION_ORDER, MinP, Setting, Temperature, TopK, TopP
from evalkit.scoring import score_run

TEXT_ONLY_NEEDS = frozenset({"texts", "prompts"})


class GenerationRow(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str
    prompt_id: str | int | None = None
    prompt: str | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    min_p: MinP = 0.0
    sample_index: int | None = None
    image: str | None = None  # the image the text describes (a path relative to the file)
    references: list[str] | None = None  # its reference captions

    @model_validator(mode="after")
    def _prompt(self) -> GenerationRow:
        if self.prompt_id is None and self.prompt is None:
            raise ValueError("a row needs 'prompt_id' or 'prompt'")
        return self


def read_generations(path: Path) -> pd.DataFrame:
    """The file as a samples table (sample-index order within each group). Raises ConfigError naming the line."""
    source = str(path)
    rows = []
    for number, text in read_jsonl_lines(path, "file"):
        where = f"line {number}"
        try:
            row = GenerationRow.model_validate_json(text)
        except ValidationError as e:
            field, msg, err = first_error(e)
            if err["type"].startswith("json"):
                msg = f"invalid JSON: {msg}"
            raise ConfigError(f"{field + ': ' if field else ''}{msg}", source=source, path=where) from None
        setting = Setting(temperature=row.temperature, top_p=row.top_p, top_k=row.top_k, min_p=row.min_p)
        pid = str(row.prompt_id) if row.prompt_id is not None else row.prompt
        image = _image(path, row.image, where) if row.image is not None else None
        rows.append({"prompt_id": pid, "prompt": row.prompt if row.prompt is not None else pid,
                     "setting_id": setting.id, **setting.params(), "sample_index": row.sample_index, "seed": None,
                     "text": row.text, "num_new_tokens": None, "finish_reason": None, "token_ids": [],
                     "prompt_image": image, "references": tuple(row.references or ()), "_line": number})
    if not rows:
        raise ConfigError("the file has no generations", source=source)
    samples = pd.DataFrame(rows)
    images = samples["prompt_image"].notna().any()
    if images and samples["prompt_image"].isna().any():
        line = int(samples.loc[samples["prompt_image"].isna().idxmax(), "_line"])
        raise ConfigError("no image, while other lines name one: every line names the image it describes",
                          source=source, path=f"line {line}")
    for column in ("prompt_image", "references") if images else ():
        per_prompt = samples.groupby("prompt_id", sort=False)[column].transform("first")
        other = samples[column] != per_prompt
        if other.any():
            bad = samples[other].iloc[0]
            raise ConfigError(f"prompt {bad['prompt_id']!r} has another {column.replace('prompt_', '')} than on its "
                              f"first line", source=source, path=f"line {int(bad['_line'])}")
    order = samples.groupby(["prompt_id", "setting_id"], sort=False).cumcount()
    given = samples["sample_index"]
    samples["sample_index"] = given.where(given.notna(), order).astype(int)
    dup = samples.duplicated(["prompt_id", "setting_id", "sample_index"])
    if dup.any():
        line = int(samples.loc[dup.idxmax(), "_line"])
        raise ConfigError("duplicate sample_index within its prompt and setting", source=source, path=f"line {line}")
    samples = samples.drop(columns="_line").assign(references=samples["references"].map(list))
    columns = store.BASE_SAMPLE_COLUMNS + (store.VLM_COLUMNS if images else [])
    return samples.astype({"num_new_tokens": "Int64", "seed": "Int64"})[columns]


def _image(path: Path, name: str, where: str) -> str:
    image = (path.parent / Path(name).expanduser()).resolve()
    if not image.is_file():
        raise ConfigError(f"image not found: {image}", source=str(path), path=where)
    return str(image)


def score_file(path: str | Path, metric_names: list[str], output: str | Path, *, seed: int = 0, level: float = 0.95,
               resamples: int = 2000, name: str | None = None, progress: bool = True) -> store.Run:
    """Score a JSONL file of generations into ``output`` (which must not exist yet, or be empty)."""
    path, output = Path(path), Path(output)
    source = str(path)
    if not metric_names:
        raise ConfigError("name at least one metric", path="--metrics")
    specs = [metric_spec(m) for m in metric_names if m.strip()]
    metrics = default_registry().create_all(specs, source="--metrics")
    samples = read_generations(path)
    images = "prompt_image" in samples
    offered = TEXT_ONLY_NEEDS | (VLM_NEEDS if images else frozenset())
    for m in metrics:
        missing = set(m.requires()) - offered
        if missing:
            raise ConfigError(f"{m.id} needs {', '.join(sorted(missing))}, which a file of texts "
                              f"{'with images ' if images else ''}does not have", path="--metrics")
    prepare_all(metrics, source="--metrics")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise EvalkitError(f"-o: {output} exists and is not an empty directory")
    store.check_writable(output.parent if output.parent != Path("") else Path("."), field="-o")
    settings = list(dict.fromkeys(Setting(**{k: r[k] for k in ("temperature", "top_p", "top_k", "min_p")})
                                  for r in samples.to_dict("records")))
    ui = RichProgress() if progress else Silent()

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        manifest = Manifest(
            kind="scored", run_id=output.name, name=name or path.stem, started_at=utc_now(), git=git_info(),
            config_source=source, config_as_given={"file": str(path.resolve()), "metrics": metric_names},
            model={"id": "external", "source": str(path.resolve())}, device="n/a", seed=seed,
            sampling_order=list(APPLICATION_ORDER),
            settings=[SettingRecord(id=s.id, params=s.params(), generation={}) for s in settings],
            n_prompts=int(samples["prompt_id"].nunique()), n_samples=len(samples), batch_size=0,
            metrics=[m.id for m in metrics], metric_info={m.id: m.info() for m in metrics},
            ci={"method": "percentile bootstrap over prompts", "level": level, "resamples": resamples, "seed": seed},
        )
        if images:  # the scores' directory keeps the images, like a run
            kept = {src: store.keep_prompt_image(tmp, src, sha256_of(Path(src)))
                    for src in set(samples["prompt_image"])}
            samples = samples.assign(prompt_image=samples["prompt_image"].map(kept))
        store.write_table(tmp / "samples.parquet", samples)
        score_run(tmp, samples, settings, metrics, level=level, resamples=resamples, seed=seed, ui=ui)
        store.write_yaml(tmp / "config.yaml", {"name": manifest.name, "scored_from": str(path.resolve()),
                                               "metrics": [m.id for m in metrics], "seed": seed,
                                               "ci": {"level": level, "resamples": resamples}})
        manifest.status, manifest.ended_at = "complete", utc_now()
        store.write_manifest(tmp, manifest)
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return store.Run(output)


def metric_list(value: str) -> list[str]:
    """Comma-separated metrics; commas inside brackets separate parameters: ``distinct_2,clip_score[text=sample]``."""
    return [m.strip() for m in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", value) if m.strip()]


def metric_spec(text: str) -> MetricSpec:
    """``name`` or ``name[key=value,...]``; values that read as numbers are numbers."""
    name, bracket, rest = text.strip().partition("[")
    params: dict[str, object] = {}
    if bracket:
        if not rest.endswith("]"):
            raise ConfigError(f"expected NAME[KEY=VALUE,...], got {text!r}", path="--metrics")
        for part in filter(None, rest[:-1].split(",")):
            key, eq, value = (x.strip() for x in part.partition("="))
            if not eq or not key:
                raise ConfigError(f"expected KEY=VALUE inside the brackets of {text!r}, got {part!r}", path="--metrics")
            params[key] = _number(value)
    return MetricSpec(name=name.strip(), params=params)


def _number(value: str) -> object:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value

