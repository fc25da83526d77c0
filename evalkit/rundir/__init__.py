"""Run directories: one writer (:class:`RunWriter`), one reader (:class:`Run`), a typed manifest,
the columns of each kind's samples, parts written as samples are made, and the sample cache."""

from evalkit.rundir.manifest import Manifest, SettingRecord
from evalkit.rundir.reader import Run, load_run
from evalkit.rundir.writer import RunWriter

__all__ = ["Manifest", "Run", "RunWriter", "SettingRecord", "load_run"]
