"""Sampling as batched tensor transforms with per-row parameters (one decode serves many settings).

The settings themselves live in :mod:`evalkit.settings`; each knob of a setting is one named transform here
(:data:`TRANSFORMS`), and each row applies its setting's knobs in its setting's chain order
(:data:`evalkit.settings.ORDERS`): a new knob is one field of the setting and one transform.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import torch

from evalkit.errors import EvalkitError
from evalkit.generation.samplers import cutoffs, dry, mirostat, penalties, sigma, xtc
from evalkit.generation.samplers.base import (SCAN_BLOCK, U, Transform, block_peaks, in_pairs, kept_counts, largest,
                                             near_cut, near_rows, never_near, pick, ranked, rounding, sort_groups)
from evalkit.generation.samplers.penalties import SCOPE_ALL, SCOPE_OUTPUT
from evalkit.settings import ORDERS, PENALTIES, Setting, _chain

# --------------------------------------------------------------------------- batched transforms
#
# Each row of a [batch, vocab] logits tensor has its own setting. The transforms follow
# transformers' warpers exactly (TemperatureLogitsWarper, TopKLogitsWarper,
# TopPLogitsWarper, MinPLogitsWarper, min_tokens_to_keep=1):
#
# - temperature: logits / T (greedy rows, T = 0, are decided by argmax of the raw logits);
# - top-k: keep the tokens whose logit is >= the k-th largest (ties with it are kept);
# - top-p: with p_i the softmax of the row as it reaches top-p and tokens ordered by logit, drop a token when
#   the probability mass of the tokens ranked below it, itself included, is <= 1 - top_p;
#   equivalently keep it when the mass ranked strictly above it is < top_p. The top token is
#   always kept. Among tokens whose logits tie exactly at the boundary, transformers' sort
#   keeps an unspecified subset; evalkit keeps the lowest token ids (a stable order);
# - min-p: with p_i the softmax of the row as it reaches min-p, drop tokens with p_i < min_p * max_i p_i.
#
# In transformers' order (temperature, top-k, top-p, min-p) only the top of the distribution can survive
# truncation, so rows that truncate are computed on their top-K candidates (torch.topk), with K grown until
# the kept set is provably inside the candidates; rows that do not truncate, or whose kept set does not
# fit, are computed densely over the whole vocabulary, as are the rows of another order (vLLM's). The
# candidate path sums probability mass in another order than transformers' sorted cumulative sum (last-bit
# differences, more on near-flat rows), so a row whose top-p decision lies within cut_margin of its cut, or whose
# min-p decision within MARGIN, is computed densely too.


CANDIDATES = (64, 1024, 8192)  # candidate-list sizes tried before the dense path
MARGIN = 1e-6  # top-p / min-p decisions this close to the cut are left to the dense path (see cut_margin too)
# Filters whose kept set is always a prefix of the row's order by logit (lowest token id first among ties): what a
# joint stage's top-p is told it need not decide for the rest (typical, say, can remove the most likely tokens)
PREFIX_FILTERS = frozenset({"top_k", "min_p"})
ENGINE_ORDER = "transformers"  # what a setting's order "auto" means in evalkit's engine
# whose top-k keeps exactly k tokens among ties (not every tied one), and typical the shortest prefix past its mass
EXACT_K_ORDERS = ("llama_cpp", "sglang")
CANDIDATE_KNOBS = frozenset({"temperature", "top_k", "top_p", "min_p"})  # what the candidate path computes
CANDIDATE_FILTERS = CANDIDATE_KNOBS - {"temperature"}
SCOPE_CODES = {"prompt+output": SCOPE_ALL, "output": SCOPE_OUTPUT}  # a penalty's scope as a row's number (N: N)
# The knobs that only qualify a stage, as per-row tensors its transform reads.
QUALIFIER_DTYPES = {"xtc_threshold": torch.float32, "dry_base": torch.float32, "dry_allowed_length": torch.long,
                    "dry_penalty_last_n": torch.long, "mirostat_tau": torch.float32, "mirostat_eta": torch.float32}


class RowParams:
    """Per-row tensors, each of shape [batch]: one per knob of :data:`TRANSFORMS` and :data:`QUALIFIER_DTYPES` (an
    attribute of the knob's name), each penalty's scope (``scope_<penalty>``, :data:`SCOPE_CODES`), and ``order``,
    each row's chain as an index into ``chains``. The decode state: ``history`` (each row's prompt and output tokens,
    left-padded with -1, [batch, length]; empty unless a stage reads it), ``n_out`` (each row's output tokens so
    far), ``mu`` (mirostat's), ``u_xtc`` (XTC's chance this step), ``eos`` (end tokens).

    Rows built against the same ``universe`` of settings (their chains and tables numbered alike) can be
    joined by :meth:`cat`: the engine's rows, each at its own step.

    top_p is kept in float64 so that ``1 - top_p`` is formed as transformers forms it
    (in Python floats) before the float32 comparison.
    """

    ROWWISE_STATE = ("history", "n_out", "mu", "u_xtc")

    def __init__(self, rowwise: dict[str, torch.Tensor], chains: list, eos: torch.Tensor | None = None):
        self.rowwise, self.chains = rowwise, chains
        self.eos = eos if eos is not None else torch.zeros(0, dtype=torch.long)
        for name, tensor in rowwise.items():
            setattr(self, name, tensor)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in getattr(self, "rowwise", {}):
            self.rowwise[name] = value

    @classmethod
    def from_settings(cls, settings: list[Setting], device: torch.device | str = "cpu", *,
                      prompts: list[list[int]] | None = None, eos: list[int] = (),
                      vocabulary: dry.Vocabulary | None = None, universe: list[Setting] | None = None) -> RowParams:
        """The rows' parameters, ``prompts`` their prompt tokens (the penalties' history), ``eos`` the end tokens,
        ``vocabulary`` the tokenizer's (DRY's sequence breakers), ``universe`` the settings whose chains and tables
        are numbered (``settings`` when not given; every part that :meth:`cat` joins must have the same)."""
        universe = universe if universe is not None else list(settings)
        chains: list = []
        for s in universe:
            chain = s.chain(ENGINE_ORDER) if not s.missing_in_order(ENGINE_ORDER) else None
            if chain is not None and chain not in chains:
                chains.append(chain)
        codes = []
        for s in settings:  # a knob with no transform, or no stage in the row's chain, is refused, never dropped
            missing = [k for k in s.stage_knobs() if k not in TRANSFORMS]
            if missing:
                raise EvalkitError(f"evalkit's engine has no transform for {missing[0]}, which setting {s.id} sets")
            absent = s.missing_in_order(ENGINE_ORDER)
            if absent:
                raise EvalkitError(f"setting {s.id} sets {absent}, which its chain order has no stage for")
            chain = s.chain(ENGINE_ORDER)
            if chain not in chains:
                chains.append(chain)
            codes.append(chains.index(chain))
        rowwise = {name: torch.tensor([getattr(s, name) for s in settings], dtype=t.dtype, device=device)
                   for name, t in TRANSFORMS.items()}
        rowwise |= {name: torch.tensor([getattr(s, name) for s in settings], dtype=dtype, device=device)
                    for name, dtype in QUALIFIER_DTYPES.items()}
        for penalty in PENALTIES:
            rowwise[f"scope_{penalty}"] = torch.tensor(
                [SCOPE_CODES.get(s.scope(penalty, ENGINE_ORDER), s.scope(penalty, ENGINE_ORDER)) for s in settings],
                dtype=torch.long, device=device)
        rowwise["order"] = torch.tensor(codes, dtype=torch.long, device=device)
        rowwise["exact_k"] = torch.tensor([s.order_name(ENGINE_ORDER) in EXACT_K_ORDERS for s in settings],
                                          dtype=torch.bool, device=device)
        rowwise["mu"] = torch.tensor([2 * s.mirostat_tau for s in settings], dtype=torch.float32, device=device)
        rowwise["n_out"] = torch.zeros(len(settings), dtype=torch.long, device=device)
        rowwise["u_xtc"] = torch.ones(len(settings), dtype=torch.float64, device=device)
        history = torch.zeros((len(settings), 0), dtype=torch.long, device=device)
        if prompts is not None and any(TRANSFORMS[k].needs_history for s in settings for k in s.stage_knobs()):
            width = max((len(p) for p in prompts), default=0)
            history = torch.full((len(settings), width), -1, dtype=torch.long)
            for i, p in enumerate(prompts):
                if p:
                    history[i, width - len(p):] = torch.tensor(p)
            history = history.to(device)
        rowwise["history"] = history
        out = cls(rowwise, chains, torch.tensor(sorted(set(eos)), dtype=torch.long, device=device))
        out.keeps_history = bool(history.shape[1]) or (prompts is not None and out.needs_history())
        out.vocabulary, out.universe = vocabulary, universe
        for t in TRANSFORMS.values():
            if t.prepare is not None:
                t.prepare(out, settings)
        return out

    def __len__(self) -> int:
        return self.order.shape[0]

    def __getitem__(self, rows) -> RowParams:
        out = RowParams({name: t[rows] for name, t in self.rowwise.items()}, self.chains, self.eos)
        for name, value in self.__dict__.items():  # what a transform prepared that is not per row
            if name not in out.__dict__:
                object.__setattr__(out, name, value)
        return out

    @staticmethod
    def cat(parts: list[RowParams]) -> RowParams:
        """The rows of ``parts`` in one (built against the same universe; histories left-padded to one width)."""
        first = parts[0]
        if any(p.chains != first.chains or (p.universe is not first.universe and p.universe != first.universe)
               for p in parts):
            raise EvalkitError("RowParams.cat: the parts were built against different universes of settings")
        width = max(p.history.shape[1] for p in parts)
        rowwise = {}
        for name in first.rowwise:
            if name == "history":
                rowwise[name] = torch.cat([torch.nn.functional.pad(p.history, (width - p.history.shape[1], 0),
                                                                   value=-1) for p in parts])
            else:
                rowwise[name] = torch.cat([p.rowwise[name] for p in parts])
        out = RowParams(rowwise, first.chains, first.eos)
        for name, value in first.__dict__.items():  # what a transform prepared that is not per row
            if name not in out.__dict__ and not name.startswith("_"):
                object.__setattr__(out, name, value)
        out.keeps_history = any(getattr(p, "keeps_history", False) for p in parts)
        return out

    def trimmed(self) -> RowParams:
        """These rows, their histories without the leading columns that no row fills (-1 in every row): after rows
        leave, the history is no wider than the longest row still in flight needs. Every stage reads a history from
        its right end, so nothing changes but the width."""
        history = self.history
        if not history.shape[1] or not bool((history[:, 0] < 0).all()):
            return self
        filled = (history >= 0).any(dim=0)
        first = int(filled.int().argmax()) if bool(filled.any()) else history.shape[1]
        self.history = history[:, first:]
        return self

    def advance(self, tokens: torch.Tensor, logprob: torch.Tensor) -> None:
        """After a draw: each row's state moves on (its history grows by its token, mirostat's mu is updated)."""
        for t in TRANSFORMS.values():
            if t.update is not None:
                t.update(self, tokens, logprob)
        if getattr(self, "keeps_history", False):
            self.history = torch.cat([self.history, tokens[:, None].to(self.history.dtype)], dim=1)
        self.n_out = self.n_out + 1

    def needs_history(self) -> bool:
        """Whether some row has a stage that reads its tokens (penalties, n-grams, DRY)."""
        return any(bool(t.active(self, 1 << 62).any()) for t in TRANSFORMS.values()
                   if t.needs_history and t.active is not None)

    @property
    def greedy(self) -> torch.Tensor:
        return self.temperature == 0

    def truncates(self, vocab: int) -> torch.Tensor:
        """Rows where some stage but the temperature can change the distribution."""
        return self._active(vocab, lambda name: True)

    def beyond_candidates(self, vocab: int) -> torch.Tensor:
        """Rows with an active stage that the candidate path does not compute."""
        return self._active(vocab, lambda name: name not in CANDIDATE_KNOBS)

    def _active(self, vocab: int, which, actives: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Rows where some stage named ``which(name)`` is active (from ``actives``, :meth:`actives`, when given)."""
        out = torch.zeros_like(self.order, dtype=torch.bool)
        for name, t in TRANSFORMS.items():
            if t.active is not None and which(name):
                out |= t.active(self, vocab) if actives is None else actives[name]
        return out

    def actives(self, vocab: int) -> dict[str, torch.Tensor]:
        """Each stage's rows where it is active, for several :meth:`_active` questions at the price of one."""
        return {name: t.active(self, vocab) for name, t in TRANSFORMS.items() if t.active is not None}


class Warped:
    """The sampling distribution of each row, as scaled logits over candidate tokens.

    ``logits[r, j]`` is the (temperature-scaled) logit of token ``index[r, j]``, -inf where
    a filter removed it. Dense rows have every token as a candidate (``index`` is None then
    and ``logits`` is [rows, vocab]). :meth:`scaled` rows are the batch's rows divided by their temperatures
    (``divided``, a :class:`_Scaled`), divided as they are drawn (``logits`` gives them divided).
    """

    def __init__(self, logits: torch.Tensor | None, index: torch.Tensor | None):
        self._logits, self.index = logits, index
        self.divided: _Scaled | None = None
        self.given = None

    @classmethod
    def scaled(cls, logits: torch.Tensor, rows: torch.Tensor, temperature: torch.Tensor) -> Warped:
        """Rows ``rows`` of the batch's ``logits`` divided by ``temperature`` ([rows]), every token a candidate:
        :func:`sample` divides them a few rows at a time as it normalises them, never the whole rows at once."""
        out = cls(None, None)
        out.divided = _Scaled(None, logits, rows, temperature)
        return out

    @classmethod
    def model(cls, logits: torch.Tensor, rows: torch.Tensor, model: Normalised) -> Warped:
        """Rows ``rows`` of the batch's ``logits`` as the model gives them (temperature 1, no filter): their
        distribution is the model's own, ``model`` (:func:`model_distribution`, its weights these rows')."""
        out = cls.scaled(logits, rows, torch.ones(rows.numel(), device=logits.device))
        kept = torch.full((rows.numel(),), logits.shape[-1], dtype=torch.long, device=logits.device)
        holes = model.neginf[rows]
        if bool(holes.any()):
            kept[holes] = torch.count_nonzero(logits[rows[holes]] != float("-inf"), dim=-1)
        out.given = (model.weights, model.log_z[rows], model.entropy[rows], kept)
        return out

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            self._logits = self.divided.take(None)
        return self._logits

    def distribution(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`distribution` of these rows (:meth:`scaled` rows divided as they are normalised)."""
        if self.given is not None:
            return self.given
        if self.divided is not None:
            return distribution(self.divided.logits, self.divided.rows, self.divided.temperature)
        return distribution(self.logits.float())

    def chosen(self, at: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """The logit at place ``j[i]`` of row ``at[i]`` (of a :meth:`scaled` row: divided as scaled_rows divides)."""
        if self.divided is not None:
            return self.divided.logits[self.divided.rows[at], j].float() / self.divided.temperature[at]
        return self.logits[at, j].float()

    def dense(self, vocab: int) -> torch.Tensor:
        if self.index is None:
            return self.logits
        out = torch.full((self.logits.shape[0], vocab), float("-inf"), dtype=self.logits.dtype,
                         device=self.logits.device)
        return out.scatter_(1, self.index, self.logits)


def scale(logits: torch.Tensor, params: RowParams) -> torch.Tensor:
    """Temperature: logits / T, in float32; greedy rows are left unscaled."""
    return logits.float() / temperatures(params)[:, None]


def temperatures(params: RowParams) -> torch.Tensor:
    """Each row's divisor: its temperature, 1 on greedy rows."""
    return torch.where(params.greedy, torch.ones_like(params.temperature), params.temperature)


def scaled_rows(logits: torch.Tensor, rows: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``logits[rows] / temperature[:, None]`` in float32, bit for bit, in one pass: on CPU the rows are gathered a
    few at a time (a chunk stays in the CPU's cache) and divided into the result, instead of a copy of the rows and
    then a division of the copy (on Gemma 3's 262k tokens two passes over memory of 32 MiB at 32 rows)."""
    t = temperature[:, None]
    if logits.device.type != "cpu":
        return logits[rows].float() / t
    out = torch.empty((rows.numel(), logits.shape[-1]), dtype=torch.float32, device=logits.device)
    step = max(1, CHUNK_BYTES // (logits.shape[-1] * logits.element_size()))
    for a in range(0, rows.numel(), step):
        torch.div(logits[rows[a:a + step]].float(), t[a:a + step], out=out[a:a + step])
    return out


def filter_dense(scaled: torch.Tensor, params: RowParams) -> torch.Tensor:
    """top-k, top-p, min-p over the whole vocabulary (transformers' algorithm, row-wise parameters)."""
    return filter_ordered(scaled, params, _chain("top_k", "top_p", "min_p"))


def filter_ordered(scaled: torch.Tensor, params: RowParams, order) -> torch.Tensor:
    """The stages of ``order`` but the temperature (``scaled`` has it), applied in that order over the whole
    vocabulary: evalkit's order, or another engine's (:data:`evalkit.settings.ORDERS`)."""
    return apply_chain(scaled, params, tuple(s for s in _chain(*order) if s != ("temperature",)))


def apply_chain(logits: torch.Tensor, params: RowParams, order) -> torch.Tensor:
    """Every stage of ``order``, the temperature included, over the whole vocabulary: the logits that a row of that
    order samples from (greedy rows are left unscaled). A stage of several filters computes each on the same input
    and removes what any of them removes (SGLang's joint top-k/top-p/min-p)."""
    out = logits.float()
    for stage in _stages(order):
        out = _apply_stage(out, params, stage)
    return out


def _stages(order) -> list[tuple[str, ...]]:
    """The stages of ``order`` that hold a transform (a stage without one is set by no row: from_settings)."""
    stages = (tuple(k for k in stage if k in TRANSFORMS) for stage in _chain(*order))
    return [stage for stage in stages if stage]


def _apply_stage(out: torch.Tensor, params: RowParams, stage: tuple[str, ...]) -> torch.Tensor:
    if len(stage) == 1:
        return TRANSFORMS[stage[0]].apply(out, params)
    kept, prefix = out, True  # what every filter so far keeps, the rest at -inf; whether it is a prefix
    for name in stage:
        t = TRANSFORMS[name]
        told = t.among and prefix and kept is not out
        mine = t.apply(out, params, among=kept) if told else t.apply(out, params)
        kept = mine if kept is out else kept.masked_fill(mine.isneginf(), float("-inf"))
        prefix &= name in PREFIX_FILTERS
    return kept


def chain_parts(rows: torch.Tensor, logits: torch.Tensor, params: RowParams, order) -> list[tuple[torch.Tensor,
                                                                                                  Warped]]:
    """``kept_tokens(rows, apply_chain(logits[rows], params[rows], order))``, bit for bit, with fewer passes over the
    vocabulary (``logits`` and ``params``: the batch's; ``rows``: the rows to compute).

    The rows go in groups by the stages active in them (a stage off in a row changes nothing there), each group
    through those alone. After a filter, the rows it has cut to at most 1/16 of a vocabulary of 4,096 or more, where
    every later stage can run on a compact row (``Transform.near`` is set: it reads neither token ids nor the
    vocabulary's size), go on as compact rows: their kept tokens in token id order, then removed ones, all to the
    widest one's width, every later stage computed on that. A stage's decisions there are the whole row's unless
    they lie within the rounding of the sums that differ between the layouts (its ``near``): such a row is computed
    over the whole vocabulary from that filter on, as :func:`apply_chain` does. So every row's result is its whole
    row's, whichever rows share its compact width; :func:`kept_tokens` then lays it out by its own width."""
    params = pick(params, rows)
    parts = []
    for group, stages in _by_stages(params, order, logits.shape[-1]):
        parts += _group_parts(rows[group], pick(logits, rows[group]), pick(params, group), stages)
    return parts


def _by_stages(params: RowParams, order, vocab: int) -> list[tuple[torch.Tensor, list[tuple[str, ...]]]]:
    """The rows in groups of the same active stages of ``order``, each with those stages."""
    stages = _stages(order)
    key = torch.zeros_like(params.order)
    for i, stage in enumerate(stages):
        on = torch.zeros_like(key, dtype=torch.bool)
        for name in stage:
            t = TRANSFORMS[name]
            on |= t.active(params, vocab) if t.active is not None else True
        key |= on.long() << i
    groups = []
    for k in torch.unique(key).tolist():
        groups.append(((key == k).nonzero()[:, 0], [stage for i, stage in enumerate(stages) if k >> i & 1]))
    return groups


def _group_parts(rows: torch.Tensor, logits: torch.Tensor, params: RowParams, stages) -> list[tuple[torch.Tensor,
                                                                                                    Warped]]:
    """:func:`chain_parts` of rows where every stage of ``stages`` is active."""
    vocab = logits.shape[-1]
    out = logits.float()
    for i, stage in enumerate(stages):
        out = _apply_stage(out, params, stage)
        rest = stages[i + 1:]
        if (vocab < 4096 or not rest or not any(TRANSFORMS[k].filter for k in stage)
                or any(TRANSFORMS[k].near is None for later in rest for k in later)):
            continue
        kept = ~out.isneginf()
        few = _width(kept.sum(dim=-1)) <= vocab // 16
        if not bool(few.any()):
            continue
        parts = []
        if not bool(few.all()):
            many = (~few).nonzero()[:, 0]
            parts += _group_parts(rows[many], out[many], params[many], rest)
        at = few.nonzero()[:, 0]
        z, index = _narrow(pick(out, at), pick(kept, at))
        z, index, sure = _compact_rest(z, index, pick(params, at), rest)
        if bool(sure.any()):
            parts += kept_tokens(rows[at[sure]], z[sure], index[sure], vocab)
        if not bool(sure.all()):
            back = at[~sure]
            parts += kept_tokens(rows[back], apply_chain(out[back], params[back], rest))
        return parts
    return kept_tokens(rows, out)


def _compact_rest(z: torch.Tensor, index: torch.Tensor, params: RowParams,
                  stages) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``stages`` on compact rows ``z`` (of tokens ``index``): (logits, index, the rows where no stage's decision
    was near its rounding [rows]). After a filter that leaves every row a quarter of the width or less, the rows
    go on narrower (their kept tokens first, in order)."""
    sure = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
    for stage in stages:
        for name in stage:
            sure &= ~TRANSFORMS[name].near(z, params)
        z = _apply_stage(z, params, stage)
        if any(TRANSFORMS[k].filter for k in stage) and z.shape[-1] > 64:
            kept = ~z.isneginf()
            if 4 * int(_width(kept.sum(dim=-1)).max()) <= z.shape[-1]:
                z, index = _narrow(z, kept, index)
    return z, index, sure


def _narrow(z: torch.Tensor, kept: torch.Tensor, index: torch.Tensor | None = None) -> tuple[torch.Tensor,
                                                                                            torch.Tensor]:
    """Rows ``z`` (``kept``: not -inf; ``index``: their tokens, None for token ids) as compact rows of the widest
    one's width: each row's kept logits first, in order, then removed ones; and their tokens."""
    counts = kept.sum(dim=-1)
    slot = _kept_first(kept, counts, int(_width(counts).max()))
    return z.gather(1, slot), slot if index is None else index.gather(1, slot)


def before_temperature(chain) -> tuple:
    """The stages a chain applies before the temperature (what a greedy row's argmax sees)."""
    stages = _chain(*chain)
    return stages[: stages.index(("temperature",))] if ("temperature",) in stages else stages


def _top_k(out: torch.Tensor, params: RowParams) -> torch.Tensor:
    """Keep the k tokens with the largest logits. Among tokens tied with the k-th: transformers and vLLM keep them
    all; llama.cpp and SGLang keep exactly k (evalkit: the lowest token ids), on rows of their orders (``exact_k``)."""
    k = params.top_k.clamp(max=out.shape[-1])
    on = k > 0
    if not bool(on.any()):
        return out
    kth = largest(out, int(k.max()))[0].gather(1, (k.clamp(min=1) - 1)[:, None])
    kth = kth.masked_fill(~on[:, None], float("-inf"))  # a row where top-k is off drops nothing
    drop = out < kth
    exact = params.rowwise.get("exact_k")
    if exact is not None and bool((exact & on).any()):
        # rows that keep more than k (tokens tied with the k-th): the tied tokens past the room left are dropped
        over = (exact & on) & ((~drop).sum(dim=-1) > k)
        if bool(over.any()):
            rows = over.nonzero()[:, 0]
            z, at = out[rows], kth[rows]
            tied = z == at
            room = k[rows, None] - (z > at).sum(dim=-1, keepdim=True)  # places left for tokens tied with the k-th
            drop[rows] |= tied & (tied.cumsum(dim=-1) > room)
    return out.masked_fill(drop, float("-inf"))


def _top_p(out: torch.Tensor, params: RowParams, among: torch.Tensor | None = None) -> torch.Tensor:
    """Top-p; with ``among`` (in a joint stage: ``out`` with what its filters before top-p remove at -inf), what it
    drops at -inf in ``among`` is left to them (the whole stage removes what any of its filters removes)."""
    on = params.top_p < 1
    if not bool(on.any()):
        return out
    drop = torch.zeros_like(out, dtype=torch.bool)
    if among is not None:
        on = _top_p_among(out, params, on, among, drop)
    for rows, width in sort_groups(out, on):
        drop[rows] = in_pairs(_top_p_drop, pick(out, rows), pick(params.top_p, rows), width=width)
    return out.masked_fill(drop, float("-inf"))


def _top_p_drop(out: torch.Tensor, top_p: torch.Tensor, width: int | None) -> torch.Tensor:
    """The tokens top-p drops from each row, ``width`` as :func:`sort_groups` gives it."""
    vocab = out.shape[-1]
    if width is None and out.device.type == "cpu" and out.dtype == torch.float32:
        # The sorted values alone (numpy's vectorised sort: on 262,144 tokens some twenty times torch's): tied values
        # are alike whatever their order, so the softmax and its cumulative sum are those of the stable sort below.
        asc = torch.from_numpy(np.sort(out.numpy(), axis=-1))
        drop_sorted = asc.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p).float()[:, None]
        drop_sorted[:, -1] = False
        return lowest(out, asc, drop_sorted.sum(dim=-1))  # (a prefix: the cumulative sum never decreases)
    if width is None:
        # Stable ascending sort: among equal logits the higher token id comes first, i.e. is dropped first.
        order = torch.sort(out.flip(-1), dim=-1, stable=True).indices
        order = vocab - 1 - order
        asc = out.gather(1, order)
    else:  # the finite logits alone, in the same order (ranked's, reversed)
        vals, idx = ranked(out, width)
        order = idx.flip(-1)
        asc = out.new_full(out.shape, float("-inf"))  # the whole sorted row: its -inf first, all alike
        asc[:, vocab - width:] = vals.flip(-1)
    probs, tail = asc.softmax(dim=-1), vocab - order.shape[1]
    # on CPU the cumulative sum runs along the row in float64: the zeros before the finite logits add nothing to it
    cum = probs[:, tail:].cumsum(dim=-1) if probs.device.type == "cpu" else probs.cumsum(dim=-1)[:, tail:]
    drop_sorted = cum <= (1 - top_p).float()[:, None]
    drop_sorted[:, -1] = False
    return torch.zeros_like(out, dtype=torch.bool).scatter_(1, order, drop_sorted)


def lowest(out: torch.Tensor, asc: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """The ``n[r]`` lowest tokens of each row of ``out`` ([rows, vocab] mask), ``asc`` its values sorted ascending:
    the first ``n`` of the row's stable ascending sort read from its end, so that among tied logits the higher token
    ids come first (the n - (tokens below the n-th value) highest ids among the tokens at that value)."""
    at = asc.gather(1, n.clamp(max=out.shape[-1] - 1)[:, None])
    below = out < at
    tied = out == at
    room = n[:, None] - below.sum(dim=-1, keepdim=True)  # how many of the tied tokens are among the n
    from_end = tied.flip(-1).cumsum(dim=-1).flip(-1)  # tied tokens at this id or above
    return below | (tied & (from_end <= room))


def _top_p_among(out: torch.Tensor, params: RowParams, on: torch.Tensor, among: torch.Tensor,
                 drop: torch.Tensor) -> torch.Tensor:
    """Top-p's decisions on the tokens not -inf in ``among`` (a prefix of the row's order: a top-k's kept set) in
    the rows where they are at most a quarter of a long vocabulary, written into ``drop``; returns the rows where
    ``on`` still to compute (the others, and rows where a decision lies within :func:`cut_margin` of its cut).

    Top-p is not renormalized there (SGLang's joint stage): the mass ranked strictly above a token is summed over the
    tokens ranked above it, all of them ``among``, as probabilities of the whole row (from its normaliser), and its
    complement c_i compared with 1 - top_p: transformers' cumulative sum from the bottom of the whole sorted row
    without sorting the row. A row with a decision within :func:`cut_margin` of the cut is left to the full sort, so
    the kept set is the full sort's. Ties keep the full sort's order (by logit, then lower token id first)."""
    vocab = out.shape[-1]
    if vocab < 1024:
        return on
    counts = kept_counts(among)
    few = on & (counts <= vocab // 4)
    rows = few.nonzero()[:, 0]
    if rows.numel() == 0:
        return on
    sub = pick(out, rows)
    vals, idx = ranked(pick(among, rows), int(counts[rows].max()))
    row = _normalise(sub, entropy=False)
    p64 = ((vals - row.top) - row.log_rest).exp().double()
    c = (1 - (p64.cumsum(dim=-1) - p64)).float()
    threshold = (1 - params.top_p[rows]).float()[:, None]
    valid = vals.isfinite()
    dropped = (c <= threshold) & valid
    dropped[:, 0] = False
    unsure = (valid & ((c - threshold).abs() < cut_margin(threshold, p64, vocab))).any(dim=-1)
    sure = ~unsure
    drop[rows[sure]] = torch.zeros_like(sub[sure], dtype=torch.bool).scatter_(1, idx[sure], dropped[sure])
    on = on.clone()
    on[rows[sure]] = False
    return on


def cut_margin(threshold: torch.Tensor, probs: torch.Tensor, terms, own=0) -> torch.Tensor:
    """How far from top-p's threshold 1 - top_p ([rows, 1]) a mass computed without the sort must lie to decide as
    transformers' cumulative sum over the sorted row does ([rows, 1]). ``probs``: the row's most likely tokens'
    probabilities, most likely first ([rows, K]); ``terms``: how many exponentials the reference's normaliser sums
    (the row's finite logits); ``own``: how many this side's softmax sums with partial sums up to the total (0 where
    its normaliser comes from torch's cascaded sum).

    transformers' probabilities come from torch's float32 softmax of the sorted row, whose normaliser sums the
    exponentials in vector lanes (at least four on every vectorised build), each lane along the row: each addition
    rounds by up to 2^-24 of its partial sum, and a token ranked j-th from the top is in the partial sums of about
    j / lanes later additions. So the normaliser's relative error, common to every probability and so to the mass,
    is at most 2^-24 (sum_j p_j j / 4 + 16): the tokens past ``probs`` count as ranked ``terms``. Twice that share
    of the threshold, plus MARGIN: on a peaked row some 1e-5 of it, on a near-flat row of 262,144 tokens up to 1%
    (where the two sums do differ by 1e-4). MARGIN covers this side's own error where its total is taken as 1 (the
    row's normaliser, its log rounded to float32: under 7e-7 of absolute mass)."""
    ranks = torch.arange(probs.shape[-1], device=probs.device, dtype=torch.float64)
    mass = probs.double()
    weighted = (mass * ranks).sum(dim=-1, keepdim=True) + (1 - mass.sum(dim=-1, keepdim=True)).clamp(min=0) * terms
    return MARGIN + threshold.double() * (2 * ((weighted + own) / 4 + 16) * 2.0 ** -24)


def _top_p_near(out: torch.Tensor, params: RowParams) -> torch.Tensor:
    """On a compact row (see ``Transform.near``): near when a cumulative mass from the bottom of the sorted row lies
    within its rounding of 1 - top_p."""
    near, rows, z = near_rows(out, params.top_p < 1)
    if rows.numel():
        asc = torch.sort(z, dim=-1).values
        near[rows] = near_cut(asc.softmax(dim=-1).cumsum(dim=-1), (1 - params.top_p[rows]).float()[:, None],
                              rounding(z) + 2 * U, ~asc.isneginf())
    return near


def _min_p_near(out: torch.Tensor, params: RowParams) -> torch.Tensor:
    """On a compact row: near when a probability lies within a few roundings of min_p times the largest (their
    common normaliser cancels: each side's comparison is exp(z - max) against min_p but for its last bits)."""
    near, rows, z = near_rows(out, params.min_p > 0)
    if rows.numel():
        probs = z.softmax(dim=-1)
        cut = params.min_p[rows][:, None] * probs.amax(dim=-1, keepdim=True)
        near[rows] = near_cut(probs, cut, torch.full_like(cut, 16 * U, dtype=torch.float64), ~z.isneginf())
    return near


def _min_p(out: torch.Tensor, params: RowParams) -> torch.Tensor:
    if bool((params.min_p > 0).any()):
        probs = out.softmax(dim=-1)
        drop = probs < params.min_p[:, None] * probs.amax(dim=-1, keepdim=True)
        out = out.masked_fill(drop & (params.min_p > 0)[:, None], float("-inf"))
    return out


# Every stage of a text setting's chain, as a transform: the engine honours a knob that is here.
TRANSFORMS: dict[str, Transform] = {
    "temperature": Transform(scale, torch.float32, near=never_near),
    "top_k": Transform(_top_k, torch.long, lambda p, vocab: (p.top_k > 0) & (p.top_k < vocab), candidates=True,
                       filter=True, near=never_near),
    "top_p": Transform(_top_p, torch.float64, lambda p, vocab: p.top_p < 1, candidates=True, filter=True,
                       among=True, near=_top_p_near),
    "min_p": Transform(_min_p, torch.float32, lambda p, vocab: p.min_p > 0, candidates=True, filter=True,
                       near=_min_p_near),
    **cutoffs.TRANSFORMS, **sigma.TRANSFORMS, **penalties.TRANSFORMS, **xtc.TRANSFORMS, **mirostat.TRANSFORMS,
    **dry.TRANSFORMS,
}


def _filter_candidates(largest_: tuple[torch.Tensor, torch.Tensor], vocab: int, params: RowParams, row: Normalised):
    """The same filters on each row's candidates (``largest_``: :func:`largest` of the scaled rows, their
    logits descending and token ids).

    ``row`` is each whole scaled row's normaliser (top-p's probabilities when top-k is off).
    Returns (logits [rows, size], index [rows, size], fits [rows]). Where ``fits`` is False
    the row must be computed densely: its kept set (or the top-k set that top-p normalises
    over) may reach beyond the candidates, its top-p cut falls between tied logits (where
    only a stable order over the whole vocabulary decides), or a top-p decision is within :func:`cut_margin` or a
    min-p decision within MARGIN of its cut (min-p compares a ratio of two probabilities: their softmax's common
    normaliser cancels).
    """
    neg_inf = float("-inf")
    vals, idx = largest_
    size = vals.shape[-1]
    last = vals[:, -1]

    k = params.top_k.clamp(max=vocab)
    topk_on = k > 0
    kth = vals.gather(1, (k.clamp(min=1, max=size) - 1)[:, None])[:, 0]
    vals = vals.masked_fill(topk_on[:, None] & (vals < kth[:, None]), neg_inf)

    # top-p, as transformers computes it: the softmax over the top-k set (or the whole row when
    # top-k is off), then c_i = mass of the tokens ranked at or below i, dropped when
    # c_i <= 1 - top_p. On CPU torch's float32 cumsum accumulates in float64 and rounds, so
    # c_i = float32(total - mass ranked strictly above i) reproduces it but for the rounding of the two softmaxes'
    # normalisers (the whole row's probabilities from its normaliser, their total 1): see cut_margin.
    topp_on = params.top_p < 1
    probs = torch.where(topk_on[:, None], torch.softmax(vals, dim=-1), ((vals - row.top) - row.log_rest).exp())
    total = torch.where(topk_on, probs.sum(dim=-1), torch.ones_like(probs[:, 0])).double()
    p64 = probs.double()
    c = (total[:, None] - (p64.cumsum(dim=-1) - p64)).float()
    threshold = (1 - params.top_p).float()[:, None]
    keep_p = c > threshold
    keep_p[:, 0] = True
    terms = torch.where(topk_on, k.clamp(max=size), vocab)[:, None]  # the exponentials transformers' softmax sums
    margin = cut_margin(threshold, probs, terms, own=torch.where(topk_on, k.clamp(max=size), 0)[:, None])
    unsure = topp_on & ((c - threshold).abs() < margin).any(dim=-1)
    cut = keep_p.sum(dim=-1).clamp(max=size - 1)  # first candidate top-p drops
    tie = vals.gather(1, cut[:, None])[:, 0] == vals.gather(1, (cut - 1).clamp(min=0)[:, None])[:, 0]
    unsure |= topp_on & (cut > 0) & tie & ~keep_p.all(dim=-1)
    vals = vals.masked_fill(topp_on[:, None] & ~keep_p, neg_inf)

    # p_i >= min_p * p_max  <=>  exp(logit_i - logit_max) >= min_p
    ratio = (vals - vals[:, :1]).exp()
    min_p = params.min_p[:, None]
    keep_m = ratio >= min_p
    minp_on = params.min_p > 0
    unsure |= minp_on & ((ratio - min_p).abs() < MARGIN * min_p).any(dim=-1)
    vals = vals.masked_fill(minp_on[:, None] & ~keep_m, neg_inf)

    if size >= vocab:
        return vals, idx, ~unsure
    min_kept = torch.where(vals.isfinite(), vals, torch.full_like(vals, float("inf"))).amin(dim=-1)
    topk_inside = ~topk_on | ((k <= size) & (kth > last))
    fits = topk_inside & (min_kept > last) & ~unsure  # every token tied with a kept one is a candidate
    return vals, idx, fits


def warp(logits: torch.Tensor, params: RowParams, model: Normalised | None = None,
         candidates: tuple[int, ...] = CANDIDATES) -> list[tuple[torch.Tensor, Warped]]:
    """Each row's sampling distribution, as (row indices, Warped) parts covering every row once.

    ``model``: :func:`model_distribution` of these logits, when the caller has it: the rows that sample from the
    model's distribution take it whole, the rows at temperature 1 that top-k, top-p or min-p cut take its
    normaliser, and those rows at any temperature find their candidates from its block maxima (:class:`_Scaled`):
    the same bits as their own.

    Greedy rows become a point mass on the argmax of the logits as they reach the temperature (the raw logits,
    or those the stages before it left: penalties); rows whose stages change nothing but the temperature keep the
    whole softmax (whatever their order); rows of transformers' order whose stages the candidate path computes
    (top-k, top-p, min-p) go through the candidate lists, and through the dense path when their kept set does not
    fit; the other rows go through their chain, densely, grouped by chain.
    """
    vocab = logits.shape[-1]
    device = logits.device
    rows = torch.arange(logits.shape[0], device=device)
    greedy = params.greedy
    shaped = params.truncates(vocab)
    trunc = shaped & ~greedy
    parts: list[tuple[torch.Tensor, Warped]] = []
    for code, chain in enumerate(params.chains):
        g = rows[greedy & (params.order == code)]
        if g.numel():
            z = logits[g]
            early = before_temperature(chain)
            if early and bool(shaped[g].any()):
                z = apply_chain(z, params[g], early)
            top = z.argmax(dim=-1, keepdim=True)
            parts.append((g, Warped(torch.zeros(top.shape, dtype=torch.float32, device=device), top)))
    plain = ~greedy & ~trunc
    if model is not None:
        own = samples_model(params, vocab, shaped)
        if bool(own.any()):
            parts.append((rows[own], Warped.model(logits, rows[own], model)))
            plain &= ~own
    plain = rows[plain]
    if plain.numel():
        parts.append((plain, Warped.scaled(logits, plain, temperatures(params)[plain])))
    engine = ORDERS[ENGINE_ORDER]
    fast_code = params.chains.index(engine) if engine in params.chains else -1
    early = before_temperature(engine)  # the processors (penalties, n-gram ban, min tokens): applied first, densely
    early_knobs = {k for stage in early for k in stage}
    fast = trunc & (params.order == fast_code) & ~params._active(
        vocab, lambda name: name not in CANDIDATE_KNOBS and name not in early_knobs)
    for code, chain in enumerate(params.chains):
        other = rows[trunc & ~fast & (params.order == code)]
        if other.numel():
            parts += chain_parts(other, logits, params, chain)
    todo = rows[fast]
    if todo.numel() == 0:
        return parts
    sub = params[todo]
    if bool(sub._active(vocab, lambda name: name in early_knobs).any()):
        rows_of = _Scaled(scale(apply_chain(pick(logits, todo), sub, early), sub))
        model = None
    else:  # the rows are the batch's divided by their temperatures: divided where needed, never whole if it can be
        rows_of = _Scaled(None, logits, todo, temperatures(sub), None if model is None else model.peaks)
        if model is None or model.peaks is None:
            rows_of = _Scaled(rows_of.take(None))
    filtered = sub._active(vocab, lambda name: name in CANDIDATE_KNOBS)  # rows with a filter after the processors
    if not bool(filtered.all()):
        parts.append((todo[~filtered], Warped(rows_of.take(~filtered), None)))
        todo, sub, rows_of = todo[filtered], sub[filtered], rows_of.only(filtered)
        if todo.numel() == 0:
            return parts
    row = _row_normalisers(logits, todo, sub, rows_of, model)
    left = torch.arange(todo.numel(), device=device)  # positions in `todo` still to place
    for size in candidates:
        if left.numel() == 0 or size >= vocab:
            break
        vals, idx, fits = _filter_candidates(rows_of.largest(left, size), vocab, sub[left],
                                             Normalised(*(None if t is None else pick(t, left) for t in row)))
        if bool(fits.any()):
            parts.append((todo[left[fits]], Warped(vals[fits], idx[fits])))
        left = left[~fits]
    if left.numel():
        parts += kept_tokens(todo[left], filter_dense(rows_of.take(left), sub[left]))
    return parts


class _Scaled:
    """The rows :func:`warp`'s candidate path works on: ``scaled`` (computed), or rows ``rows`` of the batch's
    ``logits`` divided by ``temperature``, divided only where they are read, with the batch's block maxima
    (``peaks``, :attr:`Normalised.peaks`): a row's candidates then come from its maxima divided (division keeps
    their order and rounds each maximum as it rounds the logit: the divided row's own maxima, bit for bit, but for the
    sign of a zero, which no comparison sees) and the
    logits of its largest blocks divided, the same as :func:`largest` of the divided row."""

    def __init__(self, scaled: torch.Tensor | None, logits: torch.Tensor | None = None,
                 rows: torch.Tensor | None = None, temperature: torch.Tensor | None = None,
                 peaks: torch.Tensor | None = None):
        self.scaled, self.logits, self.rows, self.temperature, self.peaks = scaled, logits, rows, temperature, peaks

    def take(self, where: torch.Tensor | None) -> torch.Tensor:
        """The divided rows at ``where`` (positions or a mask; None: all)."""
        if self.scaled is not None:
            return self.scaled if where is None else pick(self.scaled, where) if where.dtype != torch.bool \
                else self.scaled[where]
        rows, t = (self.rows, self.temperature) if where is None else (self.rows[where], self.temperature[where])
        return scaled_rows(self.logits, rows, t)

    def only(self, where: torch.Tensor) -> _Scaled:
        """These rows at ``where`` (a mask)."""
        if self.scaled is not None:
            return _Scaled(self.scaled[where])
        return _Scaled(None, self.logits, self.rows[where], self.temperature[where], self.peaks)

    def largest(self, where: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`largest` of the divided rows at ``where`` (positions): from the maxima where it would look among
        blocks (its own rule), from the divided rows otherwise."""
        vocab = self.scaled.shape[-1] if self.scaled is not None else self.logits.shape[-1]
        if self.scaled is not None or vocab < 4 * size * SCAN_BLOCK:
            return largest(self.take(where), size)
        rows, t = self.rows[where], self.temperature[where, None]
        peaks = self.peaks[rows] / t
        blocks = torch.topk(peaks, size, dim=-1, sorted=False).indices
        at = (blocks[:, :, None] * SCAN_BLOCK + torch.arange(SCAN_BLOCK, device=peaks.device)).reshape(len(rows), -1)
        whole = peaks.shape[1] * SCAN_BLOCK
        if whole < vocab:
            at = torch.cat([at, torch.arange(whole, vocab, device=peaks.device).expand(len(rows), -1)], dim=1)
        vals, inner = torch.topk(self.logits[rows[:, None], at].float() / t, size, dim=-1)
        return vals, at.gather(1, inner)


def _row_normalisers(logits: torch.Tensor, todo: torch.Tensor, sub: RowParams, rows_of: _Scaled,
                     model: Normalised | None) -> Normalised:
    """The normaliser of each of ``rows_of``'s rows (rows ``todo`` of ``logits`` divided by their temperatures,
    unless ``model`` is None): the model's where the temperature is 1 (the row is then the batch's, bit for bit),
    the rest computed from the batch's logits, divided as they are normalised."""
    one = None if model is None else sub.temperature == 1
    if one is None or not bool(one.any()):
        if rows_of.scaled is not None:
            return _normalise(rows_of.scaled, entropy=False)
        return _normalise(logits, entropy=False, rows=todo, temperature=rows_of.temperature)
    top, log_rest = model.top[todo], model.log_rest[todo]
    if not bool(one.all()):
        other = (~one).nonzero()[:, 0]
        own = _normalise(logits, entropy=False, rows=todo[other], temperature=sub.temperature[other]) \
            if rows_of.scaled is None else _normalise(pick(rows_of.scaled, other), entropy=False)
        top[other], log_rest[other] = own.top, own.log_rest
    return Normalised(top, log_rest, None, None, model.neginf[todo])


def kept_tokens(rows: torch.Tensor, out: torch.Tensor, index: torch.Tensor | None = None,
                vocab: int | None = None) -> list[tuple[torch.Tensor, Warped]]:
    """Rows a chain has computed over the whole vocabulary (``out``, -inf where it removed a token) as parts to
    draw from. In a vocabulary of 4,096 or more, a row whose kept count, rounded up to a power of two from 64 on
    (its width), is at most 1/16 of the vocabulary becomes that many tokens: its kept ones first, in token id order
    (the order its whole row is drawn in), then removed ones (-inf), so that its draw does not pass over the whole
    vocabulary. Rows are grouped by width, a function of the row alone: a row's layout of values, and so its draw
    and statistics, do not depend on the rows beside it. Every slot holds a distinct token (``Warped.dense``).

    With ``index`` ([rows, width]: ``out``'s tokens, of a vocabulary of ``vocab``), ``out`` is compact rows (this
    layout, or one a stage has since cut further), laid out again by the same rule: the same values in the same
    places as from their whole rows."""
    vocab = out.shape[-1] if index is None else vocab
    if vocab < 4096:
        return [(rows, Warped(out, index))]
    kept = ~out.isneginf()
    counts = kept.sum(dim=-1)
    width = _width(counts)
    parts = []
    many = width > vocab // 16  # (never with ``index``: a compact row is as narrow already)
    if bool(many.any()):
        parts.append((rows[many], Warped(out[many], None)))
        if bool(many.all()):
            return parts
    few = (~many).nonzero()[:, 0]
    slots = _kept_first(pick(kept, few), pick(counts, few), int(width[few].max()))
    for w in torch.unique(width[few]).tolist():
        at = (width[few] == w).nonzero()[:, 0]
        slot = pick(slots, at)[:, :w]
        rows_at = few[at]
        token = slot if index is None else pick(index, rows_at).gather(1, slot)
        parts.append((rows[rows_at], Warped(pick(out, rows_at).gather(1, slot), token)))
    return parts


def _kept_first(kept: torch.Tensor, counts: torch.Tensor, width: int) -> torch.Tensor:
    """[rows, width]: the places where each row of ``kept`` is True, in order (``counts`` of them, at most
    ``width``), then places where it is False among its first 2 ``width`` (at least ``width`` of those), in order:
    any first w columns hold a row's kept places and removed ones after them, w at least its count. (A short row:
    the same places from one stable sort.)"""
    if kept.shape[-1] <= 4096:
        return torch.sort((~kept).to(torch.uint8), dim=-1, stable=True).indices[:, :width]
    slot = torch.empty(kept.shape[0], width, dtype=torch.long, device=kept.device)
    few = width <= 256 and kept.shape[-1] % 64 == 0
    _fill(slot, *(_places(kept) if few else kept.nonzero(as_tuple=True)), counts, torch.zeros_like(counts))
    removed = ~kept[:, :2 * width]
    _fill(slot, *removed.nonzero(as_tuple=True), removed.sum(dim=-1), counts)
    return slot


def _fill(slot: torch.Tensor, r: torch.Tensor, c: torch.Tensor, n: torch.Tensor, offset: torch.Tensor) -> None:
    """Each row's places ``c`` (rows ``r``, ``n`` of them a row, in order) into ``slot`` from its column ``offset``
    on, as many as fit."""
    place = torch.arange(r.numel(), device=slot.device) - (n.cumsum(0) - n)[r] + offset[r]
    fits = place < slot.shape[1]
    slot[r[fits], place[fits]] = c[fits]


def _places(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask.nonzero(as_tuple=True)`` of a mask with few places set in rows whose length is a multiple of 64:
    from the blocks of 64 that hold one, found by a reduction (nonzero over a whole long row costs more)."""
    rows, vocab = mask.shape
    blocks = mask.view(rows, vocab // 64, 64)
    r, b = blocks.any(dim=-1).nonzero(as_tuple=True)
    i, c = blocks[r, b].nonzero(as_tuple=True)
    return r[i], b[i] * 64 + c


def _width(counts: torch.Tensor) -> torch.Tensor:
    """A compact row's width for its kept count: a power of two, 64 at least."""
    return torch.exp2(torch.log2(counts.clamp(min=64).double()).ceil()).long()


def check_logits(logits: torch.Tensor, log_z: torch.Tensor | None = None) -> torch.Tensor:
    """Rows whose logits cannot define a distribution: any NaN or +inf, or every logit -inf. Read from the rows'
    log-normaliser (``log_z``, [rows, 1], computed when not given): it is finite exactly when the row is none of
    these."""
    if log_z is None:
        log_z, _ = log_normaliser_and_entropy(logits.float())
    return ~log_z[:, 0].isfinite()


class Draw:
    """One decode step's choice per row, with the sampling distribution's statistics."""

    def __init__(self, tokens: torch.Tensor, logprob: torch.Tensor, entropy: torch.Tensor, kept: torch.Tensor):
        self.tokens, self.logprob, self.entropy, self.kept = tokens, logprob, entropy, kept


def distribution(logits: torch.Tensor, rows: torch.Tensor | None = None,
                 temperature: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                    torch.Tensor]:
    """(weights, log-normaliser [rows, 1], entropy in nats, tokens kept) of each row of float32 logits: weights
    proportional to the softmax (exp(z_i - max z), what is sampled from: :func:`_inverse_cdf` normalises by their
    sum), :func:`log_normaliser_and_entropy` from the same exponentials, and how many logits are not -inf. With
    ``rows`` and ``temperature``: of ``logits[rows] / temperature[:, None]``, divided as they are normalised."""
    n = _normalise(logits, keep_weights=True, rows=rows, temperature=temperature)
    kept = torch.full(n.entropy.shape, logits.shape[-1], dtype=torch.long, device=logits.device)
    if bool(n.neginf.any()):  # (divided: a huge logit over a tiny temperature may become -inf too)
        z = logits[n.neginf] if rows is None else scaled_rows(logits, rows[n.neginf], temperature[n.neginf])
        kept[n.neginf] = torch.count_nonzero(z != float("-inf"), dim=-1)
    return n.weights, n.log_z, n.entropy, kept


def samples_model(params: RowParams, vocab: int, truncates: torch.Tensor | None = None) -> torch.Tensor:
    """Rows that sample from the model's own distribution: temperature 1 and no stage that changes it
    (``truncates``: :meth:`RowParams.truncates`, when the caller has it)."""
    return (params.temperature == 1) & ~(params.truncates(vocab) if truncates is None else truncates)


def model_distribution(logits: torch.Tensor, params: RowParams) -> Normalised:
    """The model's distribution of each row of float32 ``logits``: its log-normaliser and entropy, as
    :func:`log_normaliser_and_entropy` gives them, and the weights of the rows that sample from it
    (:func:`samples_model`; :func:`warp` draws them from these, not from a second pass over the same logits), and
    in a long vocabulary each row's block maxima, where some row of transformers' order has a filter that the
    candidate path computes and no other stage (:func:`warp` looks for that row's candidates there)."""
    vocab = logits.shape[-1]
    engine = ORDERS[ENGINE_ORDER]
    actives = params.actives(vocab)
    own = samples_model(params, vocab, params._active(vocab, lambda name: True, actives))
    peaks = vocab >= max(16 * PEAK_BLOCK, 4 * CANDIDATES[0] * SCAN_BLOCK) and engine in params.chains and bool(
        ((params.order == params.chains.index(engine)) & ~params.greedy
         & params._active(vocab, CANDIDATE_FILTERS.__contains__, actives)
         & ~params._active(vocab, lambda name: name not in CANDIDATE_KNOBS, actives)).any())
    return _normalise(logits, keep=own.tolist(), peaks=peaks)


def log_normaliser_and_entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log Z [rows, 1], entropy in nats [rows]) of each row of float32 logits, without cancellation.

    With m the row's largest logit and e_i = exp(z_i - m) for every other token: log Z = m + log1p(sum e_i) and
    H = sum p (log Z - z) = log1p(sum e_i) + sum e_i (m - z_i) / (1 + sum e_i), sums of terms >= 0 (log Z - E[z]
    cancels on sharply peaked rows: at low temperature it lost up to 20% of the value over a 50k vocabulary; a
    softmax's p_max rounds to 1 and loses log1p of the rest). Float32 throughout, in place where it can be: on CPU
    each pass over the rows costs what reading them from memory costs, so the passes are few.

    A token whose exp(z_i - m) is at or under :data:`TINY` (float32's exp would underflow) counts as 0 in the sums. A
    row with NaN or +inf logits, or only -inf, gets a log Z that is not finite (:func:`check_logits` reads it).

    A lone row is computed as a batch of two, as the cutoffs compute it (:mod:`evalkit.generation.samplers.cutoffs`):
    torch splits a lone row's sum among threads, so its last bits would depend on the rows beside it."""
    n = _normalise(logits)
    return n.log_z, n.entropy


CHUNK_BYTES = 2 << 20  # _normalise works through the rows in chunks of about this many bytes of logits


class Normalised(NamedTuple):
    """Each row's largest logit m ([rows, 1]), log(Z) - m ([rows, 1]), entropy ([rows]; None unless asked for), the
    weights e_i = exp(z_i - m) (None unless asked for; 0 at or under :data:`TINY`; with ``keep``, those rows' alone),
    whether the row has a -inf logit ([rows]), and the row's block maxima (:func:`block_peaks` of :data:`SCAN_BLOCK`;
    None unless asked for)."""

    top: torch.Tensor
    log_rest: torch.Tensor
    entropy: torch.Tensor | None
    weights: torch.Tensor | None
    neginf: torch.Tensor
    peaks: torch.Tensor | None = None  # the largest logit of each whole block of SCAN_BLOCK (None unless asked for)

    @property
    def log_z(self) -> torch.Tensor:
        return self.top + self.log_rest


def _normalise(logits: torch.Tensor, keep_weights: bool = False, entropy: bool = True,
               rows: torch.Tensor | None = None, temperature: torch.Tensor | None = None,
               keep: list[bool] | None = None, peaks: bool = False) -> Normalised:
    """See :func:`log_normaliser_and_entropy` and :class:`Normalised` (``entropy`` False: its entropy is left
    unset, two passes over the rows fewer). With ``rows`` and ``temperature`` ([rows]): of
    ``logits[rows] / temperature[:, None]``, each chunk gathered and divided as it is normalised (the same bits).
    With ``keep`` (one bool per row): the weights of the rows it marks, in row order, and no others. With ``peaks``
    (a vocabulary of 16 x PEAK_BLOCK or more): each row's block maxima too, from the pass that finds its top.

    The rows go through in chunks of about :data:`CHUNK_BYTES` (at least two rows each: a lone row's sums would
    split among threads), each chunk through every pass before the next: its temporaries stay in the CPU's cache
    instead of each pass streaming the whole batch from memory (on Gemma 3's 262k tokens at 64 rows, a third less
    time). A row's result does not depend on its chunk."""
    if rows is not None and logits.device.type != "cpu":
        logits, rows = logits[rows].float() / temperature[:, None], None
    source, picked = logits, rows
    rows, vocab = (logits.shape[0] if picked is None else picked.numel()), logits.shape[-1]
    if keep is not None and (keep_weights or all(keep) or not any(keep)):
        keep_weights, keep = keep_weights or all(keep), None
    peaks = peaks and vocab >= 16 * PEAK_BLOCK  # (_top finds a shorter row's top without blocks)
    if rows == 1:
        if picked is None:
            two = _normalise(torch.cat([logits, logits]), keep_weights, entropy, peaks=peaks)
        else:
            two = _normalise(logits, keep_weights, entropy, picked.repeat(2), temperature.repeat(2), peaks=peaks)
        return Normalised(*(None if t is None else t[:1] for t in two))
    # (a GPU gets the rows whole: there a chunk would cost kernel launches, not memory traffic)
    step = max(2, CHUNK_BYTES // (vocab * 4)) if logits.device.type == "cpu" else rows
    starts = list(range(0, rows, step))
    if starts and rows - starts[-1] == 1:
        starts.pop()  # a lone last row joins the chunk before it
    ends = starts[1:] + [rows]
    new = dict(dtype=torch.float32, device=logits.device)
    weights = torch.empty(rows if keep is None else sum(keep), vocab, **new) if keep_weights or keep else None
    place = [0] if keep is None else [0, *itertools.accumulate(keep)]  # keep: row i's weights at place[i]
    size = max((b - a for a, b in zip(starts, ends)), default=0)
    shifted = torch.empty(size, vocab, **new)
    e = None if keep_weights else torch.empty(size, vocab, **new)
    top, log_rest = torch.empty(rows, 1, **new), torch.empty(rows, 1, **new)
    spread = torch.empty(rows, **new) if entropy else None
    neginf = torch.empty(rows, dtype=torch.bool, device=logits.device)
    maxima = torch.empty(rows, vocab // SCAN_BLOCK, **new) if peaks else None
    for a, b in zip(starts, ends):
        chunk = source[a:b]
        if picked is not None:  # the rows divided into the shifted buffer: _normalise_rows shifts them in place
            if source.dtype == torch.float32:  # gathered straight into it, then divided there
                chunk = torch.index_select(source, 0, picked[a:b], out=shifted[:b - a]).div_(temperature[a:b, None])
            else:
                chunk = torch.div(source[picked[a:b]].float(), temperature[a:b, None], out=shifted[:b - a])
        kept = keep_weights or (keep is not None and all(keep[a:b]))
        out = weights[place[a] if keep else a:][:b - a] if kept else e[:b - a]
        top[a:b], log_rest[a:b], neginf[a:b] = _normalise_rows(
            chunk, shifted[:b - a], out, kept or (keep is not None and any(keep[a:b])),
            None if spread is None else spread[a:b], None if maxima is None else maxima[a:b])
        if not kept and keep is not None and any(keep[a:b]):  # some of the chunk's rows: their weights copied out
            mine = [i for i in range(b - a) if keep[a + i]]
            weights[place[a]:place[a] + len(mine)] = out[mine]
    return Normalised(top, log_rest, None if spread is None else log_rest[:, 0] + spread, weights, neginf, maxima)


def _normalise_rows(logits: torch.Tensor, shifted: torch.Tensor, e: torch.Tensor, keep_weights: bool,
                    spread: torch.Tensor | None, peaks: torch.Tensor | None = None):
    """:func:`_normalise` of two rows or more, ``shifted`` and ``e`` buffers of their shape (``e`` ends as the
    weights when ``keep_weights``): (top, log_rest, neginf), the entropy less log_rest into ``spread`` and the block
    maxima into ``peaks`` unless they are None."""
    top, arg = _top(logits, peaks)
    torch.sub(logits, top, out=shifted)  # z - m <= 0
    low = shifted.amin(dim=-1)
    clamp = bool((low < CLAMP_FROM).any())
    if clamp:  # exp(z - m) would underflow there (see UNDERFLOW): the weights at or below TINY are 0
        shifted.clamp_(min=UNDERFLOW)  # (the terms e_i (m - z_i) are then 0 * UNDERFLOW, never 0 * -inf)
    torch.exp(shifted, out=e)
    if clamp:
        torch.nn.functional.threshold_(e, TINY, 0.0)
    e.scatter_(1, arg, 0.0)  # the top token's term is log1p's 1
    rest = e.sum(dim=-1, keepdim=True)
    log_rest = torch.log1p(rest)
    if spread is not None:
        torch.sum(shifted.mul_(e), dim=-1, out=spread)  # terms e_i (z_i - m), in place
        spread.neg_().div_(1 + rest[:, 0])
    if keep_weights:
        e.scatter_(1, arg, 1.0)
    return top, log_rest, low.isneginf()


# A token's weight exp(z - m) at or under TINY (2^-125, 2.4e-38: e^-86.7 of the top token's) is taken as 0, its
# exponential never computed: below float32's smallest normal number, exp costs 30 to 100 times its ordinary cost on
# x86 CPUs (an underflowing result takes a slow path), and a low temperature puts most of a row there (at temperature
# 0.3, the exponentials of one decode step took more time than every other sampling transform together). The
# logits more than UNDERFLOW below the top are clamped to it first: exp(-87) = 1.6e-38 is normal, and under TINY.
UNDERFLOW = -87.0
TINY = 2.0 ** -125
# A chunk clamps and thresholds when some row of it has a logit this far below its top: every exponential above it
# (exp(-86) = 4.5e-38) is over TINY, so a row that has none gets the same weights either way, whatever its chunk.
CLAMP_FROM = -86.0


PEAK_BLOCK = 256  # _top finds a row's largest logit among the largest of its blocks of this many


def _top(logits: torch.Tensor, fine: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's largest logit and the index of its first occurrence ([rows, 1] each): ``max(dim=-1)``'s result,
    from the maxima of blocks of :data:`PEAK_BLOCK` logits and then within the first block that holds the row's
    (on CPU, a reduction that keeps its index runs several times slower than one that keeps only the value). With
    ``fine`` ([rows, vocab // SCAN_BLOCK]): the maxima of the blocks of SCAN_BLOCK go there, and those of PEAK_BLOCK
    come from them (a maximum is exact, however it is grouped)."""
    vocab = logits.shape[1]
    if vocab < 16 * PEAK_BLOCK:
        return logits.max(dim=-1, keepdim=True)
    if fine is None:
        peaks, whole = block_peaks(logits, PEAK_BLOCK)
    else:
        whole, per = vocab // PEAK_BLOCK * PEAK_BLOCK, PEAK_BLOCK // SCAN_BLOCK
        torch.amax(logits[:, :fine.shape[1] * SCAN_BLOCK].reshape(logits.shape[0], -1, SCAN_BLOCK), dim=-1, out=fine)
        peaks = fine[:, :whole // SCAN_BLOCK].reshape(logits.shape[0], -1, per).amax(dim=-1)
    if whole < vocab:
        peaks = torch.cat([peaks, logits[:, whole:].amax(dim=-1, keepdim=True)], dim=1)
    top, block = peaks.max(dim=-1, keepdim=True)
    at = (block * PEAK_BLOCK + torch.arange(PEAK_BLOCK, device=logits.device)).clamp_(max=vocab - 1)
    _, inner = logits.gather(1, at).max(dim=-1, keepdim=True)
    return top, at.gather(1, inner)


BLOCK = 256  # inverse-CDF sampling over a whole vocabulary goes through blocks of this many tokens


def _inverse_cdf(probs: torch.Tensor, x: torch.Tensor, of: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the first token whose cumulative probability exceeds ``x * total`` (float64 sums): draw i from row
    ``of[i]`` of ``probs`` (``of`` None: row i). A row shared by several draws is summed once, and each draw gets
    the same index it would get from its own copy of the row."""
    rows, vocab = probs.shape
    of = torch.arange(rows, device=probs.device) if of is None else of
    if vocab <= 4 * BLOCK:
        cdf = probs.double().cumsum(dim=-1)[of]
        j = torch.searchsorted(cdf, (x * cdf[:, -1])[:, None], right=True)
        return j.clamp(max=vocab - 1)
    blocks = -(-vocab // BLOCK)
    whole = probs if vocab % BLOCK == 0 else torch.nn.functional.pad(probs, (0, blocks * BLOCK - vocab))
    padded = whole.reshape(rows, blocks, BLOCK)  # a view, not a copy, when the vocabulary fills its blocks
    block_cdf = padded.sum(dim=-1).double().cumsum(dim=-1)[of]
    target = x * block_cdf[:, -1]
    b = torch.searchsorted(block_cdf, target[:, None], right=True).clamp(max=blocks - 1)
    before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(target[:, None]))
    inner = padded[of, b[:, 0]].double().cumsum(dim=-1)
    rest = torch.minimum(target[:, None] - before, inner[:, -1:] * (1 - 1e-12))  # stay on a token with mass
    k = torch.searchsorted(inner, rest, right=True).clamp(max=BLOCK - 1)
    return (b * BLOCK + k).clamp(max=vocab - 1)


def sample(parts: list[tuple[torch.Tensor, Warped]], u: torch.Tensor, batch: int,
           groups: torch.Tensor | None = None) -> Draw:
    """Inverse-CDF sampling: row r takes the first token whose cumulative probability exceeds u[r].

    ``u`` holds one uniform in [0, 1) per row (float64), from the row's own random stream;
    cumulative sums are taken in float64 so that tail tokens keep their probability. With ``groups`` ([batch]),
    ``parts`` cover groups of rows that share one distribution (rows of one prompt and setting at the first step),
    row r drawing from group ``groups[r]``: each distribution is formed once, each row draws with its own uniform,
    and the result is the one each row would get from its own copy.
    """
    device = u.device
    tokens = torch.empty(batch, dtype=torch.long, device=device)
    logprob = torch.empty(batch, dtype=torch.float32, device=device)
    entropy = torch.empty(batch, dtype=torch.float32, device=device)
    kept = torch.empty(batch, dtype=torch.long, device=device)
    place = None if groups is None else torch.full((int(groups.max()) + 1,), -1, dtype=torch.long, device=device)
    for rows, part in parts:
        weights, lse, ent, n_kept = part.distribution()
        of = None
        if place is not None:  # the rows of this part's groups, and each one's group within the part
            place[rows] = torch.arange(rows.numel(), device=device)
            local = place[groups]
            rows = (local >= 0).nonzero()[:, 0]
            of = local[rows]
            place[:] = -1
        j = _inverse_cdf(weights, u[rows], of)
        at = torch.arange(weights.shape[0], device=device) if of is None else of
        tokens[rows] = j[:, 0] if part.index is None else part.index[at].gather(1, j)[:, 0]
        logprob[rows] = part.chosen(at, j[:, 0]) - lse[at, 0]
        entropy[rows] = ent[at]
        kept[rows] = n_kept[at]
    return Draw(tokens, logprob, entropy, kept)
