"""Mirostat (Basu et al. 2021), as llama.cpp computes it (``llama_sampler_mirostat``, ``_v2``): a truncation that
steers each row's surprise toward ``mirostat_tau`` bits, with a per-row state ``mu`` (2 tau at the start) that each
draw updates: mu -= eta (surprise of the drawn token - tau), the surprise -log2 p taken in the truncated,
renormalized distribution.

- v2: tokens whose surprise -log2 p exceeds mu are removed (the most likely one always stays);
- v1: the Zipf exponent s is estimated from the top m = 100 probabilities, then top-k with
  k = ((s - 1) 2^mu / (1 - N^-(s - 1)))^(1/s), N the vocabulary size.
"""

from __future__ import annotations

import math

import torch

from evalkit.generation.samplers.base import NEG_INF, Transform

M = 100  # llama.cpp's common sampler: the top tokens the Zipf estimate uses


def mirostat(out: torch.Tensor, params) -> torch.Tensor:
    version = params.mirostat
    if not bool((version > 0).any()):
        return out
    probs = out.softmax(dim=-1)
    mu = params.mu[:, None]
    keep2 = (-torch.log2(probs) <= mu) | (probs >= probs.amax(dim=-1, keepdim=True))
    out2 = out.masked_fill(~keep2, NEG_INF)
    if not bool((version == 1).any()):
        return torch.where((version == 2)[:, None], out2, out)
    vocab = out.shape[-1]
    m = min(M, vocab)
    top = torch.topk(probs, m, dim=-1).values.double()
    i = torch.arange(m - 1, device=out.device, dtype=torch.float64)
    t = torch.log((i + 2) / (i + 1))
    b = torch.log(top[:, :-1] / top[:, 1:])
    s_hat = (t * b).sum(dim=-1) / (t * t).sum()
    eps = s_hat - 1
    k = ((eps * torch.pow(2.0, params.mu.double())) / (1 - torch.pow(float(vocab), -eps))) ** (1 / s_hat)
    k = torch.nan_to_num(k, nan=1.0, posinf=float(vocab)).clamp(min=1, max=vocab).floor().long()
    kth = torch.topk(out, int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
    out1 = out.masked_fill(out < kth, NEG_INF)
    return torch.where((version == 1)[:, None], out1, torch.where((version == 2)[:, None], out2, out))


def update(params, tokens: torch.Tensor, logprob: torch.Tensor) -> None:
    """After a draw: mu -= eta (surprise of the drawn token in bits - tau), on mirostat rows."""
    on = params.mirostat > 0
    surprise = -logprob.to(params.mu.dtype) / math.log(2)
    params.mu = torch.where(on, params.mu - params.mirostat_eta * (surprise - params.mirostat_tau), params.mu)


TRANSFORMS = {
    "mirostat": Transform(mirostat, torch.long, lambda p, vocab: p.mirostat > 0, update=update),
}
