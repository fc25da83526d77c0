"""What every backend decoded by evalkit's engine shares: its end-of-sequence and padding tokens,
the model generation defaults it ignores, the batch size chosen from a memory budget, and
generation through :class:`evalkit.generation.engine.Engine`.

Subclasses (the text and the vision-language backends) load ``self.model`` and ``self.tokenizer``,
call :meth:`_special_tokens`, and fill ``self.info``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from evalkit.generation.base import ModelInfo, PreparedPrompt, ProgressFn, SampleRecord, WorkUnit
from evalkit.errors import ConfigError
from evalkit.settings import ORDERS, Setting, chain_labels

def _engine_knobs() -> set[str]:
    from evalkit.settings import QUALIFIES, STAGE_KNOBS

    stages = {k for k in STAGE_KNOBS if _has_transform(k)}
    return ({k for k in Setting.model_fields if k not in STAGE_KNOBS and k not in QUALIFIES} | stages
            | {k for k, on in QUALIFIES.items() if any(q in stages for q in on)})


def _has_transform(knob: str) -> bool:
    # the registry of transforms imports torch; which stages it has is read from its modules' tables cheaply
    # enough, but a spec must load without torch: the stages without one are listed here, and tests/test_backends.py
    # checks this list against evalkit.generation.sampling.TRANSFORMS
    return knob not in ENGINE_LACKS


ENGINE_LACKS: frozenset[str] = frozenset()  # stages evalkit's engine does not compute yet


# Special tokens that end a turn or a text in common chat formats (used when the model has them).
END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>",
              "<|return|>", "</s>")


# What evalkit's engine honours (hf and vlm declare it): every knob of a text setting whose stage has a transform in
# evalkit.generation.sampling (and the knobs that qualify it), in every named chain order and any explicit one;
# "auto" is transformers' order.
ENGINE_KNOBS = frozenset(_engine_knobs())
ENGINE_ORDERS = tuple(ORDERS)
ENGINE_ORDER_NAME = "transformers"
ENGINE_OWN_ORDER = chain_labels(ORDERS[ENGINE_ORDER_NAME])
# what its samples supply metrics besides the texts: tokens, per-token statistics of both distributions
ENGINE_SUPPLIES = frozenset({"token_ids", "token_counts", "token_stats", "model_logprobs"})


def cpu_threads(device: str) -> int | None:
    """torch's CPU threads where the model runs on the CPU (they decide its float results), else None."""
    import torch

    return torch.get_num_threads() if device == "cpu" else None


class TokenizedBackend:
    """What a backend that tokenizes prompts with the model's own tokenizer shares (evalkit's engine, vLLM):
    the end and padding tokens, the chat template's use, and the prompt's fit in the context."""

    info: ModelInfo
    eos_ids: list[int]
    pad_id: int
    _source: str  # the config file, for errors

    def _special_tokens(self, tokenizer, generation_config) -> dict[str, Any]:
        """Set ``eos_ids`` and ``pad_id``; return the model's generation defaults, which evalkit ignores."""
        eos = generation_config.eos_token_id
        eos_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
        if tokenizer.eos_token_id is not None:
            eos_ids.add(int(tokenizer.eos_token_id))
        special = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}))
        vocab = tokenizer.get_vocab()
        for name in END_TOKENS:  # the model's other end-of-turn / end-of-text tokens
            if name in vocab and name in special:
                eos_ids.add(int(vocab[name]))
        self.eos_ids = sorted(eos_ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else generation_config.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0))
        return {k: v for k, v in generation_config.to_diff_dict().items()
                if k not in ("bos_token_id", "eos_token_id", "pad_token_id", "transformers_version")}

    def _use_template(self, chat_template: bool | str) -> bool:
        """Whether prompts go through the chat template ("auto": when the model has one); refuses a missing one."""
        use = self.info.has_chat_template if chat_template == "auto" else bool(chat_template)
        if use and not self.info.has_chat_template:
            raise ConfigError(f"the model {self.info.id!r} has no chat template", source=self._source,
                              path="prompts.chat_template")
        return use

    def _check_fits(self, prompt_id: str, n_tokens: int, max_new_tokens: int) -> None:
        """Refuse a prompt that is empty or leaves no room for ``max_new_tokens`` in the model's context."""
        limit = self.info.context_length
        if limit is not None and n_tokens + max_new_tokens > limit:
            raise ConfigError(f"prompt {prompt_id!r} has {n_tokens} tokens; with max_new_tokens={max_new_tokens} "
                              f"it exceeds the model's context of {limit} tokens", source=self._source,
                              path="prompts")
        if not n_tokens:
            raise ConfigError(f"prompt {prompt_id!r} is empty after tokenization", source=self._source,
                              path="prompts")

class EngineBackend(TokenizedBackend):
    """A backend whose samples evalkit's engine decodes (:mod:`evalkit.generation.engine`) from a transformers
    model's forward pass (``self.model``)."""

    # Prompts with their own model inputs (pixel values, image grids) at prefill, and the model's own prefill
    # positions (see evalkit.generation.engine): vision-language models
    prompt_inputs = False

    def _model_info(self, *, backend: str, model_id: str, source, path: str, dtype, device: str, started: float,
                    ignored: dict[str, Any], has_chat_template: bool, **extra: Any) -> ModelInfo:
        """What was loaded, for the manifest (``self.model`` and ``self.eos_ids`` are set)."""
        ctx = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return ModelInfo(
            backend=backend, id=model_id, source=source.kind, path=path,
            revision=getattr(self.model.config, "_commit_hash", None) if source.kind == "hub" else None,
            sha256=source.sha256, dtype=str(dtype).removeprefix("torch."), device=device,
            context_length=int(ctx) if ctx else None, eos_token_ids=self.eos_ids, has_chat_template=has_chat_template,
            rng="evalkit engine: one splitmix64 stream per sample, a function of (sample seed, step) only",
            load_seconds=round(time.perf_counter() - started, 3), ignored_generation_defaults=ignored,
            threads=cpu_threads(device), **extra)

    def check(self, settings: list, prompts: list[PreparedPrompt], **options: Any) -> None:
        """Every setting of the grid is evalkit's to apply: nothing to check."""

    def generation_params(self, setting: Setting, max_new_tokens: int) -> dict[str, Any]:
        """The decoding parameters the engine applies for ``setting``; nothing else shapes the distribution."""
        return {
            "engine": "evalkit",
            "greedy": setting.greedy,
            **setting.params(),
            "order": list(chain_labels(setting.chain(ENGINE_ORDER_NAME))),
            "max_new_tokens": max_new_tokens,
            "eos_token_ids": self.eos_ids,
        }

    def batch_size(self, requested: int | str, prompts: list[PreparedPrompt], max_new_tokens: int) -> int:
        """Rows per decode: as requested, or ("auto") what a memory budget allows.

        A row costs its KV cache (2 x layers x kv heads x head dim x tokens x dtype bytes) and
        about eight float32 vocabulary-sized buffers for the sampling step. The budget is 70%
        of free GPU memory, or 4 GiB on CPU, where rows are also capped at 64 (compute-bound).
        """
        if requested != "auto":
            return int(requested)
        import torch

        cfg = self.model.config.get_text_config()
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        tokens = max(len(p.token_ids) for p in prompts) + max_new_tokens
        per_row = 2 * cfg.num_hidden_layers * heads * head_dim * tokens * self.model.dtype.itemsize
        per_row += 8 * 4 * cfg.vocab_size
        if self.info.device == "cuda":
            free, _ = torch.cuda.mem_get_info()
            return max(1, min(4096, int(0.7 * free) // per_row))
        return max(1, min(64, (4 << 30) // per_row))

    def engine(self, **options: Any):
        """evalkit's engine on this backend's model and tokenizer (``options``: the engine's own, e.g. ``refill``,
        ``profile``)."""
        from evalkit.generation.engine import Engine
        from evalkit.generation.samplers.dry import Vocabulary

        return Engine(self.model, eos_ids=self.eos_ids, pad_id=self.pad_id, device=self.info.device,
                      decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
                      prompt_inputs=self.prompt_inputs, vocabulary=Vocabulary.of_tokenizer(self.tokenizer), **options)

    def generate(self, units: list[WorkUnit], *, max_new_tokens: int, batch_size: int,
                 stop: tuple[str, ...] = (), progress: ProgressFn | None = None) -> Iterator[SampleRecord]:
        engine = self.engine()
        for f in engine.run(units, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop,
                            progress=progress):
            yield SampleRecord(unit=f.unit, token_ids=tuple(f.token_ids), text=f.text, finish_reason=f.finish_reason,
                             stats=f.stats)
