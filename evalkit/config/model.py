"""The config's ``model`` section (which model generates: one section class per backend, chosen by
``model.backend``, each with its own fields and checks) and its ``executor`` section (where generation runs)."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from evalkit.config.base import _changed, _Strict
from evalkit.errors import shown

# vLLM engine arguments that evalkit sets from the config itself (the field to use instead, or why)
VLLM_OWN_ARGS = {"model": "model.id", "tokenizer": "model.id", "revision": "model.revision",
                 "tokenizer_revision": "model.revision", "dtype": "model.dtype",
                 "tensor_parallel_size": "model.tensor_parallel_size",
                 "gpu_memory_utilization": "model.gpu_memory_utilization", "max_model_len": "model.max_model_len",
                 "seed": "the run's seed", "max_logprobs": "the metrics (evalkit asks for what they need)",
                 "logprobs_mode": "evalkit (logprob_model is the raw model distribution)",
                 "generation_config": "evalkit (every sampling knob is sent explicitly)"}


class _Model(_Strict):
    """What every backend's model section has: the backend's name and the model's id. Each backend's section is
    its own class (a member of :data:`ModelConfig`, chosen by ``backend``); it refuses the others' fields, naming
    the backend that has them."""

    BACKEND: ClassVar[str]  # the name in model.backend
    KIND: ClassVar[str]  # the run kind it makes (see evalkit.kinds): text, image-to-text, text-to-image
    WHAT: ClassVar[str]  # how messages name such a model: "a served model (backend openai)"
    LOADED_BY: ClassVar[str] = "evalkit"  # who loads the weights

    backend: str
    # "default" (embedded SmolLM2-135M-Instruct), a hub id, a local directory or a .gguf file;
    # openai: the served model's name, as the server's GET /models lists it
    id: str = Field("default", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _others_fields(cls, data: Any) -> Any:
        """A field of another backend, given a value other than its default, is named with the backend that has it
        (a resolved config of an older evalkit lists every field, at its default)."""
        if not isinstance(data, dict):
            return data
        kept = {}
        for name, value in data.items():
            owners = [m for m in MODELS if name in m.model_fields] if name not in cls.model_fields else []
            if not owners:
                kept[name] = value
            elif any(value != m.model_fields[name].get_default(call_default_factory=True) for m in owners):
                raise ValueError(cls._foreign(name, value, owners))
        return kept

    @classmethod
    def _foreign(cls, name: str, value: Any, owners: list[type[_Model]]) -> str:
        if len(owners) == 1:
            return f"{name}: only {owners[0].WHAT} has {name}; this one is backend {shown(cls.BACKEND)}, got {name} set"
        return f"{name}: {cls.WHAT} is loaded by {cls.LOADED_BY}, not by evalkit; remove {name}, got {shown(value)}"

    def check_sweep(self, sweep: Any) -> None:
        """Refuse (ValueError, naming the field) what this backend cannot do with the rest of the sweep."""
        if sweep.prompts.question is not None:
            raise ValueError(f"prompts.question: only a vlm sweep asks a question of its images, got "
                             f"{shown(sweep.prompts.question)} for backend {shown(self.BACKEND)}")


class _LocalModel(_Model):
    """A model whose weights evalkit reads (a local directory, a hub id, a GGUF file)."""

    gguf_file: str | None = Field(None, min_length=1)  # GGUF file name inside the directory or hub repo named by `id`
    revision: str | None = Field(None, min_length=1)  # hub revision (branch, tag or commit)
    sha256: str | None = None  # expected sha256 of the GGUF file (for a directory: of its weight files,
    # as the manifest records it); a mismatch is refused
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when there is a GPU, else CPU

    PIPELINE: ClassVar[bool] = False  # a diffusers pipeline directory (model_index.json, one folder per part)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError(f"sha256 must be 64 hexadecimal characters, got {shown(v)}")
        return v.lower() if v else v


class _NamedModel(_LocalModel):
    """A model that has no embedded default: the id names it."""

    NEEDS: ClassVar[str] = ""  # what the id must name

    @model_validator(mode="after")
    def _named(self) -> _NamedModel:
        if self.id == "default":
            raise ValueError(f"id: a {self.BACKEND} sweep needs {self.NEEDS} (a local directory or hub id); "
                             "'default' is the embedded text model, got 'default'")
        return self


class HFModel(_LocalModel):
    """A transformers causal LM, decoded by evalkit's engine."""

    BACKEND: ClassVar[str] = "hf"
    KIND: ClassVar[str] = "text"
    WHAT: ClassVar[str] = "a transformers model (backend hf)"
    backend: Literal["hf"] = "hf"


class VLMModel(_NamedModel):
    """A transformers image-text-to-text model (captions, visual questions), decoded by evalkit's engine."""

    BACKEND: ClassVar[str] = "vlm"
    KIND: ClassVar[str] = "image-to-text"
    WHAT: ClassVar[str] = "a vision-language model (backend vlm)"
    NEEDS: ClassVar[str] = "a vision-language model"
    backend: Literal["vlm"]

    @model_validator(mode="after")
    def _not_gguf(self) -> VLMModel:
        if self.gguf_file or self.id.endswith(".gguf"):
            raise ValueError(f"id: a vlm sweep reads a transformers model directory or hub id, not GGUF, "
                             f"got {shown(self.gguf_file or self.id)}")
        return self

    def check_sweep(self, sweep: Any) -> None:
        """A vision-language sweep may ask one question of every image."""


class DiffusersModel(_NamedModel):
    """A diffusers text-to-image pipeline."""

    BACKEND: ClassVar[str] = "diffusers"
    KIND: ClassVar[str] = "text-to-image"
    WHAT: ClassVar[str] = "a diffusers pipeline (backend diffusers)"
    NEEDS: ClassVar[str] = "a diffusers pipeline"
    PIPELINE: ClassVar[bool] = True
    backend: Literal["diffusers"]


class VLLMModel(_LocalModel):
    """A transformers causal LM run by vLLM's engine in this process (its sampler, paged attention)."""

    BACKEND: ClassVar[str] = "vllm"
    KIND: ClassVar[str] = "text"
    WHAT: ClassVar[str] = "a vLLM model (backend vllm)"
    backend: Literal["vllm"]
    tensor_parallel_size: int = Field(1, ge=1, le=1024)  # GPUs one model is split over
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)  # share of each GPU's memory vLLM may take
    max_model_len: int | None = Field(None, ge=1, le=1 << 24)  # context vLLM plans its KV cache for; none: the model's
    engine_args: dict[str, Any] = Field(default_factory=dict)  # more vllm.EngineArgs (enforce_eager, max_num_seqs, ...)

    @field_validator("engine_args")
    @classmethod
    def _engine_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if name in VLLM_OWN_ARGS:
                raise ValueError(f"{name} is set by {VLLM_OWN_ARGS[name]}, not through engine_args, got {name} set")
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                raise ValueError(f"names vllm.EngineArgs fields (lower_case_names), got {shown(name)}")
        return v

    def check_sweep(self, sweep: Any) -> None:
        super().check_sweep(sweep)
        ex = sweep.executor
        if ex.kind == "ray" and 0 < ex.gpus_per_worker < self.tensor_parallel_size:
            raise ValueError(f"executor.gpus_per_worker: each Ray worker runs one vLLM engine over "
                             f"model.tensor_parallel_size={self.tensor_parallel_size} GPUs, so it needs as "
                             f"many, got {shown(ex.gpus_per_worker)}")
        if sweep.batch_size != "auto":
            raise ValueError(f"batch_size: vLLM schedules its own batches; set model.engine_args.max_num_seqs "
                             f"(sequences per step) instead, got {shown(sweep.batch_size)}")


class OpenAIModel(_Model):
    """A model behind an OpenAI-compatible server (llama.cpp, vLLM, SGLang, TGI, hosted APIs)."""

    BACKEND: ClassVar[str] = "openai"
    KIND: ClassVar[str] = "text"
    WHAT: ClassVar[str] = "a served model (backend openai)"
    LOADED_BY: ClassVar[str] = "its server"
    backend: Literal["openai"]
    base_url: str | None = None  # the API root, e.g. http://127.0.0.1:8080/v1
    api: Literal["completions", "chat"] = "completions"  # chat: messages; the server applies its chat template
    api_key_env: str | None = None  # the NAME of the environment variable that holds the API key
    concurrency: int = Field(8, ge=1, le=1024)  # requests in flight
    timeout_s: float = Field(120.0, gt=0, le=86_400)  # per request
    max_retries: int = Field(6, ge=0, le=100)  # on 429, 5xx, dropped connections, timeouts and garbled replies
    backoff_s: float = Field(1.0, ge=0, le=3600)  # the first retry's wait; doubles with each retry (Retry-After wins)

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
    def _served(self) -> OpenAIModel:
        if self.base_url is None:
            raise ValueError("base_url: an openai model needs the server's API root "
                             "(e.g. http://127.0.0.1:8080/v1), got none")
        if self.id == "default":
            raise ValueError("id: an openai model names the served model (GET /models lists them), "
                             "got 'default'")
        return self

    def check_sweep(self, sweep: Any) -> None:
        super().check_sweep(sweep)
        if sweep.batch_size != "auto":
            raise ValueError(f"batch_size: a served model's server batches requests itself; set model.concurrency "
                             f"(requests in flight) instead, got {shown(sweep.batch_size)}")


MODELS: tuple[type[_Model], ...] = (HFModel, VLMModel, DiffusersModel, OpenAIModel, VLLMModel)
BACKEND_NAMES = tuple(m.BACKEND for m in MODELS)


def _backend_of(data: Any) -> str | None:
    """The union's tag: model.backend (hf when not given); None (refused, naming the backends) when unknown."""
    name = data.get("backend", "hf") if isinstance(data, dict) else getattr(data, "backend", None)
    return name if name in BACKEND_NAMES else None


# Which model generates, and where it runs: one section class per backend, chosen by ``backend`` (default hf).
ModelConfig = Annotated[
    Union[tuple(Annotated[m, Tag(m.BACKEND)] for m in MODELS)],  # noqa: UP007 (a union built from a tuple)
    Discriminator(_backend_of, custom_error_type="backend",
                  custom_error_message="backend must be one of " + ", ".join(BACKEND_NAMES)),
]


def _without_credentials(url: str) -> str:
    """``url`` for error messages: everything up to its last @ masked (a password may hold any character),
    no query or fragment."""
    if "@" in url:
        head, _, rest = url.partition("//")
        url = f"{head}//***@{url.rsplit('@', 1)[1]}" if rest else "***@" + url.rsplit("@", 1)[1]
    return url.split("?", 1)[0].split("#", 1)[0]


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
