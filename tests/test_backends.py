"""Backends as declared specs (evalkit.generation.spec and its registry): every backend honours a knob of its
setting (shown by the knob's effect on its samples or on what it sends) or refuses it before the run, and
`evalkit backends` shows what each one declares."""

import json

import pytest
from typer.testing import CliRunner

from evalkit.cli import app
from evalkit.config import config_from_dict
from evalkit.errors import ConfigError
from evalkit.generation import BACKENDS, WorkUnit, all_specs, load_backend, spec_of
from evalkit.plan import checked_inputs
from evalkit.prompts import load_prompts
from evalkit.settings import ORDERS, QUALIFIES, ImageSetting, Setting, chain_labels

from conftest import base_config

# For each knob of a setting: (a setting, the same setting with the knob set), chosen so that a backend that
# applies the knob samples differently (or sends something else). A field of Setting or ImageSetting that is
# missing here fails test_every_knob_is_classified: a new knob must say how its effect is shown.
LLAMA = {"temperature": 1.5, "order": "llama_cpp"}
VLLM = {"temperature": 1.5, "order": "vllm"}
# every repeat counts, and no breaker ("@") occurs in the prompts: their repeats (the chat template's) count from the
# first step, so the 8-token samples show each DRY knob
DRY = {"dry_multiplier": 0.5, "dry_allowed_length": 0, "dry_sequence_breakers": ["@"]}
TEXT_EXAMPLES = {
    "temperature": ({"temperature": 1.0}, {"temperature": 0.0}),
    "top_p": ({"temperature": 1.5}, {"temperature": 1.5, "top_p": 0.05}),
    "top_k": ({"temperature": 1.5}, {"temperature": 1.5, "top_k": 1}),
    "min_p": ({"temperature": 1.5}, {"temperature": 1.5, "min_p": 0.9}),
    # top-p then min-p keeps the tokens near the top (min-p); min-p then top-p keeps about half of them
    "order": ({"temperature": 1.5, "top_p": 0.5, "min_p": 0.8, "order": "transformers"},
              {"temperature": 1.5, "top_p": 0.5, "min_p": 0.8, "order": "vllm"}),
    "typical_p": ({"temperature": 1.5}, {"temperature": 1.5, "typical_p": 0.2}),
    "epsilon_cutoff": ({"temperature": 1.5}, {"temperature": 1.5, "epsilon_cutoff": 0.05}),
    "eta_cutoff": ({"temperature": 1.5}, {"temperature": 1.5, "eta_cutoff": 0.9}),
    # llama.cpp's samplers exist in its order only (the served backend sends them to a llama.cpp server)
    "top_n_sigma": (LLAMA, {**LLAMA, "top_n_sigma": 0.5}),
    "xtc_probability": (LLAMA, {**LLAMA, "xtc_probability": 1.0, "xtc_threshold": 0.001}),
    "xtc_threshold": ({**LLAMA, "xtc_probability": 1.0}, {**LLAMA, "xtc_probability": 1.0, "xtc_threshold": 0.001}),
    "dry_multiplier": (LLAMA, {**LLAMA, **DRY}),
    "dry_base": ({**LLAMA, **DRY}, {**LLAMA, **DRY, "dry_base": 4.0}),
    "dry_allowed_length": ({**LLAMA, **DRY}, {**LLAMA, **DRY, "dry_allowed_length": 2}),
    "dry_penalty_last_n": ({**LLAMA, **DRY}, {**LLAMA, **DRY, "dry_penalty_last_n": 2}),
    "dry_sequence_breakers": ({**LLAMA, **DRY}, {**LLAMA, **DRY, "dry_sequence_breakers": ["a", "e", " "]}),
    "mirostat": (LLAMA, {**LLAMA, "mirostat": 2, "mirostat_tau": 1.0}),
    "mirostat_tau": ({**LLAMA, "mirostat": 2}, {**LLAMA, "mirostat": 2, "mirostat_tau": 1.0}),
    "mirostat_eta": ({**LLAMA, "mirostat": 2, "mirostat_tau": 1.0},
                     {**LLAMA, "mirostat": 2, "mirostat_tau": 1.0, "mirostat_eta": 1.0}),
    "repetition_penalty": ({"temperature": 1.5}, {"temperature": 1.5, "repetition_penalty": 5.0}),
    "presence_penalty": (VLLM, {**VLLM, "presence_penalty": 2.0}),
    "frequency_penalty": (VLLM, {**VLLM, "frequency_penalty": 2.0}),
    "penalty_scope": ({"temperature": 1.5, "repetition_penalty": 5.0},
                      {"temperature": 1.5, "repetition_penalty": 5.0, "penalty_scope": "output"}),
    "no_repeat_ngram_size": ({"temperature": 1.5}, {"temperature": 1.5, "no_repeat_ngram_size": 1}),
    # the end tokens leave the kept set until min_tokens are out (the samples' n_kept shows it)
    "min_tokens": ({"temperature": 1.5}, {"temperature": 1.5, "min_tokens": 8}),
}
IMAGE_EXAMPLES = {
    "guidance_scale": ({}, {"guidance_scale": 2.0}),
    "num_inference_steps": ({}, {"num_inference_steps": 5}),
    "scheduler": ({}, {"scheduler": "euler"}),
    "eta": ({"scheduler": "ddim"}, {"scheduler": "ddim", "eta": 0.5}),
}


def test_every_knob_is_classified():
    assert set(TEXT_EXAMPLES) == set(Setting.model_fields), "a knob of Setting has no example: add it to TEXT_EXAMPLES"
    assert set(IMAGE_EXAMPLES) == set(ImageSetting.model_fields), "a knob of ImageSetting has no example"
    for spec in all_specs():
        fields = ImageSetting.model_fields if spec.kind == "text-to-image" else Setting.model_fields
        assert spec.knobs <= set(fields), f"{spec.name} claims knobs its setting does not have"
        assert set(spec.orders) <= set(ORDERS)


def test_registry_lists_each_backend_once_with_its_own_config_section():
    specs = all_specs()
    assert [s.name for s in specs] == list(BACKENDS)
    assert len({s.config for s in specs}) == len(specs)
    assert {s.name: s.kind for s in specs} == {"hf": "text", "vlm": "image-to-text", "diffusers": "text-to-image",
                                               "openai": "text", "vllm": "text"}
    assert [s.name for s in specs if s.remote] == ["openai"]


# ------------------------------------------------------------------ the honour-or-refuse matrix


@pytest.fixture(scope="module")
def engine_backend(tiny_model, tmp_path_factory):
    config = config_from_dict(base_config(tiny_model, tmp_path_factory.mktemp("unused")))
    backend = load_backend(config)
    backend.prepared = backend.prepare(load_prompts(config), chat_template="auto", system_prompt=None,
                                       max_new_tokens=8)
    return backend


def engine_samples(backend, setting: Setting) -> list:
    units = [WorkUnit(p, setting, i, 1000 + i) for p in backend.prepared for i in range(6)]
    out = backend.generate(units, max_new_tokens=8, batch_size=64)
    return sorted((r.unit.prompt.prompt.id, r.unit.sample_index, r.token_ids, tuple(r.stats["n_kept"]),
                   tuple(round(x, 5) for x in r.stats["logprob_sampling"])) for r in out)


def served_request(setting) -> dict:
    """The sampling fields of a request on each kind of server, built by the served backend's own method (the
    neutral values the capability check found a server to take are sent with every request); None where that kind
    of server does not apply the setting (the capability check refuses it there)."""
    from types import SimpleNamespace

    from evalkit.generation.served import ServedBackend
    from evalkit.generation.served.protocol import KINDS

    backend = SimpleNamespace(sent={"top_k": -1, "min_p": 0.0})
    return {name: None if kind.refusal(setting) else ServedBackend.knobs(backend, setting, 16, kind=kind)
            for name, kind in KINDS.items()}


# The served backend's examples where TEXT_EXAMPLES' cannot show its effect: no server counts a repetition
# penalty over the output only (the plan refuses that scope), llama.cpp's counts it over the last N tokens.
SERVED_EXAMPLES = {"penalty_scope": ({"temperature": 1.5, "repetition_penalty": 5.0},
                                     {"temperature": 1.5, "repetition_penalty": 5.0, "penalty_scope": 32})}


def effect(spec, knob: str, base, changed, engine_backend) -> bool:
    """Whether the backend does something else for ``changed`` than for ``base``: its samples (evalkit's engine),
    the request it sends (a server), the parameters it hands its engine (vLLM) or its pipeline (diffusers)."""
    if spec.engine == "evalkit":
        from evalkit.generation.decoding import EngineBackend

        # vlm decodes through the same engine as hf: the tiny text model shows both
        assert type(engine_backend).generate is EngineBackend.generate
        return engine_samples(engine_backend, base) != engine_samples(engine_backend, changed)
    if spec.name == "openai":  # some kind of server is sent something else (and takes the changed setting)
        before, after = served_request(base), served_request(changed)
        return any(after[kind] is not None and after[kind] != before[kind] for kind in after)
    if spec.name == "vllm":
        from evalkit.generation.vllm_engine import engine_knobs

        if knob == "penalty_scope":
            # vLLM has one scope per penalty (what auto means in its order): the example's other scope is refused
            # before the run, in one line, and an explicit scope equal to vLLM's own is taken as auto is
            why = spec.refusal(changed)
            assert why is not None and why[0] == knob and "leave penalty_scope auto" in why[1], why
            own = Setting(**{**base.params(), "penalty_scope": "prompt+output"})  # the example: repetition
            assert spec.refusal(own) is None and engine_knobs(own, 49152) == engine_knobs(base, 49152)
            return True
        return engine_knobs(base, 49152) != engine_knobs(changed, 49152)
    if spec.name == "diffusers":
        from evalkit.generation.diffusers import pipeline_call

        return pipeline_call(base) != pipeline_call(changed)
    raise AssertionError(f"no way to show the effect of a knob on backend {spec.name}: add one here")


def refused(spec, knob: str, changed, tmp_path) -> str:
    config = {"name": "t", "prompts": ["a"], "grid": {"settings": [changed.params()]}, "model": {"backend": spec.name}}
    config["model"].update({"openai": {"id": "m", "base_url": "http://127.0.0.1:9/v1"}}.get(spec.name, {}))
    with pytest.raises(ConfigError) as e:
        checked_inputs(config_from_dict(config, source="c.yaml"))
    return str(e.value)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "diffusers"])
def test_every_order_a_backend_does_not_apply_is_refused(backend, tmp_path):
    spec = spec_of(backend)
    for order in ORDERS:
        setting = Setting(**{**TEXT_EXAMPLES["order"][0], "order": order})
        if order in spec.orders:
            assert spec.refusal(setting) is None
        else:
            assert f"backend {backend} does not honour order '{order}'" in refused(spec, "order", setting, tmp_path)


def test_the_capability_check_tests_every_knob_a_server_is_sent():
    from evalkit.generation.served.probe import PROBES, grid_sets, probes
    from evalkit.generation.served.protocol import KINDS, REQUEST_KNOBS

    sent = {knob for kind in KINDS.values() for knob in kind.fields} | {"penalty_scope"}  # vLLM's: no field
    assert set(PROBES) == set(REQUEST_KNOBS) == sent == spec_of("openai").knobs - {"order"}
    for knob in REQUEST_KNOBS:  # the check probes a knob where the grid sets it, with requests the kinds take
        pair = [Setting(**params) for params in SERVED_EXAMPLES.get(knob, TEXT_EXAMPLES[knob])]
        assert any(knob in setting.set_knobs() for setting in pair)
        for setting in pair:
            assert (knob in grid_sets([setting])) == (knob in setting.set_knobs())
        assert probes(knob, pair), f"nothing shows that a server applies {knob}"
        for p in probes(knob, pair):
            for kind in KINDS.values():
                if knob in kind.fields:
                    assert kind.refusal(p.built(p.setting)) is None and kind.refusal(p.built(p.against)) is None


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_backend_honours_or_refuses_every_knob(backend, engine_backend, tmp_path):
    spec = spec_of(backend)
    images = spec.kind == "text-to-image"
    setting_type, examples = (ImageSetting, IMAGE_EXAMPLES) if images else (Setting, TEXT_EXAMPLES)
    if spec.name == "openai":
        examples = {**examples, **SERVED_EXAMPLES}
    for knob in setting_type.model_fields:
        base, changed = (setting_type(**params) for params in examples[knob])
        honoured = knob in spec.knobs and (knob != "order" or changed.order in spec.orders)
        if knob == "order" and spec.name == "vllm":
            # vLLM's sampler has one order, its own, which `order: vllm` names: it is checked against vLLM's sampler
            # in tests/test_vllm.py (chi-square, vLLM's environment); every other order is refused (below)
            assert spec.own_order == chain_labels(ORDERS["vllm"]) and spec.orders == ("vllm",)
            continue
        if knob == "order" and spec.name == "openai":
            # a server applies its own order, which no request field changes: a setting that names llama.cpp's or
            # vLLM's passes the plan, and the capability check refuses it where the server applies another
            # (tests/test_served.py); every other order is refused by the plan (below)
            from evalkit.generation.served.protocol import KINDS

            assert spec.orders == ("llama_cpp", "vllm") and spec.order_name is None
            assert served_request(changed)["vllm"] is not None and served_request(changed)["llama.cpp"] is None
            assert KINDS["other"].refusal(changed) == ("order", "order 'vllm' (an OpenAI-compatible server of "
                                                                "unknown kind applies its own order, which evalkit "
                                                                "cannot name)")
            message = refused(spec, knob, base, tmp_path)
            assert "backend openai does not honour order 'transformers' (it applies llama_cpp, vllm)" in message
            continue
        if honoured:
            assert effect(spec, knob, base, changed, engine_backend), f"{backend} claims {knob} but ignores it"
        elif not images:
            message = refused(spec, knob, changed, tmp_path)
            # a knob that qualifies another (xtc_threshold) is refused with the knob it qualifies, set beside it
            named = [knob, *QUALIFIES.get(knob, ())]
            assert any(f"backend {backend} does not honour {k}" in message for k in named), message
            assert "\n" not in message and "backends that do: " in message


def test_engine_backends_apply_every_named_order(engine_backend):
    """Each order the engine declares gives its own samples where the orders' distributions differ."""
    seen = {order: engine_samples(engine_backend, Setting(**{**TEXT_EXAMPLES["order"][0], "order": order}))
            for order in spec_of("hf").orders}
    assert len({repr(v) for v in seen.values()}) == len(seen)
    auto = engine_samples(engine_backend, Setting(**{**TEXT_EXAMPLES["order"][0], "order": "auto"}))
    assert auto == seen["transformers"]  # auto is the engine's own order


def test_a_refused_knob_names_the_backend_the_knob_and_those_that_honour_it():
    config = config_from_dict({"name": "t", "prompts": ["a"], "grid": {"temperature": [0.7], "order": ["sglang"]},
                               "model": {"backend": "openai", "id": "m", "base_url": "http://127.0.0.1:9/v1"}},
                              source="c.yaml")
    with pytest.raises(ConfigError) as e:
        checked_inputs(config)
    assert str(e.value) == ("c.yaml: grid.order: backend openai does not honour order 'sglang' (it applies "
                            "llama_cpp, vllm), which setting t0.7-p1-osglang sets; backends that do: hf (evalkit "
                            "backends lists each one's knobs)")


def test_plan_refuses_what_a_backend_does_not_honour(tmp_path, write_config):
    path = write_config({"name": "t", "prompts": ["a"], "output_dir": str(tmp_path / "runs"),
                         "model": {"backend": "vllm"}, "grid": {"settings": [{"top_p": 0.9, "order": "transformers"}]}})
    result = CliRunner().invoke(app, ["run", str(path), "--plan"])
    assert result.exit_code == 2
    assert "grid.settings[0]: backend vllm does not honour order 'transformers' (it applies vllm)" in result.output
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ evalkit backends


def test_backends_command_prints_every_backend():
    result = CliRunner().invoke(app, ["backends"])
    assert result.exit_code == 0, result.output
    for name in BACKENDS:
        assert f"│ {name} " in result.output
    assert "transformers, vllm" in result.output and "model_features" in result.output


def test_backends_json_parses_and_matches_the_specs():
    result = CliRunner().invoke(app, ["backends", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["backend"]: row for row in json.loads(result.output)}
    assert list(rows) == list(BACKENDS)
    assert rows["openai"]["orders"] == ["auto", "llama_cpp", "vllm"] and rows["openai"]["remote"] is True
    assert rows["hf"]["orders"] == ["auto", *ORDERS] and "order" in rows["hf"]["knobs"]
    assert rows["vllm"]["own_order"] == list(chain_labels(ORDERS["vllm"]))
    assert "token_stats" in rows["hf"]["metric_inputs"] and "token_stats" not in rows["openai"]["metric_inputs"]
    assert {"texts", "answers", "tests"} <= set(rows["openai"]["metric_inputs"])
    assert {"prompt_images", "references"} <= set(rows["vlm"]["metric_inputs"]) - set(rows["vlm"]["supplied"])
    assert rows["diffusers"]["knobs"] == list(ImageSetting.model_fields) and rows["diffusers"]["orders"] == []
