"""Dense chains on compact rows (``chain_parts``): after a filter cuts a row to a few tokens, the later stages run on
its kept tokens alone, and give what they give on the whole row, bit for bit."""

import dataclasses

import pytest
import torch

import evalkit.generation.sampling as sampling
from evalkit.generation.samplers.base import never_near
from evalkit.generation.sampling import RowParams, apply_chain, chain_parts, kept_tokens
from evalkit.settings import Setting

ORDER_KNOBS = {  # each order with the knobs it has, values drawn per row
    "transformers": {"top_k": [0, 20, 50, 400], "top_p": [1.0, 0.8, 0.95], "min_p": [0.0, 0.02, 0.1],
                     "typical_p": [1.0, 0.5, 0.95], "epsilon_cutoff": [0.0, 3e-4, 0.01],
                     "eta_cutoff": [0.0, 1e-3, 0.02], "repetition_penalty": [1.0, 1.2]},
    "vllm": {"min_p": [0.0, 0.02], "top_k": [0, 50, 300], "top_p": [1.0, 0.9], "presence_penalty": [0.0, 0.5]},
    "llama_cpp": {"top_n_sigma": [0.0, 1.5], "top_k": [0, 40, 200], "typical_p": [1.0, 0.9], "top_p": [1.0, 0.9],
                  "min_p": [0.0, 0.05], "xtc_probability": [0.0, 1.0], "xtc_threshold": [0.05, 0.1],
                  "frequency_penalty": [0.0, 0.4]},
    "sglang": {"top_k": [0, 30, 100], "top_p": [1.0, 0.9], "min_p": [0.0, 0.05]},
    "explicit": {"top_k": [10, 64, 90], "typical_p": [1.0, 0.9], "epsilon_cutoff": [0.0, 1e-3],
                 "top_p": [1.0, 0.7], "xtc_probability": [0.0, 1.0], "xtc_threshold": [0.02]},
}
EXPLICIT = ["repetition_penalty", "top_k", ["typical_p", "epsilon_cutoff"], "temperature", "top_p",
            "xtc_probability"]


def layout(parts) -> dict:
    """Each row's drawn layout: (logits, index or None)."""
    out = {}
    for rows, part in parts:
        for i, r in enumerate(rows.tolist()):
            out[r] = (part.logits[i], None if part.index is None else part.index[i])
    return out


def same_parts(ours, whole, rows: int) -> list[int]:
    """The rows whose layouts differ: values, shapes, and the tokens of every kept place."""
    a, b = layout(ours), layout(whole)
    assert sorted(a) == sorted(b) == list(range(rows))
    wrong = []
    for r in range(rows):
        (x, i), (y, j) = a[r], b[r]
        kept = x > float("-inf")
        if x.shape != y.shape or not torch.equal(x, y) or (i is None) != (j is None) or (
                i is not None and not torch.equal(i[kept], j[kept])):
            wrong.append(r)
    return wrong


def random_settings(gen: torch.Generator, order: str, rows: int) -> list[Setting]:
    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    knobs = ORDER_KNOBS[order]
    out = []
    for _ in range(rows):
        s = {k: pick(v) for k, v in knobs.items()}
        if not s.get("xtc_probability"):
            s.pop("xtc_threshold", None)
        out.append(Setting(temperature=pick([0.5, 1.0, 1.5, 1e4]), **s,
                           order=EXPLICIT if order == "explicit" else order))
    return out


def chain_of(settings: list[Setting]):
    return settings[0].chain(sampling.ENGINE_ORDER)


@pytest.fixture
def compact_rows(monkeypatch):
    """Counts the rows the compact stages computed and the rows they sent back whole."""
    counts = {"compact": 0, "back": 0}
    original = sampling._compact_rest

    def counted(z, index, params, stages):
        z, index, sure = original(z, index, params, stages)
        counts["compact"] += int(sure.sum())
        counts["back"] += int((~sure).sum())
        return z, index, sure

    monkeypatch.setattr(sampling, "_compact_rest", counted)
    return counts


@pytest.mark.parametrize("order", list(ORDER_KNOBS))
@pytest.mark.parametrize("vocab", [8192, 49152])
def test_compact_rows_are_the_whole_rows_bit_for_bit(order, vocab, compact_rows):
    """Rows of one order, each its own knobs, logits peaked to near-flat (temperature 1e4), some with ties: the
    layout to draw from is the whole-row chain's (:func:`apply_chain`, then :func:`kept_tokens`), value for value
    and token for token, and most rows that a filter cuts do run compactly."""
    gen = torch.Generator().manual_seed(vocab + len(order))
    rows = 40
    scale = torch.tensor([0.3, 1.0, 3.0, 8.0])[torch.arange(rows) % 4][:, None]
    x = torch.randn(rows, vocab, generator=gen) * scale
    x[::5] = (x[::5] * 4).round() / 4  # ties
    settings = random_settings(gen, order, rows)
    params = RowParams.from_settings(settings, prompts=[[1, 2, 3, 2]] * rows)
    params.u_xtc = torch.rand(rows, generator=gen, dtype=torch.float64)
    every = torch.arange(rows)
    whole = kept_tokens(every, apply_chain(x, params, chain_of(settings)))
    assert same_parts(chain_parts(every, x, params, chain_of(settings)), whole, rows) == []
    if order != "sglang":  # (its joint stage is its last: nothing runs after it)
        assert compact_rows["compact"] >= rows // 4, compact_rows


@pytest.mark.parametrize("order", ["transformers", "llama_cpp"])
def test_typical_on_bfloat16_rows_at_high_temperatures_keeps_the_whole_rows_set(order):
    """bfloat16 logits tie exactly in runs and lie one float apart elsewhere; at a high temperature typical's
    distances crowd together, and a run of tied tokens moves with any neighbour whose order a rounding decides (a
    cut at the run keeps every token at its distance). The kept sets are still the whole row's (tokens next to such
    runs go whole when the cut mass lies anywhere in them)."""
    gen = torch.Generator().manual_seed(0)
    rows, vocab = 128, 8192
    x = (torch.randn(rows, vocab, generator=gen) * 1.5).to(torch.bfloat16).float()
    settings = [Setting(order=order, top_k=400, typical_p=float(torch.rand(1, generator=gen)) * 0.98 + 0.01,
                        temperature=[1e3, 1e4, 3e3, 300.0][r % 4]) for r in range(rows)]
    params = RowParams.from_settings(settings)
    every = torch.arange(rows)
    whole = kept_tokens(every, apply_chain(x, params, chain_of(settings)))
    assert same_parts(chain_parts(every, x, params, chain_of(settings)), whole, rows) == []


def rows_with_a_dominant_token(gen: torch.Generator, rows: int, vocab: int, kept: int) -> torch.Tensor:
    """Rows of ``kept`` near-flat logits and one dominant token (low entropy: eta's cut is eta itself), the rest far
    below: a top-k of ``kept`` leaves exactly those, whose sums round otherwise on another layout."""
    x = torch.randn(rows, vocab, generator=gen) * 0.01 - 20
    ids = torch.stack([torch.randperm(vocab, generator=gen)[:kept] for _ in range(rows)])
    x.scatter_(1, ids, torch.randn(rows, kept, generator=gen) * 0.01)
    return x.scatter_(1, ids[:, :1], 10.0)


@pytest.mark.parametrize("stage", ["epsilon_cutoff", "eta_cutoff", "xtc_probability"])
def test_a_cut_on_a_probability_goes_whole_where_the_compact_row_would_cut_elsewhere(stage, monkeypatch):
    """Each row's threshold is exactly one of its probabilities (computed on the whole row): the whole-row chain
    keeps that token (a probability is not under itself), a compact row's normaliser rounds otherwise and may not.
    With each stage's ``near`` the layouts are the whole row's; without it (every stage taken as never near) some
    rows differ, so this checks what ``near`` is there for."""
    vocab, kept, rows = 65536, 4000, 16
    gen = torch.Generator().manual_seed(3)
    x = rows_with_a_dominant_token(gen, rows, vocab, kept)
    cut = apply_chain(x, RowParams.from_settings([Setting(top_k=kept)] * rows), [("top_k",)])
    probs = cut.softmax(dim=-1)
    settings = []
    for r in range(rows):
        j = (~cut[r].isneginf()).nonzero()[int(torch.randint(1, kept, (1,), generator=gen)), 0]
        p = probs[r, j].item()
        knob = {"xtc_probability": 1.0, "xtc_threshold": p} if stage == "xtc_probability" else {stage: p}
        settings.append(Setting(top_k=kept, **knob, order=["temperature", "top_k", stage]))
    params = RowParams.from_settings(settings)
    params.u_xtc = torch.zeros(rows, dtype=torch.float64)
    every = torch.arange(rows)
    whole = kept_tokens(every, apply_chain(x, params, chain_of(settings)))
    assert same_parts(chain_parts(every, x, params, chain_of(settings)), whole, rows) == []
    for name, t in list(sampling.TRANSFORMS.items()):
        if t.near is not None:
            monkeypatch.setitem(sampling.TRANSFORMS, name, dataclasses.replace(t, near=never_near))
    assert same_parts(chain_parts(every, x, params, chain_of(settings)), whole, rows) != []


def test_near_flags_cuts_on_a_cumulative_mass_and_tokens_that_may_swap_at_the_cut():
    """top-p and typical cut where a cumulative mass passes their threshold: a threshold on a cumulative mass of
    the row is near, one far from every cumulative mass is not; and two tokens of typical whose distances are a
    rounding apart (logits one float apart) are near when the cut mass lies between the masses before and after
    them, not when it lies elsewhere."""
    vocab, kept, rows = 8192, 300, 8
    gen = torch.Generator().manual_seed(5)
    x = torch.full((rows, vocab), float("-inf"))
    x[:, :kept] = torch.randn(rows, kept, generator=gen) * 2
    asc = x.sort(dim=-1).values.softmax(dim=-1).cumsum(dim=-1)
    top_p = sampling.TRANSFORMS["top_p"].near
    on_a_mass = RowParams.from_settings([Setting(top_p=1 - asc[r, vocab - 40].item()) for r in range(rows)])
    assert bool(top_p(x, on_a_mass).all())
    between = [(asc[r, vocab - 41] + asc[r, vocab - 40]).item() / 2 for r in range(rows)]
    assert not bool(top_p(x, RowParams.from_settings([Setting(top_p=1 - b) for b in between])).any())

    typical = sampling.TRANSFORMS["typical_p"].near

    def by_distance(z):  # typical's order, each distance and the cumulative mass in that order
        logp = torch.log_softmax(z, dim=-1)
        ent = -(logp * logp.exp()).nansum(-1, keepdim=True)
        ss, by = torch.sort((-logp - ent).abs(), dim=-1, stable=True)
        return ss, by, z.gather(1, by).softmax(dim=-1).cumsum(dim=-1)

    def clear_place(ss, lo, hi, away=None):  # per row, a place whose neighbours lie well apart by distance
        gaps = ss[:, 1:] - ss[:, :-1]
        return [next(j for j in range(lo, hi) if gaps[r, j - 1:j + 1].min() > 0.02
                     and (away is None or abs(j - int(away[r])) > 3)) for r in range(rows)]

    def cut_before(cum, places):  # typical_p between the masses before and at each row's place
        return RowParams.from_settings([Setting(typical_p=(cum[r, j - 1] + cum[r, j]).item() / 2)
                                        for r, j in enumerate(places)])

    ss, by, cum = by_distance(x)
    places = clear_place(ss, 20, kept - 20)
    assert bool(typical(x, RowParams.from_settings([Setting(typical_p=cum[r, j].item())
                                                   for r, j in enumerate(places)])).all())
    assert not bool(typical(x, cut_before(cum, places)).any())
    pair = x.clone()  # two tokens one float apart: which comes first by distance is a rounding's
    at = torch.tensor(places)[:, None]
    a, b = by.gather(1, at), by.gather(1, at + 1)
    pair.scatter_(1, b, torch.nextafter(x.gather(1, a), torch.tensor(1e9)))
    ss, by, cum = by_distance(pair)
    first = torch.minimum((by == a).int().argmax(dim=-1), (by == b).int().argmax(dim=-1))  # the pair's places now
    assert torch.equal(by.gather(1, first[:, None] + torch.arange(2)).sort(dim=-1).values,
                       torch.cat([a, b], dim=1).sort(dim=-1).values)
    assert bool(typical(pair, cut_before(cum, (first + 1).tolist())).all())
    assert not bool(typical(pair, cut_before(cum, clear_place(ss, 3, kept - 3, first))).any())
