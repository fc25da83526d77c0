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

from evalkit.errors import EvalkitError
from evalkit.rundir.files import fsync_dir
from evalkit.settings import Setting

PART_ROWS = 16  # flush after this many samples
PART_SECONDS = 10.0  # or after this long


class PartWriter:
    def __init__(self, run_dir: Path, columns: list[str]):
        self.folder = run_dir / "parts"
        self.folder.mkdir(exist_ok=True)
        self.columns = columns
        self.rows: list[dict] = []
        numbers = [int(p.name[5:11]) for p in self.folder.glob("part-*.parquet*") if p.name[5:11].isdigit()]
        self.count = max(numbers, default=-1) + 1  # after every part there is (a set-aside one leaves a gap)
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


def check_parts_folder(run_dir: Path) -> Path:
    folder = run_dir / "parts"
    if folder.exists() and not folder.is_dir():
        raise EvalkitError(f"{folder}: not a folder (the run directory is damaged): move it away, and --resume makes "
                           "the samples it held again")
    return folder


def with_new_knobs(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame`` with the setting knobs it was written without (by an evalkit that did not have them) at their
    neutral value: a run stopped before a knob was added resumes."""
    missing = {c: f.default for c, f in Setting.model_fields.items() if c in columns and c not in frame.columns}
    return frame.assign(**missing) if missing else frame


def read_parts(run_dir: Path, columns: list[str], set_aside: list[str] | None = None) -> pd.DataFrame:
    """Every sample written so far (whole parts only; temporary files are ignored). A part that cannot be
    read, or lacks the run's columns, is renamed ``*.damaged`` and its name added to ``set_aside``: its
    samples are then missing, and a resumed run makes them again."""
    folder = check_parts_folder(run_dir)
    frames = []
    for f in sorted(folder.glob("part-*.parquet")):
        try:
            frame = with_new_knobs(pd.read_parquet(f), columns)
            if set(columns) - set(frame.columns):
                raise ValueError("columns missing")
        except ValueError:  # not Parquet, cut short (pyarrow's ArrowInvalid), or without the run's columns;
            if set_aside is None:  # a file that cannot be opened (permissions, no file handles) is no damage
                raise
            f.rename(f.with_name(f.name + ".damaged"))  # its number is never written again (see PartWriter)
            set_aside.append(f.name)
            continue
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)
