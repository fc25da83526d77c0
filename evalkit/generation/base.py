"""The one interface every generator implements, and the records that cross it.

The pipeline turns a sweep into work units (prompt, setting, sample index, seed) and hands
them to a :class:`Generator`, which decides how to batch them and yields one
:class:`SampleRecord` per unit as soon as it is done. A unit's output depends on the unit
alone (its random stream derives from its seed), never on the other units of its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from evalkit.prompts import Prompt
from evalkit.settings import ImageSetting, Setting

# Per generated token (lists aligned with token_ids): log-probability of the chosen token under
# the model (temperature 1, unfiltered) and under the sampling distribution, the entropy (nats)
# of both distributions, and how many tokens the filters kept. A served model gives only what its
# logprobs hold: logprob_model, and entropy_model_top, -sum p log p over the top-N tokens it returned
# (a lower bound of entropy_model; N is the run's ``logprobs``).
ENGINE_STAT_COLUMNS = ["logprob_model", "logprob_sampling", "entropy_model", "entropy_sampling", "n_kept"]
STAT_COLUMNS = [*ENGINE_STAT_COLUMNS, "entropy_model_top"]


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt as the model sees it: rendered text and its token ids (none for an image pipeline)."""

    prompt: Prompt
    rendered: str
    token_ids: tuple[int, ...]
    chat_template: bool  # whether the model's chat template was applied
    # other inputs of the model's prefill, batch of one (pixel values, image grid sizes): vision-language models
    model_inputs: dict[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class WorkUnit:
    """One sample to produce: its random stream is derived from ``seed`` alone."""

    prompt: PreparedPrompt
    setting: Setting | ImageSetting
    sample_index: int
    seed: int

    @property
    def key(self) -> tuple[str, str, int]:
        return self.prompt.prompt.id, self.setting.id, self.sample_index


@dataclass(frozen=True)
class SampleRecord:
    """One output of a generator: text (with its tokens and per-token statistics) or an image."""

    unit: WorkUnit
    token_ids: tuple[int, ...] = ()  # new tokens, without the end-of-sequence token
    text: str = ""  # decoded without special tokens, cut before a stop string
    finish_reason: str | None = None  # "eos" | "stop" | "length" (text)
    stats: dict[str, list] = field(default_factory=dict)  # per-token statistics, aligned with token_ids
    image: Any = None  # a PIL image (text-to-image)
    num_tokens: int | None = None  # new tokens, when token_ids are not known (a served model's usage count)


class ModelInfo(BaseModel):
    """What was actually loaded, as the manifest records it. Read by attribute, or by key like the JSON."""

    model_config = ConfigDict(extra="allow")

    backend: str = "hf"  # hf | vlm | diffusers | openai | vllm | external (texts scored by `evalkit score`)
    id: str  # as the user named it
    source: str | None = None  # "embedded" | "gguf" | "local" | "hub"; a scored run: the file
    path: str | None = None  # where the weights were read from
    revision: str | None = None  # hub commit, when known
    sha256: str | None = None  # GGUF file hash, or a hash over the checkpoint's weight files
    dtype: str | None = None
    device: str | None = None
    context_length: int | None = None
    eos_token_ids: list[int] = []
    has_chat_template: bool = False
    rng: str | None = None  # how random streams map to samples in this backend
    threads: int | None = None  # torch's CPU threads (on a CPU, the float sums of a matrix product split by them)
    converted_now: bool = False  # a GGUF was de-quantized during this load
    load_seconds: float = 0.0
    ignored_generation_defaults: dict[str, Any] = {}
    # a served model (backend openai): the server's answers (GET /models entry, the capability check, what
    # is sent with every request, system fingerprint), and one id over base_url, model, fingerprint and knobs
    server: dict[str, Any] = {}
    endpoint_id: str | None = None
    # another engine than evalkit's samples in this process (backend vllm): its name and version, e.g. "vllm 0.32.0";
    # its random streams are its own, so its samples are not token for token those of evalkit's engine
    engine: str | None = None
    engine_info: dict[str, Any] = {}  # what that engine was started with (its arguments, scheduler limits)

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        value = getattr(self, name, None)
        return default if value is None else value

    @property
    def engine_name(self) -> str:
        """Which engine sampled: evalkit's own, another in this process (vLLM), a server's, or none (scored)."""
        if self.engine:
            return self.engine
        return {"openai": "server", "external": "none"}.get(self.backend, "evalkit")

    @property
    def weights_id(self) -> str | None:
        """What identifies the weights (hash, else hub revision, else the served endpoint); None when nothing does."""
        return self.sha256 or self.revision or self.endpoint_id


ProgressFn = Callable[[int, "int | str"], None]  # (samples finished so far, current decode step or a status)


class Generator(Protocol):
    """A backend: evalkit's engine on a transformers model, a diffusers pipeline, ... (see the registry)."""

    info: ModelInfo

    def prepare(self, prompts: list[Prompt], *, chat_template: bool | str, system_prompt: str | None,
                max_new_tokens: int) -> list[PreparedPrompt]:
        """Render and tokenize prompts; refuse any that the model cannot take."""
        ...

    def check(self, settings: list, prompts: list[PreparedPrompt], *, logprobs: int = 0, max_new_tokens: int = 0,
              status: Callable[[str], None] = lambda msg: None) -> None:
        """Refuse, before any sample, what the backend cannot do for this grid (a served model: knobs the
        server rejects or ignores; logprobs it does not give). ``logprobs``: top log-probabilities per
        token that the metrics need (1: the chosen token's only; 0: none). Local backends check nothing."""
        ...

    def generation_params(self, setting: Any, max_new_tokens: int) -> dict[str, Any]:
        """The parameters actually used for ``setting`` (recorded in the manifest)."""
        ...

    def batch_size(self, requested: int | str, prompts: list[PreparedPrompt], max_new_tokens: int) -> int:
        """Rows per step: the requested number, or one chosen from a memory budget ("auto")."""
        ...

    def generate(self, units: list[WorkUnit], *, max_new_tokens: int, batch_size: int,
                 stop: tuple[str, ...] = (), progress: ProgressFn | None = None) -> Iterator[SampleRecord]:
        """Produce every unit; yields each as soon as it is finished."""
        ...
