"""Settings (evalkit.settings) and the grid that makes them: ids, domains, chain orders, the knobs a setting sets."""

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
    _, lse, h = distribution(logits)
    for row in range(5):
        z = logits[row].double().numpy()
        reference = entropy(np.exp(log_softmax(z)))
        assert h[row].item() == pytest.approx(reference, rel=1e-6, abs=1e-30), row
        assert lse[row, 0].item() == pytest.approx(float(np.logaddexp.reduce(z)), rel=1e-7)


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
    with pytest.raises(ValidationError, match="'auto', 'transformers', 'vllm', 'llama_cpp' or 'sglang'"):
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
