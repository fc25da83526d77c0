"""What makes a sample of evalkit's engine independent of the rows decoded beside it: a KV cache of row slots and
linear layers of fixed shape.

A row's logits are float sums, and a sum's rounding depends on its order. Two things in a batched decode step change
that order with the batch:

- **Where a row's keys sit, and who computes its attention.** With left padding a row's keys move with the longest
  prompt of its batch, and the attention's reductions group them otherwise. In a :class:`SlotCache` each row owns a
  slot, its tokens from position 0, and attends over the slot's first ``span`` positions, the rest masked (masked
  keys add exact zeros at the end of the same groups). The span is always a multiple of 16 and at least
  ``MARGIN`` past the longest row, so it may follow the longest row of the batch. A decode step's attention is
  evalkit's own (:func:`slot_attention_forward`, inside :func:`slot_attention`): per row and key head, the query heads
  that share the head times its keys, a softmax, times its values, three batched products over whole rows. torch's
  CPU attention kernel (SDPA) is not used there: it gives a row other last bits depending on which thread computes
  it (each thread's scratch buffer sits at another alignment, and MKL's small products round by alignment; seen with
  2 threads on an AMD EPYC, where 20 of the embedded model's 30 test samples differed between batch sizes 7 and 64),
  and through transformers it copies the keys and values once per query head that shares them.
- **How many rows a matrix product has.** A CPU GEMM picks its kernel and its blocking of the inner dimension by
  the number of rows: a row's result at 64 rows need not be its result at 7. Inside :func:`fixed_rows` every
  ``nn.Linear`` computes in blocks of exactly ``BLOCK`` rows (the last one padded with zeros); at a fixed row count
  a row's result depends neither on its position nor on the other rows. The last block, when fewer rows are left,
  may be one of :data:`SMALL_BLOCKS` rows instead, for a layer whose products give every row, on this machine and
  at this thread count, the same bits at that size as at ``BLOCK`` (:func:`allowed_blocks` tries each layer shape
  once per process): a step of 10 rows then multiplies 16 rows, not 64, and a row's result is still its result in any
  batch. Where a size does not give the same bits (on some Intel CPUs a product with 1,536 inputs rounds
  otherwise at 32 rows), that layer keeps ``BLOCK``.

A prompt is prefilled alone (its own rows only, its own length), so its cache and first logits do not depend on
the prompts beside it either. What then holds, and what does not, is said in the README ("Batch invariance").
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

BLOCK = 64  # rows of every matrix product of a decode step (the CPU engine's default batch is 64: no padding there)
MARGIN = 16  # masked positions past every row's length at least: the attention's groups of 16 stay whole
SLOT_ATTENTION = "evalkit_slots"  # the attention implementation of a decode step inside slot_attention()


def span_for(length: int) -> int:
    """The attention span for a batch whose longest row holds ``length`` tokens."""
    return -(-(length + 1) // MARGIN) * MARGIN + MARGIN


class SlotCache:
    """A KV cache of ``rows`` slots of ``capacity`` positions at first, for the model's decode steps (transformers'
    cache protocol: :meth:`update` per layer). The slots grow (to twice their positions, or to what a row needs)
    when a row outgrows them, so memory follows the longest row, not ``max_new_tokens``. Rows ``0 .. active-1``
    are in use; row r's tokens are at positions ``0 .. lengths[r]-1`` of its slot. The layers' buffers are made
    from the first prompt's cache (their heads, head size and dtype)."""

    is_compileable = False

    def __init__(self, rows: int, capacity: int, device):
        self.rows, self.capacity, self.device = rows, capacity, device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.active = 0
        self.span = MARGIN

    # transformers' mask helpers read these of a cache
    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.keys)

    is_linear = is_sliding
    is_dummy = is_sliding

    def put(self, slots: torch.Tensor, prompt_cache) -> None:
        """Copy a prompt's prefill cache (transformers' DynamicCache of one row) into ``slots``."""
        layers = prompt_cache.layers
        n = layers[0].keys.shape[2]
        self._fit(span_for(n))
        if not self.keys:
            for layer in layers:
                self.keys.append(self._buffer(layer.keys))
                self.values.append(self._buffer(layer.values))
        for mine_k, mine_v, layer in zip(self.keys, self.values, layers):
            mine_k[slots, :, :n] = layer.keys[0]
            mine_v[slots, :, :n] = layer.values[0]
        self.lengths[slots] = n

    def _buffer(self, like: torch.Tensor) -> torch.Tensor:
        """The slots of one layer's keys or values, shaped as a prompt's [1, heads, tokens, size] (each sized by its
        own tensor: some attentions cache keys and values of different widths)."""
        _, heads, _, size = like.shape
        return torch.zeros((self.rows, heads, self.capacity, size), dtype=like.dtype, device=self.device)

    def move(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Move rows ``source`` to slots ``target`` (to close the gaps that finished rows leave)."""
        for k, v in zip(self.keys, self.values):
            k[target] = k[source]
            v[target] = v[source]
        self.lengths[target] = self.lengths[source]

    def begin_step(self, rows: int) -> None:
        """Before a decode step of the first ``rows`` slots: the span they attend over."""
        self.active = rows
        self.span = span_for(int(self.lengths[:rows].max()))
        self._fit(self.span)

    def _fit(self, positions: int) -> None:
        """Grow the slots to hold ``positions`` positions, if they do not."""
        if positions <= self.capacity:
            return
        self.capacity = max(positions, 2 * self.capacity)
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                buffers[i] = self._buffer(old[:1])
                buffers[i][:, :, :old.shape[2]] = old

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, kwargs=None, **_):
        """Write one new position per row (at its length) and return the rows' keys and values over the span."""
        n = self.active
        rows = torch.arange(n, device=self.device)
        at = self.lengths[:n]
        self.keys[layer_idx][rows, :, at] = key[:, :, 0]
        self.values[layer_idx][rows, :, at] = value[:, :, 0]
        return self.keys[layer_idx][:n, :, :self.span], self.values[layer_idx][:n, :, :self.span]

    def end_step(self) -> None:
        self.lengths[:self.active] += 1

    def mask(self, dtype, sliding_window: int | None = None) -> torch.Tensor:
        """The additive attention mask of the step [active, 1, 1, span]: 0 at each row's positions up to its new
        token, the dtype's lowest value past them (and, for a sliding-window layer, before its window)."""
        n = self.active
        pos = torch.arange(self.span, device=self.device)[None, :]
        at = self.lengths[:n, None]
        keep = pos <= at
        if sliding_window:
            keep &= at - pos < sliding_window
        out = torch.zeros((n, 1, 1, self.span), dtype=dtype, device=self.device)
        return out.masked_fill_(~keep[:, None, None, :], torch.finfo(dtype).min)


SMALL_BLOCKS = (8, 16, 32, 48)  # sizes a last block of fewer rows may take instead of BLOCK (allowed_blocks)


class _FixedRowsLinear(torch.nn.Linear):
    """An ``nn.Linear`` that computes in blocks of :data:`BLOCK` rows, the last one of the smallest size of
    :func:`allowed_blocks` that holds what is left (see the module's docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        n = flat.shape[0]
        left = n % BLOCK
        size = next(b for b in allowed_blocks(self) if b >= left) if left else BLOCK  # the last block's rows
        if n == size:  # one block, no padding
            return F.linear(x, self.weight, self.bias)
        if size > left > 0:
            flat = torch.cat([flat, flat.new_zeros(size - left, flat.shape[1])])
        out = torch.cat([F.linear(part, self.weight, self.bias) for part in flat.split(BLOCK)])
        return out[:n].reshape(*x.shape[:-1], out.shape[-1])


_ALLOWED: dict[tuple, tuple[int, ...]] = {}  # a layer's shape, dtype and torch's thread count -> its block sizes


def allowed_blocks(linear: torch.nn.Linear) -> tuple[int, ...]:
    """The block sizes ``linear`` computes in (ascending, :data:`BLOCK` last): each of :data:`SMALL_BLOCKS` whose
    product gives each of its rows the bits that the same row gets at :data:`BLOCK` rows, tried on two blocks of
    random rows, from both ends of the larger block, with the layer's own weights. Tried once per shape, dtype and
    thread count in a process."""
    weight, bias = linear.weight, linear.bias
    key = (tuple(weight.shape), bias is not None, weight.dtype, str(weight.device), torch.get_num_threads())
    if key not in _ALLOWED:
        generator = torch.Generator(device=weight.device).manual_seed(20261207)
        tries = [torch.randn(BLOCK, weight.shape[1], generator=generator, device=weight.device).to(weight.dtype)
                 for _ in range(2)]
        fulls = [F.linear(x, weight, bias) for x in tries]
        _ALLOWED[key] = tuple(b for b in SMALL_BLOCKS
                              if all(torch.equal(F.linear(x[at:at + b].clone(), weight, bias), full[at:at + b])
                                     for x, full in zip(tries, fulls) for at in (0, BLOCK - b))) + (BLOCK,)
    return _ALLOWED[key]


def linears_of(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The plain ``nn.Linear`` layers of ``model`` (subclasses, such as quantized layers, excepted)."""
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


@contextmanager
def fixed_rows(linears: list[torch.nn.Linear]):
    """Within: each of ``linears`` (:func:`linears_of`) computes in blocks of :data:`BLOCK` rows."""
    swapped = list(linears)
    for m in swapped:
        m.__class__ = _FixedRowsLinear
    try:
        yield
    finally:
        for m in swapped:
            m.__class__ = torch.nn.Linear


def slot_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           **kwargs) -> tuple[torch.Tensor, None]:
    """A decode step's attention over the slots (transformers' attention-function protocol): query [rows, heads, 1,
    size], keys and values [rows, key heads, span, size], the additive mask [rows, 1, 1, span]. The query heads that
    share a key head are one matrix against its keys (no copies of the keys); each row is computed whole by one
    product, whatever thread runs it. Anything but one new token per row on CPU goes to transformers' SDPA."""
    rows, heads, new, size = query.shape
    groups = heads // key.shape[1]
    if query.device.type != "cpu" or new != 1 or dropout or heads % key.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query.reshape(rows, key.shape[1], groups, size), key.transpose(-1, -2))
    scores.mul_(size ** -0.5 if scaling is None else scaling)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores.masked_fill_(~attention_mask, float("-inf"))
    elif attention_mask is not None:
        scores.add_(attention_mask)
    out = torch.matmul(scores.softmax(dim=-1), value)  # [rows, key heads, groups, value size]
    return out.reshape(rows, 1, heads, value.shape[-1]), None


AttentionInterface.register(SLOT_ATTENTION, slot_attention_forward)


@contextmanager
def slot_attention(model: torch.nn.Module):
    """Within: ``model``'s text layers attend through :func:`slot_attention_forward` where they would through
    transformers' SDPA attention (a model set to another implementation keeps it)."""
    config = model.config.get_text_config()
    swap = config._attn_implementation == "sdpa"
    if swap:
        config._attn_implementation = SLOT_ATTENTION
    try:
        yield
    finally:
        if swap:
            config._attn_implementation = "sdpa"
