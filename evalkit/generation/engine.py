"""evalkit's batched sampling engine: one decode for every setting and sample of a prompt, with continuous refill.

The engine keeps up to ``batch_size`` rows in flight, each in a slot of a KV cache (:class:`SlotCache`). Work units
are taken in prompt order. A prompt is prefilled once, alone, and its cache is copied into the slot of every row
that continues it (all its settings x samples); the prefill is kept while units of the prompt wait. Each decode
step applies every row's own sampling transforms (:mod:`evalkit.generation.sampling`) and draws its token with a
uniform from the row's own random stream, a function of the sample's seed and its step only
(:func:`evalkit.seeds.uniforms`). Rows that finish (end-of-sequence, a stop string, ``max_new_tokens``) are yielded
at once, and new units take their slots before the next step: the batch stays full until the queue is empty.

A row's first token comes from its prompt's prefill, drawn from one distribution per (prompt, setting) that every
such row shares. On CPU every decode step runs its linear layers in blocks of fixed row counts whose products give a
row the same bits, and each row attends over its own slot through evalkit's own attention: a sample is the same at
any batch size, with or without refill (:mod:`evalkit.generation.slots`). On
out-of-memory (CUDA) the unfinished units are retried at half the batch size; their random streams give them the
same tokens, but for the last bits of the logits, which on a GPU depend on the batch's shape.

With ``prompt_inputs`` (vision-language models) a prompt's own model inputs (pixel values, image grid sizes, ...)
go into its prefill, whose position ids the model computes itself. Models with multimodal RoPE (Qwen2-VL and its
kin) give an image's tokens fewer positions than tokens and keep the shift (``rope_deltas``) after the prefill;
the row's decode positions add it.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from evalkit.generation.base import ENGINE_STAT_COLUMNS, WorkUnit
from evalkit.errors import EvalkitError
from evalkit.generation.heap import keep_freed_blocks
from evalkit.generation.sampling import RowParams, check_logits, model_distribution, sample, warp
from evalkit.generation.slots import SlotCache, fixed_rows, linears_of, slot_attention, span_for
from evalkit.seeds import uniforms


class DecodeError(EvalkitError):
    """Logits that define no distribution (NaN, +inf, or all -inf)."""


class UnsupportedModel(EvalkitError):
    """A model whose layers evalkit's engine cannot decode (see :meth:`Engine._check_layers`)."""


@dataclass
class Finished:
    unit: WorkUnit
    token_ids: list[int]  # new tokens, end-of-sequence excluded
    text: str
    finish_reason: str  # "eos" | "stop" | "length"
    stats: dict[str, list] = field(default_factory=dict)  # per token, aligned with token_ids


class _Row:
    __slots__ = ("unit", "tokens", "stats")

    def __init__(self, unit: WorkUnit):
        self.unit, self.tokens = unit, []
        self.stats = {name: [] for name in ENGINE_STAT_COLUMNS}


@dataclass
class _Prefill:
    cache: DynamicCache  # one row, every layer whole
    logits: torch.Tensor  # [1, vocab], the last position's
    offset: int  # the RoPE shift of a multimodal-RoPE model (0 for others)


@dataclass
class _Batch:
    """The rows in flight, row r in slot r of ``cache``: their state, and the token each drew last."""
    rows: list[_Row]
    params: RowParams | None
    seeds: np.ndarray
    chosen: torch.Tensor
    offsets: torch.Tensor


def _close_gaps(n: int, done: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Rows ``0 .. n-1`` of which ``done`` finished: (the rows that go on, in their new order; the slots they leave
    open that are filled; the rows moved into them). Only the last rows move: one copy per finished row at most."""
    left = n - len(done)
    finished = set(done)
    holes = [i for i in done if i < left]
    movers = [i for i in range(left, n) if i not in finished]
    order = list(range(left))
    for hole, mover in zip(holes, movers):
        order[hole] = mover
    return order, holes, movers


class Engine:
    def __init__(self, model, *, eos_ids: list[int], pad_id: int, device: str,
                 decode: Callable[[list[int]], str], profile: bool = False, prompt_inputs: bool = False,
                 vocabulary=None, refill: bool = True):
        self.model, self.eos, self.pad_id, self.device, self.decode = model, set(eos_ids), pad_id, device, decode
        self.vocabulary = vocabulary  # the tokenizer's, for DRY's sequence breakers (samplers.dry.Vocabulary)
        self.profile, self.prompt_inputs = profile, prompt_inputs
        # refill=False: waves (new units join only when every row has finished), to measure what refill gives
        self.refill = refill
        # on CPU every linear layer of a decode step runs at a fixed row count (evalkit.generation.slots)
        self.fixed = linears_of(model) if device == "cpu" else []
        if device == "cpu":
            keep_freed_blocks()  # a step's large tensors reused, not mapped afresh (evalkit.generation.heap)
        # filled when profile=True: decode steps' forward passes and draws; prefills and the first draws from them
        # (rows: summed over the decode steps)
        self.timings = {"forward_s": 0.0, "sampling_s": 0.0, "steps": 0, "rows": 0, "prefill_s": 0.0,
                        "first_draw_s": 0.0}

    def _clock(self) -> float:
        if self.profile and self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def run(self, units: list[WorkUnit], *, max_new_tokens: int, batch_size: int, stop: tuple[str, ...] = (),
            progress: Callable[[int, int], None] | None = None) -> Iterator[Finished]:
        order = {}
        for u in units:
            order.setdefault(u.prompt.prompt.id, len(order))
        pending = sorted(units, key=lambda u: order[u.prompt.prompt.id])
        done = 0
        while pending:
            finished: set[int] = set()
            try:
                for result in self._decode_all(pending, max_new_tokens, batch_size, stop,
                                               lambda step: progress and progress(done, step)):
                    finished.add(id(result.unit))
                    done += 1
                    yield result
                return
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                pending = [u for u in pending if id(u) not in finished]

    @torch.inference_mode()
    def _decode_all(self, units: list[WorkUnit], max_new_tokens: int, batch_size: int, stop: tuple[str, ...],
                    on_step) -> Iterator[Finished]:
        """Every unit, ``batch_size`` rows in flight, rows that finish replaced at once by the next units."""
        queue = deque(units)
        waiting = Counter(u.prompt.prompt.id for u in units)  # a prompt's prefill is kept while its units wait
        prefills: dict[str, _Prefill] = {}
        settings = list({id(u.setting): u.setting for u in units}.values())  # every row's chain and tables agree
        capacity = span_for(max(len(u.prompt.token_ids) for u in units) + min(max_new_tokens, 64))
        cache = SlotCache(min(batch_size, len(units)), capacity, self.device)  # grows when a row outgrows it
        batch = _Batch([], None, np.zeros(0, dtype=np.uint64), torch.zeros(0, dtype=torch.long, device=self.device),
                       torch.zeros(0, dtype=torch.long, device=self.device))
        while True:
            while queue and len(batch.rows) < batch_size and (self.refill or not batch.rows):  # fill the free slots
                joining = [queue.popleft() for _ in range(min(batch_size - len(batch.rows), len(queue)))]
                for u in joining:
                    waiting[u.prompt.prompt.id] -= 1
                    if u.prompt.prompt.id not in prefills:
                        started = self._clock() if self.profile else 0.0
                        prefills[u.prompt.prompt.id] = self._prefill(u.prompt)
                        if self.profile:
                            self.timings["prefill_s"] += self._clock() - started
                yield from self._join(batch, joining, prefills, cache, settings, max_new_tokens, stop)
                for pid in [pid for pid in prefills if not waiting[pid]]:
                    del prefills[pid]
            if not batch.rows:
                return
            on_step(max(len(r.tokens) for r in batch.rows) + 1)
            started = self._clock() if self.profile else 0.0
            logits = self._forward(batch.chosen, cache, batch.offsets)
            if self.profile:
                self.timings["forward_s"] += self._clock() - started
                self.timings["steps"] += 1
                self.timings["rows"] += len(batch.rows)
            steps = np.array([len(r.tokens) for r in batch.rows], dtype=np.uint64)
            chosen, params, columns = self._draw(logits, batch.params, batch.seeds, steps, batch.rows)
            batch.chosen, batch.params = chosen, params
            yield from self._leave(batch, cache, self._advance_rows(batch.rows, chosen, columns, stop,
                                                                    max_new_tokens))

    def _join(self, batch: _Batch, joining: list[WorkUnit], prefills: dict[str, _Prefill], cache: SlotCache,
              settings: list, max_new_tokens: int, stop: tuple[str, ...]) -> Iterator[Finished]:
        """New units' first tokens, from their prompts' prefills; those that go on take the next free slots."""
        device = self.device
        # the first step's distribution is the same for every row of a prompt and setting (the same logits, the
        # same history): it is formed once per such group, and each row draws from it with its own uniform
        # (rows with XTC each get their own group: its chance is drawn per row)
        group_index: dict[tuple, int] = {}
        group_of, heads = [], []
        for i, u in enumerate(joining):
            key = (u.prompt.prompt.id, id(u.setting)) if u.setting.xtc_probability <= 0 else (i,)
            if key not in group_index:
                group_index[key] = len(heads)
                heads.append(i)
            group_of.append(group_index[key])
        logits = torch.cat([prefills[joining[i].prompt.prompt.id].logits for i in heads])
        params = RowParams.from_settings([joining[i].setting for i in heads], device,
                                         prompts=[list(joining[i].prompt.token_ids) for i in heads],
                                         eos=sorted(self.eos), vocabulary=self.vocabulary, universe=settings)
        rows = [_Row(u) for u in joining]
        seeds = np.array([u.seed for u in joining], dtype=np.uint64)
        chosen, params, columns = self._draw(logits, params, seeds, np.zeros(len(rows), dtype=np.uint64), rows,
                                             (torch.tensor(group_of, device=device), heads))
        finished = self._advance_rows(rows, chosen, columns, stop, max_new_tokens)
        yield from (f for _, f in finished)
        gone = {i for i, _ in finished}
        keep = [i for i in range(len(rows)) if i not in gone]
        if not keep:
            return
        index = torch.tensor(keep, dtype=torch.long, device=device)
        first = len(batch.rows)
        for pid in {joining[i].prompt.prompt.id for i in keep}:
            slots = [first + j for j, i in enumerate(keep) if joining[i].prompt.prompt.id == pid]
            cache.put(torch.tensor(slots, dtype=torch.long, device=device), prefills[pid].cache)
        offsets = torch.tensor([prefills[joining[i].prompt.prompt.id].offset for i in keep], dtype=torch.long,
                               device=device)
        params = params[index]
        batch.rows += [rows[i] for i in keep]
        batch.params = params if batch.params is None else RowParams.cat([batch.params, params])
        batch.seeds = np.concatenate([batch.seeds, seeds[keep]])
        batch.chosen = torch.cat([batch.chosen, chosen[index]])
        batch.offsets = torch.cat([batch.offsets, offsets])

    def _leave(self, batch: _Batch, cache: SlotCache, finished: list[tuple[int, Finished]]) -> Iterator[Finished]:
        """Yield the finished rows; the last rows that go on move into their slots."""
        if not finished:
            return
        yield from (f for _, f in finished)
        n = len(batch.rows)
        order, holes, movers = _close_gaps(n, [i for i, _ in finished])
        if holes:
            cache.move(torch.tensor(movers, dtype=torch.long, device=self.device),
                       torch.tensor(holes, dtype=torch.long, device=self.device))
        index = torch.tensor(order, dtype=torch.long, device=self.device)
        batch.rows = [batch.rows[i] for i in order]
        batch.params = batch.params[index].trimmed() if order else None
        batch.seeds, batch.chosen, batch.offsets = batch.seeds[order], batch.chosen[index], batch.offsets[index]

    def _draw(self, logits: torch.Tensor, params: RowParams, seeds: np.ndarray, steps: np.ndarray, rows: list[_Row],
              grouped: tuple[torch.Tensor, list[int]] | None = None):
        """Each row's token at its step, and its statistics: (tokens, the rows' params moved on, host columns).
        ``grouped`` (groups, heads): ``logits`` and ``params`` are per group, row i drawing from group groups[i]."""
        started = self._clock() if self.profile else 0.0
        groups, heads = grouped if grouped is not None else (None, None)
        z = logits.float()
        model = model_distribution(z, params)
        lse, model_entropy = model.log_z, model.entropy
        self._check(logits, lse, rows if heads is None else [rows[i] for i in heads], steps if heads is None else
                    steps[heads])
        u = torch.from_numpy(uniforms(seeds, steps)).to(self.device)
        if bool((params.xtc_probability > 0).any()):  # XTC's chance: another stream of the sample's own seed
            xtc = (seeds, steps) if heads is None else (seeds[heads], steps[heads])  # (XTC rows are groups of one)
            params.u_xtc = torch.from_numpy(uniforms(*xtc, stream=1)).to(self.device)
        draw = sample(warp(logits, params, model), u, len(rows), groups)
        chosen = draw.tokens
        if groups is None:
            model_logprob = (z.gather(1, chosen[:, None]) - lse)[:, 0]
        else:  # from here on every row has its own state
            model_logprob, model_entropy = z[groups, chosen] - lse[groups, 0], model_entropy[groups]
            params = params[groups]
        params.advance(chosen, draw.logprob)
        # one device-to-host copy per step for the tokens and all their statistics
        host = torch.stack([chosen.double(), model_logprob.double(),
                            draw.logprob.double(), model_entropy.double(), draw.entropy.double(),
                            draw.kept.double()]).cpu().tolist()
        columns = {"token": [int(t) for t in host[0]], "logprob_model": host[1], "logprob_sampling": host[2],
                   "entropy_model": host[3], "entropy_sampling": host[4], "n_kept": [int(k) for k in host[5]]}
        if self.profile:
            self.timings["sampling_s" if grouped is None else "first_draw_s"] += self._clock() - started
        return chosen, params, columns

    def _advance_rows(self, rows: list[_Row], chosen, columns: dict, stop: tuple[str, ...],
                      max_new_tokens: int) -> list[tuple[int, Finished]]:
        out = []
        for i, (row, token) in enumerate(zip(rows, columns["token"])):
            result = self._advance(row, token, i, columns, stop, max_new_tokens)
            if result is not None:
                out.append((i, result))
        return out

    def _prefill(self, prompt) -> _Prefill:
        """One prompt's forward pass alone: its cache (every layer kept whole), last logits and RoPE shift."""
        ids = torch.tensor([prompt.token_ids], device=self.device)
        extra = {k: v.to(self.device) for k, v in (prompt.model_inputs or {}).items()} if self.prompt_inputs else {}
        kwargs = dict(input_ids=ids, use_cache=True, cache=DynamicCache(), **extra)
        try:
            out = self.model(**kwargs, logits_to_keep=1)  # only the last position's logits are needed
        except TypeError:  # a model whose forward has no logits_to_keep
            out = self.model(**kwargs)
        offset = self._rope_delta() if self.prompt_inputs else 0
        self._check_layers(out.cache)
        return _Prefill(out.cache, out.logits[:, -1, :].clone(), offset)

    def _check_layers(self, cache) -> None:
        """Refuse, in one line, a model the slot cache cannot decode: layers of another kind than full or sliding
        attention, or layers that cache no keys and values of their own (linear attention, shared KV)."""
        config = self.model.config.get_text_config()
        kind = getattr(config, "model_type", type(self.model).__name__)
        other = sorted(set(getattr(config, "layer_types", None) or ()) - {"full_attention", "sliding_attention"})
        if other:
            raise UnsupportedModel(f"evalkit's engine decodes layers of full or sliding-window attention; the model "
                                   f"({kind}) has {other[0]} layers")
        for i, layer in enumerate(getattr(cache, "layers", None) or [None]):
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if not (isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor) and keys.dim() == 4
                    and values.dim() == 4 and keys.shape[2] == values.shape[2]):
                raise UnsupportedModel(f"evalkit's engine keeps each layer's keys and values per row; layer {i} of "
                                       f"the model ({kind}) caches none of its own")

    def _forward(self, tokens: torch.Tensor, cache: SlotCache, offsets: torch.Tensor) -> torch.Tensor:
        """One decode step of every row: each attends over its own slot, and (on CPU) every linear layer runs at
        a fixed row count, so a row's logits do not depend on the rows beside it."""
        n = len(tokens)
        cache.begin_step(n)
        config = self.model.config.get_text_config()
        dtype = self.model.dtype
        layer_types = getattr(config, "layer_types", None)
        if layer_types:  # the config says each layer's kind: the final word
            mask = {"full_attention": cache.mask(dtype)}
            if "sliding_attention" in layer_types:
                mask["sliding_attention"] = cache.mask(dtype, config.sliding_window)
            if set(mask) == {"full_attention"}:
                mask = mask["full_attention"]
        elif getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            mask = cache.mask(dtype, config.sliding_window)
        else:
            mask = cache.mask(dtype)
        positions = (cache.lengths[:n] + offsets)[:, None]
        with fixed_rows(self.fixed), slot_attention(self.model):
            out = self.model(input_ids=tokens[:, None], attention_mask=mask, cache=cache, use_cache=True,
                             position_ids=positions)
        cache.end_step()
        return out.logits[:, -1, :]

    def _rope_delta(self) -> int:
        """The text-position shift a multimodal-RoPE model recorded in the last prefill (0 for other models)."""
        delta = getattr(getattr(self.model, "model", None), "rope_deltas", None)
        return int(delta.reshape(-1)[0]) if isinstance(delta, torch.Tensor) and delta.numel() else 0

    def _advance(self, row: _Row, token: int, i: int, columns: dict, stop: tuple[str, ...],
                 max_new_tokens: int) -> Finished | None:
        if token in self.eos:
            return Finished(row.unit, row.tokens, self.decode(row.tokens), "eos", row.stats)
        row.tokens.append(token)
        for name in ENGINE_STAT_COLUMNS:
            row.stats[name].append(columns[name][i])
        if stop:
            text = self.decode(row.tokens)
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                return Finished(row.unit, row.tokens, text[:cut], "stop", row.stats)
        if len(row.tokens) >= max_new_tokens:
            return Finished(row.unit, row.tokens, self.decode(row.tokens), "length", row.stats)
        return None

    @staticmethod
    def _check(logits: torch.Tensor, log_z: torch.Tensor, rows: list[_Row], steps: np.ndarray) -> None:
        bad = check_logits(logits, log_z)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            u, row, step = rows[first].unit, logits[first], int(steps[first])
            what = "NaN" if bool(row.isnan().any()) else "+inf" if bool(row.isposinf().any()) else "only -inf"
            raise DecodeError(f"the model gave {what} logits for prompt {u.prompt.prompt.id!r}, setting "
                              f"{u.setting.id}, sample {u.sample_index}, at decode step {step}")
