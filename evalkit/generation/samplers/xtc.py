"""XTC, exclude top choices (llama.cpp's ``llama_sampler_xtc``): with probability ``xtc_probability`` a step removes
every token whose probability is at least ``xtc_threshold`` but the least likely of them, when at least two pass
the threshold. The chance is drawn from the row's own random stream (``params.u_xtc``, a function of the sample's
seed and the step only), so a sample still depends on its seed alone."""

from __future__ import annotations

import torch

from evalkit.generation.samplers.base import NEG_INF, Transform, in_pairs


def xtc(out: torch.Tensor, params) -> torch.Tensor:
    on = (params.xtc_probability > 0) & (params.u_xtc.to(params.xtc_probability.dtype) <= params.xtc_probability)
    if not bool(on.any()):
        return out
    rows = on.nonzero()[:, 0]
    if rows.numel() == out.shape[0]:
        return in_pairs(_xtc, out, params.xtc_threshold)
    return out.index_put((rows,), in_pairs(_xtc, out[rows], params.xtc_threshold[rows]))  # the rows it cuts this step


def _xtc(out: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """XTC's cut on every row of ``out``."""
    probs = out.softmax(dim=-1)
    above = probs >= threshold[:, None]
    # the least likely token above the threshold stays (among ties, the highest token id: the last in a stable
    # descending sort by probability)
    masked = torch.where(above, probs, torch.full_like(probs, 2.0))
    low = masked.amin(dim=-1, keepdim=True)
    vocab = out.shape[-1]
    ids = torch.arange(vocab, device=out.device)[None, :]
    last = torch.where(above & (masked == low), ids, torch.full_like(ids, -1)).amax(dim=-1, keepdim=True)
    drop = above & (ids != last)
    enough = above.sum(dim=-1) >= 2
    return out.masked_fill(drop & enough[:, None], NEG_INF)


TRANSFORMS = {
    "xtc_probability": Transform(xtc, torch.float32, lambda p, vocab: p.xtc_probability > 0, filter=False),
}
