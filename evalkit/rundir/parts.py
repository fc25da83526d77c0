"""Samples made durable as they are produced.

Finished samples are buffered and written as numbered Parquet parts under
``<run dir>/parts/``: each part is written to a temporary file, fsynced, and renamed into
place, so a reader (or a resumed run) sees whole parts only. At the end of a run the parts
are assembled into ``samples.parquet`` and removed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from evalkit.rundir.files import fsync_dir

PART_ROWS = 16  # flush after this many samples
PART_SECONDS = 10.0  # or after this long


class PartWriter:
    def __init__(self, run_dir: Path, columns: list[str]):
        self.folder = run_dir / "parts"
        self.folder.mkdir(exist_ok=True)
        self.columns = columns
        self.rows: list[dict] = []
        self.count = len(list(self.folder.glob("part-*.parquet")))
        self.last = time.monotonic()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= PART_ROWS or time.monotonic() - self.last > PART_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.rows:
            return
        path = self.folder / f"part-{self.count:06d}.parquet"
        tmp = self.folder / f".{path.name}.tmp"
        pd.DataFrame(self.rows, columns=self.columns).to_parquet(tmp, index=False)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.folder)
        self.count += 1
        self.rows = []


def read_parts(run_dir: Path, columns: list[str]) -> pd.DataFrame:
    """Every sample written so far (whole parts only; temporary files are ignored)."""
    files = sorted((run_dir / "parts").glob("part-*.parquet"))
    if not files:
        return pd.DataFrame(columns=columns)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
