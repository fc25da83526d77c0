"""The ``transformers`` chain order against transformers' own logits processors (issue 28).

The oracle is transformers itself: ``GenerationMixin._get_logits_processor`` builds the processors of a
``GenerationConfig`` holding a setting's knobs, in the order ``generate`` composes them (repetition penalty,
no-repeat n-grams, min new tokens, then temperature, top-k, top-p, min-p, typical, epsilon, eta), and they run on
the same logits with the same ``input_ids`` (the row's prompt and output, unpadded; ``input_ids_seq_length`` the
prompt's length, as ``generate`` gives MinNewTokensLengthLogitsProcessor). evalkit computes every row of a mixed batch
at once (different settings, prompts and histories) through ``apply_chain`` and through ``warp`` (what the engine
samples from). What transformers lacks (presence and frequency penalties, the penalty scopes) is checked against
plain Python written here: vLLM's documented formula, and each scope's definition.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from evalkit.generation.samplers import penalties
from evalkit.generation.sampling import RowParams, apply_chain, sample, warp
from evalkit.settings import ORDERS, Setting

EOS = [1, 4]  # the end tokens of the random batches
FEW = 6  # histories draw most tokens from ids below this, so that tokens and n-grams repeat

# transformers' processor for each stage of the transformers order, in the order generate appends them
PROCESSORS = {"repetition_penalty": "RepetitionPenaltyLogitsProcessor",
              "no_repeat_ngram_size": "NoRepeatNGramLogitsProcessor",
              "min_tokens": "MinNewTokensLengthLogitsProcessor", "temperature": "TemperatureLogitsWarper",
              "top_k": "TopKLogitsWarper", "top_p": "TopPLogitsWarper", "min_p": "MinPLogitsWarper",
              "typical_p": "TypicalLogitsWarper", "epsilon_cutoff": "EpsilonLogitsWarper",
              "eta_cutoff": "EtaLogitsWarper"}


# --------------------------------------------------------------------------- the oracle


@pytest.fixture(scope="module")
def composer():
    """A transformers model whose ``_get_logits_processor`` composes the processors (no forward pass is run)."""
    config = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1)
    return LlamaForCausalLM(config)


def generation_config(s: Setting, eos=EOS) -> GenerationConfig:
    """The knobs of ``s`` as transformers' GenerationConfig (an off knob left unset, as generate leaves it)."""
    gc = GenerationConfig(
        do_sample=not s.greedy, temperature=None if s.greedy else s.temperature, top_k=s.top_k or None,
        top_p=s.top_p if s.top_p < 1 else None, min_p=s.min_p or None,
        typical_p=s.typical_p if s.typical_p < 1 else None, epsilon_cutoff=s.epsilon_cutoff or None,
        eta_cutoff=s.eta_cutoff or None, repetition_penalty=s.repetition_penalty,
        no_repeat_ngram_size=s.no_repeat_ngram_size or None, min_new_tokens=s.min_tokens or None)
    gc._eos_token_tensor = torch.tensor(eos)  # what generate's _prepare_special_tokens sets
    return gc


def processors(composer, s: Setting, prompt_length: int, eos=EOS):
    return composer._get_logits_processor(generation_config=generation_config(s, eos),
                                          input_ids_seq_length=prompt_length, device="cpu", model_kwargs={})


def oracle(composer, row: torch.Tensor, s: Setting, prompt: list[int], output: list[int], eos=EOS) -> torch.Tensor:
    """transformers' processors for ``s`` on one row of logits, with the row's prompt and output as input_ids."""
    ids = torch.tensor([prompt + output], dtype=torch.long)
    return processors(composer, s, len(prompt), eos)(ids, row[None].clone())[0]


def test_the_oracle_composes_one_processor_per_stage_in_the_transformers_order(composer):
    s = Setting(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, typical_p=0.9, epsilon_cutoff=0.01,
                eta_cutoff=0.01, repetition_penalty=1.2, no_repeat_ngram_size=2, min_tokens=3)
    names = [type(p).__name__ for p in processors(composer, s, 4)]
    assert names == [PROCESSORS[stage] for (stage,) in ORDERS["transformers"]]
    assert [type(p).__name__ for p in processors(composer, Setting(), 4)] == []  # every knob off: nothing


# --------------------------------------------------------------------------- random batches


def random_rows(gen: torch.Generator, n: int, vocab: int) -> torch.Tensor:
    """Logits of many shapes: ordinary, peaked, flat, exact ties, -inf entries, uniform, two finite tokens."""
    rows = []
    for kind in torch.randint(0, 7, (n,), generator=gen).tolist():
        if kind == 0:
            row = torch.randn(vocab, generator=gen) * 3
        elif kind == 1:  # peaked
            row = torch.randn(vocab, generator=gen)
            row[torch.randint(0, vocab, (1,), generator=gen)] += 40
        elif kind == 2:  # flat: a cutoff removes nothing, or everything but the top
            row = torch.randn(vocab, generator=gen) * 1e-3
        elif kind == 3:  # many exact ties, negative logits among them
            row = torch.randint(-2, 3, (vocab,), generator=gen).float()
        elif kind == 4:  # some tokens already masked
            row = torch.randn(vocab, generator=gen) * 2
            row[torch.rand(vocab, generator=gen) < 0.5] = float("-inf")
            row[-1] = 0.5
        elif kind == 5:  # exactly uniform: every filter keeps the top ties, i.e. everything
            row = torch.zeros(vocab)
        else:  # all but two tokens masked
            row = torch.full((vocab,), float("-inf"))
            row[-2:] = torch.randn(2, generator=gen)
        rows.append(row)
    return torch.stack(rows)


def random_tokens(gen: torch.Generator, n: int, vocab: int) -> list[int]:
    """Tokens of a history, mostly among a few ids; never the last two ids, which the rows of random_rows that
    mask tokens keep finite (no processor can remove every token: transformers' eta would raise on such a row)."""
    few = torch.randint(0, min(vocab - 2, FEW), (n,), generator=gen)
    anywhere = torch.randint(0, vocab - 2, (n,), generator=gen)
    return torch.where(torch.rand(n, generator=gen) < 0.8, few, anywhere).tolist()


def histories(gen: torch.Generator, rows: int, vocab: int, n_out: int) -> tuple[list[list[int]], list[list[int]]]:
    """Each row's prompt (1 to 10 tokens) and output (``n_out`` tokens: a wave's rows have as many)."""
    prompts = [random_tokens(gen, int(torch.randint(1, 11, (1,), generator=gen)), vocab) for _ in range(rows)]
    return prompts, [random_tokens(gen, n_out, vocab) for _ in range(rows)]


def row_params(settings: list[Setting], prompts, outputs, eos=EOS) -> RowParams:
    """The rows' parameters after their prompts were prefilled and their outputs drawn (params.advance)."""
    params = RowParams.from_settings(settings, prompts=prompts, eos=eos)
    for step in range(len(outputs[0]) if outputs else 0):
        params.advance(torch.tensor([o[step] for o in outputs]), torch.zeros(len(settings)))
    return params


def warped(logits: torch.Tensor, params: RowParams) -> torch.Tensor:
    """The engine's sampling distribution of each row (``warp``), as dense logits."""
    out = torch.full_like(logits, float("-inf"))
    for rows, part in warp(logits, params):
        out[rows] = part.dense(logits.shape[-1])
    return out


def pick(gen: torch.Generator, options: list):
    return options[int(torch.randint(0, len(options), (1,), generator=gen))]


KNOB_VALUES = {
    "typical_p": [1.0, 0.2, 0.5, 0.9, 0.95, 0.999],
    "epsilon_cutoff": [0.0, 1e-4, 3e-3, 0.02, 0.1, 0.3, 0.9],
    "eta_cutoff": [0.0, 1e-4, 2e-3, 0.02, 0.1, 0.3, 0.9],
    "repetition_penalty": [1.0, 0.5, 0.9, 1.1, 1.5, 3.0],
    "no_repeat_ngram_size": [0, 1, 2, 3, 4],
    "min_tokens": [0, 1, 2, 3, 5, 20],
    "temperature": [1.0, 0.3, 0.7, 1.3, 2.0],
    "top_k": [0, 1, 3, 50],
    "top_p": [1.0, 0.3, 0.8, 0.95],
    "min_p": [0.0, 0.05, 0.3],
}


def same_distribution(ours: torch.Tensor, theirs: torch.Tensor, top_p: bool) -> bool:
    """Whether two rows of logits define the same sampling distribution: the same kept set (probabilities within
    1e-6), or, after a top-p cut between exactly tied logits (transformers' unstable sort keeps an unspecified
    subset of the ties, evalkit the lowest token ids), kept sets of one size that differ only among tokens of one
    logit, with the same probabilities sorted. Returns True for an exact match, False for a tie match; raises
    otherwise."""
    if torch.equal(ours.isfinite(), theirs.isfinite()):
        if ours.isfinite().any():
            torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1), atol=1e-6, rtol=0)
        return True
    assert top_p, "kept sets differ"
    diff = ours.isfinite() ^ theirs.isfinite()
    values = torch.cat([ours[diff & ours.isfinite()], theirs[diff & theirs.isfinite()]])
    assert bool((values == values[0]).all()), "kept sets differ beyond ties"
    assert int(ours.isfinite().sum()) == int(theirs.isfinite().sum())
    torch.testing.assert_close(ours.softmax(-1).sort().values, theirs.softmax(-1).sort().values, atol=1e-6, rtol=0)
    return False


def check_batch(composer, logits, settings, prompts, outputs) -> int:
    """evalkit's chain (apply_chain and warp) against transformers' processors, row by row; the exact rows."""
    params = row_params(settings, prompts, outputs)
    dense = apply_chain(logits, params, ORDERS["transformers"])
    engine = warped(logits, params)
    exact = 0
    for r, s in enumerate(settings):
        theirs = oracle(composer, logits[r], s, prompts[r], outputs[r])
        exact += all([same_distribution(ours, theirs, s.top_p < 1) for ours in (dense[r], engine[r])])
    return exact


# --------------------------------------------------------------------------- 1. parity on random logits


@pytest.mark.parametrize("knob", ["typical_p", "epsilon_cutoff", "eta_cutoff", "repetition_penalty",
                                  "no_repeat_ngram_size", "min_tokens"])
@pytest.mark.parametrize("vocab, seed", [(7, 0), (60, 1), (300, 2), (3000, 3)])
def test_each_knob_alone_matches_transformers(composer, knob, vocab, seed):
    """Rows of one knob (its value drawn per row, off in some), alone or after a temperature."""
    gen = torch.Generator().manual_seed(seed)
    rows = 48
    logits = random_rows(gen, rows, vocab)
    settings = [Setting(**{knob: pick(gen, KNOB_VALUES[knob]),
                           "temperature": 1.0 if i % 2 else pick(gen, KNOB_VALUES["temperature"])})
                for i in range(rows)]
    n_out = int(torch.randint(0, 7, (1,), generator=gen))
    prompts, outputs = histories(gen, rows, vocab, n_out)
    assert check_batch(composer, logits, settings, prompts, outputs) == rows
    # the knob does remove or move something in this batch, so the comparison above could fail
    params = row_params(settings, prompts, outputs)
    scaled = apply_chain(logits, params, [("temperature",)])
    changed = apply_chain(logits, params, ORDERS["transformers"])
    assert not torch.equal(changed.isfinite(), scaled.isfinite()) or not torch.allclose(changed, scaled)


@pytest.mark.parametrize("vocab, seed", [(7, 0), (7, 1), (60, 2), (60, 3), (300, 4), (3000, 5), (3000, 6)])
def test_chained_knobs_in_mixed_rows_match_transformers(composer, vocab, seed):
    """Every knob of the transformers order, each drawn per row: one batch of rows with different settings,
    prompts and histories."""
    gen = torch.Generator().manual_seed(seed)
    rows = 64
    logits = random_rows(gen, rows, vocab)
    settings = [Setting(**{k: pick(gen, v) for k, v in KNOB_VALUES.items()}) for _ in range(rows)]
    n_out = int(torch.randint(0, 7, (1,), generator=gen))
    prompts, outputs = histories(gen, rows, vocab, n_out)
    exact = check_batch(composer, logits, settings, prompts, outputs)
    ties = sum(s.top_p < 1 and len(set(row[row.isfinite()].tolist())) < int(row.isfinite().sum())
               for s, row in zip(settings, logits))
    assert exact >= rows - ties  # the others: top-p cuts between tied logits, checked above


LARGE = {k: v for k, v in KNOB_VALUES.items() if k not in ("top_k", "top_p", "min_p")}


def test_large_vocabularies_match_transformers_at_batch_two(composer):
    """Past 32768 tokens torch's CPU sum splits a lone row among threads, so transformers' own typical and eta
    give a row alone other last bits than the same row in a batch (and the cut can move by a token). The oracle
    here is transformers on a batch of two copies of the row: what it gives the row in any batch."""
    gen = torch.Generator().manual_seed(8)
    rows, vocab = 16, 50_000
    logits = random_rows(gen, rows, vocab)
    settings = [Setting(**{k: pick(gen, v) for k, v in LARGE.items()}) for _ in range(rows)]
    prompts, outputs = histories(gen, rows, vocab, 3)
    params = row_params(settings, prompts, outputs)
    ours = apply_chain(logits, params, ORDERS["transformers"])
    for r, s in enumerate(settings):
        ids = torch.tensor([prompts[r] + outputs[r]] * 2)
        theirs = processors(composer, s, len(prompts[r]))(ids, logits[r].expand(2, vocab).clone())[0]
        assert same_distribution(ours[r], theirs, top_p=False), (r, s)


@pytest.mark.slow
def test_top_p_cuts_a_few_millionths_from_a_tokens_mass_match_transformers(composer):
    """The candidate path decides top-p alone wherever the cut lies more than MARGIN (1e-6) from a token's mass ranked
    at or below it, so there it must decide as transformers' TopPLogitsWarper (a sorted softmax's cumulative sum)
    does. On the embedded model's own logits (24 decode steps of two prompts, 49,152 tokens), cuts 2e-6 to 8e-6
    either side of the 2nd to 35th token's mass: the whole row's probabilities come from the row's normaliser with
    a total of 1, within 2e-7 of transformers'. (A float32 sum of the row's unsorted softmax, once used for that
    total, was up to 1.2e-5 off on such rows, and cut 50 of these 1,152 rows elsewhere.)"""
    from evalkit.config import config_from_dict
    from evalkit.generation import load_backend
    from evalkit.prompts import load_prompts

    config = config_from_dict({"name": "cuts", "model": {"id": "default", "device": "cpu"}, "max_new_tokens": 12,
                               "prompts": ["Describe the ocean in one sentence.", "Write a haiku about snow."]})
    backend = load_backend(config)
    steps = []
    with torch.inference_mode():
        for p in backend.prepare(load_prompts(config), chat_template="auto", system_prompt=None, max_new_tokens=12):
            ids = list(p.token_ids)
            for _ in range(12):
                z = backend.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
                steps.append(z)
                ids.append(int(z.argmax()))
    rows, settings = [], []
    for z in steps:
        c = torch.sort(z).values.softmax(dim=-1).cumsum(dim=-1).flip(0)  # transformers' mass at or below each
        for k in (1, 2, 3, 5, 8, 13, 21, 34):
            for off in (2e-6, -2e-6, 5e-6, -5e-6, 8e-6, -8e-6):
                rows.append(z)
                settings.append(Setting(temperature=1.0, top_p=1 - (float(c[k]) + off)))
    wrong = []
    for start in range(0, len(rows), 192):  # a part at a time: 1,152 rows of 49,152 logits
        logits, part = torch.stack(rows[start:start + 192]), settings[start:start + 192]
        ours = warped(logits, RowParams.from_settings(part))
        wrong += [(start + i, s.top_p) for i, s in enumerate(part)
                  if not torch.equal(ours[i].isfinite(), oracle(composer, logits[i], s, [], []).isfinite())]
    assert not wrong, f"{len(wrong)} of {len(settings)} rows cut elsewhere than transformers: {wrong[:5]}"


def test_a_row_alone_is_computed_as_in_a_batch():
    """The reproducibility promise: a row's distribution does not depend on the rows beside it, also for a lone
    row over a large vocabulary (the engine's last row of a wave), where torch splits a sum among threads (two
    here, on any machine: with one thread nothing is split). Some of these rows' cuts moved when they were alone
    before cutoffs computed a lone row as a batch of two."""
    gen = torch.Generator().manual_seed(9)
    rows, vocab = 64, 50_000
    logits = torch.randn(rows, vocab, generator=gen) * 2
    settings = [Setting(typical_p=[0.2, 0.5, 0.9, 0.95][i % 4]) if i % 8 < 4 else
                Setting(eta_cutoff=[1e-4, 3e-4, 1e-3, 0.01][i % 4]) for i in range(rows)]
    params = row_params(settings, [[1, 2]] * rows, [[]] * rows)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batched = apply_chain(logits, params, ORDERS["transformers"])
        moved = [r for r in range(rows) if not torch.equal(
            apply_chain(logits[r:r + 1], params[torch.tensor([r])], ORDERS["transformers"])[0], batched[r])]
    finally:
        torch.set_num_threads(threads)
    assert moved == []


@pytest.mark.parametrize("vocab, seed", [(7, 0), (60, 1), (3000, 2)])
def test_greedy_rows_take_the_argmax_after_transformers_processors(composer, vocab, seed):
    """Greedy (generate's do_sample=False): the processors, no warper, then the argmax (first among ties)."""
    gen = torch.Generator().manual_seed(seed)
    rows = 48
    logits = random_rows(gen, rows, vocab)
    knobs = ("repetition_penalty", "no_repeat_ngram_size", "min_tokens")
    settings = [Setting(temperature=0, **{k: pick(gen, KNOB_VALUES[k]) for k in knobs}) for _ in range(rows)]
    prompts, outputs = histories(gen, rows, vocab, int(torch.randint(0, 7, (1,), generator=gen)))
    params = row_params(settings, prompts, outputs)
    ours = warped(logits, params).argmax(dim=-1)
    theirs = torch.stack([oracle(composer, logits[r], s, prompts[r], outputs[r]).argmax()
                          for r, s in enumerate(settings)])
    assert ours.tolist() == theirs.tolist()
    assert ours.tolist() != logits.argmax(dim=-1).tolist()  # the processors changed some row's choice


# --------------------------------------------------------------------------- penalty scopes


def in_scope(scope, prompt: list[int], output: list[int]) -> list[int]:
    """The tokens a scope claims to count, by its definition."""
    if scope == "prompt+output":
        return prompt + output
    if scope == "output":
        return output
    return (prompt + output)[-scope:]


@pytest.mark.parametrize("vocab, seed, n_out", [(7, 0, 0), (7, 1, 5), (60, 2, 3), (300, 3, 12)])
def test_each_scope_counts_exactly_the_tokens_it_claims(vocab, seed, n_out):
    """penalties.counts and each penalty under every scope, against a plain count of the claimed tokens."""
    gen = torch.Generator().manual_seed(seed)
    scopes = ["prompt+output", "output", 1, 3, 7, 100]
    rows = 36
    settings = [Setting(order="vllm", temperature=1.0, repetition_penalty=pick(gen, [0.8, 1.3, 2.0]),
                        presence_penalty=pick(gen, [-1.0, 0.0, 0.5, 2.0]),
                        frequency_penalty=pick(gen, [-0.5, 0.0, 0.3, 1.5]), penalty_scope=scopes[i % len(scopes)])
                for i in range(rows)]
    prompts, outputs = histories(gen, rows, vocab, n_out)
    params = row_params(settings, prompts, outputs)
    logits = torch.randn(rows, vocab, generator=gen) * 3
    for name in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
        got = penalties.counts(params, getattr(params, f"scope_{name}"), vocab)
        for r, s in enumerate(settings):
            want = Counter(in_scope(s.penalty_scope, prompts[r], outputs[r]))
            assert got[r].tolist() == [float(want[v]) for v in range(vocab)], (name, s.penalty_scope)
    ours = apply_chain(logits, params, ORDERS["vllm"])
    for r, s in enumerate(settings):
        count = Counter(in_scope(s.penalty_scope, prompts[r], outputs[r]))
        want = []
        for v, z in enumerate(logits[r].tolist()):
            if count[v]:
                z = z / s.repetition_penalty if z > 0 else z * s.repetition_penalty
            want.append(z - s.frequency_penalty * count[v] - s.presence_penalty * (count[v] > 0))
        torch.testing.assert_close(ours[r].double(), torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=1e-6)


def vllm_reference(row: list[float], s: Setting, prompt: list[int], output: list[int], eos=EOS,
                   count_prompt: bool = False) -> list[float]:
    """vLLM's sampler on one row, from its documented formula (vllm.model_executor.layers.utils.apply_penalties and
    the v1 sampler): min_tokens removes the stop tokens while the output is shorter; the repetition penalty over
    prompt and output (positive logits divided, the others multiplied); then the frequency penalty times the
    token's output count and the presence penalty once if it is in the output; then the temperature. (With
    ``count_prompt`` the frequency and presence penalties count the prompt too: not vLLM's convention.)"""
    seen, out_count = set(prompt) | set(output), Counter(prompt + output if count_prompt else output)
    result = []
    for v, z in enumerate(row):
        if len(output) < s.min_tokens and v in eos:
            z = -math.inf
        if v in seen:
            z = z / s.repetition_penalty if z > 0 else z * s.repetition_penalty
        z -= s.frequency_penalty * out_count[v]
        z -= s.presence_penalty * (out_count[v] > 0)
        result.append(z / s.temperature)
    return result


@pytest.mark.parametrize("vocab, seed", [(7, 0), (60, 1), (300, 2)])
def test_vllm_convention_penalties_before_temperature(vocab, seed):
    """order vllm, scope auto: repetition over prompt and output, presence and frequency over the output only,
    penalties before the temperature, min tokens first."""
    gen = torch.Generator().manual_seed(seed)
    rows = 40
    settings = [Setting(order="vllm", temperature=pick(gen, [0.5, 1.0, 1.7]),
                        repetition_penalty=pick(gen, [1.0, 0.8, 1.3, 2.0]),
                        presence_penalty=pick(gen, [0.0, -1.0, 0.5, 2.0]),
                        frequency_penalty=pick(gen, [0.0, -0.5, 0.3, 1.5]), min_tokens=pick(gen, [0, 2, 9]))
                for _ in range(rows)]
    prompts, outputs = histories(gen, rows, vocab, int(torch.randint(1, 6, (1,), generator=gen)))
    params = row_params(settings, prompts, outputs)
    logits = random_rows(gen, rows, vocab)
    logits[logits.isneginf()] = -30.0  # vLLM's model logits are finite
    for ours in (apply_chain(logits, params, ORDERS["vllm"]), warped(logits, params)):
        for r, s in enumerate(settings):
            want = torch.tensor(vllm_reference(logits[r].tolist(), s, prompts[r], outputs[r]), dtype=torch.float64)
            assert torch.equal(ours[r].isfinite(), want.isfinite())
            torch.testing.assert_close(ours[r].softmax(-1).double(), want.softmax(-1), atol=1e-6, rtol=0)
    # the output-only scope matters here: counting the prompt too changes some row
    other = [torch.tensor(vllm_reference(logits[r].tolist(), s, prompts[r], outputs[r], count_prompt=True),
                          dtype=torch.float64)
             for r, s in enumerate(settings)]
    assert any(not torch.allclose(o.softmax(-1), ours[r].softmax(-1).double(), atol=1e-3)
               for r, o in enumerate(other))


# --------------------------------------------------------------------------- 4. counts once per step


def test_penalties_count_once_per_step_and_only_the_frequency_penalty_counts_densely(monkeypatch):
    """The frequency penalty counts each row's tokens with one scatter-add per step (a second application in the same
    step reuses it); the repetition and presence penalties gather and scatter over the history instead."""
    calls = []
    original = torch.Tensor.scatter_add_

    def counted(self, *args, **kw):
        calls.append(1)
        return original(self, *args, **kw)

    vocab = 50
    prompts, outputs = [[1, 2, 3, 3]] * 2, [[3, 4]] * 2
    with_frequency = [Setting(order="llama_cpp", repetition_penalty=1.3, presence_penalty=0.5,
                              frequency_penalty=0.2)] * 2
    without = [Setting(order="vllm", repetition_penalty=1.3, presence_penalty=0.5)] * 2
    logits = torch.randn(2, vocab)
    for settings, scatters in ((with_frequency, 1), (without, 0)):
        params = row_params(settings, prompts, outputs)
        chain = ORDERS[settings[0].order]
        monkeypatch.setattr(torch.Tensor, "scatter_add_", counted)
        calls.clear()
        first = apply_chain(logits, params, chain)
        assert len(calls) == scatters
        again = apply_chain(logits, params, chain)  # the same step: nothing counted again
        assert len(calls) == scatters and torch.equal(first, again)
        monkeypatch.setattr(torch.Tensor, "scatter_add_", original)
        assert not torch.equal(first[:, 3], logits[:, 3])  # a seen token is penalised
        params.advance(torch.tensor([7, 7]), torch.zeros(2))  # the next step counts afresh
        after = apply_chain(logits, params, chain)
        assert not torch.equal(after[:, 7], first[:, 7])


# --------------------------------------------------------------------------- 2. the stateful path, through the engine


@pytest.fixture(scope="module")
def backend(tiny_model, tmp_path_factory):
    from evalkit.config import config_from_dict
    from evalkit.generation import load_backend
    from evalkit.prompts import load_prompts

    from conftest import base_config

    config = config_from_dict(base_config(tiny_model, tmp_path_factory.mktemp("unused")))
    be = load_backend(config)
    be.prepared = be.prepare(load_prompts(config), chat_template="auto", system_prompt=None, max_new_tokens=48)
    return be


@contextlib.contextmanager
def shaped(backend, scale: float = 1.0, boost: float = 0.0):
    """The tiny model's logits times ``scale`` (sharper: its samples loop, so that the penalties matter) and its end
    tokens' raised by ``boost`` (so that min_tokens matters): a forward hook, so that evalkit's engine, transformers'
    generate and the recomputations below all see the same model."""
    eos = backend.eos_ids

    def hook(module, args, output):
        output.logits.mul_(scale)
        output.logits[..., eos] += boost
        return output

    handle = backend.model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def decode(backend, settings: list[Setting], samples: int, max_new_tokens: int) -> dict:
    from evalkit.generation import WorkUnit
    from evalkit.seeds import derive_seed

    units = [WorkUnit(p, s, i, derive_seed(11, p.prompt.id, s.id, i))
             for s in settings for p in backend.prepared for i in range(samples)]
    out = backend.generate(units, max_new_tokens=max_new_tokens, batch_size=64)
    return {(r.unit.prompt.prompt.id, r.unit.setting.id, r.unit.sample_index): r for r in out}


GREEDY = [Setting(temperature=0), Setting(temperature=0, repetition_penalty=1.5),
          Setting(temperature=0, repetition_penalty=0.7), Setting(temperature=0, no_repeat_ngram_size=2),
          Setting(temperature=0, no_repeat_ngram_size=3), Setting(temperature=0, min_tokens=5),
          Setting(temperature=0, repetition_penalty=1.3, no_repeat_ngram_size=3, min_tokens=9)]


@pytest.mark.parametrize("boost", [0.0, 0.3])
def test_greedy_decoding_equals_transformers_generate(backend, boost):
    """Every greedy setting, all in one batch of evalkit's engine, against generate(do_sample=False) on the prompts
    (left-padded, as generate pads them), token for token up to the first end token (boost 0: the plain greedy
    continuation loops, so that the penalty and the n-gram bans change it; boost 0.3: it ends at once, so that
    min_tokens changes it)."""
    steps = 40
    prompts = backend.prepared
    width = max(len(p.token_ids) for p in prompts)
    ids = torch.tensor([[backend.pad_id] * (width - len(p.token_ids)) + list(p.token_ids) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p.token_ids)) + [1] * len(p.token_ids) for p in prompts])
    with shaped(backend, boost=boost):
        result = decode(backend, GREEDY, 1, steps)
        for s in GREEDY:
            theirs = backend.model.generate(
                ids, attention_mask=mask, do_sample=False, max_new_tokens=steps,
                repetition_penalty=s.repetition_penalty, no_repeat_ngram_size=s.no_repeat_ngram_size or None,
                min_new_tokens=s.min_tokens or None, eos_token_id=backend.eos_ids, pad_token_id=backend.pad_id)
            for p, row in zip(prompts, theirs[:, width:].tolist()):
                end = next((i for i, t in enumerate(row) if t in backend.eos_ids), None)
                r = result[(p.prompt.id, s.id, 0)]
                assert list(r.token_ids) == row[:end], (p.prompt.id, s.id)
                assert r.finish_reason == ("length" if end is None else "eos"), (p.prompt.id, s.id)
    plain = {pid: r.token_ids for (pid, sid, _), r in result.items() if sid == "t0-p1"}
    changed = {sid for (pid, sid, _), r in result.items() if r.token_ids != plain[pid]}
    assert len(changed) >= (5 if boost == 0 else 2)  # the knobs did change the greedy continuations


def seen_before(sequence: list[int], start: int, n: int) -> list[int]:
    """The positions from ``start`` on where the n-gram that ends there already occurred earlier."""
    grams = [tuple(sequence[i - n + 1: i + 1]) for i in range(n - 1, len(sequence))]
    return [i for i in range(max(start, n - 1), len(sequence))
            if tuple(sequence[i - n + 1: i + 1]) in grams[: i - n + 1]]


def test_sampled_no_repeat_ngram_and_min_tokens_hold_in_every_sample(backend):
    """no_repeat_ngram_size: no n-gram of an output repeats one of prompt and output before it; min_tokens: no
    sample ends sooner. The same settings without the knob break both (so the checks could fail)."""
    n2, n3 = Setting(temperature=0.8, no_repeat_ngram_size=2), Setting(temperature=1.0, no_repeat_ngram_size=3)
    plain = Setting(temperature=0.8)
    with shaped(backend, scale=30.0):
        result = decode(backend, [n2, n3, plain], 6, 32)
    repeats = {s.id: 0 for s in (n2, n3, plain)}
    for (pid, sid, _), r in result.items():
        prompt = list(r.unit.prompt.token_ids)
        n = r.unit.setting.no_repeat_ngram_size or 2
        found = seen_before(prompt + list(r.token_ids), len(prompt), n)
        repeats[sid] += len(found)
    assert repeats[n2.id] == 0 and repeats[n3.id] == 0
    assert repeats[plain.id] > 0

    short, free = Setting(temperature=1.0, min_tokens=6), Setting(temperature=1.0)
    with shaped(backend, boost=4.0):
        result = decode(backend, [short, free], 12, 16)
    lengths = {s.id: [] for s in (short, free)}
    for (pid, sid, _), r in result.items():
        lengths[sid].append((len(r.token_ids), r.finish_reason))
    assert all(n >= 6 for n, _ in lengths[short.id])
    assert any(reason == "eos" and n == 6 for n, reason in lengths[short.id])  # it ends as soon as it may
    assert any(reason == "eos" and n < 6 for n, reason in lengths[free.id])


SAMPLED = [Setting(temperature=0.9, repetition_penalty=1.3, top_k=40),
           Setting(temperature=1.2, no_repeat_ngram_size=2, typical_p=0.9),
           Setting(temperature=0.8, min_tokens=6, eta_cutoff=0.002, top_p=0.95),
           Setting(temperature=1.0, repetition_penalty=0.8, epsilon_cutoff=0.01, min_p=0.05)]


def test_penalised_sampling_statistics_match_transformers_processors(backend):
    """Each sampled token's logprob_sampling and n_kept, recomputed: the model's logits for the sample's prefix
    (one forward pass over prompt and output), transformers' processors for the setting with the prefix as
    input_ids, the log-softmax at the drawn token."""
    model = backend.model
    steps = 0
    with shaped(backend, scale=5.0, boost=2.0):
        result = decode(backend, SAMPLED, 3, 24)
        for (pid, sid, _), r in result.items():
            prompt, tokens = list(r.unit.prompt.token_ids), list(r.token_ids)
            ids = torch.tensor([prompt + tokens])
            with torch.inference_mode():
                logits = model(input_ids=ids).logits[0, len(prompt) - 1:].float()
            chain = model._get_logits_processor(
                generation_config=generation_config(r.unit.setting, backend.eos_ids),
                input_ids_seq_length=len(prompt), device="cpu", model_kwargs={})
            for j, token in enumerate(tokens):
                scores = chain(ids[:, : len(prompt) + j], logits[j][None].clone())[0]
                assert r.stats["n_kept"][j] == int(scores.isfinite().sum()), (pid, sid, j)
                want = float(scores.log_softmax(-1)[token])
                assert abs(r.stats["logprob_sampling"][j] - want) < 1e-4, (pid, sid, j)
                steps += 1
    assert steps > 100


# --------------------------------------------------------------------------- 3. sampled frequencies


def pooled_chisquare(counts: np.ndarray, expected: np.ndarray):
    """scipy's chi-square over the kept tokens, the bins expected fewer than 5 times pooled into one (and that
    one into the smallest other bin while it is still under 5)."""
    from scipy.stats import chisquare

    small = expected < 5
    obs, exp = list(counts[~small]), list(expected[~small])
    if small.any():
        obs.append(counts[small].sum())
        exp.append(expected[small].sum())
        if exp[-1] < 5:
            i = int(np.argmin(exp[:-1]))
            obs[i] += obs.pop()
            exp[i] += exp.pop()
    return chisquare(np.array(obs), np.array(exp) * (sum(obs) / sum(exp)))


PROMPT, OUTPUT = [0, 1, 2, 3, 0, 1, 5, 1], [3, 2, 2, 1, 3]  # after "1 3": n = 2 bans 0 and 2, n = 3 bans 2
CHI_CASES = [Setting(temperature=1.0, typical_p=0.6), Setting(temperature=0.8, epsilon_cutoff=0.02),
             Setting(temperature=1.0, eta_cutoff=0.05), Setting(temperature=1.0, repetition_penalty=1.8),
             Setting(temperature=1.0, repetition_penalty=0.6), Setting(temperature=1.0, no_repeat_ngram_size=2),
             Setting(temperature=0.9, no_repeat_ngram_size=3, min_tokens=8),
             Setting(order="vllm", temperature=1.0, presence_penalty=1.5),
             Setting(order="vllm", temperature=0.7, frequency_penalty=0.7, repetition_penalty=1.2)]


@pytest.mark.parametrize("setting", CHI_CASES, ids=[s.id for s in CHI_CASES])
def test_sampled_frequencies_match_the_chain(composer, setting):
    """100,000 draws through warp and sample with uniforms from evalkit's streams, against the chain's distribution
    (transformers' processors; vLLM's formula for the vllm order). p > 0.001 at a fixed seed: deterministic."""
    from evalkit.seeds import uniforms

    n, vocab = 100_000, 60
    row = torch.randn(vocab, generator=torch.Generator().manual_seed(4)) * 1.5
    row[:8] += 2.0  # the tokens of the history are likely: the penalties and bans matter
    row[[0, 2]] += 1.0  # the tokens n = 2 bans
    if setting.order == "vllm":
        expected = torch.tensor(vllm_reference(row.tolist(), setting, PROMPT, OUTPUT)).softmax(-1).double()
    else:
        expected = oracle(composer, row, setting, PROMPT, OUTPUT).softmax(-1).double()
    one = row_params([setting], [PROMPT], [OUTPUT])
    params = one[torch.zeros(n, dtype=torch.long)]
    u = torch.from_numpy(uniforms(np.arange(n, dtype=np.uint64) + 777, step=0))
    draw = sample(warp(row.expand(n, vocab), params), u, n)
    counts = torch.bincount(draw.tokens, minlength=vocab).double()
    kept = expected > 0
    assert counts[~kept].sum() == 0  # never a removed token
    assert int(draw.kept[0]) == int(kept.sum())
    stat = pooled_chisquare(counts[kept].numpy(), expected[kept].numpy() * n)
    assert stat.pvalue > 0.001, stat
    torch.testing.assert_close(draw.logprob[:200].double(), expected[draw.tokens[:200]].log(), atol=1e-5, rtol=0)
    # the knob changes the distribution (the test could fail): the plain softmax at the temperature differs
    plain = (row / setting.temperature).softmax(-1).double()
    assert (plain - expected).abs().sum() > 0.05
