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
    batch (DRY's sequence breakers); ``among``: in a stage of several filters, after filters whose kept set is a
    prefix of the row's order by logit, ``apply`` takes ``among=``: the logits with what they removed at -inf (the
    stage removes those anyway, so it must decide only the others' fate); ``near(logits, params)`` -> bool [rows]:
    the stage can run on a compact row (a row's kept tokens and some removed ones, in token id order: see
    ``chain_parts`` in :mod:`evalkit.generation.sampling`), and these are the rows where its decisions there could
    differ from the ones it makes on the whole row, by the rounding of sums over another layout (None: it runs on
    whole rows only: it reads token ids or the vocabulary's size, or has no bound of its own for that rounding, as
    top-n-sigma's mean and variance)."""

    apply: Callable[[torch.Tensor, Any], torch.Tensor]
    dtype: torch.dtype
    active: Callable[[Any, int], torch.Tensor] | None = None
    candidates: bool = False
    filter: bool = False
    update: Callable[[Any, torch.Tensor, torch.Tensor], None] | None = None
    needs_history: bool = False
    prepare: Callable[[Any, list], None] | None = None
    among: bool = False
    near: Callable[[torch.Tensor, Any], torch.Tensor] | None = None


def rows_on(out: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """``on`` as a [rows, 1] mask for masked_fill."""
    return on[:, None].to(out.device)


def sort_groups(out: torch.Tensor, on: torch.Tensor) -> list[tuple[torch.Tensor, int | None]]:
    """The rows of ``out`` where ``on``, in the groups a stage that sorts its rows (top-p, typical) computes apart:
    (rows, width) for the rows with at most a quarter of the vocabulary finite (not -inf: after a top-k, say), width
    the most finite logits any of them has; (rows, None) for the others. The first group's rows sort their finite logits
    alone and build the rest of each sorted row, all -inf (or +inf) and alike in value, without sorting it: every
    value the stage computes from a sorted row (a softmax and its cumulative sum over the whole row) is the one the
    full sort gives, bit for bit. The others sort whole rows. Rows where not ``on`` are in no group."""
    rows = on.nonzero()[:, 0]
    vocab = out.shape[-1]
    if vocab < 1024 or rows.numel() == 0:
        return [(rows, None)] * bool(rows.numel())
    counts = kept_counts(pick(out, rows))
    few = counts <= vocab // 4
    groups = []
    if bool(few.any()):
        groups.append((rows[few], int(counts[few].max())))
    if not bool(few.all()):
        groups.append((rows[~few], None))
    return groups


def in_pairs(f: Callable[..., torch.Tensor], *rows: torch.Tensor, **kwargs) -> torch.Tensor:
    """``f(*rows, **kwargs)``, a lone row computed as a batch of two (itself twice): torch may split a lone long
    row's reductions among threads, so that its last bits would depend on the rows beside it."""
    if rows[0].shape[0] != 1:
        return f(*rows, **kwargs)
    return f(*(torch.cat([r, r]) for r in rows), **kwargs)[:1]


def pick(t, rows: torch.Tensor):
    """Rows ``rows`` of ``t`` (ascending, distinct; a tensor or the rows' parameters): ``t`` itself when they are
    all of its rows (no copy)."""
    return t if rows.numel() == len(t) else t[rows]


def block_peaks(logits: torch.Tensor, width: int) -> tuple[torch.Tensor, int]:
    """The largest logit of each whole block of ``width`` logits in each row ([rows, blocks], a view's reduction)
    and how many logits those blocks cover (the rest, under ``width``, is the caller's)."""
    rows, vocab = logits.shape
    whole = vocab // width * width
    return logits[:, :whole].reshape(rows, -1, width).amax(dim=-1), whole


SCAN_BLOCK = 64  # largest() looks for a row's largest logits in the blocks of this many with the largest maxima


def largest(logits: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(logits, size)``'s values, descending, and their indices (tied values' indices in an order of
    their own), from the ``size`` blocks of :data:`SCAN_BLOCK` logits with the largest maxima (and the last, partial
    block): every logit among a row's ``size`` largest lies in them, so a long vocabulary is scanned once, by a
    reduction, and sorted in part only over ``size`` blocks (on 262k tokens, 1/64 of the row at 64 candidates)."""
    rows, vocab = logits.shape
    if vocab < 4 * size * SCAN_BLOCK:
        return torch.topk(logits, size, dim=-1)
    peaks, whole = block_peaks(logits, SCAN_BLOCK)
    blocks = torch.topk(peaks, size, dim=-1, sorted=False).indices
    at = (blocks[:, :, None] * SCAN_BLOCK + torch.arange(SCAN_BLOCK, device=logits.device)).reshape(rows, -1)
    if whole < vocab:
        at = torch.cat([at, torch.arange(whole, vocab, device=logits.device).expand(rows, -1)], dim=1)
    vals, inner = torch.topk(logits.gather(1, at), size, dim=-1)
    return vals, at.gather(1, inner)


def kept_counts(out: torch.Tensor) -> torch.Tensor:
    """How many logits of each row are not -inf ([rows]; ``isfinite`` costs five times as much on CPU)."""
    return out.shape[-1] - out.isneginf().sum(dim=-1)


def ranked(out: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``width`` largest logits and their token ids, by logit descending and, among equal logits, lowest
    id first (the order of a stable sort of the whole row): the order top-p and typical cut in."""
    vals, idx = largest(out, width)
    by_id = torch.sort(idx, dim=-1)
    vals, idx = vals.gather(1, by_id.indices), by_id.values
    by_logit = torch.sort(vals, dim=-1, descending=True, stable=True).indices
    return vals.gather(1, by_logit), idx.gather(1, by_logit)


U = 2.0 ** -24  # float32's unit roundoff


def near_rows(out: torch.Tensor, on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a ``near`` starts from: (no row near yet [rows], the rows where the stage is ``on``, those rows)."""
    rows = on.nonzero()[:, 0]
    return torch.zeros_like(on), rows, pick(out, rows)


def never_near(out: torch.Tensor, params) -> torch.Tensor:
    """``near`` of a stage that decides by comparing logits alone (or only rescales them): no row."""
    return torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)


def rounding(out: torch.Tensor) -> torch.Tensor:
    """[rows, 1] float64: how far, relative to it, a probability that a softmax gives on a compact layout of a row of
    ``out`` may lie from the one it gives on the whole row. Both normalisers sum the same k exponentials (the -inf
    logits' are 0, which add exactly), in whatever order, with at most k - 1 roundings of at most 2^-24 of the total
    each; then 1/Z and a product on each side, and an exponential's last bit where a kernel's scalar tail computes it
    otherwise: (4k + 64) 2^-24, with room to spare."""
    return (4 * kept_counts(out).double() + 64)[:, None] * U


def near_cut(values: torch.Tensor, cut: torch.Tensor, error: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """[rows] whether some value (where ``where``) lies within its rounding of ``cut``: ``values`` and ``cut`` each
    known to a relative ``error`` ([rows, 1]), compared by one side and another, so twice it of the larger; and
    every row whose cut is under 2^-100 (where a probability may be subnormal, known to less than ``error``)."""
    v, c = values.double(), cut.double()
    close = ((v - c).abs() <= 2 * error * torch.maximum(v.abs(), c.abs())) | (c.abs() < 2.0 ** -100)
    return (close & where).any(dim=-1)
