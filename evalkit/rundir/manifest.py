"""The run manifest: what ran, of which kind, on what, with which versions, when; and the
comparison protocol (what must match for two runs' numbers to be compared). Written as
manifest.json by :class:`evalkit.rundir.writer.RunWriter`; typed, and still reads the older
schema (``kind: sweep``)."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Literal

from typing_extensions import TypedDict

from pydantic import BaseModel, Field, model_validator

from evalkit.version import __version__
from evalkit.config import MODELS
from evalkit.generation.base import ModelInfo

# the libraries whose versions can change a sample or a metric's value (MAUVE's k-means: mauve-text and faiss)
PACKAGES = ("torch", "transformers", "tokenizers", "diffusers", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow",
            "pydantic", "nltk", "regex", "sentence-transformers", "open_clip_torch", "mauve-text", "faiss-cpu")
RunKindName = Literal["text", "image-to-text", "text-to-image", "scored"]


class GitInfo(BaseModel):
    commit: str
    dirty: bool


class SettingRecord(BaseModel):
    id: str
    params: dict[str, float | int | str]  # as requested
    generation: dict[str, Any]  # the parameters actually passed to the backend


class CIInfo(TypedDict):
    """How the confidence intervals were made."""

    method: str  # "percentile bootstrap over prompts"
    level: float
    resamples: int
    seed: int


class Timings(TypedDict, total=False):
    load_s: float
    generate_s: float
    score_s: float


class Reused(TypedDict):
    """Where a run's samples came from."""

    from_parts: int  # made before a --resume
    from_cache: int  # the sample cache
    generated: int  # made by this run


def ci_info(level: float, resamples: int, seed: int) -> CIInfo:
    return CIInfo(method="percentile bootstrap over prompts", level=level, resamples=resamples, seed=seed)


class Manifest(BaseModel):
    """Everything needed to know what a run was. ``schema_version`` changes when fields change meaning."""

    schema_version: int = 3
    kind: RunKindName = "text"  # what the run made (see evalkit.kinds); scored: texts made elsewhere
    run_id: str
    name: str
    status: Literal["running", "complete", "failed", "interrupted"] = "running"
    error: str | None = None
    started_at: str
    ended_at: str | None = None
    evalkit_version: str = __version__
    python: str = Field(default_factory=lambda: platform.python_version())
    platform: str = Field(default_factory=platform.platform)
    packages: dict[str, str | None] = Field(default_factory=lambda: package_versions())
    command: list[str] = Field(default_factory=lambda: list(sys.argv))
    git: GitInfo | None = None
    config_source: str
    config_as_given: dict[str, Any]  # the YAML as read, before overrides
    config_sha256: str | None = None  # of the run's config.yaml as written: --resume refuses an edited one
    overrides: list[str] = Field(default_factory=list)
    model: ModelInfo
    device: str
    seed: int
    sampling_order: list[str]  # order in which the sampling transforms apply
    settings: list[SettingRecord]
    n_prompts: int
    batch_size: int  # rows per decode step (images per pipeline call), as resolved
    stop: list[str] = Field(default_factory=list)
    n_samples: int = 0
    metrics: list[str]
    metric_info: dict[str, dict[str, Any]] = Field(default_factory=dict)  # id -> kind, direction, definition
    # the judge, where a metric asks one (evalkit.scoring.judge.Judge.usage): its record as in metric_info, and what
    # it did in this run: verdicts asked, requests sent and retried, cache hits, the model and system_fingerprint
    # its replies named; set when scoring ends
    judge: dict[str, Any] | None = None
    ci: CIInfo
    timings: Timings = Field(default_factory=Timings)
    samples_reused: Reused = Field(default_factory=lambda: Reused(from_parts=0, from_cache=0, generated=0))
    sample_cache: bool = True  # False: started with --no-cache, and so resumed: no sample from the cache
    executor: dict[str, Any] = Field(default_factory=dict)  # where generation ran (local, or Ray: workers, retries)
    # the references the samples were compared with (file, sha256, counts) and each metric's value on them
    references: dict[str, Any] | None = None
    # what must be equal for two runs' numbers to be compared (evalkit.rundir.protocol); set when complete
    protocol: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _older(cls, data: Any) -> Any:
        """Schema 2 named every sweep ``kind: sweep``: its kind follows from the backend."""
        if isinstance(data, dict) and data.get("kind") == "sweep":
            model = data.get("model") or {}
            data = {**data, "kind": {m.BACKEND: m.KIND for m in MODELS}.get(model.get("backend", "hf"), "text")}
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, dict) and data.get("kind") == "scored" and "backend" not in model:
            data = {**data, "model": {**model, "backend": "external"}}
        if isinstance(data, dict) and data.get("samples_reused") == {}:
            data = {**data, "samples_reused": {"from_parts": 0, "from_cache": 0, "generated": 0}}
        return data


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_info(cwd: str | None = None) -> GitInfo | None:
    """The working directory's git commit and dirty flag, or None outside a repository."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
        return GitInfo(commit=commit.stdout.strip(), dirty=bool(status.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        return None
