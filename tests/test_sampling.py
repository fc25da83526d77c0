"""Batched per-row sampling transforms against transformers' own warpers (the oracle)."""

import numpy as np
import pytest
import torch
from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from evalkit.settings import ORDERS, Setting

from evalkit.generation.sampling import (CANDIDATES, EXACT_K_ORDERS, RowParams, _top, check_logits, distribution,
                                        largest, log_normaliser_and_entropy, warp)


def oracle(row: torch.Tensor, s: Setting, order: str = "transformers") -> torch.Tensor:
    """transformers' warpers, in generate's order (or another named order: the same warpers composed as that
    engine composes its samplers), on one row with scalar parameters."""
    scores = row[None].clone()
    ids = torch.zeros((1, 1), dtype=torch.long)
    warpers = {"temperature": lambda: TemperatureLogitsWarper(s.temperature),
               "top_k": lambda: (exactly_k(s.top_k) if order in EXACT_K_ORDERS else TopKLogitsWarper(top_k=s.top_k))
               if s.top_k else None,
               "top_p": lambda: TopPLogitsWarper(top_p=s.top_p) if s.top_p < 1 else None,
               "min_p": lambda: MinPLogitsWarper(min_p=s.min_p) if s.min_p else None}
    for stage in ORDERS[order]:
        stage = [name for name in stage if name in warpers]  # the core knobs' stages: these settings set no other
        made = [w for w in (warpers[name]() for name in stage) if w is not None]
        if len(made) == 1:
            scores = made[0](ids, scores)
        elif made:  # a joint stage (SGLang's top-k/top-p/min-p): each filter on the same scores, what any removes
            removed = torch.zeros_like(scores, dtype=torch.bool)
            for w in made:
                removed |= w(ids, scores.clone()).isneginf() & ~scores.isneginf()
            scores = scores.masked_fill(removed, float("-inf"))
    return scores[0]


def exactly_k(k: int):
    """llama.cpp's and SGLang's top-k: exactly k tokens, the lowest ids among those tied with the k-th."""
    def keep(ids, scores):
        order = torch.sort(-scores[0], stable=True).indices[:k]
        out = torch.full_like(scores, float("-inf"))
        out[0, order] = scores[0, order]
        return out
    return keep


def dense(logits: torch.Tensor, settings: list[Setting], candidates=CANDIDATES) -> torch.Tensor:
    out = torch.empty_like(logits)
    for rows, part in warp(logits, RowParams.from_settings(settings), candidates=candidates):
        out[rows] = part.dense(logits.shape[-1])
    return out


def random_rows(gen: torch.Generator, n: int, vocab: int) -> torch.Tensor:
    kinds = torch.randint(0, 6, (n,), generator=gen)
    rows = []
    for kind in kinds.tolist():
        if kind == 0:  # ordinary
            row = torch.randn(vocab, generator=gen) * 3
        elif kind == 1:  # very peaked
            row = torch.randn(vocab, generator=gen)
            row[torch.randint(0, vocab, (1,), generator=gen)] += 40
        elif kind == 2:  # very flat
            row = torch.randn(vocab, generator=gen) * 1e-3
        elif kind == 3:  # many exact ties, including at the top-p boundary
            row = torch.randint(0, 4, (vocab,), generator=gen).float()
        elif kind == 4:  # some tokens already masked
            row = torch.randn(vocab, generator=gen) * 2
            row[torch.rand(vocab, generator=gen) < 0.5] = float("-inf")
        else:  # exactly uniform
            row = torch.zeros(vocab)
        rows.append(row)
    return torch.stack(rows)


def random_setting(gen: torch.Generator, vocab: int) -> Setting:
    def pick(options):
        return options[int(torch.randint(0, len(options), (1,), generator=gen))]

    return Setting(
        temperature=pick([0.3, 0.7, 1.0, 1.3, 2.0, 0.05]),
        top_k=pick([0, 0, 1, 5, 50, 200, vocab, vocab + 100]),
        top_p=pick([1.0, 1.0, 0.1, 0.5, 0.9, 0.95, 0.999]),
        min_p=pick([0.0, 0.0, 0.05, 0.2, 0.9]),
    )


def tied_at_boundary(row: torch.Tensor, ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Kept sets that differ only among tokens tied at the cut-off value."""
    diff = ours.isfinite() ^ theirs.isfinite()
    if not diff.any():
        return True
    cut = row[ours.isfinite()].min()
    return bool((row[diff] == cut).all()) and ours.isfinite().sum() == theirs.isfinite().sum()


@pytest.mark.parametrize("vocab, seed", [(7, s) for s in range(4)] + [(300, s) for s in range(4)]
                         + [(3000, s) for s in range(8)] + [(20000, s) for s in range(2)])
def test_each_row_matches_transformers(vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = random_rows(gen, 48, vocab)
    settings = [random_setting(gen, vocab) for _ in range(48)]
    ours = dense(logits, settings)
    exact_rows = 0
    for r, s in enumerate(settings):
        theirs = oracle(logits[r], s)
        if torch.equal(ours[r].isfinite(), theirs.isfinite()):
            exact_rows += 1
            torch.testing.assert_close(ours[r].softmax(-1), theirs.softmax(-1), atol=1e-6, rtol=0)
        else:
            # transformers' sort is unstable: among logits tied exactly at the top-p cut it keeps an
            # unspecified subset of the same size; evalkit keeps the lowest token ids.
            assert tied_at_boundary(logits[r] / s.temperature, ours[r], theirs), (r, s)
            assert torch.allclose(ours[r].softmax(-1).sort().values, theirs.softmax(-1).sort().values, atol=1e-6)
    assert exact_rows >= 30  # the rest are the tie rows (kinds 3 and 5), checked above


@pytest.mark.parametrize("vocab, seed", [(7, 0), (300, 1), (3000, 2), (3000, 3)])
def test_rows_of_each_order_match_transformers_warpers_composed_in_that_order(vocab, seed):
    """One batch, rows of every named order (auto: the engine's own, transformers'): each row gets its own chain."""
    gen = torch.Generator().manual_seed(seed)
    logits = random_rows(gen, 48, vocab)
    orders = list(ORDERS) + ["auto"]
    both = {"top_p": 0.5, "min_p": 0.6}  # in every other row top-p and min-p both cut: the orders' sets differ
    settings = [Setting(**{**random_setting(gen, vocab).params(), **(both if i % 2 else {}),
                           "order": orders[i % len(orders)]}) for i in range(48)]
    ours = dense(logits, settings)
    differ = 0
    for r, s in enumerate(settings):
        order = "transformers" if s.order == "auto" else s.order
        theirs = oracle(logits[r], s, order)
        if torch.equal(ours[r].isfinite(), theirs.isfinite()):
            torch.testing.assert_close(ours[r].softmax(-1), theirs.softmax(-1), atol=1e-6, rtol=0)
        else:
            assert tied_at_boundary(logits[r] / s.temperature, ours[r], theirs), (r, s)
        other = oracle(logits[r], s, "vllm" if order == "transformers" else "transformers")
        differ += not torch.equal(theirs.isfinite(), other.isfinite())
    assert differ >= 1  # the two orders do differ on some of these rows, so the check above could fail


def test_candidate_and_dense_paths_agree():
    gen = torch.Generator().manual_seed(9)
    vocab = 5000
    logits = random_rows(gen, 64, vocab)
    settings = [random_setting(gen, vocab) for _ in range(64)]
    parts = warp(logits, RowParams.from_settings(settings))
    sizes = {p.logits.shape[-1] for _, p in parts if p.index is not None}
    assert {64, 1024} <= sizes  # both candidate stages are exercised, and the dense path below
    fast = dense(logits, settings)
    slow = dense(logits, settings, candidates=())
    assert torch.equal(fast.isfinite(), slow.isfinite())
    torch.testing.assert_close(fast.softmax(-1), slow.softmax(-1), atol=1e-6, rtol=0)


def test_rows_with_disabled_transforms_are_untouched():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 100, generator=gen)
    settings = [Setting(temperature=1.0), Setting(temperature=0.5, top_k=100, top_p=1.0, min_p=0.0),
                Setting(temperature=1.0, top_k=3)]
    out = dense(logits, settings)
    assert torch.equal(out[0], logits[0])
    assert torch.equal(out[1], logits[1] / 0.5)
    assert out[2].isfinite().sum() == 3


def test_greedy_rows_share_the_batch():
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    parts = warp(logits, RowParams.from_settings([Setting(temperature=0), Setting(temperature=1.0)]))
    by_row = {int(r): p for rows, p in parts for r in rows}
    assert by_row[0].index.tolist() == [[1]]
    assert by_row[1].index is None


@pytest.mark.parametrize("vocab", [5, 5000, 49152, 50257])
def test_bad_logits_are_found(vocab):
    logits = torch.zeros(5, vocab)
    logits[1, 2] = float("nan")
    logits[2, 0] = float("inf")
    logits[3] = float("-inf")
    logits[4, :3] = float("-inf")  # some -inf: a distribution still
    assert check_logits(logits).tolist() == [False, True, True, True, False]


@pytest.mark.parametrize("vocab", [1000, 4096, 49152, 50257, 262144])
def test_the_rows_top_is_torch_max_with_the_first_of_tied_indices(vocab):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(6, vocab, generator=gen) * 3
    logits[0, [5, vocab - 300, vocab - 1]] = 50.0  # tied tops in different blocks: the first wins
    logits[1, -1] = 60.0  # the top in the last, partial block
    logits[2] = 1.5  # every logit tied
    logits[3, : vocab // 2] = float("-inf")
    values, indices = torch.max(logits, dim=-1, keepdim=True)
    top, at = _top(logits)
    assert torch.equal(top, values) and torch.equal(at, indices)
    assert at[:3, 0].tolist() == [5, vocab - 1, 0]


@pytest.mark.parametrize("vocab, size", [(49152, 64), (50257, 64), (262144, 64), (151936, 100), (5000, 64),
                                         (49152, 1024)])
def test_largest_gives_topks_values_and_distinct_indices_of_them(vocab, size):
    gen = torch.Generator().manual_seed(size)
    logits = torch.randn(4, vocab, generator=gen) * 3
    logits[0, [3, 7, vocab // 2]] = 30.0  # ties among the largest
    logits[1, vocab - 70:] = 40.0  # the largest in the last blocks, the partial one among them
    logits[2, ::97] = 12.0  # many ties at the edge of the candidates
    vals, idx = largest(logits, size)
    expected = torch.topk(logits, size, dim=-1).values
    assert torch.equal(vals, expected)
    assert torch.equal(logits.gather(1, idx), vals)
    assert all(len(set(row)) == size for row in idx.tolist())


def test_a_rows_weights_are_its_softmax_unnormalised_and_its_kept_tokens_counted():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 50000, generator=gen) * 4
    logits[1, :123] = float("-inf")
    logits[2, 9] += 60  # peaked past float precision
    weights, log_z, entropy, kept = distribution(logits)
    probs = weights / weights.sum(dim=-1, keepdim=True)
    torch.testing.assert_close(probs, torch.softmax(logits, dim=-1), rtol=1e-5, atol=1e-12)
    assert torch.equal(weights.amax(dim=-1), torch.ones(3))  # the top token's weight is 1
    assert kept.tolist() == [50000, 50000 - 123, 50000]
    torch.testing.assert_close(log_z[:, 0], torch.logsumexp(logits.double(), dim=-1).float())
    assert [t.shape for t in distribution(logits[:0])] == [(0, 50000), (0, 1), (0,), (0,)]  # no rows: empty


def test_weights_under_tiny_are_zero_and_the_rest_exact():
    """A low temperature puts most of a row far below its top: exponentials that would underflow are 0 (never
    computed), every other weight is exp(z - m) to the bit, and log Z and the entropy are a float64 reference's."""
    from evalkit.generation.sampling import TINY, UNDERFLOW

    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 50000, generator=gen) * 30  # spans of hundreds: most of each row under TINY
    logits[1, 7:900] = float("-inf")
    logits[2] = torch.linspace(-120, 0, 50000)  # every weight between e^-120 and 1: the edge crossed
    logits[3, :] = -1000.0
    logits[3, 11] = 0.0  # one token and nothing else of any weight
    weights, log_z, entropy, kept = distribution(logits)
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    exact = torch.exp(shifted)
    assert bool(((shifted < UNDERFLOW) | (exact <= TINY)).any(dim=-1).all())  # each row has some under TINY
    assert torch.equal(weights, torch.where(exact > TINY, exact, torch.zeros_like(exact)))
    assert not bool(weights.isnan().any()) and bool((weights[logits.isneginf()] == 0).all())
    z = logits.double()
    p = torch.softmax(z, dim=-1)
    reference = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim=-1)
    torch.testing.assert_close(log_z[:, 0].double(), torch.logsumexp(z, dim=-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(entropy.double(), reference, rtol=1e-5, atol=1e-30)
    assert entropy[3] == 0 and log_z[3, 0] == 0
    assert kept.tolist() == [50000, 50000 - 893, 50000, 50000]


@pytest.mark.parametrize("setting, candidates", [
    (Setting(temperature=1.0), (64,)),  # no truncation: the whole softmax
    (Setting(temperature=0.8, top_k=20, top_p=0.9), (64,)),  # candidate path
    (Setting(temperature=1.3, top_p=0.95, min_p=0.02), ()),  # dense path
    (Setting(temperature=0.5, min_p=0.05), (64,)),
])
def test_sampled_frequencies_match_the_filtered_distribution(setting, candidates):
    """Chi-square goodness of fit over 200,000 draws at a fixed seed.

    Threshold: p > 0.001, so a correct sampler would fail for one seed in a thousand; the
    seed is fixed, so the test is deterministic.
    """
    from scipy.stats import chisquare

    from evalkit.generation.sampling import sample
    from evalkit.seeds import uniforms

    n, vocab = 200_000, 60
    row = torch.randn(vocab, generator=torch.Generator().manual_seed(3)) * 2
    expected = oracle(row, setting).softmax(-1).double()
    logits = row.expand(n, vocab)
    params = RowParams.from_settings([setting] * n)
    u = torch.from_numpy(uniforms(np.arange(n, dtype=np.uint64) + 12345, step=0))
    draw = sample(warp(logits, params, candidates=candidates), u, n)
    counts = torch.bincount(draw.tokens, minlength=vocab).double()
    kept = expected > 0
    assert counts[~kept].sum() == 0  # never a filtered-out token
    assert int(kept.sum()) == int(draw.kept[0])
    probs = expected[kept].numpy()
    stat = chisquare(counts[kept].numpy(), probs / probs.sum() * n)
    assert stat.pvalue > 0.001, stat
    # The recorded log-probability of each draw is that of its token under the filtered distribution.
    torch.testing.assert_close(draw.logprob[:100].double(), expected[draw.tokens[:100]].log(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("vocab", [300, 5000])  # one cumulative sum per row, and the 256-token blocks
def test_rows_drawing_from_a_shared_distribution_get_what_their_own_copies_give(vocab):
    """The engine's first step: rows of one prompt and setting share one warped distribution (``groups``); each
    row's token and statistics are those it gets from its own copy of the logits."""
    from evalkit.generation.sampling import sample
    from evalkit.seeds import uniforms

    gen = torch.Generator().manual_seed(21)
    heads = random_rows(gen, 12, vocab)
    settings = [random_setting(gen, vocab) for _ in range(12)]
    groups = torch.randint(0, 12, (400,), generator=gen)
    groups[:12] = torch.arange(12)  # every group has rows
    u = torch.from_numpy(uniforms(np.arange(400, dtype=np.uint64) + 7, step=0))
    shared = sample(warp(heads, RowParams.from_settings(settings)), u, 400, groups)
    own = sample(warp(heads[groups], RowParams.from_settings([settings[g] for g in groups.tolist()])), u, 400)
    for name in ("tokens", "logprob", "entropy", "kept"):
        assert torch.equal(getattr(shared, name), getattr(own, name)), name
    # rows of a group draw with their own uniforms
    assert any(len(set(shared.tokens[groups == g].tolist())) > 1 for g in range(12))


def test_rows_at_different_steps_joined_warp_as_they_do_apart():
    """Refill: RowParams built against one universe of settings, moved on by different numbers of steps (their
    histories of other widths, their own n_out, mu and DRY state), then joined by ``cat``, give each row the
    distribution it has apart; parts built against other universes are refused."""
    from evalkit.errors import EvalkitError
    from evalkit.generation.samplers.dry import Vocabulary

    gen = torch.Generator().manual_seed(5)
    vocab = 60
    pieces = [f"t{i}".encode() for i in range(vocab - 2)] + [b"\n", b":"]
    vocabulary = Vocabulary(pieces=lambda: pieces, encode=lambda text: [pieces.index(text)] if text in pieces else [])
    universe = [Setting(temperature=1.1, repetition_penalty=1.4, presence_penalty=0.5, order="llama_cpp"),
                Setting(temperature=1.0, mirostat=2, mirostat_tau=3.0, order="llama_cpp"),
                Setting(temperature=1.2, dry_multiplier=0.8, dry_allowed_length=1, order="llama_cpp"),
                Setting(temperature=0.9, repetition_penalty=1.3, no_repeat_ngram_size=2, min_tokens=4),
                Setting(temperature=0.8, top_p=0.9)]

    def part(settings, prompt_len, steps):
        prompts = [torch.randint(0, vocab, (prompt_len,), generator=gen).tolist() for _ in settings]
        params = RowParams.from_settings(settings, prompts=prompts, eos=[0], vocabulary=vocabulary, universe=universe)
        for _ in range(steps):
            tokens = torch.randint(1, vocab, (len(settings),), generator=gen)
            params.advance(tokens, torch.full((len(settings),), -1.0))
        return params

    a = part(universe[:3], 3, 5)
    b = part(universe[2:], 9, 1)
    c = part(universe[3:], 1, 0)
    joined = RowParams.cat([a, b, c])
    logits = random_rows(gen, 3 + 3 + 2, vocab)
    def warped(z, params):
        out = torch.empty_like(z)
        for rows, part in warp(z, params):
            out[rows] = part.dense(vocab)
        return out

    apart = torch.cat([warped(logits[:3], a), warped(logits[3:6], b), warped(logits[6:], c)])
    assert torch.equal(warped(logits, joined), apart)
    assert joined.n_out.tolist() == [5, 5, 5, 1, 1, 1, 0, 0]
    # min_tokens holds the end token back on its rows, each short of it by its own count
    assert warped(logits, joined)[[4, 6], 0].isinf().all()
    # the widest rows leave: the history loses the columns no row fills, and nothing else changes
    rest = joined[torch.tensor([0, 1, 2, 6, 7])]
    assert rest.trimmed().history.shape[1] == 3 + 5 < joined.history.shape[1] == 9 + 1
    assert torch.equal(warped(logits[[0, 1, 2, 6, 7]], rest.trimmed()), apart[[0, 1, 2, 6, 7]])
    with pytest.raises(EvalkitError, match="different universes"):
        RowParams.cat([a, RowParams.from_settings(universe[4:], universe=universe[4:])])


@pytest.mark.parametrize("vocab, rows", [(49152, 64), (49152, 21), (262144, 9), (151936, 3)])
def test_a_rows_log_normaliser_and_entropy_do_not_depend_on_the_rows_beside_it(vocab, rows):
    """Bit for bit: the rows go through in chunks, rows with -inf logits again with a clamp; a row alone is the
    same as in any batch."""
    gen = torch.Generator().manual_seed(rows)
    logits = torch.randn(rows, vocab, generator=gen) * 3
    logits[1, :100] = float("-inf")  # a row with -inf logits, alone in its chunk or not
    logits[-1, 5:] = float("-inf")
    logits[0, 7] += 50  # peaked
    log_z, entropy = log_normaliser_and_entropy(logits)
    weights, log_z_d, entropy_d, kept = distribution(logits)
    assert torch.equal(log_z, log_z_d) and torch.equal(entropy, entropy_d)
    for r in range(rows):
        alone_z, alone_h = log_normaliser_and_entropy(logits[r:r + 1])
        assert alone_z[0, 0].item() == log_z[r, 0].item() and alone_h[0].item() == entropy[r].item(), r
    assert kept[[1, -1]].tolist() == [vocab - 100, 5]
    torch.testing.assert_close(entropy.double(), -(torch.softmax(logits.double(), -1) *
                                                   torch.log_softmax(logits.double(), -1)).nan_to_num().sum(-1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("vocab", [4096, 49152])
def test_top_p_and_typical_sort_a_cut_rows_finite_logits_alone_with_the_whole_sorts_bits(vocab):
    """Rows that a top-k has cut (ties at the cut among them) sort only their finite logits: the tokens top-p and
    typical remove are those of the whole-row sort, and the rows are grouped as sort_groups says."""
    from evalkit.generation.samplers.base import sort_groups
    from evalkit.generation.samplers.cutoffs import _typical_remove
    from evalkit.generation.sampling import _top_p_drop

    gen = torch.Generator().manual_seed(vocab)
    rows = 24
    x = torch.randn(rows, vocab, generator=gen) * torch.tensor([1.0, 3.0, 8.0]).repeat(8)[:, None]
    x[::2] = (x[::2] * 2).round() / 2  # tied logits, at the cuts too
    k = torch.tensor([1, 2, 5, 50, 300, 1000] * 4)
    kth = torch.topk(x, int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
    x = x.masked_fill(x < kth, float("-inf"))
    x[3, :] = float("-inf")
    x[3, 11] = 0.5  # one finite logit
    top_p = torch.tensor([0.3, 0.6, 0.9, 0.95, 0.99, 0.999] * 4, dtype=torch.float64)
    mass = top_p.float()
    prefix = torch.arange(rows) % 3 == 0
    on = torch.ones(rows, dtype=torch.bool)
    on[5] = False
    (few, width), = sort_groups(x, on)
    assert few.tolist() == [r for r in range(rows) if r != 5]
    assert width == int(x.isfinite().sum(dim=-1).max()) < vocab // 4
    logp = torch.log_softmax(x, dim=-1)
    ent = -(logp * logp.exp()).nansum(-1, keepdim=True)
    dropped = removed = 0
    for rows_, w in ((slice(None), width), (slice(0, 7), int(x[:7].isfinite().sum(dim=-1).max()))):
        whole = _top_p_drop(x[rows_], top_p[rows_], None)
        assert torch.equal(_top_p_drop(x[rows_], top_p[rows_], w) & x[rows_].isfinite(), whole & x[rows_].isfinite())
        whole_t = _typical_remove(x[rows_], logp[rows_], ent[rows_], mass[rows_], prefix[rows_], None)
        part_t = _typical_remove(x[rows_], logp[rows_], ent[rows_], mass[rows_], prefix[rows_], w)
        assert torch.equal(part_t & x[rows_].isfinite(), whole_t & x[rows_].isfinite())
        dropped += int((whole & x[rows_].isfinite()).sum())
        removed += int((whole_t & x[rows_].isfinite()).sum())
    assert dropped > rows and removed > rows  # the stages do cut inside the finite logits
    # rows with more than a quarter of the vocabulary finite sort whole rows, in a group of their own
    x[7] = torch.randn(vocab, generator=gen)
    groups = sort_groups(x, on)
    assert [(g.tolist(), w) for g, w in groups][1] == ([7], None) and 7 not in groups[0][0].tolist()


@pytest.mark.parametrize("vocab", [4096, 49152])
def test_sglangs_joint_top_p_decides_only_what_its_top_k_keeps_and_removes_what_the_whole_sort_removes(vocab):
    """The joint stage's top-p, on rows a top-k cut, sums the mass above each kept token from the row's normaliser
    instead of sorting the row: the stage keeps exactly what each filter on the whole row keeps (transformers'
    warpers, SGLang's exact top-k), ties among the kept tokens too; a row whose cut lies on a decision (within
    MARGIN) goes the whole sort's way."""
    from evalkit.generation.sampling import _top_p_among, apply_chain

    gen = torch.Generator().manual_seed(vocab)
    rows = 40
    x = torch.randn(rows, vocab, generator=gen) * torch.tensor([0.5, 1.0, 3.0, 8.0]).repeat(10)[:, None]
    x[::2] = (x[::2] * 2).round() / 2  # ties, among the kept tokens and at the cuts
    x[1] = 0.0  # a flat row: token i has mass above it i / vocab
    ks = [1, 2, 5, 50, 300, 1000, 0, 20]
    ps = [0.3, 0.6, 0.9, 0.95, 0.99, 1.0, 0.999, 0.5]
    settings = [Setting(top_k=ks[r % 8], top_p=ps[(r + r // 8) % 8], min_p=[0.0, 0.02][r % 2], order="sglang")
                for r in range(rows)]
    settings[1] = Setting(top_k=200, top_p=100 / vocab, order="sglang")  # the cut exactly on token 100's decision
    params = RowParams.from_settings(settings)
    ours = apply_chain(x, params, ORDERS["sglang"])
    whole = x.clone()  # each filter on the whole row, top-p through the whole sort
    for name in ("top_k", "top_p", "min_p"):
        whole = whole.masked_fill(apply_chain(x, params, ((name,),)).isneginf(), float("-inf"))
    assert torch.equal(ours, whole)
    for r in range(3, rows, 2):  # rows without ties (transformers' sort keeps any of tied tokens)
        assert torch.equal(ours[r].isfinite(), oracle(x[r], settings[r], "sglang").isfinite()), r
    kept = apply_chain(x, params, (("top_k",),))
    on = params.top_p < 1
    left = _top_p_among(x, params, on, kept, torch.zeros_like(x, dtype=torch.bool))
    assert bool(left[1]) and int((on & ~left).sum()) >= rows // 2  # the exact cut goes the whole way, most do not


@pytest.mark.parametrize("vocab", [49152, 262144])
def test_a_joint_top_p_on_near_flat_rows_keeps_what_the_whole_sort_keeps(vocab):
    """Near-flat rows (a high temperature): torch's softmax rounds its normaliser by up to 1e-4 there, so a cut
    computed without the sort must leave more room (cut_margin) to keep what the whole sort keeps; a stage whose
    earlier filter is not a prefix of the row's order (typical, which can drop the most likely tokens) gets no
    shortcut."""
    from evalkit.generation.sampling import apply_chain

    x = torch.randn(2, vocab, generator=torch.Generator().manual_seed(1)) * 3
    for top_p in torch.linspace(0.0005, 0.02, 8).tolist():
        s = Setting(temperature=1e4, top_k=vocab // 4, top_p=top_p, order="sglang")
        params = RowParams.from_settings([s, s])
        scaled = apply_chain(x, params, (("temperature",),))
        whole = scaled.clone()
        for name in ("top_k", "top_p", "min_p"):
            whole = whole.masked_fill(apply_chain(scaled, params, ((name,),)).isneginf(), float("-inf"))
        assert torch.equal(apply_chain(x, params, ORDERS["sglang"]), whole), top_p
    x = torch.randn(8, 4096, generator=torch.Generator().manual_seed(0)) * 3
    x[:, 0] += 12  # a token typical finds too likely: it removes it
    x[:, 1:40] += 8
    params = RowParams.from_settings([Setting(typical_p=0.2, top_p=0.6, order="typical_p+top_p")] * 8)
    whole = x.clone()
    for name in ("typical_p", "top_p"):
        whole = whole.masked_fill(apply_chain(x, params, ((name,),)).isneginf(), float("-inf"))
    assert not bool(apply_chain(x, params, (("typical_p",),))[:, 0].isfinite().all())
    assert torch.equal(apply_chain(x, params, (("typical_p", "top_p"),)), whole)


def test_candidate_path_on_near_flat_rows_keeps_what_transformers_keeps():
    """The candidate path's top-p on near-flat rows (top-k off: the whole row's normaliser; top-k on: the
    candidates' softmax) against transformers' warpers, with top-p values whose cuts fall on all sides."""
    vocab = 49152
    x = torch.randn(4, vocab, generator=torch.Generator().manual_seed(2)) * 3
    settings = [Setting(temperature=1e4, top_k=k, top_p=p) for k in (0, 1000, 8000)
                for p in torch.linspace(0.001, 0.2, 12).tolist()]
    for r in range(4):
        logits = x[r].expand(len(settings), vocab)
        ours = dense(logits, settings)
        for i, s in enumerate(settings):
            assert torch.equal(ours[i].isfinite(), oracle(x[r], s).isfinite()), (r, s)


def test_mirostat_v2_keeps_what_log2_of_every_probability_keeps():
    """below_surprise takes log2 only near 2^-mu: its cut is the one -log2 p <= mu gives on every token, with
    probabilities on and within an ulp of 2^-mu, zeros, and mu out of the comparison's range (log2 everywhere)."""
    from evalkit.generation.samplers.mirostat import below_surprise

    gen = torch.Generator().manual_seed(5)
    mu = torch.tensor([0.0, 1.0, 3.3, 7.0, 10.0, 17.25, 31.0, 99.9, 120.0, -2.0, 60.0, 5.5])
    probs = torch.rand(len(mu), 5000, generator=gen) ** 8
    probs[:, :50] = 0.0
    at = torch.exp2(-mu.double()).float()  # 2^-mu, and the floats next to it on both sides
    near = torch.stack([at, torch.nextafter(at, torch.zeros_like(at)), torch.nextafter(at, torch.ones_like(at)),
                        at * (1 + 2e-3), at * (1 - 2e-3)], dim=1)
    probs[:, 100:105] = near.clamp(max=1.0)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    probs[:, 100:105] = near.clamp(max=1.0)  # exactly there, not renormalized
    out = torch.log(probs)
    ours = below_surprise(out, probs, mu)
    keep = (-torch.log2(probs) <= mu[:, None]) | (probs >= probs.amax(dim=-1, keepdim=True))
    assert torch.equal(ours.isfinite(), keep)
    assert 0 < int(keep[:, 100:105].sum()) < 5 * len(mu)  # the tokens at the cut split both ways


@pytest.mark.parametrize("vocab, width", [(4096, 50), (49152, 50), (49152, 1000), (262144, 7)])
def test_a_cumulative_sum_over_a_rows_tail_is_the_whole_rows_over_it_on_cpu(vocab, width):
    """What the cut rows' top-p and typical rely on: torch's CPU cumulative sum runs along the row, so zeros before
    (or after) the finite probabilities change none of its bits, lone rows included."""
    gen = torch.Generator().manual_seed(width)
    for rows in (1, 2, 5):
        row = torch.full((rows, vocab), float("-inf"))
        row[:, vocab - width:] = (torch.randn(rows, width, generator=gen) * 3).sort(dim=-1).values
        probs = row.softmax(dim=-1)
        assert torch.equal(probs[:, vocab - width:].cumsum(dim=-1), probs.cumsum(dim=-1)[:, vocab - width:])
        front = row.flip(-1).softmax(dim=-1)
        assert torch.equal(front[:, :width].cumsum(dim=-1), front.cumsum(dim=-1)[:, :width])


def test_rows_a_chain_cut_draw_from_their_kept_tokens_as_from_the_whole_row_whatever_rows_are_beside_them():
    """kept_tokens: a cut row drawn from its kept tokens alone (in id order, padded to a width of its own) gets the
    same token and kept count as from its whole row, statistics within float32's rounding, and bit for bit the same
    draw alone as among rows of other widths."""
    from evalkit.generation.sampling import Warped, kept_tokens, sample

    vocab, rows = 49152, 24
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(rows, vocab, generator=gen) * 3
    x[::5, 0] = 30.0  # token 0 kept in some rows
    keep = torch.tensor([1, 2, 5, 50, 63, 64, 65, 200, 1000, 1500, 3072, 20000] * 2)
    kth = torch.topk(x, int(keep.max()), dim=-1).values.gather(1, (keep - 1)[:, None])
    out = x.masked_fill(x < kth, float("-inf"))
    u = torch.rand(rows, generator=gen, dtype=torch.float64)
    every = torch.arange(rows)
    parts = kept_tokens(every, out)
    assert any(p.index is None for _, p in parts) and sum(p.index is not None for _, p in parts) >= 4
    assert any(p.index is not None and p.index.shape[1] == 2048 for _, p in parts)  # drawn through 256-blocks
    for r, p in parts:  # the kept tokens' logits, token 0 among them, at their places
        assert torch.equal(p.dense(vocab), out[r])
    ours = sample(parts, u, rows)
    whole = sample([(every, Warped(out, None))], u, rows)
    assert torch.equal(ours.tokens, whole.tokens) and torch.equal(ours.kept, whole.kept)
    torch.testing.assert_close(ours.logprob, whole.logprob, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.entropy, whole.entropy, rtol=0, atol=1e-5)
    for r in range(rows):
        alone = sample(kept_tokens(torch.tensor([0]), out[r:r + 1]), u[r:r + 1], 1)
        assert alone.tokens.item() == ours.tokens[r].item() and alone.kept.item() == ours.kept[r].item(), r
        assert alone.logprob.item() == ours.logprob[r].item() and alone.entropy.item() == ours.entropy[r].item(), r


@pytest.mark.parametrize("rows", [1, 2, 3, 7])
def test_rows_divided_as_they_are_drawn_draw_as_rows_divided_first(rows):
    """Warped.scaled (the batch's logits, its rows and their temperatures, divided chunk by chunk as the draw
    normalises them) gives the draw and statistics of the same rows divided first, bit for bit, a lone row too;
    and its logits are those rows divided."""
    from evalkit.generation.sampling import Warped, sample, scaled_rows

    gen = torch.Generator().manual_seed(rows)
    vocab = 262_144 if rows < 3 else 49_152
    batch = torch.randn(9, vocab, generator=gen) * 4
    batch[2, 7] = float("-inf")
    which = torch.tensor([2, 5, 0, 8, 1, 3, 6][:rows])
    t = torch.tensor([0.3, 1.0, 1.7, 0.7, 2.0, 0.5, 1.3][:rows])
    u = torch.rand(rows, generator=gen, dtype=torch.float64)
    every = torch.arange(rows)
    lazy = Warped.scaled(batch, which, t)
    first = sample([(every, Warped(batch[which] / t[:, None], None))], u, rows)
    drawn = sample([(every, lazy)], u, rows)
    for name in ("tokens", "logprob", "entropy", "kept"):
        assert torch.equal(getattr(drawn, name), getattr(first, name)), name
    assert torch.equal(lazy.logits, batch[which] / t[:, None])
    assert torch.equal(scaled_rows(batch, which, t), batch[which] / t[:, None])


def test_a_logit_that_its_division_sends_to_minus_infinity_is_not_counted_as_kept():
    """-1e33 over a temperature of 1e-6 is -inf: rows divided as they are drawn count it out, as rows divided first
    do."""
    from evalkit.generation.sampling import distribution

    x = torch.randn(2, 8192, generator=torch.Generator().manual_seed(0))
    x[:, 5] = -1e33
    t = torch.tensor([1e-6, 1e-6])
    assert distribution(x, torch.arange(2), t)[3].tolist() == distribution(x / t[:, None])[3].tolist() == [8191] * 2


def test_a_row_near_the_underflow_is_the_same_beside_a_row_that_clamps():
    """Logits 86.8 below the top weigh exp(-86.8) = 2e-38, under TINY: 0 whether the row's chunk clamps (a row
    beside it has -inf) or not (the row alone), so the row's log-normaliser and entropy do not depend on its chunk."""
    near = torch.full((2, 49152), -86.8)
    near[:, 0] = 0.0
    holes = torch.randn(2, 49152, generator=torch.Generator().manual_seed(3))
    holes[:, :10] = float("-inf")
    alone_z, alone_h = log_normaliser_and_entropy(near)
    batch_z, batch_h = log_normaliser_and_entropy(torch.stack([near[0], holes[0]]))
    assert alone_z[0, 0].item() == batch_z[0, 0].item() == 0.0 and alone_h[0].item() == batch_h[0].item() == 0.0


@pytest.mark.parametrize("vocab", [8192, 262144])
def test_rows_that_sample_from_the_model_take_its_distribution_bit_for_bit(vocab):
    """With the model's distribution given (as the engine gives it), rows at temperature 1 without a filter draw from
    its weights and rows at temperature 1 with top-p take its normaliser: every row's token and statistics are those
    it gets when warp computes them itself. Rows of each kind alone and in pairs in their chunks (on 262,144 tokens,
    two rows a chunk), a row with -inf logits, a greedy row and rows at other temperatures beside them."""
    from evalkit.generation.sampling import model_distribution, sample, samples_model

    gen = torch.Generator().manual_seed(vocab)
    settings = [Setting(temperature=1.0), Setting(temperature=0.7), Setting(temperature=1.0, top_p=0.9),
                Setting(temperature=1.0), Setting(temperature=1.0), Setting(temperature=1.0), Setting(temperature=0.0),
                Setting(temperature=1.0, top_p=0.5), Setting(temperature=0.8, top_p=0.9), Setting(temperature=1.0)]
    rows = len(settings)
    logits = torch.randn(rows, vocab, generator=gen) * 3
    logits[3, :50] = float("-inf")
    params = RowParams.from_settings(settings)
    model = model_distribution(logits, params)
    own = samples_model(params, vocab)
    assert own.tolist() == [True, False, False, True, True, True, False, False, False, True]
    assert model.weights.shape == (5, vocab)
    log_z, entropy = log_normaliser_and_entropy(logits)
    assert torch.equal(model.log_z, log_z) and torch.equal(model.entropy, entropy)
    u = torch.rand(rows, generator=gen, dtype=torch.float64)
    given, computed = sample(warp(logits, params, model), u, rows), sample(warp(logits, params), u, rows)
    for name in ("tokens", "logprob", "entropy", "kept"):
        assert torch.equal(getattr(given, name), getattr(computed, name)), name
    assert given.kept[3].item() == vocab - 50
    for r in (0, 2, 3, 5):  # a row alone: the same as in the batch
        one = params[torch.tensor([r])]
        alone = sample(warp(logits[r:r + 1], one, model_distribution(logits[r:r + 1], one)), u[r:r + 1], 1)
        assert alone.tokens.item() == given.tokens[r].item() and alone.logprob.item() == given.logprob[r].item()


@pytest.mark.parametrize("vocab", [4096, 262144])
def test_top_p_over_whole_rows_sorts_values_alone_and_drops_what_the_stable_sort_drops(vocab):
    """On CPU a whole row's top-p sorts its values alone (numpy's sort) and takes the tokens it drops from the n-th
    value: the same tokens, bit for bit, as the stable sort of the row (among tied logits the higher ids dropped
    first), on rows with many ties at the cut, -inf logits and -0.0 beside 0.0, at many top-p."""
    from evalkit.generation.sampling import _top_p_drop

    gen = torch.Generator().manual_seed(vocab)
    rows = []
    for r in range(12):
        z = torch.randn(vocab, generator=gen) * (0.5 + r)
        if r % 3 == 0:
            z = (z * 4).round() / 4  # heavy ties everywhere, the cut among them
        if r % 4 == 1:
            z[torch.randint(vocab, (vocab // 10,), generator=gen)] = float("-inf")
        z[7], z[8] = -0.0, 0.0
        rows.append(z)
    out = torch.stack(rows)
    for top_p in (0.05, 0.3, 0.5, 0.9, 0.99, 0.999999):
        p = torch.full((out.shape[0],), top_p)
        order = vocab - 1 - torch.sort(out.flip(-1), dim=-1, stable=True).indices
        cum = out.gather(1, order).softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1 - p).float()[:, None]
        drop_sorted[:, -1] = False
        expected = torch.zeros_like(out, dtype=torch.bool).scatter_(1, order, drop_sorted)
        got = _top_p_drop(out, p, None)
        assert torch.equal(got, expected), top_p
        assert bool((expected.sum(-1) > 0).any()) or top_p > 0.99


@pytest.mark.parametrize("vocab", [49152, 262144])
def test_candidates_from_the_models_block_maxima_are_those_of_the_divided_rows(vocab):
    """Given the model's distribution, top-k / top-p / min-p rows find their candidates from its block maxima
    divided by their temperatures and never divide their rows whole: the same parts, tokens and statistics, bit for
    bit, as from the divided rows, on peaked, near-flat (past 64 candidates), tied and holed rows, at temperatures
    0.3 to 3."""
    from evalkit.generation.sampling import model_distribution, sample

    gen = torch.Generator().manual_seed(vocab + 1)
    settings, rows = [], []
    for i, (t, p) in enumerate([(t, p) for t in (0.3, 0.7, 1.0, 1.5, 3.0) for p in (0.5, 0.9, 0.99)]):
        settings.append(Setting(temperature=t, top_p=p, top_k=[0, 0, 500][i % 3], min_p=[0.0, 0.02][i % 2]))
        z = torch.randn(vocab, generator=gen) * (0.3 if i % 4 == 0 else 3.0)
        if i % 5 == 1:
            z = (z * 2).round() / 2
        if i % 6 == 2:
            z[torch.randint(vocab, (vocab // 3,), generator=gen)] = float("-inf")
        rows.append(z)
    logits = torch.stack(rows)
    params = RowParams.from_settings(settings)
    model = model_distribution(logits, params)
    assert model.peaks is not None and model.peaks.shape == (len(rows), vocab // 64)
    given, computed = warp(logits, params, model), warp(logits, params)
    assert [r.tolist() for r, _ in given] == [r.tolist() for r, _ in computed]
    for (_, a), (_, b) in zip(given, computed):
        assert torch.equal(a.logits, b.logits) and (a.index is None) == (b.index is None)
        assert a.index is None or torch.equal(a.index, b.index)
    assert {w.index.shape[1] for _, w in given if w.index is not None} >= {64, 1024}
    u = torch.rand(len(rows), generator=gen, dtype=torch.float64)
    a, b = sample(given, u, len(rows)), sample(computed, u, len(rows))
    for name in ("tokens", "logprob", "entropy", "kept"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_normalise_gives_no_unset_maxima_and_keeps_every_row_with_keep_weights():
    """Block maxima asked for a row too short for blocks are not given (no unset memory), and ``keep_weights``
    with a partial ``keep`` keeps every row's weights."""
    from evalkit.generation.sampling import _normalise

    x = torch.randn(3, 2048, generator=torch.Generator().manual_seed(5))
    assert _normalise(x, peaks=True).peaks is None
    every = _normalise(x, keep_weights=True, keep=[True, False, True]).weights
    assert torch.equal(every, distribution(x)[0])
