"""Top-n-sigma (Tang et al. 2024) as llama.cpp computes it (``llama_sampler_top_n_sigma``)."""

from __future__ import annotations

import torch

from evalkit.generation.samplers.base import NEG_INF, Transform, in_pairs


def top_n_sigma(out: torch.Tensor, params) -> torch.Tensor:
    """Top-n-sigma (Tang et al. 2024): over the finite logits (those not -inf), those below max - n * std removed (std
    over the finite logits, population form). It does not depend on the temperature: both sides scale alike. A lone
    row is computed as a batch of two (its mean and variance are sums over the vocabulary: see
    :mod:`evalkit.generation.samplers.cutoffs`)."""
    n = params.top_n_sigma
    if not bool((n > 0).any()):
        return out
    return in_pairs(_top_n_sigma, out, n)


def _top_n_sigma(out: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    on = n > 0
    finite = ~out.isneginf()  # llama.cpp counts the logits that are not -inf (isfinite costs five times as much)
    counted = finite.sum(dim=-1, keepdim=True)
    count = counted.clamp(min=1)
    whole = bool((counted == out.shape[-1]).all())  # no -inf in any row: the masks below would change nothing
    z = out if whole else torch.where(finite, out, torch.zeros_like(out))
    mean = z.sum(dim=-1, keepdim=True) / count
    dev = torch.sub(out, mean).pow_(2)
    var = (dev if whole else dev.masked_fill_(~finite, 0.0)).sum(dim=-1, keepdim=True) / count
    cut = out.amax(dim=-1, keepdim=True) - n[:, None] * var.sqrt()
    drop = out < cut
    return out.masked_fill(drop & (on[:, None] & (counted > 1)), NEG_INF)


TRANSFORMS = {
    "top_n_sigma": Transform(top_n_sigma, torch.float32, lambda p, vocab: p.top_n_sigma > 0, filter=True),
}
