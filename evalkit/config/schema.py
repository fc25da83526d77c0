"""The sweep config's schema: pydantic models only (loading is :mod:`evalkit.config.loading`).

Paths inside a config (``prompts.file``, a local ``model.id``, ``model.gguf_file``)
are relative to the config file's directory; ``output_dir`` is relative to the
working directory. Every error names the file, the field path and the bad value.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import math
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evalkit.errors import shown
from evalkit.settings import SCHEDULERS, ImageSetting, MinP, Setting, Temperature, TopK, TopP

DEFAULT_METRICS = ("distinct_1", "distinct_2", "mean_length")
# what a sweep makes, by model.backend: the run kind's name (see evalkit.kinds)
KIND_OF_BACKEND = {"hf": "text", "vlm": "image-to-text", "diffusers": "text-to-image", "openai": "text", "vllm": "text"}
# fields that only a model loaded into evalkit's process has (not a served one)
LOCAL_MODEL_FIELDS = ("gguf_file", "revision", "sha256", "dtype", "device")
SERVED_MODEL_FIELDS = ("base_url", "api", "api_key_env", "concurrency", "timeout_s", "max_retries", "backoff_s")
VLLM_MODEL_FIELDS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "engine_args")
# vLLM engine arguments that evalkit sets from the config itself (the field to use instead, or why)
VLLM_OWN_ARGS = {"model": "model.id", "tokenizer": "model.id", "revision": "model.revision",
                 "tokenizer_revision": "model.revision", "dtype": "model.dtype",
                 "tensor_parallel_size": "model.tensor_parallel_size",
                 "gpu_memory_utilization": "model.gpu_memory_utilization", "max_model_len": "model.max_model_len",
                 "seed": "the run's seed", "max_logprobs": "the metrics (evalkit asks for what they need)",
                 "logprobs_mode": "evalkit (logprob_model is the raw model distribution)",
                 "generation_config": "evalkit (every sampling knob is sent explicitly)"}


SEED_MAX = 2**63 - 1  # a signed 64-bit integer: the run index stores it
BATCH_MAX = 65_536
SETTINGS_MAX = 100_000  # settings in one grid (the product of its lists)


def wants_number(annotation: Any) -> bool:
    """Whether a field's type is a number (or a list of them), and not also true/false."""
    if annotation in (int, float):
        return True
    if annotation is bool:
        return False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return wants_number(args[0])
    return any(wants_number(a) for a in args) and bool not in args


def refuse_bools_as_numbers(model: type[BaseModel], data: Any) -> None:
    """Raise (in a pydantic validator) where true/false stands for a number in ``data``."""
    name = bools_as_numbers(model, data)
    if name is not None:
        raise ValueError(f"{name}: a number is needed, not true/false, got {shown(data[name])}")


def bools_as_numbers(model: type[BaseModel], data: Any) -> str | None:
    """The first field of ``data`` where true/false stands for a number (pydantic would read it as 1/0)."""
    if not isinstance(data, dict):
        return None
    numeric = _numeric_fields(model)
    for name, value in data.items():
        values = value if isinstance(value, list) else [value]
        if name in numeric and any(isinstance(v, bool) for v in values):
            return name
    return None


@functools.cache
def _numeric_fields(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(name for name, f in model.model_fields.items() if wants_number(f.annotation))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # every number finite

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data: Any) -> Any:
        refuse_bools_as_numbers(cls, data)
        for name, value in data.items() if isinstance(data, dict) else ():
            for text in (value if isinstance(value, list) else [value])[:10_000]:
                if isinstance(text, str) and not _encodable(text):
                    raise ValueError(f"{name}: not valid Unicode text (a lone surrogate, as from an escape such as "
                                     f"\\ud800), got {shown(text)}")
        return data


class ModelConfig(_Strict):
    """Which model generates, and where it runs."""

    # hf: transformers causal LM; vlm: transformers image-text-to-text model (captions, visual questions);
    # diffusers: a diffusers text-to-image pipeline; openai: a model behind an OpenAI-compatible server
    # vllm: a transformers causal LM run by vLLM's engine in this process (its sampler, paged attention)
    backend: Literal["hf", "vlm", "diffusers", "openai", "vllm"] = "hf"
    # "default" (embedded SmolLM2-135M-Instruct), a hub id, a local directory or a .gguf file;
    # openai: the served model's name, as the server's GET /models lists it
    id: str = Field("default", min_length=1)
    gguf_file: str | None = Field(None, min_length=1)  # GGUF file name inside the directory or hub repo named by `id`
    revision: str | None = Field(None, min_length=1)  # hub revision (branch, tag or commit)
    sha256: str | None = None  # expected sha256 of the GGUF file (for a directory: of its weight files,
    # as the manifest records it); a mismatch is refused
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when there is a GPU, else CPU
    # backend openai (any OpenAI-compatible server: llama.cpp, vLLM, SGLang, TGI, hosted APIs)
    base_url: str | None = None  # the API root, e.g. http://127.0.0.1:8080/v1
    api: Literal["completions", "chat"] = "completions"  # chat: messages; the server applies its chat template
    api_key_env: str | None = None  # the NAME of the environment variable that holds the API key
    concurrency: int = Field(8, ge=1, le=1024)  # requests in flight
    timeout_s: float = Field(120.0, gt=0, le=86_400)  # per request
    max_retries: int = Field(6, ge=0, le=100)  # on 429, 5xx, dropped connections, timeouts and garbled replies
    backoff_s: float = Field(1.0, ge=0, le=3600)  # the first retry's wait; doubles with each retry (Retry-After wins)
    # backend vllm
    tensor_parallel_size: int = Field(1, ge=1, le=1024)  # GPUs one model is split over
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)  # share of each GPU's memory vLLM may take
    max_model_len: int | None = Field(None, ge=1, le=1 << 24)  # context vLLM plans its KV cache for; none: the model's
    engine_args: dict[str, Any] = Field(default_factory=dict)  # more vllm.EngineArgs (enforce_eager, max_num_seqs, ...)


    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        if "@" in v:  # user:password@host, whatever the password holds (#, ?, /): never parsed, never echoed
            raise ValueError("base_url must not hold credentials (user:password@): name an environment variable "
                             f"in api_key_env instead, got {shown(_without_credentials(v))}")
        parts = urlsplit(v)
        try:
            parts.port  # noqa: B018 (a port that is not a number, or out of range, raises here)
        except ValueError:
            raise ValueError(f"base_url has a port that is not a number from 0 to 65535, got "
                             f"{shown(_without_credentials(v))}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in v):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {shown(_without_credentials(v))}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("base_url must not hold credentials (user:password@): name an environment variable "
                             f"in api_key_env instead, got {shown(_without_credentials(v))}")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must not have a query or fragment, got {shown(_without_credentials(v))}")
        return v.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            # never echo the value: it may be the key itself
            raise ValueError("api_key_env names an environment variable (letters, digits, _), not the key itself")
        return v

    @model_validator(mode="after")
    def _served_or_local(self) -> ModelConfig:
        if self.backend == "openai":
            if self.base_url is None:
                raise ValueError("base_url: an openai model needs the server's API root "
                                 "(e.g. http://127.0.0.1:8080/v1), got none")
            if self.id == "default":
                raise ValueError("id: an openai model names the served model (GET /models lists them), "
                                 "got 'default'")
            local = [f for f in LOCAL_MODEL_FIELDS if _changed(self, f)]
            if local:
                raise ValueError(f"{local[0]}: a served model (backend openai) is loaded by its server, not by "
                                 f"evalkit; remove {local[0]}, got {shown(getattr(self, local[0]))}")
        else:
            served = [f for f in SERVED_MODEL_FIELDS if _changed(self, f)]
            if served:
                raise ValueError(f"{served[0]}: only a served model (backend openai) has {served[0]}; "
                                 f"this one is backend {shown(self.backend)}, got {served[0]} set")
        if self.backend != "vllm":
            engine = [f for f in VLLM_MODEL_FIELDS if _changed(self, f)]
            if engine:
                raise ValueError(f"{engine[0]}: only a vLLM model (backend vllm) has {engine[0]}; "
                                 f"this one is backend {shown(self.backend)}, got {engine[0]} set")
        for name in self.engine_args:
            if name in VLLM_OWN_ARGS:
                raise ValueError(f"engine_args: {name} is set by {VLLM_OWN_ARGS[name]}, not through engine_args, "
                                 f"got {name} set")
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                raise ValueError(f"engine_args: names vllm.EngineArgs fields (lower_case_names), got {shown(name)}")
        return self

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError(f"sha256 must be 64 hexadecimal characters, got {shown(v)}")
        return v.lower() if v else v


def _changed(model: BaseModel, name: str) -> bool:
    """Whether a field was given a value other than its default (a resolved config lists every field)."""
    default = type(model).model_fields[name].get_default(call_default_factory=True)
    return name in model.model_fields_set and getattr(model, name) != default


def _without_credentials(url: str) -> str:
    """``url`` for error messages: everything up to its last @ masked (a password may hold any character),
    no query or fragment."""
    if "@" in url:
        head, _, rest = url.partition("//")
        url = f"{head}//***@{url.rsplit('@', 1)[1]}" if rest else "***@" + url.rsplit("@", 1)[1]
    return url.split("?", 1)[0].split("#", 1)[0]


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
    chat_template: bool | Literal["auto"] = "auto"  # auto: apply the model's chat template when it has one
    system_prompt: str | None = None  # prepended as a system message (or as text when no template is used)
    question: str | None = None  # vlm sweeps: the text asked of every image prompt that has none of its own

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"items": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _one_of(self) -> PromptsConfig:
        if (self.items is None) == (self.file is None):
            raise ValueError("give prompts either inline (a list) or as 'file', not both or neither")
        if self.items is not None and not self.items:
            raise ValueError("the prompt list is empty")
        if self.format != "evalkit" and self.file is None:
            raise ValueError(f"format {self.format} reads a prompt file: give 'file'")
        return self


class GridConfig(_Strict):
    """Lists whose cartesian product is the grid, and/or an explicit list of settings."""

    temperature: list[Temperature] | None = None  # default [1.0] when only lists are given
    top_p: list[TopP] | None = None  # default [1.0]
    top_k: list[TopK] | None = None  # default [0]
    min_p: list[MinP] | None = None  # default [0.0]
    settings: list[Setting] | None = Field(None, max_length=SETTINGS_MAX)  # explicit points, after the product
    # text-to-image axes (backend diffusers); eta applies to ddim only and is 0 for other schedulers
    guidance_scale: list[Annotated[float, Field(ge=0, le=100)]] | None = None  # default [7.5]
    num_inference_steps: list[Annotated[int, Field(ge=1, le=1000)]] | None = None  # default [30]
    scheduler: list[str] | None = None  # default ["ddim"]; ddim, euler, euler_a, dpmpp_2m, pndm, lms
    eta: list[Annotated[float, Field(ge=0, le=1)]] | None = None  # default [0.0]

    TEXT_AXES: typing.ClassVar = ("temperature", "top_p", "top_k", "min_p", "settings")
    IMAGE_AXES: typing.ClassVar = ("guidance_scale", "num_inference_steps", "scheduler", "eta")

    @field_validator("temperature", "top_p", "top_k", "min_p", "settings", "guidance_scale", "num_inference_steps",
                     "scheduler", "eta")
    @classmethod
    def _non_empty(cls, v: list | None) -> list | None:
        if v is not None and not v:
            raise ValueError("list is empty")
        return v

    @model_validator(mode="after")
    def _not_too_many(self) -> GridConfig:
        """Refused before the lists are multiplied out, not by running out of memory."""
        for axes in ((self.temperature, self.top_p, self.top_k, self.min_p),
                     (self.guidance_scale, self.num_inference_steps, self.scheduler, self.eta)):
            size = math.prod(len(a) for a in axes if a) + (len(self.settings or []) if axes[0] is self.temperature
                                                            else 0)
            if size > SETTINGS_MAX:
                raise ValueError(f"the lists make {size} settings, more than {SETTINGS_MAX}: sweep fewer values")
        return self

    def expand(self) -> list[Setting]:
        """The grid's settings in a stable order, duplicates removed."""
        axes = (self.temperature, self.top_p, self.top_k, self.min_p)
        out: list[Setting] = []
        if any(a is not None for a in axes) or self.settings is None:
            t, p, k, m = (a if a is not None else [d] for a, d in zip(axes, (1.0, 1.0, 0, 0.0)))
            out += [Setting(temperature=a, top_p=b, top_k=c, min_p=d) for a, b, c, d in itertools.product(t, p, k, m)]
        out += self.settings or []
        return list(dict.fromkeys(out))

    def expand_images(self) -> list[ImageSetting]:
        """The text-to-image grid in a stable order; eta only varies for ddim."""
        for name in self.scheduler or []:
            if name not in SCHEDULERS:
                hint = difflib.get_close_matches(name, list(SCHEDULERS), n=1)
                raise ValueError(f"grid.scheduler: unknown scheduler, got {shown(name)}" + (
                    f" (did you mean {shown(hint[0])}?)" if hint else f" (known: {', '.join(SCHEDULERS)})"))
        out = [ImageSetting(guidance_scale=g, num_inference_steps=n, scheduler=sch, eta=e if sch == "ddim" else 0.0)
               for g, n, sch, e in itertools.product(self.guidance_scale or [7.5], self.num_inference_steps or [30],
                                                      self.scheduler or ["ddim"], self.eta or [0.0])]
        return list(dict.fromkeys(out))


class ImageOptions(_Strict):
    """Text-to-image output: size, negative prompt, and images per pipeline call."""

    width: int = Field(512, ge=8, le=8192, multiple_of=8)
    height: int = Field(512, ge=8, le=8192, multiple_of=8)
    negative_prompt: str | None = None
    batch_size: int = Field(4, ge=1, le=1024)


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


class ExecutorConfig(_Strict):
    """Where generation runs: in this process (local), or on Ray actors that each load the model once."""

    kind: Literal["local", "ray"] = "local"
    # ray: "auto", "ray://host:10001" or host:port; none: a local Ray instance
    address: str | None = Field(None, min_length=1)
    workers: int = Field(1, ge=1, le=4096)  # ray: actors, each with its own copy of the model
    gpus_per_worker: float = Field(0.0, ge=0, le=1024)  # ray: 0 on CPU
    cpus_per_worker: float = Field(1.0, gt=0, le=4096)  # ray
    max_retries: int = Field(2, ge=0, le=100)  # ray: times a shard is given to another actor after one died

    @model_validator(mode="after")
    def _local_has_no_cluster(self) -> ExecutorConfig:
        if self.kind == "local":
            for name in ("address", "workers", "gpus_per_worker", "cpus_per_worker", "max_retries"):
                if _changed(self, name):
                    raise ValueError(f"{name}: only a ray executor has {name}; this one is local, got {name} set")
        return self


class SweepConfig(_Strict):
    """The whole sweep: a model, prompts, a grid of settings, samples and metrics."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=80)
    model: ModelConfig = Field(default_factory=ModelConfig)
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

    @model_validator(mode="before")
    @classmethod
    def _model_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            data = {**data, "model": {"id": data["model"]}}
        return data

    @model_validator(mode="after")
    def _axes_match_backend(self) -> SweepConfig:
        if self.model.backend not in ("hf", "vllm") and self.model.id == "default":
            what = "a vision-language model" if self.model.backend == "vlm" else "a diffusers pipeline"
            raise ValueError(f"model.id: a {self.model.backend} sweep needs {what} (a local directory or hub id); "
                             "'default' is the embedded text model, got 'default'")
        if self.model.backend == "openai" and self.batch_size != "auto":
            raise ValueError(f"batch_size: a served model's server batches requests itself; set model.concurrency "
                             f"(requests in flight) instead, got {shown(self.batch_size)}")
        if (self.model.backend == "vllm" and self.executor.kind == "ray"
                and 0 < self.executor.gpus_per_worker < self.model.tensor_parallel_size):
            raise ValueError(f"executor.gpus_per_worker: each Ray worker runs one vLLM engine over "
                             f"model.tensor_parallel_size={self.model.tensor_parallel_size} GPUs, so it needs as "
                             f"many, got {shown(self.executor.gpus_per_worker)}")
        if self.model.backend == "vllm" and self.batch_size != "auto":
            raise ValueError(f"batch_size: vLLM schedules its own batches; set model.engine_args.max_num_seqs "
                             f"(sequences per step) instead, got {shown(self.batch_size)}")
        if self.model.backend != "vlm" and self.prompts.question is not None:
            raise ValueError(f"prompts.question: only a vlm sweep asks a question of its images, got "
                             f"{shown(self.prompts.question)} for backend {shown(self.model.backend)}")
        if self.model.backend == "vlm" and (self.model.gguf_file or self.model.id.endswith(".gguf")):
            raise ValueError(f"model.id: a vlm sweep reads a transformers model directory or hub id, not GGUF, "
                             f"got {shown(self.model.gguf_file or self.model.id)}")
        images = self.model.backend == "diffusers"
        wrong = GridConfig.TEXT_AXES if images else GridConfig.IMAGE_AXES
        for axis in wrong:
            if getattr(self.grid, axis) is not None:
                kind = {"diffusers": "a diffusers (text-to-image)", "vlm": "an image-to-text"}.get(
                    self.model.backend, "a text")
                axes = ", ".join(GridConfig.IMAGE_AXES if images else GridConfig.TEXT_AXES[:4])
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
        return KIND_OF_BACKEND[self.model.backend]

    def settings(self) -> list[Setting] | list[ImageSetting]:
        return self.grid.expand_images() if self.model.backend == "diffusers" else self.grid.expand()

    def resolve_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)
