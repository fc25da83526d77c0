"""The small interface every generation backend implements.

The runner turns the sweep into work units (prompt, setting, sample index, seed) and
hands them to a backend, which decides how to batch them and yields one
:class:`Generation` per unit as soon as it is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from evalkit.prompts import Prompt
from evalkit.sampling import Setting


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt as the model sees it: rendered text and its token ids."""

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
    setting: Setting
    sample_index: int
    seed: int


@dataclass(frozen=True)
class Generation:
    unit: WorkUnit
    token_ids: tuple[int, ...]  # new tokens, without the end-of-sequence token
    text: str  # decoded without special tokens, cut before a stop string
    finish_reason: str  # "eos" | "stop" | "length"
    stats: dict[str, list] = field(default_factory=dict)  # per-token statistics, aligned with token_ids


@dataclass
class ModelInfo:
    """What was actually loaded, for the manifest."""

    backend: str
    id: str  # as the user named it
    source: str  # "embedded" | "gguf" | "local" | "hub"
    path: str | None  # where the weights were read from
    revision: str | None  # hub commit, when known
    sha256: str | None  # GGUF file hash, or a hash over the checkpoint's weight files
    dtype: str
    device: str
    context_length: int | None
    eos_token_ids: list[int]
    has_chat_template: bool
    rng: str  # how random streams map to samples in this backend
    converted_now: bool = False  # a GGUF was de-quantized during this load
    load_seconds: float = 0.0
    ignored_generation_defaults: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[int, int], None]  # (samples finished so far, current decode step)


class TextBackend(Protocol):
    info: ModelInfo

    def prepare(self, prompts: list[Prompt], *, chat_template: bool | str, system_prompt: str | None,
                max_new_tokens: int) -> list[PreparedPrompt]:
        """Render and tokenize prompts; refuse any that does not fit the context with max_new_tokens."""
        ...

    def generation_params(self, setting: Setting, max_new_tokens: int) -> dict[str, Any]:
        """The decoding parameters actually used for ``setting`` (recorded in the manifest)."""
        ...

    def batch_size(self, requested: int | str, prompts: list[PreparedPrompt], max_new_tokens: int) -> int:
        """Rows per decode step: the requested number, or one chosen from a memory budget ("auto")."""
        ...

    def generate(self, units: list[WorkUnit], *, max_new_tokens: int, batch_size: int,
                 stop: tuple[str, ...] = (), progress: ProgressFn | None = None) -> Iterator[Generation]:
        """Produce every unit; yields each as soon as it is finished."""
        ...
