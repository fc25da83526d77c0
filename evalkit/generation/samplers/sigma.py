"""Top-n-sigma (Tang et al. 2024) as llama.cpp computes it (``llama_sampler_top_n_sigma``)."""

from __future__ import annotations

import torch

from evalkit.generation.samplers.base import NEG_INF, Transform


def top_n_sigma(out: torch.Tensor, params) -> torch.Tensor:
    """Top-n-sigma (Tang et al. 2024): over the finite logits, those below max - n * std removed (std over the
    finite logits, population form). It does not depend on the temperature: both sides scale alike."""
    n = params.top_n_sigma
    on = n > 0
    if not bool(on.any()):
        return out
    finite = out.isfinite()
    count = finite.sum(dim=-1, keepdim=True).clamp(min=1)
    z = torch.where(finite, out, torch.zeros_like(out))
    mean = z.sum(dim=-1, keepdim=True) / count
    var = torch.where(finite, (out - mean) ** 2, torch.zeros_like(out)).sum(dim=-1, keepdim=True) / count
    cut = out.amax(dim=-1, keepdim=True) - n[:, None] * var.sqrt()
    drop = out < cut
    return out.masked_fill(drop & (on & (finite.sum(dim=-1) > 1))[:, None], NEG_INF)


TRANSFORMS = {
    "top_n_sigma": Transform(top_n_sigma, torch.float32, lambda p, vocab: p.top_n_sigma > 0, filter=True),
}
