"""vLLM's own OpenAI-compatible server, started by the test on 127.0.0.1 from vLLM's environment, against vLLM in
process on the same weights: one seed gives one sample on both (the served backend sends a vLLM server the sample's
whole derived seed, as the in-process backend gives it), and ``evalkit conformance`` passes on both. ``.ci/vllm`` runs
this file in ``.venv-vllm``; elsewhere it is skipped."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from test_vllm import HAVE_VLLM  # its guard: EVALKIT_REQUIRE_VLLM, and vLLM's KV cache size on a CPU

pytestmark = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed here: .ci/vllm runs these tests in "
                                                      ".venv-vllm")

KEY_ENV = "EVALKIT_TEST_VLLM_KEY"
SERVED_NAME = "smollm2-vllm"
SEED, MAX_MODEL_LEN = 3, 512
SWEEP = {"prompts": {"items": [{"id": "sea", "prompt": "The sea is"},
                               {"id": "colour", "prompt": "My favourite colour is"}], "chat_template": False},
         "grid": {"temperature": [0.8, 1.2], "top_p": [0.9]}, "samples_per_prompt": 8, "max_new_tokens": 12,
         "seed": SEED, "metrics": ["distinct_1"], "report": False}
IN_PROCESS = {"backend": "vllm", "max_model_len": MAX_MODEL_LEN}


def served_model(base_url: str) -> dict:
    return {"backend": "openai", "base_url": base_url, "id": SERVED_NAME, "api_key_env": KEY_ENV, "concurrency": 8,
            "timeout_s": 120}


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The sweep on vLLM in process: its samples, and the checkpoint directory vLLM loaded."""
    import evalkit
    from evalkit.config import config_from_dict
    from evalkit.generation.model import locate_model

    config = config_from_dict({**SWEEP, "name": "in-process", "model": IN_PROCESS,
                               "output_dir": str(tmp_path_factory.mktemp("in-process"))})
    run = evalkit.run_sweep(config, progress=False, cache=False)
    return run, locate_model(config).checkpoint(None)[0]


@pytest.fixture(scope="module")
def server(in_process, tmp_path_factory):
    from served_helpers import VLLMServer

    key = f"sk-evalkit-sentinel-{uuid.uuid4().hex}"
    os.environ[KEY_ENV] = key
    srv = VLLMServer(tmp_path_factory.mktemp("vllm-server"), key, in_process[1], SERVED_NAME, SEED, MAX_MODEL_LEN)
    try:
        yield srv.start(timeout=900)  # a first start compiles the model's kernels
    finally:
        srv.stop()
        os.environ.pop(KEY_ENV, None)


def write_config(path, model: dict) -> str:
    path.write_text(json.dumps({**SWEEP, "name": "conformance", "model": model, "output_dir": str(path.parent)}))
    return str(path)


def conforms(report) -> None:
    """What a conforming backend always shows: no draw outside the expected support, and seeds that reproduce. The
    fit tests are not asserted one by one: a conforming sampler fails one at alpha 0.05 by design (Holm over the
    three contexts), and on another CPU the draws are others; two of three failing would be under 1% by chance."""
    shown = [(c.context, c.verdict) for c in report.cases]
    assert all(c.fit.outside == 0 for c in report.cases), shown
    assert sum(c.verdict == "fail" for c in report.cases) <= 1, shown
    assert report.seeds and all(s.passed for s in report.seeds), [(s.name, s.equal, s.total) for s in report.seeds]


def test_one_seed_gives_one_sample_on_vllms_server_and_in_process(in_process, server, tmp_path):
    import evalkit
    from evalkit.config import config_from_dict

    local = in_process[0]
    served = evalkit.run_sweep(config_from_dict({**SWEEP, "name": "served", "model": served_model(server.base_url),
                                                 "output_dir": str(tmp_path)}), progress=False, cache=False)
    assert "seed = the sample's derived seed" in served.manifest.model.rng
    assert "mod 2**31" not in served.manifest.model.rng
    keys = ["prompt_id", "setting_id", "sample_index"]
    ours, theirs = local.samples.set_index(keys), served.samples.set_index(keys)
    assert len(ours) == len(theirs) == 2 * 2 * 8
    theirs = theirs.reindex(ours.index)
    same = int((ours["text"] == theirs["text"]).sum())
    assert same == len(ours), f"{same} of {len(ours)} samples agree"
    assert ours["text"].nunique() > len(ours) // 2  # sampled: the samples differ among themselves


def test_conformance_passes_on_vllm_in_process(tmp_path):
    from evalkit.api import conformance

    report = conformance(write_config(tmp_path / "vllm.json", IN_PROCESS), settings=["t1.2-p0.9"], draws=500,
                         progress=False)
    assert report.order == "vllm" and len(report.cases) == 3
    conforms(report)
    assert all(s.distinct > 1 for s in report.seeds)


def test_conformance_passes_on_vllms_server_against_the_same_weights(in_process, server, tmp_path):
    from evalkit.api import conformance

    report = conformance(write_config(tmp_path / "served.json", served_model(server.base_url)),
                         settings=["t1.2-p0.9"], draws=400, reference=in_process[1], progress=False)
    assert report.order == "vllm" and len(report.cases) == 3
    conforms(report)
