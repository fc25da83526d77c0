"""Run directory I/O: create, write the tables and the manifest, load a run back.

A run directory ``<output_dir>/<UTC time>-<name>/`` holds:

- ``config.yaml``: the resolved config (overrides applied, defaults filled in)
- ``manifest.json``: see :class:`evalkit.manifest.Manifest`
- ``prompts.jsonl``: each prompt as given and as rendered for the model
- ``prompt_images/``: a copy of each prompt's image (vision-language sweeps), named by its sha256
- ``samples.parquet``: one row per sample
- ``scores.parquet``: long form, one row per (setting, prompt, metric)
- ``sample_scores.parquet``: long form, per-sample values of metrics that have them
- ``summary.csv``: per setting and metric, the mean over prompts and its bootstrap CI
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from evalkit.errors import EvalkitError
from evalkit.manifest import Manifest

# Per generated token (lists aligned with token_ids): log-probability of the chosen token under
# the model (temperature 1, unfiltered) and under the sampling distribution, the entropy (nats)
# of both distributions, and how many tokens the filters kept.
STAT_COLUMNS = ["logprob_model", "logprob_sampling", "entropy_model", "entropy_sampling", "n_kept"]
BASE_SAMPLE_COLUMNS = ["prompt_id", "prompt", "setting_id", "temperature", "top_p", "top_k", "min_p",
                       "sample_index", "seed", "text", "num_new_tokens", "finish_reason", "token_ids"]
SAMPLE_COLUMNS = [*BASE_SAMPLE_COLUMNS, *STAT_COLUMNS]  # scored files have no token statistics
# vision-language sweeps: the image the sample answers (a copy inside the run directory, relative
# path) and the image's reference captions
VLM_COLUMNS = ["prompt_image", "references"]


def check_writable(output_dir: Path, source: str | None = None, field: str = "output_dir") -> None:
    """Refuse an output directory that cannot be created or written, without creating anything."""
    from evalkit.errors import ConfigError

    probe = output_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{probe} exists and is not a directory", source=source, path=field)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{output_dir} is not writable", source=source, path=field)


def create_run_dir(output_dir: Path, name: str, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    output_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        path = output_dir / (f"{stamp}-{name}" if attempt == 1 else f"{stamp}-{name}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise EvalkitError(f"output_dir: cannot create a run directory under {output_dir}")


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prompt_image_name(source: str | Path, sha256: str) -> str:
    """Where an input image is kept in a run directory: named by its content, so equal images share a file."""
    return f"prompt_images/{sha256[:16]}{Path(source).suffix.lower()}"


def keep_prompt_image(run_dir: Path, source: str | Path, sha256: str) -> str:
    """Copy an input image into ``run_dir/prompt_images/`` (once); its path relative to the run directory."""
    name = prompt_image_name(source, sha256)
    if not (run_dir / name).is_file():
        (run_dir / name).parent.mkdir(exist_ok=True)
        write_atomic(run_dir / name, Path(source).read_bytes())
    return name


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8"))


def write_yaml(path: Path, obj: Any) -> None:
    write_atomic(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True).encode("utf-8"))


def write_table(path: Path, df: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    write_json(run_dir / "manifest.json", manifest.model_dump(mode="json"))


@dataclass
class Run:
    """A run directory, with its tables loaded on first use as pandas DataFrames."""

    path: Path

    @cached_property
    def manifest(self) -> Manifest:
        return Manifest.model_validate_json((self.path / "manifest.json").read_text(encoding="utf-8"))

    @cached_property
    def config(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8"))

    @cached_property
    def samples(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "samples.parquet")

    @cached_property
    def scores(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "scores.parquet")

    @cached_property
    def sample_scores(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "sample_scores.parquet")

    @cached_property
    def summary(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "summary.csv")

    @cached_property
    def prompts(self) -> pd.DataFrame:
        return pd.read_json(self.path / "prompts.jsonl", lines=True, dtype={"id": str})

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise EvalkitError(f"{path}: not a run directory (no manifest.json)")
    return Run(path)
