"""evalkit's decode engine on a tiny randomly initialised float32 Llama built in code."""

import math
import warnings

import numpy as np
import pytest
import torch

from evalkit.generation import WorkUnit, load_backend
from evalkit.config import config_from_dict
from evalkit.generation.engine import DecodeError
from evalkit.prompts import load_prompts
from evalkit.settings import Setting
from evalkit.seeds import derive_seed

from conftest import base_config, build_tiny_gemma

SETTINGS = [Setting(temperature=0), Setting(temperature=0.7, top_p=0.9), Setting(temperature=1.0),
            Setting(temperature=1.3, top_k=20), Setting(temperature=1.0, min_p=0.1)]


@pytest.fixture(scope="module")
def backend(tiny_model, tmp_path_factory):
    config = config_from_dict(base_config(tiny_model, tmp_path_factory.mktemp("unused")))
    be = load_backend(config)
    be.prepared = be.prepare(load_prompts(config), chat_template="auto", system_prompt=None, max_new_tokens=12)
    return be


def units_for(backend, settings, samples=3):
    return [WorkUnit(p, s, i, derive_seed(5, p.prompt.id, s.id, i))
            for s in settings for p in backend.prepared for i in range(samples)]


def generate(backend, units, batch_size, **kw):
    out = backend.generate(units, max_new_tokens=kw.pop("max_new_tokens", 12), batch_size=batch_size, **kw)
    return {(g.unit.prompt.prompt.id, g.unit.setting.id, g.unit.sample_index): g for g in out}


def test_every_unit_once(backend):
    units = units_for(backend, SETTINGS)
    result = generate(backend, units, 64)
    assert len(result) == len(units) == 3 * 5 * 3


def engine_run(backend, units, batch_size, *, refill=True, max_new_tokens=12, stop=()):
    out = backend.engine(refill=refill).run(units, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop)
    return {(f.unit.prompt.prompt.id, f.unit.setting.id, f.unit.sample_index): f for f in out}


# every kind of decode state a row carries: penalties' history, n-grams, DRY's, mirostat's mu, min_tokens
STATEFUL = [Setting(temperature=1.1, repetition_penalty=1.4, presence_penalty=0.5, order="llama_cpp"),
            Setting(temperature=1.0, mirostat=2, mirostat_tau=3.0, order="llama_cpp"),
            Setting(temperature=1.2, dry_multiplier=0.8, dry_allowed_length=1, order="llama_cpp"),
            Setting(temperature=0.9, repetition_penalty=1.3, no_repeat_ngram_size=2, min_tokens=3)]


@pytest.mark.parametrize("settings", [SETTINGS, STATEFUL], ids=["plain", "stateful"])
def test_samples_are_the_same_at_any_batch_size_with_and_without_refill(backend, settings):
    """With refill a row joins rows at other steps (their states joined by RowParams.cat, each at its own
    step): every sample, its tokens and its statistics, is the one it is in any other batch."""
    units = units_for(backend, settings)
    reference = engine_run(backend, units, 64, stop=("e ",))
    assert len({f.finish_reason for f in reference.values()}) > 1  # rows of different lengths: refill has work
    for batch_size, refill in ((7, True), (7, False), (1, True), (64, False)):
        other = engine_run(backend, units, batch_size, refill=refill, stop=("e ",))
        assert other.keys() == reference.keys()
        differ = [k for k in reference if (other[k].token_ids, other[k].stats, other[k].text)
                  != (reference[k].token_ids, reference[k].stats, reference[k].text)]
        assert not differ, f"batch {batch_size}, refill {refill}: {len(differ)} samples differ, first {differ[0]}"


def test_finished_rows_are_replaced_at_once_and_each_prompt_prefilled_once(backend):
    units = units_for(backend, SETTINGS, samples=3)  # 45 units, 15 per prompt
    shapes = []
    hook = backend.model.register_forward_pre_hook(lambda m, args, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                                   with_kwargs=True)
    try:
        refilled = engine_run(backend, units, 8, stop=("e",))
        waves = len(shapes)
        engine_run(backend, units, 8, refill=False, stop=("e",))
    finally:
        hook.remove()
    refill_shapes, wave_shapes = shapes[:waves], shapes[waves:]
    assert len(refilled) == len(units)
    prefills = [s for s in refill_shapes if s[1] > 1]
    assert prefills == [(1, len(p.token_ids)) for p in backend.prepared]  # kept while the prompt's units wait
    rows = [s[0] for s in refill_shapes if s[1] == 1]
    # until the queue is empty every step has all 8 rows; after it, at most max_new_tokens - 1 steps remain
    assert all(r == 8 for r in rows[:-11]) and len(rows) > 11
    wave_rows = [s[0] for s in wave_shapes if s[1] == 1]
    assert sum(r < 8 for r in wave_rows) > sum(r < 8 for r in rows)  # waves run short-handed
    assert len(rows) < len(wave_rows)


@pytest.mark.slow
def test_samples_do_not_depend_on_batch_size_or_other_settings(backend):
    units = units_for(backend, SETTINGS)
    reference = generate(backend, units, 64)
    for batch_size in (1, 7):
        other = generate(backend, units, batch_size)
        same = sum(other[k].token_ids == reference[k].token_ids for k in reference)
        assert same == len(reference), f"batch size {batch_size}: {same}/{len(reference)} samples agree"
    alone = generate(backend, units_for(backend, [SETTINGS[1]]), 64)
    assert all(alone[k].token_ids == reference[k].token_ids for k in alone)


def test_identical_batch_shapes_are_exactly_reproducible(backend):
    units = units_for(backend, SETTINGS)
    a, b = generate(backend, units, 16), generate(backend, units, 16)
    assert all(a[k].token_ids == b[k].token_ids and a[k].stats == b[k].stats for k in a)


def test_decoding_uses_no_deprecated_model_api(backend):
    # transformers reports a deprecated argument from inside the model call (nn.Module's frame, not
    # evalkit's), so pyproject's filterwarnings for evalkit's modules cannot see it: checked here.
    units = units_for(backend, SETTINGS[:2], samples=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        result = generate(backend, units, 4)  # several waves, rows leaving the batch
    assert len(result) == len(units)


def test_prompt_is_prefilled_once_and_finished_rows_leave_the_batch(backend):
    shapes = []
    hook = backend.model.register_forward_pre_hook(lambda m, args, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                                   with_kwargs=True)
    try:
        result = generate(backend, units_for(backend, SETTINGS, samples=4), 64, stop=("e",))
    finally:
        hook.remove()
    # each of the 3 prompts is prefilled once, alone and unpadded
    assert shapes[:3] == [(1, len(p.token_ids)) for p in backend.prepared]
    rows = [s[0] for s in shapes[3:]]
    assert rows[0] <= 60 and all(a >= b for a, b in zip(rows, rows[1:]))
    stopped = [g for g in result.values() if g.finish_reason == "stop"]
    assert stopped and rows[-1] < rows[0]
    assert all("e" not in g.text for g in stopped)


def test_token_statistics(backend):
    vocab = backend.model.config.vocab_size
    result = generate(backend, units_for(backend, SETTINGS), 64)
    for (pid, sid, i), g in result.items():
        n = len(g.token_ids)
        assert all(len(v) == n for v in g.stats.values())
        assert all(lp <= 1e-6 for lp in g.stats["logprob_model"])
        assert all(0 <= h <= math.log(vocab) + 1e-4 for h in g.stats["entropy_model"])
        if sid == "t0-p1":
            assert g.stats["n_kept"] == [1] * n and g.stats["logprob_sampling"] == [0.0] * n
            assert g.stats["entropy_sampling"] == [0.0] * n
        if sid == "t1-p1":  # the sampling distribution is the model's
            assert g.stats["n_kept"] == [vocab] * n
            np.testing.assert_allclose(g.stats["logprob_sampling"], g.stats["logprob_model"], atol=1e-5)
            np.testing.assert_allclose(g.stats["entropy_sampling"], g.stats["entropy_model"], atol=1e-4)
        if sid == "t1.3-p1-k20":
            assert all(1 <= k <= 20 for k in g.stats["n_kept"])
            assert all(hs <= math.log(20) + 1e-5 for hs in g.stats["entropy_sampling"])


@pytest.mark.slow
def test_out_of_memory_halves_the_batch_and_loses_nothing(backend):
    units = units_for(backend, SETTINGS)
    reference = generate(backend, units, 64)
    calls = []

    def oom_above_8_rows(module, args, kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 8 and kwargs.get("cache") is not None and len(calls) % 5 == 0:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    hook = backend.model.register_forward_pre_hook(oom_above_8_rows, with_kwargs=True)
    try:
        retried = list(backend.generate(units, max_new_tokens=12, batch_size=64))
    finally:
        hook.remove()
    keys = [(g.unit.prompt.prompt.id, g.unit.setting.id, g.unit.sample_index) for g in retried]
    assert len(keys) == len(set(keys)) == len(units)  # none lost, none duplicated
    assert all(g.token_ids == reference[k].token_ids for k, g in zip(keys, retried))
    assert max(calls[-3:]) <= 8


@pytest.mark.parametrize("bad, what", [("nan", "NaN"), ("inf", r"\+inf"), ("every -inf", "only -inf")])
def test_nan_logits_name_prompt_setting_and_step(backend, bad, what):
    calls = []

    def poison(module, args, output):
        calls.append(1)
        if len(calls) == 5:  # three prefills (one per prompt), then the decode steps
            if bad == "every -inf":
                output.logits[0, -1, :] = float("-inf")
            else:
                output.logits[0, -1, 5] = float(bad)
        return output

    hook = backend.model.register_forward_hook(poison)
    try:
        with pytest.raises(DecodeError,
                           match=rf"{what} logits for prompt 'en', setting t0.7-p0.9, sample 0, at decode step 2"):
            list(backend.generate(units_for(backend, [SETTINGS[1]]), max_new_tokens=12, batch_size=64))
    finally:
        hook.remove()


def test_the_first_step_is_warped_once_per_prompt_and_setting(backend, monkeypatch):
    """Rows of one prompt and setting share the first step's distribution (XTC rows excepted: each draws its own
    chance); every row's first token and statistics are those it gets in a batch of its own."""
    import evalkit.generation.engine as engine_module

    settings = [Setting(temperature=0.9, top_p=0.9), Setting(temperature=1.2, repetition_penalty=1.3, top_k=40),
                Setting(temperature=1.0, xtc_probability=0.5, xtc_threshold=0.05, order="llama_cpp")]
    prompt = backend.prepared[0]
    units = [WorkUnit(prompt, s, i, derive_seed(11, s.id, i)) for s in settings for i in range(20)]
    warped_rows = []
    real_warp = engine_module.warp
    monkeypatch.setattr(engine_module, "warp", lambda logits, *args: (warped_rows.append(logits.shape[0]),
                                                                       real_warp(logits, *args))[1])
    together = generate(backend, units, 64, max_new_tokens=1)
    assert warped_rows == [1 + 1 + 20]  # one row per shared group, one per XTC row
    alone = generate(backend, units, 1, max_new_tokens=1)
    assert together.keys() == alone.keys()
    for key, g in together.items():
        assert g.token_ids == alone[key].token_ids, key
        assert g.stats == alone[key].stats, key
    assert len({g.token_ids[0] for k, g in together.items() if k[1] == settings[0].id if g.token_ids}) > 1


def test_rows_that_shared_the_first_step_go_on_with_their_own_state(backend):
    """After the shared first step every row has its own state (penalties' history, mirostat's mu, DRY's): samples
    of several steps are those of batches of one (the tiny model's logits do not depend on the batch)."""
    settings = [Setting(temperature=1.1, repetition_penalty=1.4, presence_penalty=0.5, order="llama_cpp"),
                Setting(temperature=1.0, mirostat=2, mirostat_tau=3.0, order="llama_cpp"),
                Setting(temperature=1.2, dry_multiplier=0.8, dry_allowed_length=1, order="llama_cpp"),
                Setting(temperature=0.9, repetition_penalty=1.3, no_repeat_ngram_size=2)]
    units = [WorkUnit(p, s, i, derive_seed(13, p.prompt.id, s.id, i))
             for s in settings for p in backend.prepared[:2] for i in range(6)]
    together = generate(backend, units, 64, max_new_tokens=6)
    alone = generate(backend, units, 1, max_new_tokens=6)
    assert together.keys() == alone.keys()
    for key, g in together.items():
        assert g.token_ids == alone[key].token_ids, key
    assert len({tuple(g.token_ids) for g in together.values()}) > len(settings) * 2  # the rows did diverge


def test_a_sliding_window_model_decodes_as_transformers_generate(tmp_path_factory):
    """Gemma 3's layers alternate a sliding window (4 tokens here, shorter than every prompt) with full attention:
    each row's slot is masked per layer type. Greedy rows equal generate(do_sample=False) on each prompt alone,
    token for token, and sampled rows are the same at batch 1 and 64."""
    model_dir = build_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))
    config = config_from_dict(base_config(model_dir, tmp_path_factory.mktemp("unused")))
    gemma = load_backend(config)
    gemma.prepared = gemma.prepare(load_prompts(config), chat_template="auto", system_prompt=None, max_new_tokens=16)
    assert min(len(p.token_ids) for p in gemma.prepared) > 4
    greedy = generate(gemma, units_for(gemma, [Setting(temperature=0)], samples=1), 64, max_new_tokens=16)
    for p in gemma.prepared:
        ids = torch.tensor([p.token_ids])
        theirs = gemma.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16,
                                      eos_token_id=gemma.eos_ids, pad_token_id=gemma.pad_id)[0, ids.shape[1]:].tolist()
        end = next((i for i, t in enumerate(theirs) if t in gemma.eos_ids), None)
        assert list(greedy[(p.prompt.id, "t0-p1", 0)].token_ids) == theirs[:end], p.prompt.id
    sampled = units_for(gemma, SETTINGS[1:3], samples=4)
    together, alone = generate(gemma, sampled, 64, max_new_tokens=16), generate(gemma, sampled, 1, max_new_tokens=16)
    assert all(together[k].token_ids == alone[k].token_ids and together[k].stats == alone[k].stats for k in together)


def test_a_model_with_layers_the_slots_cannot_hold_is_refused_in_one_line(backend, monkeypatch):
    from evalkit.generation.engine import UnsupportedModel

    config = backend.model.config
    monkeypatch.setattr(config, "layer_types", ["full_attention", "linear_attention"], raising=False)
    with pytest.raises(UnsupportedModel, match=r"^evalkit's engine decodes layers of full or sliding-window "
                                               r"attention; the model \(llama\) has linear_attention layers$"):
        list(backend.generate(units_for(backend, SETTINGS[:1], samples=1), max_new_tokens=4, batch_size=8))


def test_samples_longer_than_the_first_slots_grow_them_and_stay_the_same(backend):
    """The slots start at the prompt + 64 positions and grow when a row outgrows them: rows that run past that are
    the same at batch 7 (refill, growth at another step) as at batch 64."""
    units = units_for(backend, SETTINGS[2:4], samples=2)
    together = engine_run(backend, units, 64, max_new_tokens=80)
    assert max(len(f.token_ids) for f in together.values()) > 64
    other = engine_run(backend, units, 7, max_new_tokens=80)
    assert all(other[k].token_ids == f.token_ids and other[k].stats == f.stats for k, f in together.items())
