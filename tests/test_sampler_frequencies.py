"""Each sampler's first-token frequencies through evalkit's engine on the tiny model equal its chain's distribution
(chi-square), and differ from the distribution without the knob (the test could fail)."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats

from evalkit.config import config_from_dict
from evalkit.generation import WorkUnit, load_backend
from evalkit.generation.samplers.dry import Vocabulary
from evalkit.generation.sampling import RowParams, apply_chain
from evalkit.prompts import load_prompts
from evalkit.seeds import derive_seed
from evalkit.settings import Setting

from conftest import base_config

DRAWS = 4000
SHARPEN = 12.0
CONTINUED = 16  # the prompt is followed by the model's own greedy continuation: its likely tokens are in the history
LLAMA = {"temperature": 1.2, "order": "llama_cpp"}
CASES = {
    "typical_p": {"temperature": 1.2, "typical_p": 0.6},
    "epsilon_cutoff": {"temperature": 1.2, "epsilon_cutoff": 0.002},
    "eta_cutoff": {"temperature": 1.2, "eta_cutoff": 0.5},
    "top_n_sigma": {**LLAMA, "top_n_sigma": 1.0},
    "xtc": {**LLAMA, "xtc_probability": 0.5, "xtc_threshold": 0.004},
    "mirostat_v1": {**LLAMA, "mirostat": 1, "mirostat_tau": 4.1},
    "mirostat_v2": {**LLAMA, "mirostat": 2, "mirostat_tau": 4.1},
    "repetition_penalty": {"temperature": 1.2, "repetition_penalty": 10.0},
    "presence_frequency": {"temperature": 1.2, "presence_penalty": 1.5, "frequency_penalty": 1.0,
                           "penalty_scope": "prompt+output", "order": "vllm"},
    "penalties_last_n": {**LLAMA, "repetition_penalty": 10.0, "presence_penalty": 2.0, "frequency_penalty": 1.0,
                         "penalty_scope": 8},
    "no_repeat_ngram_size": {"temperature": 1.2, "no_repeat_ngram_size": 1},
    "min_tokens": {"temperature": 1.2, "min_tokens": 2},
    "dry": {**LLAMA, "dry_multiplier": 5.0, "dry_allowed_length": 0, "dry_sequence_breakers": ["@"]},
    "sglang_joint": {"temperature": 1.2, "top_k": 30, "top_p": 0.5, "order": "sglang"},
    "explicit": {"temperature": 1.2, "top_k": 40, "typical_p": 0.7, "repetition_penalty": 2.0,
                 "order": ["top_k", "repetition_penalty", "temperature", "typical_p"]},
}


@pytest.fixture(scope="module")
def backend(tiny_model, tmp_path_factory):
    config = config_from_dict(base_config(tiny_model, tmp_path_factory.mktemp("unused")))
    be = load_backend(config)
    with torch.no_grad():  # a randomly initialised model's logits are nearly flat: sharpen them (still one model)
        be.model.lm_head.weight.mul_(SHARPEN)
    be.prepared = be.prepare(load_prompts(config), chat_template="auto", system_prompt=None, max_new_tokens=2)
    return be


@pytest.fixture(scope="module")
def prompt(backend):
    """The first prompt followed by the model's greedy continuation, so that the penalties and n-gram rules, which
    act on tokens already said, act on tokens the model is likely to say next."""
    ids = list(backend.prepared[0].token_ids)
    with torch.inference_mode():
        for _ in range(CONTINUED):
            ids.append(int(backend.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return dataclasses.replace(backend.prepared[0], token_ids=tuple(ids))


def expected(backend, setting: Setting, prompt) -> np.ndarray:
    """The first token's distribution: the chain applied to the model's logits after the prompt (XTC: the mixture of
    its step with and without the exclusion, by its probability)."""
    with torch.inference_mode():
        logits = backend.model(input_ids=torch.tensor([prompt.token_ids])).logits[0, -1].float()[None]
    params = RowParams.from_settings([setting], prompts=[list(prompt.token_ids)], eos=backend.eos_ids,
                                     vocabulary=Vocabulary.of_tokenizer(backend.tokenizer))
    chain = setting.chain("transformers")
    if setting.xtc_probability:
        params.u_xtc = torch.zeros(1, dtype=torch.float64)
        on = apply_chain(logits, params, chain).softmax(-1)[0]
        params.u_xtc = torch.ones(1, dtype=torch.float64)
        off = apply_chain(logits, params, chain).softmax(-1)[0]
        return (setting.xtc_probability * on + (1 - setting.xtc_probability) * off).double().numpy()
    return apply_chain(logits, params, chain).softmax(-1)[0].double().numpy()


def first_tokens(backend, setting: Setting, prompt) -> np.ndarray:
    units = [WorkUnit(prompt, setting, i, derive_seed(11, setting.id, i)) for i in range(DRAWS)]
    out = backend.generate(units, max_new_tokens=1, batch_size=DRAWS)
    return np.array([r.token_ids[0] if r.token_ids else -1 for r in out])  # -1: an end token


def p_value(tokens: np.ndarray, probs: np.ndarray, eos: list[int]) -> float:
    """Chi-square over the tokens (the end tokens pooled as one category, as are those expected fewer than 5
    times); a token drawn outside the distribution's support gives 0."""
    probs = probs.copy()
    end = probs[eos].sum()
    probs[eos] = 0
    observed = np.bincount(tokens[tokens >= 0], minlength=len(probs)).astype(float)
    if observed[probs == 0].sum() or (end == 0 and (tokens < 0).any()):
        return 0.0
    exp = probs * len(tokens)
    big = exp >= 5
    obs_cat = [*observed[big], observed[~big].sum(), float((tokens < 0).sum())]
    exp_cat = [*exp[big], exp[~big].sum(), end * len(tokens)]
    keep = [i for i, e in enumerate(exp_cat) if e > 0]
    obs_k, exp_k = np.array([obs_cat[i] for i in keep]), np.array([exp_cat[i] for i in keep])
    if len(keep) == 1:  # one category left: every draw must be in it
        return 1.0 if obs_k[0] == len(tokens) else 0.0
    return float(stats.chisquare(obs_k, exp_k * obs_k.sum() / exp_k.sum()).pvalue)


@pytest.mark.parametrize("case", list(CASES))
def test_first_token_frequencies_match_the_chain(backend, prompt, case):
    setting = Setting(**CASES[case])
    tokens = first_tokens(backend, setting, prompt)
    probs = expected(backend, setting, prompt)
    assert p_value(tokens, probs, backend.eos_ids) > 1e-4, case
    # the same draws against the distribution without the knob: rejected, so the check above could fail
    plain = Setting(temperature=setting.temperature, order=setting.order if setting.order == "auto" else "auto")
    if case == "min_tokens":  # without it an end token is possible: the draws never show one
        assert probs[backend.eos_ids].sum() == 0 and expected(backend, plain, prompt)[backend.eos_ids].sum() > 0
    else:
        assert p_value(tokens, expected(backend, plain, prompt), backend.eos_ids) < 1e-4, case
