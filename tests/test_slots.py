"""What a row of evalkit's engine computes without regard to its neighbours: linear layers at a fixed row count,
and attention over a slot whose span may follow the longest row (evalkit.generation.slots)."""

import torch
import torch.nn.functional as F

from evalkit.generation.slots import BLOCK, MARGIN, SlotCache, fixed_rows, linears_of, span_for


def test_a_linear_rows_result_does_not_depend_on_the_row_count():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1536, 576, bias=False), torch.nn.Linear(576, 1536))
    x = torch.randn(3 * BLOCK + 5, 1536)
    with fixed_rows(linears_of(model)):
        full = model(x)
        for n in (1, 7, 16, BLOCK, BLOCK + 1, 2 * BLOCK - 1):
            assert torch.equal(model(x[:n]), full[:n]), n
        assert torch.equal(model(x[5:12][None]), full[5:12][None])  # any leading shape, any position
    assert all(type(m) is torch.nn.Linear for m in model)  # restored on the way out
    assert torch.allclose(model(x[:7]), full[:7], atol=1e-5)


def test_attention_gives_a_row_the_same_result_over_every_span_the_cache_may_choose():
    torch.manual_seed(1)
    heads, dim = 3, 64
    for length in (1, 15, 16, 17, 100, 600):
        q = torch.randn(1, heads * 3, 1, dim)
        k, v = torch.randn(1, heads, length, dim), torch.randn(1, heads, length, dim)
        results = []
        for span in range(span_for(length - 1), span_for(length - 1) + 8 * MARGIN + 1, MARGIN):  # span_for's
            keys, values = torch.zeros(1, heads, span, dim), torch.zeros(1, heads, span, dim)
            keys[:, :, :length], values[:, :, :length] = k, v
            mask = torch.zeros(1, 1, 1, span).masked_fill_(torch.arange(span) >= length, torch.finfo(torch.float32).min)
            results.append(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True))
        assert all(torch.equal(r, results[0]) for r in results), length


def test_the_slot_cache_writes_each_row_at_its_own_length_and_closes_gaps():
    from transformers import DynamicCache

    prompt = DynamicCache()
    prompt.update(torch.ones(1, 2, 5, 4), 2 * torch.ones(1, 2, 5, 4), 0)
    short = DynamicCache()
    short.update(3 * torch.ones(1, 2, 2, 4), 4 * torch.ones(1, 2, 2, 4), 0)
    cache = SlotCache(rows=4, capacity=span_for(12), device="cpu")
    cache.put(torch.tensor([0, 2]), prompt)
    cache.put(torch.tensor([1]), short)
    assert cache.lengths.tolist() == [5, 2, 5, 0]
    cache.begin_step(3)
    assert cache.span == span_for(5)
    mask = cache.mask(torch.float32)
    assert (mask[:, 0, 0] == 0).sum(-1).tolist() == [6, 3, 6]  # the prompt's positions and the new one
    keys, _ = cache.update(torch.full((3, 2, 1, 4), 9.0), torch.zeros(3, 2, 1, 4), 0)
    cache.end_step()
    assert keys.shape == (3, 2, cache.span, 4)
    assert keys[0, 0, 5, 0] == keys[2, 0, 5, 0] == keys[1, 0, 2, 0] == 9 and keys[1, 0, 1, 0] == 3
    assert cache.lengths.tolist() == [6, 3, 6, 0]
    cache.move(torch.tensor([2]), torch.tensor([1]))  # row 1 finished; the last row takes its slot
    assert cache.lengths[1] == 6 and torch.equal(cache.keys[0][1], cache.keys[0][0])
    sliding = cache.mask(torch.float32, sliding_window=2)
    assert (sliding[:, 0, 0] == 0).sum(-1).tolist() == [2, 2, 2]


def test_keys_and_values_of_different_widths_get_slots_of_their_own_width():
    from transformers import DynamicCache

    prompt = DynamicCache()
    prompt.update(torch.ones(1, 1, 3, 12), torch.ones(1, 1, 3, 8), 0)  # as multi-head latent attention caches them
    cache = SlotCache(rows=2, capacity=span_for(6), device="cpu")
    cache.put(torch.tensor([0, 1]), prompt)
    assert cache.keys[0].shape[-1] == 12 and cache.values[0].shape[-1] == 8


def test_the_slots_grow_when_a_row_outgrows_them_and_keep_what_they_hold():
    from transformers import DynamicCache

    prompt = DynamicCache()
    prompt.update(torch.arange(40.0).reshape(1, 1, 10, 4), torch.ones(1, 1, 10, 4), 0)
    cache = SlotCache(rows=2, capacity=span_for(10), device="cpu")
    cache.put(torch.tensor([0, 1]), prompt)
    first = cache.capacity
    for step in range(first):  # far past the first capacity
        cache.begin_step(2)
        cache.update(torch.full((2, 1, 1, 4), float(step)), torch.zeros(2, 1, 1, 4), 0)
        cache.end_step()
    assert cache.capacity >= span_for(10 + first) > first
    assert torch.equal(cache.keys[0][1, 0, :10], torch.arange(40.0).reshape(10, 4))  # the prompt, kept
    assert torch.equal(cache.keys[0][0, 0, 10:10 + first, 0], torch.arange(float(first)))  # every step, in place


def test_the_cpu_engine_keeps_freed_blocks_where_malloc_is_glibcs():
    import ctypes
    import sys

    from evalkit.generation.heap import keep_freed_blocks

    glibc = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    assert keep_freed_blocks() is glibc
    assert keep_freed_blocks() is glibc  # once per process: again, the same answer


def test_the_decode_attention_matches_sdpa_and_gives_a_row_the_same_bits_in_any_batch():
    """evalkit's decode-step attention against transformers' SDPA attention (grouped-query heads, the slots' mask),
    and a row's result at every batch size from 1 to 64 and at another position in the batch: bit for bit (torch's
    SDPA kernel gave other last bits on the thread that computed a row)."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from evalkit.generation.slots import slot_attention_forward

    torch.manual_seed(2)
    heads, kv_heads, dim, span = 9, 3, 64, 96
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, training=False)
    q = torch.randn(64, heads, 1, dim)
    keys, values = torch.randn(64, kv_heads, 128, dim), torch.randn(64, kv_heads, 128, dim)
    lengths = torch.randint(10, span - MARGIN, (64,))

    def attend(rows, fn=slot_attention_forward):
        mask = torch.zeros(len(rows), 1, 1, span).masked_fill_(
            (torch.arange(span)[None] > lengths[rows, None])[:, None, None], torch.finfo(torch.float32).min)
        out, _ = fn(module, q[rows], keys[rows, :, :span], values[rows, :, :span], mask, scaling=dim ** -0.5)
        return out

    full = attend(torch.arange(64))
    assert full.shape == (64, 1, heads, dim)
    assert torch.allclose(full, attend(torch.arange(64), sdpa_attention_forward), atol=2e-6)
    for n in range(1, 65):
        assert torch.equal(attend(torch.arange(n)), full[:n]), n
    order = torch.randperm(64)
    assert torch.equal(attend(order), full[order])
    # a masked key changes nothing: the row's result over its own keys alone
    row = 5
    alone, _ = slot_attention_forward(module, q[row:row + 1], keys[row:row + 1, :, :lengths[row] + 1],
                                      values[row:row + 1, :, :lengths[row] + 1], None, scaling=dim ** -0.5)
    assert torch.allclose(alone, full[row:row + 1], atol=1e-6)


def test_inside_slot_attention_a_model_attends_through_evalkit_and_gets_its_own_back():
    from transformers import LlamaConfig, LlamaForCausalLM

    from evalkit.generation.slots import SLOT_ATTENTION, slot_attention

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa"))
    with slot_attention(model):
        assert model.config._attn_implementation == SLOT_ATTENTION
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with slot_attention(model):  # another implementation is left as it is
        assert model.config._attn_implementation == "eager"


def test_a_layer_computes_its_last_rows_in_the_smallest_block_this_machine_allows():
    from evalkit.generation.slots import SMALL_BLOCKS, allowed_blocks

    torch.manual_seed(3)
    layer = torch.nn.Linear(576, 1536)
    allowed = allowed_blocks(layer)
    assert allowed[-1] == BLOCK and list(allowed) == sorted(allowed) and set(allowed[:-1]) <= set(SMALL_BLOCKS)
    x = torch.randn(BLOCK + 40, 576)
    whole = torch.nn.functional.linear(x[:BLOCK], layer.weight, layer.bias)
    with fixed_rows([layer]):
        for n in (1, 5, 9, 20, 33, 50, BLOCK + 40):
            got = layer(torch.cat([x[BLOCK - n % BLOCK:BLOCK], x[:n - n % BLOCK]]) if n > BLOCK else x[BLOCK - n:BLOCK])
            want = torch.cat([whole[BLOCK - n % BLOCK:], whole[:n - n % BLOCK]]) if n > BLOCK else whole[BLOCK - n:]
            assert torch.equal(got, want), n  # the rows' bits at 64 rows, wherever they sit
