"""evalkit's batched sampling engine: one decode for every setting and sample of a prompt.

Work units are taken in waves of at most ``batch_size`` rows, grouped by prompt. In a
wave each distinct prompt is prefilled once (left padding, attention mask) and its KV
cache is expanded to every row that continues it (all its settings x samples). Each
decode step applies every row's own sampling transforms (:mod:`evalkit.generation.sampling`) and
draws its token with a uniform from the row's own random stream, a function of the
sample's seed and the step only (:func:`evalkit.seeds.uniforms`). Rows that finish
(end-of-sequence, a stop string, ``max_new_tokens``) leave the batch and are yielded at
once. On CUDA out-of-memory the wave's unfinished rows are retried at half the batch
size; their random streams make the retry produce the same tokens.

With ``per_prompt_waves`` (vision-language models) a wave holds the rows of one prompt only:
the prompt's own model inputs (pixel values, image grid sizes, ...) go into its prefill, whose
position ids the model computes itself. Models with multimodal RoPE (Qwen2-VL and its kin) give
an image's tokens fewer positions than tokens and keep the shift (``rope_deltas``) after the
prefill; decode positions add it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from evalkit.generation.base import ENGINE_STAT_COLUMNS, WorkUnit
from evalkit.errors import EvalkitError
from evalkit.generation.sampling import RowParams, check_logits, log_normaliser_and_entropy, sample, warp
from evalkit.seeds import uniforms



class DecodeError(EvalkitError):
    """Logits that define no distribution (NaN, +inf, or all -inf)."""


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


class Engine:
    def __init__(self, model, *, eos_ids: list[int], pad_id: int, device: str,
                 decode: Callable[[list[int]], str], profile: bool = False, per_prompt_waves: bool = False,
                 vocabulary=None):
        self.model, self.eos, self.pad_id, self.device, self.decode = model, set(eos_ids), pad_id, device, decode
        self.vocabulary = vocabulary  # the tokenizer's, for DRY's sequence breakers (samplers.dry.Vocabulary)
        self.profile, self.per_prompt_waves = profile, per_prompt_waves
        self.timings = {"forward_s": 0.0, "sampling_s": 0.0, "steps": 0}  # filled when profile=True

    def _clock(self) -> float:
        if self.profile and self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def run(self, units: list[WorkUnit], *, max_new_tokens: int, batch_size: int, stop: tuple[str, ...] = (),
            progress: Callable[[int, int], None] | None = None) -> Iterator[Finished]:
        order = {}
        for u in units:
            order.setdefault(u.prompt.prompt.id, len(order))
        queue = deque(sorted(units, key=lambda u: order[u.prompt.prompt.id]))
        done = 0
        while queue:
            wave = [queue.popleft()]
            while queue and len(wave) < batch_size and (
                    not self.per_prompt_waves or queue[0].prompt.prompt.id == wave[0].prompt.prompt.id):
                wave.append(queue.popleft())
            finished: set[int] = set()
            try:
                for result in self._wave(wave, max_new_tokens, stop, lambda step: progress and progress(done, step)):
                    finished.add(id(result.unit))
                    done += 1
                    yield result
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                queue.extendleft(reversed([u for u in wave if id(u) not in finished]))

    @torch.inference_mode()
    def _wave(self, wave: list[WorkUnit], max_new_tokens: int, stop: tuple[str, ...], on_step) -> Iterator[Finished]:
        device = self.device
        prompt_index: dict[str, int] = {}
        prompts = []
        for u in wave:
            if u.prompt.prompt.id not in prompt_index:
                prompt_index[u.prompt.prompt.id] = len(prompts)
                prompts.append(u.prompt)
        width = max(len(p.token_ids) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p.token_ids):] = torch.tensor(p.token_ids)
            mask[i, width - len(p.token_ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        extra = {k: v.to(device) for k, v in (prompts[0].model_inputs or {}).items()} if self.per_prompt_waves else {}
        out = self._prefill(ids, mask, extra)
        offset = self._rope_delta() if self.per_prompt_waves else 0
        cache = out.cache  # transformers >= 5.24 names the KV cache `cache` (was `past_key_values`)
        # one prefill, shared by every row of the prompt: the cache is expanded to the rows before the first decode
        # step (the rows that finish at the first token, as single-token draws all do, never are)
        expand = torch.tensor([prompt_index[u.prompt.prompt.id] for u in wave], device=device)
        mask = mask[expand]
        # the first step's distribution is the same for every row of a prompt and setting (the same logits, the
        # same history): it is formed once per such group, and each row draws from it with its own uniform
        # (rows with XTC each get their own group: its chance is drawn per row)
        group_index: dict[tuple, int] = {}
        group_of, heads = [], []
        for i, u in enumerate(wave):
            key = (prompt_index[u.prompt.prompt.id], id(u.setting)) if u.setting.xtc_probability <= 0 else (i,)
            if key not in group_index:
                group_index[key] = len(heads)
                heads.append(i)
            group_of.append(group_index[key])
        groups = torch.tensor(group_of, device=device)
        logits = out.logits[:, -1, :][expand[heads]]
        del out

        rows = [_Row(u) for u in wave]
        params = RowParams.from_settings([wave[i].setting for i in heads], device,
                                         prompts=[list(wave[i].prompt.token_ids) for i in heads],
                                         eos=sorted(self.eos), vocabulary=self.vocabulary)
        xtc_rows = bool((params.xtc_probability > 0).any())
        seeds = np.array([u.seed for u in wave], dtype=np.uint64)
        for step in range(max_new_tokens):
            on_step(step + 1)
            started = self._clock() if self.profile else 0.0
            self._check(logits, rows if groups is None else [rows[i] for i in heads], step)
            z = logits.float()
            lse, model_entropy = log_normaliser_and_entropy(z)
            u = torch.from_numpy(uniforms(seeds, step)).to(device)
            if xtc_rows:  # XTC's chance: another stream of the sample's own seed (XTC rows are groups of one)
                xtc = seeds if groups is None else seeds[heads]
                params.u_xtc = torch.from_numpy(uniforms(xtc, step, stream=1)).to(device)
            draw = sample(warp(logits, params), u, len(rows), groups)
            chosen = draw.tokens
            if groups is None:
                model_logprob = (z.gather(1, chosen[:, None]) - lse)[:, 0]
            else:  # from here on every row has its own state
                model_logprob, model_entropy = z[groups, chosen] - lse[groups, 0], model_entropy[groups]
                params, groups = params[groups], None
            params.advance(chosen, draw.logprob)
            # one device-to-host copy per step for the tokens and all their statistics
            host = torch.stack([chosen.double(), model_logprob.double(),
                                draw.logprob.double(), model_entropy.double(), draw.entropy.double(),
                                draw.kept.double()]).cpu().tolist()
            tokens = [int(t) for t in host[0]]
            columns = {"logprob_model": host[1], "logprob_sampling": host[2], "entropy_model": host[3],
                       "entropy_sampling": host[4], "n_kept": [int(k) for k in host[5]]}
            if self.profile:
                self.timings["sampling_s"] += self._clock() - started
                self.timings["steps"] += 1
            keep = []
            for i, (row, token) in enumerate(zip(rows, tokens)):
                result = self._advance(row, token, i, columns, stop, max_new_tokens)
                if result is None:
                    keep.append(i)
                else:
                    yield result
            if not keep:
                return
            if len(keep) < len(rows):  # finished rows leave the batch
                index = torch.tensor(keep, device=device)
                if expand is None:
                    cache.reorder_cache(index)
                else:
                    expand = expand[index]
                mask, chosen, params = mask[index], chosen[index], params[index]
                rows, seeds = [rows[i] for i in keep], seeds[keep]
            started = self._clock() if self.profile else 0.0
            if expand is not None:
                cache.reorder_cache(expand)
                expand = None
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
            out = self.model(input_ids=chosen[:, None], attention_mask=mask, cache=cache, use_cache=True,
                             position_ids=mask.sum(-1, keepdim=True) - 1 + offset)
            logits = out.logits[:, -1, :]
            del out
            if self.profile:
                self.timings["forward_s"] += self._clock() - started

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor, extra: dict):
        kwargs = dict(input_ids=ids, attention_mask=mask, use_cache=True, **extra)
        if not self.per_prompt_waves:  # left padding: positions count real tokens only
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        try:
            return self.model(**kwargs, logits_to_keep=1)  # only the last position's logits are needed
        except TypeError:  # a model whose forward has no logits_to_keep
            return self.model(**kwargs)

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
    def _check(logits: torch.Tensor, rows: list[_Row], step: int) -> None:
        bad = check_logits(logits)
        if bool(bad.any()):
            u = rows[int(bad.nonzero()[0, 0])].unit
            row = logits[int(bad.nonzero()[0, 0])]
            what = "NaN" if bool(row.isnan().any()) else "+inf" if bool(row.isposinf().any()) else "only -inf"
            raise DecodeError(f"the model gave {what} logits for prompt {u.prompt.prompt.id!r}, setting "
                              f"{u.setting.id}, sample {u.sample_index}, at decode step {step}")
