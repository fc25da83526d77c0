"""Penalties on what a row has already said, computed from its tokens on the device with no loop over rows: the
repetition and presence penalties and the n-gram ban gather and scatter over each row's tokens (not over the
vocabulary); the frequency penalty counts them with one scatter-add per step and scope:

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
    if cache is None or cache[0] is not history or cache[1] is not params.n_out or cache[2] != vocab:
        cache = (history, params.n_out, vocab, [])
        params._counts = cache
    for known, value in cache[3]:
        if known is scope or torch.equal(known, scope):
            return value
    value = _count(params, scope, vocab)
    cache[3].append((scope, value))
    return value


def forget_counts(params, tokens: torch.Tensor, logprob: torch.Tensor) -> None:
    """After a draw: the step's counts are stale (and a [rows, vocab] tensor per scope is not kept for nothing)."""
    params.__dict__.pop("_counts", None)


def _count(params, scope: torch.Tensor, vocab: int) -> torch.Tensor:
    history = params.history
    idx = torch.where(_scoped(params, scope), history, torch.full_like(history, vocab))
    out = torch.zeros((history.shape[0], vocab + 1), dtype=torch.float32, device=history.device)
    return out.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))[:, :vocab]


def _scoped(params, scope: torch.Tensor) -> torch.Tensor:
    """[rows, length] whether each position of ``params.history`` holds a token in its row's scope."""
    history = params.history
    length = history.shape[1]
    pos = torch.arange(length, device=history.device)[None, :]
    scope = scope[:, None]
    outputs = pos >= length - params.n_out[:, None]
    in_scope = torch.where(scope == SCOPE_ALL, torch.ones_like(pos, dtype=torch.bool),
                           torch.where(scope == SCOPE_OUTPUT, outputs, pos >= length - scope))
    return (history >= 0) & in_scope


def _on_seen(out: torch.Tensor, params, scope: torch.Tensor, on: torch.Tensor, shift, lower: torch.Tensor):
    """Each token seen in its row's scope (rows ``on``) moved to ``shift(logit)``, which is below the logit on rows
    ``lower`` and above it on the others. Sparse: a gather and a scatter over the history, not over the vocabulary;
    a token seen several times gets the same value from each position (min or max reductions, so the scatter is
    exact and its order does not matter), and positions out of scope offer a value that changes nothing."""
    seen = _scoped(params, scope) & on[:, None]
    if not bool(seen.any()):
        return out
    idx = params.history.clamp(min=0)
    moved = shift(out.gather(1, idx))
    out = out.clone()
    down = seen & lower[:, None]
    if bool(down.any()):
        out.scatter_reduce_(1, idx, torch.where(down, moved, float("inf")), reduce="amin", include_self=True)
    up = seen & ~lower[:, None]
    if bool(up.any()):
        out.scatter_reduce_(1, idx, torch.where(up, moved, NEG_INF), reduce="amax", include_self=True)
    return out


def repetition(out: torch.Tensor, params) -> torch.Tensor:
    penalty = params.repetition_penalty
    on = penalty != 1
    if not bool(on.any()):
        return out
    p = penalty[:, None]  # divides a positive logit, multiplies a negative one: lower when p > 1
    return _on_seen(out, params, params.scope_repetition_penalty, on,
                    lambda z: torch.where(z < 0, z * p, z / p), penalty > 1)


def presence(out: torch.Tensor, params) -> torch.Tensor:
    on = params.presence_penalty != 0
    if not bool(on.any()):
        return out
    pen = params.presence_penalty[:, None]
    return _on_seen(out, params, params.scope_presence_penalty, on, lambda z: z - pen, params.presence_penalty > 0)


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
        banned = torch.where(match & rows[:, None], NEG_INF, float("inf"))  # +inf: the scatter leaves it
        out = out.clone()
        out.scatter_reduce_(1, windows[..., n - 1].clamp(min=0), banned, reduce="amin", include_self=True)
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
