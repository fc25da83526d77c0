"""The run manifest: what ran, on what, with which versions, when. Written as manifest.json."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel, Field

import evalkit

PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "pandas", "pyarrow", "pydantic")


class GitInfo(BaseModel):
    commit: str
    dirty: bool


class SettingRecord(BaseModel):
    id: str
    params: dict[str, float | int | str]  # as requested
    generation: dict[str, Any]  # the decoding parameters actually passed to the backend


class Manifest(BaseModel):
    """Everything needed to know what a run was. ``schema_version`` changes when fields change meaning."""

    schema_version: int = 2
    kind: Literal["sweep", "scored"] = "sweep"  # scored: texts generated elsewhere, scored by `evalkit score`
    run_id: str
    name: str
    status: Literal["running", "complete", "failed", "interrupted"] = "running"
    error: str | None = None
    started_at: str
    ended_at: str | None = None
    evalkit_version: str = evalkit.__version__
    python: str = Field(default_factory=lambda: platform.python_version())
    platform: str = Field(default_factory=platform.platform)
    packages: dict[str, str | None] = Field(default_factory=lambda: package_versions())
    command: list[str] = Field(default_factory=lambda: list(sys.argv))
    git: GitInfo | None = None
    config_source: str
    config_as_given: dict[str, Any]  # the YAML as read, before overrides
    overrides: list[str] = Field(default_factory=list)
    model: dict[str, Any]  # ModelInfo: id, source, sha256 / revision, dtype, device, ...
    device: str
    seed: int
    sampling_order: list[str]  # order in which the sampling transforms apply
    settings: list[SettingRecord]
    n_prompts: int
    batch_size: int  # rows per decode step, as resolved
    stop: list[str] = Field(default_factory=list)
    n_samples: int = 0
    metrics: list[str]
    metric_info: dict[str, dict[str, Any]] = Field(default_factory=dict)  # id -> kind, direction, definition
    ci: dict[str, Any]
    timings: dict[str, float] = Field(default_factory=dict)
    samples_reused: dict[str, int] = Field(default_factory=dict)  # from_parts (resume), from_cache, generated


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
