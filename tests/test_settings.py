"""Settings (evalkit.settings) and the grid that makes them: ids, domains, chain orders, the knobs a setting sets."""

import re

import pytest
from pydantic import ValidationError

from evalkit.config import GridConfig
from evalkit.settings import APPLICATION_ORDER, CORE_KNOBS, ORDERS, ImageSetting, Setting, shown_knobs


@pytest.mark.parametrize("params, expected", [
    ({"temperature": 0.7, "top_p": 0.9}, "t0.7-p0.9"),
    ({"temperature": 1.0, "top_p": 1.0}, "t1-p1"),
    ({"temperature": 0.0, "top_k": 40}, "t0-p1-k40"),
    ({"temperature": 1.3, "top_p": 0.95, "min_p": 0.05}, "t1.3-p0.95-m0.05"),
    ({"temperature": 0.1 + 0.2}, "t0.30000000000000004-p1"),  # distinct values never share an id
    ({"temperature": 0.7, "top_p": 0.9, "min_p": 0.1, "order": "vllm"}, "t0.7-p0.9-m0.1-ovllm"),
    ({"temperature": 0.7, "order": "transformers"}, "t0.7-p1-otransformers"),
    ({"temperature": 0.7, "order": "auto"}, "t0.7-p1"),  # the backend's own order: the id settings had before
])
def test_setting_ids(params, expected):
    assert Setting(**params).id == expected


@pytest.mark.parametrize("params, message", [
    ({"temperature": -0.1}, "temperature must be a finite number >= 0 (0 means greedy), got -0.1"),
    ({"temperature": float("inf")}, "temperature must be a finite number >= 0 (0 means greedy), got inf"),
    # tiny temperatures overflow float32 logits, huge ones are uniform sampling long before: typos
    ({"temperature": 1e-45}, "temperature must be 0 (greedy) or between 1e-06 and 10000, got 1e-45"),
    ({"temperature": 1e308}, "temperature must be 0 (greedy) or between 1e-06 and 10000, got 1e+308"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1] (1 means no filtering), got 1.5"),
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"min_p": 1.0}, "min_p must be in [0, 1)"),
    ({"min_p": -0.01}, "min_p must be in [0, 1)"),
])
def test_setting_domains(params, message):
    with pytest.raises(ValidationError) as info:
        Setting(**params)
    assert message in str(info.value)


def test_setting_is_immutable_and_hashable():
    s = Setting(temperature=0.5)
    assert s == Setting(temperature=0.5) and hash(s) == hash(Setting(temperature=0.5))
    with pytest.raises(ValidationError):
        s.temperature = 1.0  # type: ignore[misc]
    assert s.greedy is False and Setting(temperature=0).greedy is True


def test_application_order_is_transformers_order():
    core = [stage for stage in APPLICATION_ORDER if stage[0] in ("temperature", "top_k", "top_p", "min_p")]
    assert core == [("temperature",), ("top_k",), ("top_p",), ("min_p",)]


def test_grid_is_the_cartesian_product_in_order():
    grid = GridConfig(temperature=[0.3, 0.7], top_p=[0.8, 1.0], top_k=[0, 40])
    ids = [s.id for s in grid.expand()]
    assert ids == ["t0.3-p0.8", "t0.3-p0.8-k40", "t0.3-p1", "t0.3-p1-k40",
                   "t0.7-p0.8", "t0.7-p0.8-k40", "t0.7-p1", "t0.7-p1-k40"]


def test_grid_explicit_settings_are_added_and_duplicates_dropped():
    grid = GridConfig(temperature=[0.5, 1.0], settings=[Setting(temperature=1.0), Setting(temperature=0.2, top_k=5)])
    assert [s.id for s in grid.expand()] == ["t0.5-p1", "t1-p1", "t0.2-p1-k5"]


def test_grid_of_only_explicit_settings():
    grid = GridConfig(settings=[Setting(temperature=0.2, top_p=0.1)])
    assert [s.id for s in grid.expand()] == ["t0.2-p0.1"]


def test_empty_grid_means_one_default_setting():
    assert [s.id for s in GridConfig().expand()] == ["t1-p1"]


def test_entropy_is_exact_on_peaked_and_flat_rows_of_a_large_vocabulary():
    """Against scipy in float64 on the same float32 logits: a peaked row (low temperature) is where
    log Z - E[z] in float32 cancels (up to 5e-4 relative off)."""
    import numpy as np
    import torch
    from scipy.special import log_softmax
    from scipy.stats import entropy

    from evalkit.generation.sampling import distribution

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50_000, generator=gen) + torch.tensor([[30.0], [30.0], [20.0], [0.0], [0.0]])
    logits[:3, 7] += torch.tensor([18.0, 22.0, 14.0])  # peaked rows, as at a low temperature
    logits[4, :100] = float("-inf")  # a flat row with filtered tokens
    _, lse, h, _ = distribution(logits)
    for row in range(5):
        z = logits[row].double().numpy()
        reference = entropy(np.exp(log_softmax(z)))
        assert h[row].item() == pytest.approx(reference, rel=1e-6, abs=1e-30), row
        assert lse[row, 0].item() == pytest.approx(float(np.logaddexp.reduce(z)), rel=1e-7)


def test_entropy_keeps_the_top_tokens_share_of_a_row_peaked_past_float_precision():
    """Two tokens 40 nats apart (the rest -inf): p_max rounds to 1 in float32 and float64 alike, and the entropy
    log1p(e^-40) + 40 e^-40 / (1 + e^-40) keeps both terms (the first is 2.4% of it)."""
    import math

    import torch

    from evalkit.generation.sampling import log_normaliser_and_entropy

    logits = torch.full((1, 1000), float("-inf"))
    logits[0, 3], logits[0, 500] = 5.0, -35.0
    lse, h = log_normaliser_and_entropy(logits)
    tail = math.exp(-40.0)
    assert h[0].item() == pytest.approx(math.log1p(tail) + 40 * tail / (1 + tail), rel=1e-6)
    assert lse[0, 0].item() == 5.0  # 5 + log1p(e^-40) rounds to 5


def test_orders_name_each_knob_once_and_auto_is_the_backends_own():
    for name, order in ORDERS.items():
        knobs = [k for stage in order for k in stage]
        assert len(knobs) == len(set(knobs)) and set(knobs) <= set(Setting.model_fields), name
        assert {"temperature", "top_k", "top_p", "min_p"} <= set(knobs), name
    assert [s for s in ORDERS["vllm"] if s[0] in CORE_KNOBS] == [("temperature",), ("min_p",), ("top_k",), ("top_p",)]
    llama = [s[0] for s in ORDERS["llama_cpp"]]  # temperature last of the truncation samplers, before the draw
    assert llama.index("temperature") > max(llama.index(k) for k in ("top_k", "top_p", "min_p", "typical_p"))
    assert ("top_k", "top_p", "min_p") in ORDERS["sglang"]  # one joint stage
    assert Setting().chain("vllm") == ORDERS["vllm"] and Setting(order="vllm").chain("transformers") == ORDERS["vllm"]
    with pytest.raises(ValidationError, match="one of auto, transformers, vllm, llama_cpp, sglang or a list of stages"):
        Setting(order="llama.cpp")


def test_the_knobs_a_setting_sets_and_what_a_cache_key_and_a_table_hold():
    s = Setting(temperature=0.7, top_k=40)
    assert s.set_knobs() == ["temperature", "top_k"]
    # the core knobs always, any other only when set: a knob added later changes no key of a setting without it
    assert s.key_params() == {"temperature": 0.7, "top_p": 1.0, "top_k": 40, "min_p": 0.0}
    assert Setting(order="vllm").key_params()["order"] == "vllm"
    assert shown_knobs([s, Setting()]) == ["temperature", "top_p", "top_k", "min_p"]
    assert shown_knobs([s, Setting(order="vllm")]) == ["temperature", "top_p", "top_k", "min_p", "order"]
    assert shown_knobs([ImageSetting()]) == ["guidance_scale", "num_inference_steps", "scheduler", "eta"]


def test_grid_order_axis_multiplies_like_the_others():
    g = GridConfig(temperature=[0.5, 1.0], min_p=[0.1], order=["transformers", "vllm"])
    assert [s.id for s in g.expand()] == ["t0.5-p1-m0.1-otransformers", "t0.5-p1-m0.1-ovllm",
                                          "t1-p1-m0.1-otransformers", "t1-p1-m0.1-ovllm"]


# ------------------------------------------------------------------ the sampler knobs of issue 28

NEW_KNOBS_ON = {"typical_p": 0.9, "epsilon_cutoff": 3e-4, "eta_cutoff": 2e-3, "top_n_sigma": 1.5,
                "xtc_probability": 0.5, "repetition_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.5,
                "no_repeat_ngram_size": 3, "min_tokens": 4, "dry_multiplier": 0.8, "mirostat": 2}


@pytest.mark.parametrize("knob, value", sorted(NEW_KNOBS_ON.items()))
def test_each_new_knob_is_off_by_default_and_named_in_the_id_only_when_set(knob, value):
    assert knob not in Setting().set_knobs() and Setting().id == "t1-p1"
    s = Setting(**{knob: value, "order": [knob, "temperature"]})
    assert knob in s.set_knobs() and knob in s.stage_knobs()
    assert len(s.id.split("-")) == 4  # t, p, the explicit order, the knob's own tag
    assert Setting(**s.params()) == s  # what the samples table and the manifest write reads back


@pytest.mark.parametrize("knob, bad, says", [
    ("typical_p", 0.0, "typical_p must be in (0, 1]"), ("typical_p", 1.5, "typical_p must be in (0, 1]"),
    ("epsilon_cutoff", 1.0, "epsilon_cutoff must be in [0, 1)"), ("eta_cutoff", -0.1, "eta_cutoff must be in [0, 1)"),
    ("top_n_sigma", -1.0, "top_n_sigma must be >= 0"), ("top_n_sigma", float("inf"), "top_n_sigma must be >= 0"),
    ("xtc_probability", 1.5, "xtc_probability must be in [0, 1]"),
    ("repetition_penalty", 0.0, "repetition_penalty must be > 0"),
    ("presence_penalty", 2.5, "presence_penalty must be in [-2, 2]"),
    ("frequency_penalty", float("nan"), "frequency_penalty must be in [-2, 2]"),
    ("no_repeat_ngram_size", -1, "no_repeat_ngram_size must be >= 0"), ("min_tokens", -2, "min_tokens must be >= 0"),
    ("mirostat", 3, "mirostat must be 0 (off), 1 or 2"), ("dry_multiplier", -1.0, "dry_multiplier must be >= 0"),
])
def test_each_new_knob_refuses_values_outside_its_domain(knob, bad, says):
    with pytest.raises(ValidationError, match=re.escape(says)):
        Setting(**{knob: bad})


def test_a_qualifying_knob_needs_the_knob_it_qualifies():
    for knob, value in [("xtc_threshold", 0.2), ("dry_base", 2.0), ("dry_allowed_length", 3),
                        ("dry_penalty_last_n", 32), ("dry_sequence_breakers", ["\n"]), ("mirostat_tau", 3.0),
                        ("mirostat_eta", 0.5), ("penalty_scope", "output")]:
        with pytest.raises(ValidationError, match=f"{knob} applies only when"):
            Setting(**{knob: value})
    assert Setting(xtc_probability=0.5, xtc_threshold=0.2, order="llama_cpp").id == "t1-p1-ollama_cpp-xp0.5-xt0.2"
    assert Setting(repetition_penalty=1.1, penalty_scope=64).scope("repetition_penalty", "transformers") == 64
    with pytest.raises(ValidationError, match="xtc_threshold must be in"):
        Setting(xtc_probability=0.5, xtc_threshold=0.6)  # above 0.5 no two tokens pass it: XTC would do nothing
    with pytest.raises(ValidationError, match="dry_penalty_last_n must be -1"):
        Setting(dry_multiplier=0.8, dry_penalty_last_n=0)


def test_mirostat_takes_no_truncation_knob():
    assert Setting(mirostat=2, temperature=0.8, mirostat_tau=4.0, order="llama_cpp").chain("transformers")[-1] == (
        "mirostat",)
    with pytest.raises(ValidationError, match="mirostat replaces the truncation samplers .* it takes no top_k"):
        Setting(mirostat=1, top_k=40)


def test_penalty_scope_auto_is_each_engines_own():
    s = Setting(repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.5)
    assert s.scope("repetition_penalty", "transformers") == "prompt+output"
    assert s.scope("presence_penalty", "vllm") == "output" and s.scope("repetition_penalty", "vllm") == "prompt+output"
    assert s.scope("frequency_penalty", "llama_cpp") == 64  # llama.cpp's penalty_last_n
    assert Setting(repetition_penalty=1.1, penalty_scope="output").scope("repetition_penalty", "llama_cpp") == "output"
    with pytest.raises(ValidationError, match="penalty_scope must be auto, prompt.output, output, or a token count"):
        Setting(repetition_penalty=1.1, penalty_scope=0)


def test_an_explicit_order_is_a_list_of_stages_written_and_read_as_one_line():
    s = Setting(top_k=40, top_p=0.9, temperature=0.7, order=[["top_k", "top_p"], "temperature"])
    assert s.chain("transformers") == (("top_k", "top_p"), ("temperature",))
    assert s.params()["order"] == "top_k+top_p > temperature" and s.id == "t0.7-p0.9-k40-okp_t"
    assert Setting(**s.params()) == s and Setting(top_k=40, top_p=0.9, temperature=0.7,
                                                  order="top_k+top_p > temperature") == s
    with pytest.raises(ValidationError, match="order lists no stage for top_p"):
        Setting(top_p=0.9, order=["top_k", "temperature"])
    with pytest.raises(ValidationError, match="top_k is listed twice"):
        Setting(order=["top_k", "top_k"])
    with pytest.raises(ValidationError, match="only filters can share a stage"):
        Setting(order=[["temperature", "top_k"]])
    with pytest.raises(ValidationError, match="'top_q' is not a stage of the chain"):
        Setting(order=["top_q"])


def test_a_named_order_lacking_a_knob_is_said_with_the_orders_that_have_it():
    from evalkit.settings import orders_with

    assert Setting(top_n_sigma=1.0).missing_in_order("transformers") == "top_n_sigma"
    assert Setting(top_n_sigma=1.0, order="llama_cpp").missing_in_order("transformers") is None
    assert orders_with("typical_p") == ["transformers", "llama_cpp"] and orders_with("min_tokens") == [
        "transformers", "vllm", "sglang"]


def test_the_ids_of_the_core_knobs_are_unchanged():
    assert [Setting(**p).id for p in ({}, {"temperature": 0.7, "top_p": 0.9}, {"top_k": 40, "min_p": 0.05},
                                      {"temperature": 0, "order": "vllm"})] == [
        "t1-p1", "t0.7-p0.9", "t1-p1-k40-m0.05", "t0-p1-ovllm"]


def test_a_grid_leaves_qualifying_knobs_at_their_default_where_their_knob_is_off():
    grid = GridConfig(xtc_probability=[0, 0.5], xtc_threshold=[0.1, 0.2], order=["llama_cpp"])
    assert [s.id for s in grid.expand()] == ["t1-p1-ollama_cpp", "t1-p1-ollama_cpp-xp0.5",
                                             "t1-p1-ollama_cpp-xp0.5-xt0.2"]
    with pytest.raises(ValidationError, match="xtc_threshold applies only when xtc_probability is set, and no list"):
        GridConfig(xtc_threshold=[0.2])
