"""RunWriter: the only writer of a run directory (see :mod:`evalkit.rundir.reader` for its layout).

Every file is written atomically and fsynced; samples go to parts as they are made (so a killed
run keeps them) and are assembled into ``samples.parquet`` at the end; the manifest says
``running`` until :meth:`RunWriter.complete` stores the final counts, timings and the comparison
protocol.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from evalkit.errors import EvalkitError
from evalkit.rundir import files
from evalkit.rundir.lock import RunLock
from evalkit.rundir.manifest import Manifest, Reused, utc_now
from evalkit.rundir.parts import PartWriter, read_parts
from evalkit.rundir.protocol import compute_protocol
from evalkit.rundir.reader import Run


def prompts_jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")


class RunWriter:
    def __init__(self, path: Path, manifest: Manifest, lock: RunLock | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.lock = lock  # held while this process writes the run (see :mod:`evalkit.rundir.lock`)

    @classmethod
    def create(cls, output_dir: Path, manifest: Manifest) -> RunWriter:
        """A new run directory ``<output_dir>/<UTC time>-<name>`` (its name becomes the run id)."""
        path = files.create_run_dir(Path(output_dir), manifest.name)
        manifest.run_id = path.name
        writer = cls(path, manifest, RunLock(path).acquire())
        writer.write_manifest()
        return writer

    @classmethod
    def reopen(cls, path: Path) -> RunWriter:
        """An unfinished run directory, to be continued (``--resume``); the caller holds its lock."""
        manifest = Run(Path(path)).manifest
        manifest.status, manifest.error, manifest.ended_at, manifest.protocol = "running", None, None, None
        manifest.schema_version = Manifest.model_fields["schema_version"].default  # rewritten in today's shape
        return cls(path, manifest)

    def close(self) -> None:
        """Let go of the run directory's lock, if this writer took it."""
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------------ files

    def write_manifest(self) -> None:
        files.write_json(self.path / "manifest.json", self.manifest.model_dump(mode="json"))

    def write_config(self, resolved: dict[str, Any]) -> None:
        data = yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True).encode("utf-8")
        files.write_atomic(self.path / "config.yaml", data)
        self.manifest.config_sha256 = hashlib.sha256(data).hexdigest()  # in the manifest's next write

    def write_prompts(self, lines: list[dict[str, Any]]) -> None:
        files.write_atomic(self.path / "prompts.jsonl", prompts_jsonl(lines))

    def check_prompts(self, lines: list[dict[str, Any]]) -> None:
        """On --resume: the prompts must be those the run started with (a prompt file may have been edited)."""
        path = self.path / "prompts.jsonl"
        if not path.is_file():  # lost: it follows from the config and the model, so it is written again
            self.write_prompts(lines)
        elif path.read_bytes() != prompts_jsonl(lines):
            raise EvalkitError(f"--resume: the prompts differ from those in {path} (the prompt file was edited "
                               "since the run started?): a resumed run must be the same sweep; start a new run")

    def keep_prompt_image(self, source: str | Path, sha256: str) -> str:
        """A copy of an input image, named by its content; its path relative to the run directory."""
        return files.keep_prompt_image(self.path, source, sha256)

    def write_file(self, relative: str, data: bytes) -> None:
        """A file the run made (a generated image), at ``relative`` inside the run directory."""
        (self.path / relative).parent.mkdir(parents=True, exist_ok=True)
        files.write_atomic(self.path / relative, data)

    # ------------------------------------------------------------------ samples and scores

    def parts(self, columns: list[str]) -> PartWriter:
        return PartWriter(self.path, columns)

    def read_parts(self, columns: list[str], set_aside: list[str] | None = None) -> pd.DataFrame:
        return read_parts(self.path, columns, set_aside)

    def write_samples(self, samples: pd.DataFrame) -> None:
        """The whole samples table. The parts it was assembled from stay until the run is complete: a run
        stopped while it scores is resumed from them."""
        files.write_table(self.path / "samples.parquet", samples)

    def write_scores(self, scores: pd.DataFrame, sample_scores: pd.DataFrame, summary: pd.DataFrame) -> None:
        files.write_table(self.path / "scores.parquet", scores)
        files.write_table(self.path / "sample_scores.parquet", sample_scores)
        files.write_table(self.path / "summary.csv", summary)

    # ------------------------------------------------------------------ status

    def complete(self, *, n_samples: int, timings: dict[str, float] | None = None,
                 reused: Reused | None = None, ended_at: str | None = None) -> Run:
        m = self.manifest
        m.n_samples = n_samples
        m.timings = {**m.timings, **(timings or {})}
        if reused is not None:
            m.samples_reused = reused
        m.status, m.ended_at = "complete", ended_at or utc_now()
        m.protocol = compute_protocol(Run(self.path))  # reads the config, the prompts and the kind
        self.write_manifest()
        shutil.rmtree(self.path / "parts", ignore_errors=True)  # samples.parquet holds them all now
        return Run(self.path)

    def fail(self, error: BaseException) -> None:
        """The run stopped: ``interrupted`` (Ctrl-C) or ``failed``; what it made so far is kept."""
        m = self.manifest
        m.status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        m.ended_at, m.error = utc_now(), f"{type(error).__name__}: {error}"
        self.write_manifest()
