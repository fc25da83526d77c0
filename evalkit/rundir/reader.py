"""Reading a run directory back: the manifest, the config and the tables, loaded on first use.

A run directory ``<output_dir>/<UTC time>-<name>/`` holds:

- ``config.yaml``: the resolved config (overrides applied, defaults filled in)
- ``manifest.json``: see :class:`evalkit.rundir.manifest.Manifest`
- ``prompts.jsonl``: each prompt as given and as rendered for the model
- ``prompt_images/``: a copy of each prompt's image (vision-language sweeps), named by its sha256
- ``images/``: the generated images (text-to-image sweeps)
- ``samples.parquet``: one row per sample
- ``scores.parquet``: long form, one row per (setting, prompt, metric)
- ``sample_scores.parquet``: long form, per-sample values of metrics that have them
- ``summary.csv``: per setting and metric, the mean over prompts and its bootstrap CI

:class:`evalkit.rundir.writer.RunWriter` is the only writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from evalkit.errors import EvalkitError
from evalkit.rundir.manifest import Manifest


@dataclass
class Run:
    """A run directory, with its tables loaded on first use as pandas DataFrames."""

    path: Path
    report_error: str | None = None  # set by a sweep whose report could not be written (the run is complete)

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
