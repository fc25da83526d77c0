"""The config's ``model`` section (which model generates: its backend and that backend's fields, checked
against one another) and its ``executor`` section (where generation runs)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from evalkit.config.base import _changed, _Strict
from evalkit.errors import shown

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
