"""Mirostat (Basu et al. 2021), as llama.cpp computes it (``llama_sampler_mirostat``, ``_v2``): a truncation that
steers each row's surprise toward ``mirostat_tau`` bits, with a per-row state ``mu`` (2 tau at the start) that each
draw updates: mu -= eta (surprise of the drawn token - tau), the surprise -log2 p taken in the truncated,
renormalized distribution.

- v2: tokens whose surprise -log2 p exceeds mu are removed (the most likely one always stays);
- v1: the Zipf exponent s is estimated from the top m = 100 probabilities, then top-k with
  k = max(1, int(((s - 1) 2^mu / (1 - N^-(s - 1)))^(1/s))), N the vocabulary size: exactly k tokens are kept, as
  llama.cpp keeps them (among tokens tied at the cut, llama.cpp's sort leaves the choice unspecified; evalkit keeps
  the lowest token ids). A k that is not a number, infinite or at least 2^31 keeps one token, as llama.cpp does on
  x86-64: it converts k to int unchecked (undefined in C++; x86 gives INT_MIN, then max(k, 1) = 1; on ARM the
  conversion saturates and every token is kept). mu grows past 31 when tau is more surprise than the model reaches.
"""

from __future__ import annotations

import math

import torch

from evalkit.generation.samplers.base import NEG_INF, Transform

M = 100  # llama.cpp's common sampler: the top tokens the Zipf estimate uses
INT_LIMIT = 2.0**31  # a float k from here on is no int: llama.cpp's conversion gives INT_MIN on x86-64


def zipf_k(probs: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """[rows] mirostat v1's k: s estimated by least squares from the ratios of the top m probabilities,
    t_i = log((i + 2) / (i + 1)), b_i = log(p_i / p_(i+1)), s = sum t b / sum t^2 (float64 over float32 probabilities),
    k = max(1, int(...)) with llama.cpp's int on x86-64 (1 for what no int holds), at most the vocabulary."""
    vocab = probs.shape[-1]
    m = min(M, vocab)
    top = torch.topk(probs, m, dim=-1).values.double()
    i = torch.arange(m - 1, device=probs.device, dtype=torch.float64)
    t = torch.log((i + 2) / (i + 1))
    b = torch.log(top[:, :-1] / top[:, 1:])
    s_hat = (t * b).sum(dim=-1) / (t * t).sum()
    eps = s_hat - 1
    k = ((eps * torch.pow(2.0, mu.double())) / (1 - torch.pow(float(vocab), -eps))) ** (1 / s_hat)
    k = torch.where(k.isfinite() & (k < INT_LIMIT), k, torch.ones_like(k))
    return k.clamp(min=1, max=vocab).floor().long()


def keep_top(out: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Exactly ``k[r]`` tokens of each row: the largest logits, the lowest token ids first among ties."""
    order = torch.sort(out, dim=-1, descending=True, stable=True).indices
    ranks = torch.arange(out.shape[-1], device=out.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)
    return out.masked_fill(rank >= k[:, None], NEG_INF)


BAND = 1e-3  # below_surprise takes log2 only of the probabilities within this factor of 2^-mu


def below_surprise(out: torch.Tensor, probs: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Mirostat v2's truncation: tokens with -log2 p > mu removed, the most likely ones always kept.

    -log2 p <= mu is p >= 2^-mu but for log2's rounding, so log2 is taken only of the probabilities within a factor
    1 +- BAND of 2^-mu (log2 is within an ulp, under 1e-5 at |mu| < 100, of the exact value, and outside the band
    the exact value is more than 1.4e-3 from -mu): the others are decided by the comparison alone, and the result
    is the one log2 of every probability gives. Rows with |mu| >= 100 (2^-mu near float32's limits) take log2 of
    every probability."""
    top = probs >= probs.amax(dim=-1, keepdim=True)
    sane = mu.abs() < 100
    t = torch.exp2(-mu.double().where(sane, torch.zeros_like(mu, dtype=torch.float64)))[:, None]
    above = probs >= (t * (1 + BAND)).float()
    near = (probs > (t * (1 - BAND)).float()) & ~above | ~sane[:, None]
    at = near.nonzero(as_tuple=True)
    above[at] = -torch.log2(probs[at]) <= mu[at[0]]
    return out.masked_fill(~(above | top), NEG_INF)


def mirostat(out: torch.Tensor, params) -> torch.Tensor:
    """Each mirostat row truncated by its version's rule at its current mu (rows with mirostat 0 untouched)."""
    version = params.mirostat
    if not bool((version > 0).any()):
        return out
    probs = out.softmax(dim=-1)
    result = torch.where((version == 2)[:, None], below_surprise(out, probs, params.mu), out)
    v1 = version == 1
    if bool(v1.any()):
        k = torch.where(v1, zipf_k(probs, params.mu), torch.full_like(version, out.shape[-1]))
        result = torch.where(v1[:, None], keep_top(out, k), result)
    return result


def update(params, tokens: torch.Tensor, logprob: torch.Tensor) -> None:
    """After a draw: mu -= eta (surprise of the drawn token in bits - tau), on mirostat rows."""
    on = params.mirostat > 0
    surprise = -logprob.to(params.mu.dtype) / math.log(2)
    params.mu = torch.where(on, params.mu - params.mirostat_eta * (surprise - params.mirostat_tau), params.mu)


TRANSFORMS = {
    "mirostat": Transform(mirostat, torch.long, lambda p, vocab: p.mirostat > 0, update=update),
}
