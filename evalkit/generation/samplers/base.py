"""What a stage of the chain is: a batched transform of [rows, vocab] logits with per-row parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Transform:
    """One stage of a text setting's chain as a batched transform: ``apply(logits [rows, vocab], params)`` -> logits
    with the tokens it removes at -inf (or rescaled: the temperature, the penalties). ``dtype``: of its knob's
    per-row tensor; ``active(params, vocab)`` -> bool [rows]: where it can change the distribution; ``candidates``:
    whether the top-K candidate path of transformers' order computes it (else its rows go the dense way);
    ``filter``: it only removes tokens (so it can share a stage with other filters, computed on the same input);
    ``update(params, tokens, logprob)``: the row state it keeps after each draw (mirostat's mu); ``needs_history``:
    it reads the rows' prompt and output tokens; ``prepare(params, settings)``: per-row tables it builds once per
    batch (DRY's sequence breakers)."""

    apply: Callable[[torch.Tensor, Any], torch.Tensor]
    dtype: torch.dtype
    active: Callable[[Any, int], torch.Tensor] | None = None
    candidates: bool = False
    filter: bool = False
    update: Callable[[Any, torch.Tensor, torch.Tensor], None] | None = None
    needs_history: bool = False
    prepare: Callable[[Any, list], None] | None = None


def rows_on(out: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """``on`` as a [rows, 1] mask for masked_fill."""
    return on[:, None].to(out.device)
