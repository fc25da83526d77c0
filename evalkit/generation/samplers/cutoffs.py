"""Truncation by the distribution's shape: typical, epsilon and eta sampling as transformers computes them
(``TypicalLogitsWarper``, ``EpsilonLogitsWarper``, ``EtaLogitsWarper``, ``min_tokens_to_keep=1``). Each keeps at
least the most likely token.

Typical and eta read the row's entropy, a sum over the vocabulary. torch's CPU reductions sum each row of a batch
in one pass, but split a lone row longer than 32768 entries among threads: the last bits of a row's entropy, and so
which token sits at its cut, would depend on whether other rows share its batch. A lone row is computed as a batch
of two (itself twice), so that every row gets the result it gets in any batch, and the one transformers' warpers
give a batch of two rows or more (tests/test_transformers_parity.py)."""

from __future__ import annotations

import torch

from evalkit.generation.samplers.base import (NEG_INF, U, Transform, in_pairs, largest, near_cut, near_rows, pick,
                                             rounding, sort_groups)


def _keep_top(out: torch.Tensor) -> torch.Tensor:
    """The row's most likely token(s): a filter never removes the token with the largest logit."""
    return out >= out.amax(dim=-1, keepdim=True)


def _typical(out: torch.Tensor, mass: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(out, dim=-1)
    p = logp.exp()
    ent = -(logp * p).nansum(-1, keepdim=True)
    remove = torch.zeros_like(out, dtype=torch.bool)
    for rows, width in sort_groups(out, mass < 1):
        remove[rows] = in_pairs(_typical_remove, pick(out, rows), pick(logp, rows), pick(ent, rows),
                                pick(mass, rows), pick(prefix, rows), width=width)
    return out.masked_fill(remove, NEG_INF)


def _typical_remove(out: torch.Tensor, logp: torch.Tensor, ent: torch.Tensor, mass: torch.Tensor,
                    prefix: torch.Tensor, width: int | None) -> torch.Tensor:
    """The tokens typical removes from each row (``logp`` its log-probabilities, ``ent`` its entropy [rows, 1]: a
    token's distance |-log p - H|), ``width`` as :func:`sort_groups` gives it."""
    vocab = out.shape[-1]
    if width is None:
        ss, si = torch.sort((-logp - ent).abs(), dim=-1, stable=True)
        cum = out.gather(-1, si).softmax(dim=-1).cumsum(dim=-1)
        rest, beyond = cum[:, :0], 0
    else:  # the finite logits alone, by id and then stably by |-log p - H|; the rest (-inf, shifted +inf) last
        _, idx = largest(out, width)
        idx = idx.sort(dim=-1).values
        shifted = (-logp.gather(1, idx) - ent).abs()  # the finite logits' distances alone
        by_distance = torch.sort(shifted, dim=-1, stable=True)
        ss, si = by_distance.values, idx.gather(1, by_distance.indices)
        row = out.new_full(out.shape, float("-inf"))  # the whole sorted row, for its softmax's bits
        row[:, :width] = out.gather(1, si)
        probs = row.softmax(dim=-1)
        if probs.device.type == "cpu":  # the cumulative sum runs along the row: past the finite logits it stays
            cum = probs[:, :width].cumsum(dim=-1)
            rest, beyond = cum[:, -1:], vocab - width
        else:
            whole = probs.cumsum(dim=-1)
            cum, rest, beyond = whole[:, :width], whole[:, width:], 1
    m = mass[:, None]
    # past the finite logits every shifted value is +inf: a cut there removes none of them
    last = (cum < m).sum(dim=1) + (rest < m).sum(dim=1) * beyond
    cut = ss.gather(1, last.clamp(max=ss.shape[-1] - 1)[:, None]).masked_fill((last >= ss.shape[-1])[:, None],
                                                                                 float("inf"))
    remove_sorted = ss > cut
    # llama.cpp's rule: the shortest prefix (ties in sort order, evalkit: lowest ids first) whose mass exceeds it
    count = (cum <= m).sum(dim=1) + (rest <= m).sum(dim=1) * beyond + 1
    past = torch.arange(ss.shape[-1], device=out.device)[None, :] >= count[:, None]
    remove_sorted = torch.where(prefix[:, None], past, remove_sorted)
    remove_sorted[:, :1] = False
    return torch.zeros_like(out, dtype=torch.bool).scatter_(1, si, remove_sorted)


def typical(out: torch.Tensor, params) -> torch.Tensor:
    """Locally typical sampling (Meister et al. 2023): tokens ordered by |-log p - H|, kept while the mass of the
    tokens before them is < typical_p (transformers: and every token tied with the last one kept; llama.cpp's
    order, rows with ``exact_k``: kept until the mass passes typical_p, no more)."""
    if not bool((params.typical_p < 1).any()):
        return out
    prefix = params.rowwise.get("exact_k")
    prefix = torch.zeros_like(params.typical_p, dtype=torch.bool) if prefix is None else prefix
    return in_pairs(_typical, out, params.typical_p, prefix)  # a lone row as in a batch


def epsilon(out: torch.Tensor, params) -> torch.Tensor:
    """Epsilon sampling (Hewitt et al. 2022): tokens with probability < epsilon_cutoff removed."""
    on = params.epsilon_cutoff > 0
    if not bool(on.any()):
        return out
    drop = (out.softmax(dim=-1) < params.epsilon_cutoff[:, None]) & ~_keep_top(out)
    return out.masked_fill(drop & on[:, None], NEG_INF)


def _eta(out: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    probs = out.softmax(dim=-1)
    entropy = torch.distributions.Categorical(logits=out, validate_args=False).entropy()
    cut = torch.minimum(e, torch.sqrt(e) * torch.exp(-entropy))[:, None]
    drop = (probs < cut) & ~_keep_top(out)
    return out.masked_fill(drop & (e > 0)[:, None], NEG_INF)


def eta(out: torch.Tensor, params) -> torch.Tensor:
    """Eta sampling (Hewitt et al. 2022): the cutoff min(eta, sqrt(eta) exp(-H)), H the row's entropy."""
    if not bool((params.eta_cutoff > 0).any()):
        return out
    return in_pairs(_eta, out, params.eta_cutoff)


# --------------------------------------------------------------------------- on compact rows
#
# Each cutoff's ``near``: the rows where it could decide otherwise on a compact layout of a row than on the whole
# row (see Transform.near). The two softmaxes' probabilities differ by at most rounding() of their value; what is
# derived from them (a log-probability, an entropy, a distance) by what that moves it, bounded term by term below.


def _log_error(z: torch.Tensor, logp: torch.Tensor, live: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """[rows, 1]: how far a log-probability log p = z - m - log S of ``z`` may move between two layouts (its
    common part log S by the normalisers' ``rel`` and the rounding of its log, at most log of the kept count; each
    subtraction's rounding of the largest |log p| among the tokens with mass, ``live``)."""
    count = (~z.isneginf()).sum(dim=-1, keepdim=True).double()
    size = torch.where(live, logp.abs(), torch.zeros_like(logp)).amax(dim=-1, keepdim=True).double()
    return rel + 2 * U * (count.log() + size)


def typical_near(out: torch.Tensor, params) -> torch.Tensor:
    """Typical's decisions are the order of the tokens by distance |-log p - H| and where the cumulative mass in
    that order passes typical_p. Between two layouts every signed distance -log p - H moves by a shift common to
    all tokens (log p's normaliser, the entropy) and by its own rounding: two tokens on one side of H keep their
    order unless their distances lie within their own roundings of each other (each distance is monotone in the
    logit there), two on opposite sides unless within twice the common shift too. Two tokens of different logits
    that may come in either order change what is kept only when the cut mass lies within the cumulative masses
    their places span, with the runs of tokens of their logits that move with them (before the first one's run,
    through the second one's). Near: such a pair, or a cumulative mass within its rounding of typical_p."""
    near, rows, z = near_rows(out, params.typical_p < 1)
    if rows.numel() == 0:
        return near
    kept = ~z.isneginf()
    rel = rounding(z)
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    ent = -(logp * p).nansum(-1, keepdim=True)
    delta = _log_error(z, logp, kept & (p > 0), rel)
    h = ent.double()
    count = kept.sum(dim=-1, keepdim=True).double()
    moved = 2 * (delta * (1 + h) + (2 * count + 4) * U * h)  # the entropy: sum p log p, each term moved, and summed
    common = delta + moved  # the shift common to every signed distance
    signed = (-logp - ent).double()
    own = 8 * U * (logp.abs().double() + signed.abs() + 1)  # each one's own rounding, both layouts
    side = torch.where(signed.abs() > common + own, signed.sign(), torch.zeros_like(signed))
    ss, si = torch.sort(signed.abs().float(), dim=-1, stable=True)
    zs, ks = z.gather(1, si), kept.gather(1, si)
    sides, owns = side.gather(1, si), own.gather(1, si)
    cum = zs.softmax(dim=-1).cumsum(dim=-1)
    mass = params.typical_p[rows][:, None]
    one_side = (sides[:, 1:] == sides[:, :-1]) & (sides[:, 1:] != 0)
    bound = owns[:, 1:] + owns[:, :-1] + torch.where(one_side, 0.0, 2 * common)
    close = (ss[:, 1:] - ss[:, :-1]).double() <= bound
    close &= ks[:, 1:] & ks[:, :-1] & (zs[:, 1:] != zs[:, :-1])
    # A pair that swaps moves the runs of tokens of its logits with it (equal logits, equal distances: they stay
    # together, and a cut at any of them keeps every token at its distance): its span runs from the mass before
    # the first token's run to the mass through the second one's.
    first = torch.ones_like(ks)
    first[:, 1:] = zs[:, 1:] != zs[:, :-1]  # where a run of equal logits starts
    last = torch.ones_like(ks)
    last[:, :-1] = first[:, 1:]  # where one ends
    mass_before = torch.nn.functional.pad(cum[:, :-1], (1, 0)).double()
    run_before = torch.where(first, mass_before, 0.0).cummax(dim=-1).values  # the mass before each one's run
    run_through = torch.where(last, cum.double(), 2.0).flip(-1).cummin(dim=-1).values.flip(-1)  # and through it
    slack = 2 * (rel + 2 * U)
    spans = (run_before[:, :-1] <= mass + slack) & (run_through[:, 1:] >= mass - slack)
    near[rows] = (close & spans).any(dim=-1) | near_cut(cum, mass, rel + 2 * U, ks)
    return near


def epsilon_near(out: torch.Tensor, params) -> torch.Tensor:
    """Near when a probability lies within its rounding of epsilon_cutoff."""
    near, rows, z = near_rows(out, params.epsilon_cutoff > 0)
    if rows.numel():
        near[rows] = near_cut(z.softmax(dim=-1), params.epsilon_cutoff[rows][:, None], rounding(z) + 2 * U,
                              ~z.isneginf())
    return near


def eta_near(out: torch.Tensor, params) -> torch.Tensor:
    """Near when a probability lies within its rounding and the cut's of eta's cut min(eta, sqrt(eta) exp(-H)): H
    from log p = z - logsumexp(z) (moved by :func:`_log_error`) and the softmax of those, each term and the sum
    rounded."""
    near, rows, z = near_rows(out, params.eta_cutoff > 0)
    if rows.numel() == 0:
        return near
    kept = ~z.isneginf()
    rel = rounding(z)
    probs = z.softmax(dim=-1)
    lse = z.logsumexp(dim=-1, keepdim=True)
    ent = torch.distributions.Categorical(logits=z, validate_args=False).entropy()[:, None].double()
    delta = _log_error(z, z - lse, kept & (probs > 0), rel) + 2 * U * lse.abs().double()
    count = kept.sum(dim=-1, keepdim=True).double()
    moved = 2 * (delta + ent * (rel + 2 * delta + (2 * count + 2) * U))
    e = params.eta_cutoff[rows][:, None]
    cut = torch.minimum(e, torch.sqrt(e) * torch.exp(-ent.float()))
    near[rows] = near_cut(probs, cut, rel + moved + 4 * U, kept)
    return near


TRANSFORMS = {
    "typical_p": Transform(typical, torch.float32, lambda p, vocab: p.typical_p < 1, filter=True, near=typical_near),
    "epsilon_cutoff": Transform(epsilon, torch.float32, lambda p, vocab: p.epsilon_cutoff > 0, filter=True,
                                near=epsilon_near),
    "eta_cutoff": Transform(eta, torch.float32, lambda p, vocab: p.eta_cutoff > 0, filter=True, near=eta_near),
}
