"""XTC, exclude top choices (llama.cpp's ``llama_sampler_xtc``): with probability ``xtc_probability`` a step removes
every token whose probability is at least ``xtc_threshold`` but the least likely of them, when at least two pass
the threshold. The chance is drawn from the row's own random stream (``params.u_xtc``, a function of the sample's
seed and the step only), so a sample still depends on its seed alone."""

from __future__ import annotations

import torch

from evalkit.generation.samplers.base import NEG_INF, U, Transform, in_pairs, near_cut, near_rows, rounding


def _cuts(params) -> torch.Tensor:
    """The rows XTC cuts at this step."""
    return (params.xtc_probability > 0) & (params.u_xtc.to(params.xtc_probability.dtype) <= params.xtc_probability)


def xtc(out: torch.Tensor, params) -> torch.Tensor:
    on = _cuts(params)
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


def xtc_near(out: torch.Tensor, params) -> torch.Tensor:
    """On a compact row (see Transform.near), the rows it cuts at this step where a probability lies within its
    rounding of the threshold, or a token of another logit within its rounding of the one left (the least likely
    above the threshold)."""
    near, rows, z = near_rows(out, _cuts(params))
    if rows.numel() == 0:
        return near
    kept = ~z.isneginf()
    probs = z.softmax(dim=-1)
    threshold = params.xtc_threshold[rows][:, None]
    error = rounding(z) + 2 * U
    above = probs >= threshold
    masked = torch.where(above, probs, torch.full_like(probs, 2.0))
    low = masked.amin(dim=-1, keepdim=True)
    ids = torch.arange(z.shape[-1], device=z.device)[None, :]
    last = torch.where(above & (masked == low), ids, torch.full_like(ids, -1)).amax(dim=-1, keepdim=True)
    rival = above & (z != z.gather(1, last.clamp(min=0))) & (probs.double() <= low.double() * (1 + 2 * error))
    near[rows] = near_cut(probs, threshold, error, kept) | rival.any(dim=-1)
    return near


TRANSFORMS = {
    "xtc_probability": Transform(xtc, torch.float32, lambda p, vocab: p.xtc_probability > 0, filter=False,
                                 near=xtc_near),
}
