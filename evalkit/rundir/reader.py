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
from evalkit.inputs import check_path_text
from evalkit.rundir.manifest import Manifest


@dataclass
class Run:
    """A run directory, with its tables loaded on first use as pandas DataFrames."""

    path: Path
    report_error: str | None = None  # set by a sweep whose report could not be written (the run is complete)

    @cached_property
    def manifest(self) -> Manifest:
        return self._read("manifest.json", _manifest)

    @cached_property
    def config(self) -> dict[str, Any]:
        return self._read("config.yaml", _config)

    @cached_property
    def samples(self) -> pd.DataFrame:
        return self._read("samples.parquet", pd.read_parquet)

    @cached_property
    def scores(self) -> pd.DataFrame:
        return self._read("scores.parquet", pd.read_parquet)

    @cached_property
    def sample_scores(self) -> pd.DataFrame:
        return self._read("sample_scores.parquet", pd.read_parquet)

    @cached_property
    def summary(self) -> pd.DataFrame:
        return self._read("summary.csv", pd.read_csv)

    @cached_property
    def prompts(self) -> pd.DataFrame:
        return self._read("prompts.jsonl", lambda p: pd.read_json(p, lines=True, dtype={"id": str}))

    def _read(self, name: str, read):
        """One file of the run, or one line that names it and says what to do."""
        path = self.path / name
        if not path.is_file():
            raise DamagedRun(f"{path}: missing: the run directory is incomplete or damaged"
                             f"{_REDO}")
        try:
            value = read(path)
        except DamagedRun:
            raise
        except Exception as e:  # a truncated table, text that is not JSON, YAML or UTF-8
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise DamagedRun(f"{path}: cannot be read ({reason}): the file is damaged"
                             f"{_REDO}") from None
        missing = [c for c in REQUIRED.get(name, ()) if c not in value]
        if missing:
            raise DamagedRun(f"{path}: no {', '.join(missing)} column: the file is damaged{_REDO}")
        return value

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


REQUIRED = {  # the columns every reader of a table relies on
    "samples.parquet": ("prompt_id", "setting_id", "sample_index", "text"),
    "scores.parquet": ("setting_id", "prompt_id", "metric", "value"),
    "sample_scores.parquet": ("setting_id", "prompt_id", "metric", "value"),
    "summary.csv": ("setting_id", "metric", "mean", "ci_low", "ci_high"),
    "prompts.jsonl": ("id", "prompt"),
}


class DamagedRun(EvalkitError):
    """A run directory's file that is missing or cannot be read."""


_REDO = "; run the sweep again (the sample cache gives back the samples it made), or --resume it if it never completed"


def _manifest(path: Path) -> Manifest:
    from pydantic import ValidationError

    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "json_invalid":
            raise DamagedRun(f"{path}: not JSON ({err['msg'].removeprefix('Invalid JSON: ')}): the manifest is "
                             f"damaged{_REDO}") from None
        raise DamagedRun(f"{path}: {where + ': ' if where else ''}{err['msg']}: not the manifest of a run "
                         f"(damaged, or written by another program){_REDO}") from None


def _config(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise DamagedRun(f"{path}: not a sweep config (a YAML mapping), got {type(data).__name__}: the run "
                         f"directory is damaged{_REDO}")
    return data


def load_run(path: str | Path) -> Run:
    check_path_text(path)
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise EvalkitError(f"{path}: not a run directory (no manifest.json)")
    return Run(path)
