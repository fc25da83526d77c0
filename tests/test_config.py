"""Config validation: every error names the file, the field path and the bad value."""

import pytest

from evalkit.config import load_config
from evalkit.errors import ConfigError
from evalkit.prompts import load_prompts
from evalkit.scoring.registry import default_registry

from conftest import write_jsonl

GOOD = {"name": "t", "prompts": ["hello"], "grid": {"temperature": [0.5, 1.0]}}


def errors_for(write_config, data, overrides=()):
    path = write_config(data)
    with pytest.raises(ConfigError) as info:
        config = load_config(path, list(overrides))
        default_registry().create_all(config.metrics, source=config.source)
        load_prompts(config)
    message = str(info.value)
    assert message.startswith((str(path), "--set: ")), message  # a --set value is blamed on --set, not the file
    assert "\n" not in message
    return message


@pytest.mark.parametrize("change, expected", [
    ({"grid": {"temperature": [0.5, -1]}},
     "grid.temperature[1]: temperature must be a finite number >= 0 (0 means greedy), got -1"),
    ({"grid": {"top_p": [0]}}, "grid.top_p[0]: top_p must be in (0, 1]"),
    ({"grid": {"top_p": [1.01]}}, "grid.top_p[0]: top_p must be in (0, 1] (1 means no filtering), got 1.01"),
    ({"grid": {"top_k": [-3]}}, "grid.top_k[0]: top_k must be >= 0 (0 means no filtering), got -3"),
    ({"grid": {"min_p": [1]}}, "grid.min_p[0]: min_p must be in [0, 1)"),
    ({"grid": {"temperature": ["hot"]}}, "grid.temperature[0]: Input should be a valid number"),
    ({"grid": {"settings": [{"temperature": 0.5, "top_p": 2}]}}, "grid.settings[0].top_p: top_p must be in (0, 1]"),
    ({"grid": {"temperature": []}}, "grid.temperature: list is empty"),
    ({"samples_per_prompt": 0}, "samples_per_prompt: Input should be greater than or equal to 1, got 0"),
    ({"max_new_tokens": "many"}, "max_new_tokens: Input should be a valid integer"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"prompts": []}, "prompts: Value error, the prompt list is empty".replace("Value error, ", "")),
    ({"prompts": [""]}, "prompts.items[0]: prompt text is empty"),
    ({"model": {"device": "tpu"}}, "model.device: Input should be 'auto', 'cpu' or 'cuda', got 'tpu'"),
    ({"model": {"sha256": "abc"}}, "model.sha256: sha256 must be 64 hexadecimal characters, got 'abc'"),
    ({"name": "bad name!"}, "name: String should match pattern"),
    ({"metrics": []}, "metrics: list is empty"),
    ({"batch_size": 0}, "batch_size: batch_size must be a whole number from 1 to 65536, or 'auto', got 0"),
    ({"batch_size": "big"}, "batch_size: batch_size must be a whole number from 1 to 65536, or 'auto', got 'big'"),
    ({"stop": ["\n\n", ""]}, "stop: stop strings must not be empty"),
])
def test_bad_values_name_field_and_value(write_config, change, expected):
    assert expected in errors_for(write_config, {**GOOD, **change})


@pytest.mark.parametrize("change, expected", [
    ({"temprature": 1}, "unknown key 'temprature'"),
    ({"grid": {"temprature": [1]}}, "grid: unknown key 'temprature' (did you mean 'temperature'?)"),
    ({"model": {"devise": "cpu"}}, "model: unknown key 'devise' (did you mean 'device'?)"),
    ({"samples_per_promt": 2}, "unknown key 'samples_per_promt' (did you mean 'samples_per_prompt'?)"),
])
def test_unknown_keys_get_suggestions(write_config, change, expected):
    assert expected in errors_for(write_config, {**GOOD, **change})


def test_missing_required_field(write_config):
    assert "prompts: Field required" in errors_for(write_config, {"name": "t"})


def test_invalid_yaml_gives_line_and_column(write_config):
    message = errors_for(write_config, "name: t\nprompts: [a, b\ngrid: {}\n")
    assert "invalid YAML at line 3, column 5" in message


def test_top_level_must_be_a_mapping(write_config):
    assert "expected a mapping" in errors_for(write_config, "- a\n- b\n")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_metric_suggests_closest(write_config):
    message = errors_for(write_config, {**GOOD, "metrics": ["distinct_1", "distnct_2"]})
    assert "metrics[1]: unknown metric 'distnct_2' (did you mean 'distinct_2'?)" in message


def test_metric_parameters_are_validated(write_config):
    assert "metrics[0].n: Input should be less than or equal to 8, got 20" in errors_for(
        write_config, {**GOOD, "metrics": [{"name": "distinct_n", "n": 20}]})
    assert "metrics[0].tok: unknown parameter" in errors_for(
        write_config, {**GOOD, "metrics": [{"name": "mean_length", "tok": "words"}]})
    assert "'distinct_2' fixes n=2" in errors_for(write_config, {**GOOD, "metrics": [{"name": "distinct_2", "n": 3}]})
    assert "listed twice" in errors_for(write_config, {**GOOD, "metrics": ["distinct_2", {"name": "distinct_n"}]})


def test_overrides_are_parsed_as_yaml(write_config):
    path = write_config(GOOD)
    config = load_config(path, ["grid.temperature=[0.2, 0.9]", "samples_per_prompt=7", "grid.top_k=[0,40]",
                                "model.dtype=float32"])
    assert config.grid.temperature == [0.2, 0.9] and config.samples_per_prompt == 7
    assert [s.id for s in config.settings()][:2] == ["t0.2-p1", "t0.2-p1-k40"]
    assert config.model.dtype == "float32"


@pytest.mark.parametrize("override, expected", [
    ("samples_per_prompt", "--set: expects KEY.PATH=VALUE, got 'samples_per_prompt'"),
    ("grid..top_p=1", "--set: expects KEY.PATH=VALUE"),
    ("name.x=1", "--set: name.x: 'name' is not a mapping"),
    ("grid.temperature=[0.5, -2]", "--set: grid.temperature[1]: temperature must be a finite number >= 0"),
    ("grid.temperature=[0.5", "--set: grid.temperature: cannot parse value '[0.5' as YAML"),
    ("grdi.temperature=[0.5]", "--set: unknown key 'grdi' (did you mean 'grid'?)"),
    ("grid={temperature: [1], temperature: [2]}", "--set: grid: cannot parse value '{temperature: [1], temperature: "
                                                  "[2]}' as YAML: key 'temperature' appears twice"),
])
def test_bad_overrides(write_config, override, expected):
    assert expected in errors_for(write_config, GOOD, [override])


@pytest.mark.parametrize("override, expected", [
    ("metrics=[self_blue]", "error: --set: metrics[0]: unknown metric 'self_blue' (did you mean 'self_bleu'?)"),
    ("prompts=[{id: a, prompt: x}, {id: a, prompt: y}]",
     "error: --set: prompts.items[1]: duplicate prompt id 'a' (also at prompts.items[0])"),
])
def test_problems_found_after_loading_are_said_of_set(write_config, override, expected):
    """A metric or prompt that --set gave is blamed on --set when it is checked after loading, too."""
    from typer.testing import CliRunner

    from evalkit.cli import app

    result = CliRunner().invoke(app, ["run", str(write_config(GOOD)), "--plan", "--set", override])
    assert result.exit_code == 2 and result.stderr.strip() == expected, result.output


def test_overrides_reach_below_shorthands(write_config):
    path = write_config({**GOOD, "model": "default", "prompts": ["a", "b"]})
    config = load_config(path, ["model.device=cpu", "prompts.system_prompt=Be brief."])
    assert config.model.id == "default" and config.model.device == "cpu"
    assert config.prompts.system_prompt == "Be brief." and len(config.prompts.items) == 2


def test_shorthands(write_config):
    config = load_config(write_config({**GOOD, "model": "some-org/some-model", "metrics": ["distinct_2"]}))
    assert config.model.id == "some-org/some-model"
    assert config.metrics[0].name == "distinct_2" and config.metrics[0].params == {}
    config = load_config(write_config({**GOOD, "metrics": [{"name": "distinct_n", "n": 3, "tok": "whitespace"}]}))
    metric = default_registry().create_all(config.metrics)[0]
    assert metric.id == "distinct_3[tok=whitespace]"


# ------------------------------------------------------------------ prompts


def test_inline_prompts_get_ids_and_keep_given_ones(write_config):
    config = load_config(write_config({**GOOD, "prompts": ["a", {"id": "x", "prompt": "b"},
                                                           {"messages": [{"role": "user", "content": "c"}]}]}))
    prompts = load_prompts(config)
    assert [p.id for p in prompts] == ["p0", "x", "p2"]
    assert prompts[2].messages == (("user", "c"),) and prompts[2].display == "user: c"
    assert prompts[0].chat("be brief") == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a"}]


def test_prompt_file_relative_to_config(write_config, tmp_path):
    write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "one"}, {"id": 7, "prompt": "二"}])
    config = load_config(write_config({**GOOD, "prompts": {"file": "prompts.jsonl", "system_prompt": "s"}}))
    prompts = load_prompts(config)
    assert [(p.id, p.text) for p in prompts] == [("a", "one"), ("7", "二")]


@pytest.mark.parametrize("content, expected", [
    (b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": \n', "line 2: invalid JSON"),
    (b'{"id": "a", "prompt": "x\n', "line 1: invalid JSON: Unterminated string starting at column 23"),
    (b'{"id": "a", "prompt": "x"}\n\n[1, 2]\n', "line 3: expected a JSON object, got a list"),
    (b'{"id": "a", "prompt": "\xff\xfe"}\n', "line 1: not UTF-8"),
    (b'{"id": "a"}\n', "line 1: a prompt needs exactly one of 'prompt' or 'messages'"),
    (b'{"id": "a", "prompt": "x", "extra": 1}\n', "line 1: extra: Extra inputs are not permitted"),
    (b'{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "line 2: duplicate prompt id 'a' (also at line 1)"),
    (b"\n\n", "the prompt file has no prompts"),
])
def test_bad_prompt_files(write_config, tmp_path, content, expected):
    (tmp_path / "p.jsonl").write_bytes(content)
    config = load_config(write_config({**GOOD, "prompts": {"file": "p.jsonl"}}))
    with pytest.raises(ConfigError) as info:
        load_prompts(config)
    assert str(info.value).startswith(str(tmp_path / "p.jsonl"))
    assert expected in str(info.value)


def test_missing_prompt_file(write_config, tmp_path):
    config = load_config(write_config({**GOOD, "prompts": {"file": "none.jsonl"}}))
    with pytest.raises(ConfigError, match="none.jsonl: prompt file not found"):
        load_prompts(config)


def test_prompts_need_items_or_file_not_both(write_config):
    message = errors_for(write_config, {**GOOD, "prompts": {"items": ["a"], "file": "p.jsonl"}})
    assert "prompts: give prompts either inline (a list) or as 'file', not both or neither" in message


def test_a_metric_parameter_given_twice_is_refused():
    from evalkit.config import metric_spec
    from evalkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--metrics: parameter 'n' appears twice in 'self_bleu\[n=4,n=5\]'$"):
        metric_spec("self_bleu[n=4,n=5]")


# ------------------------------------------------------------------ the model section: one class per backend

SERVED = {"backend": "openai", "id": "m", "base_url": "http://127.0.0.1:9/v1"}


@pytest.mark.parametrize("model, expected", [
    ({"backend": "hf", "base_url": "http://127.0.0.1:9/v1"},
     "model.base_url: only a served model (backend openai) has base_url; this one is backend 'hf', got base_url set"),
    ({"backend": "vlm", "id": "x", "tensor_parallel_size": 2},
     "model.tensor_parallel_size: only a vLLM model (backend vllm) has tensor_parallel_size; this one is backend "
     "'vlm', got tensor_parallel_size set"),
    ({**SERVED, "dtype": "float16"},
     "model.dtype: a served model (backend openai) is loaded by its server, not by evalkit; remove dtype, "
     "got 'float16'"),
    ({"backend": "hff"}, "model.backend: backend must be one of hf, vlm, diffusers, openai, vllm, got 'hff'"),
    ({"backend": "diffusers"}, "model.id: a diffusers sweep needs a diffusers pipeline (a local directory or hub id)"),
    ({**SERVED, "concurency": 4}, "model: unknown key 'concurency' (did you mean 'concurrency'?)"),
    ({"backend": "hf", "dtyp": "float32"}, "model: unknown key 'dtyp' (did you mean 'dtype'?)"),
])
def test_each_backend_has_its_own_fields(write_config, model, expected):
    message = errors_for(write_config, {**GOOD, "model": model})
    assert expected in message and "\n" not in message


def test_each_backend_gets_its_own_section_and_kind(write_config):
    cases = {"hf": ({}, "HFModel", "text"), "openai": (SERVED, "OpenAIModel", "text"),
             "vllm": ({"backend": "vllm"}, "VLLMModel", "text"),
             "vlm": ({"backend": "vlm", "id": "x"}, "VLMModel", "image-to-text"),
             "diffusers": ({"backend": "diffusers", "id": "x"}, "DiffusersModel", "text-to-image")}
    for backend, (model, cls, kind) in cases.items():
        data = {**GOOD, "model": model} if backend != "diffusers" else {"name": "t", "prompts": ["a"], "model": model}
        config = load_config(write_config(data))
        assert (type(config.model).__name__, config.kind, config.model.backend) == (cls, kind, backend)


def test_a_resolved_config_of_the_flat_model_section_still_loads(write_config):
    """An older resolved config.yaml lists every backend's field at its default: such a run resumes and compares."""
    flat = {"backend": "hf", "id": "default", "gguf_file": None, "revision": None, "sha256": None, "dtype": "auto",
            "device": "auto", "base_url": None, "api": "completions", "api_key_env": None, "concurrency": 8,
            "timeout_s": 120.0, "max_retries": 6, "backoff_s": 1.0, "tensor_parallel_size": 1,
            "gpu_memory_utilization": 0.9, "max_model_len": None, "engine_args": {}}
    config = load_config(write_config({**GOOD, "model": flat}))
    assert type(config.model).__name__ == "HFModel" and "base_url" not in config.model.model_dump()
    served = load_config(write_config({**GOOD, "model": {**flat, **SERVED, "gguf_file": None, "dtype": "auto"}}))
    assert served.model.base_url == "http://127.0.0.1:9/v1" and "dtype" not in served.model.model_dump()


def test_a_set_backend_changes_the_section(write_config):
    path = write_config({**GOOD, "model": {"id": "m"}})
    config = load_config(path, ["model.backend=openai", "model.base_url=http://127.0.0.1:9/v1"])
    assert type(config.model).__name__ == "OpenAIModel"


@pytest.mark.parametrize("model", [42, None, [1], True])
def test_a_model_section_that_is_not_a_mapping_is_said_to_be_one(write_config, model):
    assert errors_for(write_config, {**GOOD, "model": model}).split(": ", 1)[1].startswith(
        "model: should be a mapping of keys")
