"""Fuzzing: arbitrary bytes and structures into the config loader and the JSONL readers raise
evalkit's own errors (or load), never anything else."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalkit.config import config_from_dict, load_config
from evalkit.errors import EvalkitError
from evalkit.kinds.scored import read_generations
from evalkit.prompts import load_prompts, read_prompt_jsonl

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                     max_leaves=20)
keys = st.sampled_from(["name", "model", "prompts", "grid", "samples_per_prompt", "max_new_tokens", "seed", "metrics",
                        "batch_size", "stop", "ci", "output_dir", "temperature", "top_p", "items", "file", "id"])
configs = st.dictionaries(keys, trees, max_size=8)


@FUZZ
@given(st.binary(max_size=400))
def test_config_bytes(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except EvalkitError:
        pass


@FUZZ
@given(configs, st.lists(st.text(max_size=30), max_size=3))
def test_config_structures_and_overrides(data, overrides):
    try:
        config = config_from_dict(data, overrides=overrides)
        config.settings()
    except EvalkitError:
        pass


@FUZZ
@given(st.binary(max_size=400))
def test_prompt_jsonl_bytes(tmp_path, data):
    path = tmp_path / "p.jsonl"
    path.write_bytes(data)
    try:
        list(read_prompt_jsonl(path))
        load_prompts(config_from_dict({"name": "t", "prompts": {"file": str(path)}}))
    except EvalkitError:
        pass


@FUZZ
@given(st.lists(trees, max_size=5), st.binary(max_size=60))
def test_generation_jsonl(tmp_path, rows, noise):
    import json

    path = tmp_path / "g.jsonl"
    path.write_bytes(b"\n".join(json.dumps(r).encode() for r in rows) + b"\n" + noise)
    try:
        read_generations(path)
    except EvalkitError:
        pass
