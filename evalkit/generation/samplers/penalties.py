"""Penalties on what a row has already said, computed from its tokens on the device (one scatter-add per step and
scope, shared by the penalties that count the same tokens; no loop over rows):

- ``repetition_penalty`` (Keskar et al. 2019, as transformers, vLLM and llama.cpp apply it): a token seen in the
  scope has its logit divided by the penalty when positive, multiplied when negative;
- ``presence_penalty`` / ``frequency_penalty`` (OpenAI's, vLLM's, llama.cpp's): minus the penalty once when the token
  was seen, minus the penalty times its count;
- ``no_repeat_ngram_size`` (transformers' ``NoRepeatNGramLogitsProcessor``): a token that would repeat an n-gram of
  prompt and output is removed;
- ``min_tokens`` (transformers' ``MinNewTokensLengthLogitsProcessor``, vLLM's): the end-of-sequence tokens removed
  while the row has fewer output tokens.

The scope of a penalty (``penalty_scope``, per row): every token of prompt and output, the output only, or the last N
tokens of both (llama.cpp's ``penalty_last_n``). ``params.history`` holds each row's prompt and output tokens,
left-padded with -1, the last ``params.n_out`` of them the output.
"""

from __future__ import annotations

import torch

from evalkit.generation.samplers.base import NEG_INF, Transform

SCOPE_ALL, SCOPE_OUTPUT = -1, 0  # a row's scope code; N > 0: the last N tokens


def counts(params, scope: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] how often each token occurs in each row's scope (float32). Computed once per step and scope:
    the penalties whose scopes agree share it (kept on ``params`` with the history it counted, until
    ``params.advance`` moves the rows on: :func:`forget_counts`)."""
    history = params.history
    cache = params.__dict__.get("_counts")
    if cache is None or cache[0] is not history or cache[1] != (params.n_out, vocab):
        cache = (history, (params.n_out, vocab), [])
        params._counts = cache
    for known, value in cache[2]:
        if known is scope or torch.equal(known, scope):
            return value
    value = _count(params, scope, vocab)
    cache[2].append((scope, value))
    return value


def forget_counts(params, tokens: torch.Tensor, logprob: torch.Tensor) -> None:
    """After a draw: the step's counts are stale (and a [rows, vocab] tensor per scope is not kept for nothing)."""
    params.__dict__.pop("_counts", None)


def _count(params, scope: torch.Tensor, vocab: int) -> torch.Tensor:
    history = params.history
    rows, length = history.shape
    pos = torch.arange(length, device=history.device)[None, :]
    scope = scope[:, None]
    in_scope = torch.where(scope == SCOPE_ALL, torch.ones_like(pos, dtype=torch.bool),
                           torch.where(scope == SCOPE_OUTPUT, pos >= length - params.n_out, pos >= length - scope))
    idx = torch.where((history >= 0) & in_scope, history, torch.full_like(history, vocab))
    out = torch.zeros((rows, vocab + 1), dtype=torch.float32, device=history.device)
    return out.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))[:, :vocab]


def repetition(out: torch.Tensor, params) -> torch.Tensor:
    penalty = params.repetition_penalty
    on = penalty != 1
    if not bool(on.any()):
        return out
    seen = (counts(params, params.scope_repetition_penalty, out.shape[-1]) > 0) & on[:, None]
    p = penalty[:, None]
    return torch.where(seen, torch.where(out < 0, out * p, out / p), out)


def presence(out: torch.Tensor, params) -> torch.Tensor:
    on = params.presence_penalty != 0
    if not bool(on.any()):
        return out
    seen = counts(params, params.scope_presence_penalty, out.shape[-1]) > 0
    return out - torch.where(seen & on[:, None], params.presence_penalty[:, None], 0.0)


def frequency(out: torch.Tensor, params) -> torch.Tensor:
    on = params.frequency_penalty != 0
    if not bool(on.any()):
        return out
    c = counts(params, params.scope_frequency_penalty, out.shape[-1])
    return out - torch.where(on[:, None], params.frequency_penalty[:, None] * c, 0.0)


def no_repeat_ngram(out: torch.Tensor, params) -> torch.Tensor:
    """Remove each token that would complete an n-gram already in the row's prompt and output (per distinct n, not
    per row)."""
    sizes = params.no_repeat_ngram_size
    history = params.history
    for n in sorted({int(v) for v in sizes.tolist() if v > 0}):
        rows = sizes == n
        length = history.shape[1]
        if length < n:
            continue
        windows = history.unfold(1, n, 1)  # [rows, length - n + 1, n]
        prefix = history[:, length - n + 1:] if n > 1 else history[:, :0]
        match = (windows[..., : n - 1] == prefix[:, None, :]).all(dim=-1) & (windows >= 0).all(dim=-1)
        match &= (prefix >= 0).all(dim=-1, keepdim=True)
        banned = torch.where(match, windows[..., n - 1], torch.full_like(windows[..., n - 1], out.shape[-1]))
        mask = torch.zeros((out.shape[0], out.shape[-1] + 1), dtype=torch.bool, device=out.device)
        mask.scatter_(1, banned, True)
        out = out.masked_fill(mask[:, :-1] & rows[:, None], NEG_INF)
    return out


def min_tokens(out: torch.Tensor, params) -> torch.Tensor:
    short = params.n_out < params.min_tokens
    if not bool(short.any()) or params.eos.numel() == 0:
        return out
    eos = torch.zeros(out.shape[-1], dtype=torch.bool, device=out.device)
    eos[params.eos[params.eos < out.shape[-1]]] = True
    return out.masked_fill(short[:, None] & eos[None, :], NEG_INF)


TRANSFORMS = {
    "repetition_penalty": Transform(repetition, torch.float32, lambda p, vocab: p.repetition_penalty != 1,
                                    needs_history=True, update=forget_counts),
    "presence_penalty": Transform(presence, torch.float32, lambda p, vocab: p.presence_penalty != 0,
                                  needs_history=True, update=forget_counts),
    "frequency_penalty": Transform(frequency, torch.float32, lambda p, vocab: p.frequency_penalty != 0,
                                   needs_history=True, update=forget_counts),
    "no_repeat_ngram_size": Transform(no_repeat_ngram, torch.long, lambda p, vocab: p.no_repeat_ngram_size > 0,
                                      filter=True, needs_history=True),
    "min_tokens": Transform(min_tokens, torch.long, lambda p, vocab: p.n_out < p.min_tokens, filter=True,
                            needs_history=True),
}
