"""`evalkit conformance` on served models (evalkit/conformance_served.py): the real llama.cpp server passes under
its own order and is caught under transformers' at temperature 0.5 with top-p 0.8; a server of the tests' own that
samples from llama.cpp's logits (served_helpers.SamplingServer) passes, and each deliberate fault in it is caught
with its own verdict; without a reference the server's top-N logprobs are the model where they hold the kept set."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

import evalkit
from evalkit.conformance import core as cf
from evalkit.conformance import served as cs
from evalkit.cli import app
from evalkit.config import config_from_dict
from evalkit.generation import spec_of
from evalkit.generation.served.probe import PROBE_SEEDS
from evalkit.settings import Setting

from conftest import API_KEY_ENV, served_config
from served_helpers import SamplingServer, require_llama_cpp

ORDERED = {"temperature": 0.5, "top_p": 0.8}  # llama.cpp applies top-p before the temperature: the order matters
PROMPT = "Once upon a time, in a lighthouse,"


@pytest.fixture(scope="module")
def gguf():
    from evalkit.generation.gguf import default_gguf_path

    require_llama_cpp()
    return str(default_gguf_path())


@pytest.fixture(scope="module")
def reference(gguf):
    """llama.cpp's forward pass of the embedded GGUF, in process: what the tests' server samples from."""
    return cs.GGUFReference(gguf)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "sk-conformance-test-key")


def config(base_url: str, tmp_path, **extra):
    data = served_config(base_url, tmp_path / "out", prompts=[{"id": "story", "prompt": PROMPT}],
                         grid={"temperature": [0.5]}, **extra)
    data["model"]["concurrency"] = 8
    return config_from_dict(data)


def run(base_url, tmp_path, settings, *, reference=None, draws=150, continuations=(0,)):
    return cs.run(config(base_url, tmp_path), spec_of("openai"), settings, draws=draws, reference=reference,
                  continuations=continuations)


def verdicts(report) -> list[str]:
    return [c.verdict.split(":")[0] for c in report.cases]


def seeds(report) -> dict[str, bool]:
    return {s.name.split(" (")[0].split(":")[0]: s.passed for s in report.seeds}


# --------------------------------------------------------------------------- the real llama.cpp server


def test_llama_cpp_server_passes_under_its_order_and_is_caught_under_transformers(llama_server, gguf, tmp_path):
    report = run(llama_server.base_url, tmp_path, [Setting(**ORDERED, order="llama_cpp"),
                                                   Setting(**ORDERED, order="transformers")],
                 reference=gguf, continuations=(0, 4))
    rows = {(c.setting, c.context): c for c in report.cases}
    for context in ("prompt", "prompt+4"):
        right, wrong = rows[("t0.5-p0.8-ollama_cpp", context)], rows[("t0.5-p0.8-otransformers", context)]
        assert right.verdict == "pass", right.as_dict()
        assert right.control == "order transformers" and right.control_adjusted < cf.ALPHA
        assert wrong.verdict.startswith("fail: ") and "outside the support" in wrong.verdict, wrong.as_dict()
    assert report.failed and report.order == "llama_cpp"
    assert seeds(report) == {"same seed twice": True, "alone vs among batch neighbours": True,
                             "n=4 choices of one request": True}
    assert "not honoured" in report.seeds[2].note  # llama-cpp-python's server gives one choice whatever n asks
    assert [c.reported for c in report.logprobs] == ["raw", "raw"] and all(c.passed for c in report.logprobs)
    assert all(c.distance_raw < 1e-3 < 0.1 < c.distance_processed for c in report.logprobs)
    assert "mod 2**31" in report.seed_mapping


def test_llama_cpp_server_without_a_reference_uses_its_top_logprobs(llama_server, tmp_path):
    # top-p 0.5 keeps four tokens, inside the top 20; temperature 0.7 alone keeps every token
    report = run(llama_server.base_url, tmp_path, [Setting(temperature=0.7, top_p=0.5), Setting(temperature=0.7)])
    (inside, outside) = report.cases
    assert inside.verdict == "pass" and inside.fit.test != "untested", inside.as_dict()
    assert outside.verdict.startswith("inconclusive: the kept set is not inside the server's top-20 logprobs")
    assert "top-20 logprobs" in report.reference and not report.failed


# --------------------------------------------------------------------------- a server with faults


@pytest.mark.parametrize("fault, owned_by, setting, caught", [
    (None, "me", ORDERED, None),
    ("top_p_one_more", "me", {"temperature": 0.8, "top_p": 0.6}, "outside"),
    ("temperature_last", "vllm", ORDERED, "cases"),
    ("ignores_seed", "me", ORDERED, "same seed twice"),
    ("neighbours", "me", ORDERED, "alone vs among batch neighbours"),
    ("processed_logprobs", "me", ORDERED, "logprobs"),
])
def test_a_faulty_server_is_caught_with_the_right_verdict(reference, gguf, key, tmp_path, fault, owned_by, setting,
                                                          caught):
    with SamplingServer(reference, fault, owned_by) as server:
        report = run(server.base_url, tmp_path, [Setting(**setting)], reference=gguf, draws=200)
    shown = json.dumps(report.as_dict(), indent=1)[:4000]
    assert report.failed == (caught is not None), shown
    distribution_ok = all(v == "pass" for v in verdicts(report))
    if caught == "outside":
        assert all("outside the support" in c.verdict for c in report.cases), shown
    elif caught == "cases":
        assert report.order == "vllm" and not distribution_ok, shown
    else:  # the faults of seeds and logprobs leave the distribution alone: no draw outside the support
        assert not any("outside the support" in c.verdict for c in report.cases), shown
        if caught not in ("same seed twice", "alone vs among batch neighbours"):
            # seeded draws are a function of their seeds, so the test's p-value is fixed; where the fault breaks
            # the seeds the draws are random, and a fit test rejects 5% of such runs by design: not asserted
            assert distribution_ok, shown
    checks = {s.name.split(" (")[0].split(":")[0]: s.passed for s in report.seeds}
    if caught in ("same seed twice", "alone vs among batch neighbours"):
        assert not checks[caught], shown
    if caught == "same seed twice":
        assert not checks["n=4 choices of one request"]  # n choices of one seed are not the same when sent again
    if caught is None or caught in ("outside", "cases", "logprobs"):
        assert all(checks.values()), shown
        assert checks["n=4 choices of one request"] and report.seeds[2].total == 1  # honoured here
    logprobs = [c.reported for c in report.logprobs]
    assert logprobs == (["processed"] if caught == "logprobs" else ["raw"]), shown
    if caught == "logprobs":
        assert report.logprobs[0].why() == "processed, where this kind of server reports raw"


def test_vllm_kind_draws_carry_token_ids(reference, gguf, key, tmp_path):
    """A vLLM server is asked for the drawn token's id (return_tokens_as_token_ids): no text is ambiguous."""
    with SamplingServer(reference, None, "vllm") as server:
        report = run(server.base_url, tmp_path, [Setting(**ORDERED)], reference=gguf, draws=100)
    assert verdicts(report) == ["pass"] and not report.cases[0].note and not report.failed


# --------------------------------------------------------------------------- the command


def test_the_command_on_a_served_model_writes_json_and_html(reference, gguf, key, tmp_path):
    with SamplingServer(reference, "top_p_one_more") as server:
        path = tmp_path / "served.yaml"
        data = served_config(server.base_url, tmp_path / "out", prompts=[{"id": "story", "prompt": PROMPT}],
                             grid={"temperature": [0.8], "top_p": [0.6]})
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        plan = CliRunner().invoke(app, ["conformance", str(path), "--plan", "--draws", "50"])
        result = CliRunner().invoke(app, ["conformance", str(path), "--draws", "50", "--reference", gguf, "-q",
                                          "--json", str(tmp_path / "c.json"), "--html", str(tmp_path / "c.html")])
    assert plan.exit_code == 0 and "requests" in plan.output, plan.output
    assert result.exit_code == 1, result.output
    assert "outside the support" in result.output and "seeds sent:" in result.output
    data = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    assert data["failed"] and data["logprobs"][0]["reported"] == "raw" and data["cases"][0]["largest"]
    html = (tmp_path / "c.html").read_text(encoding="utf-8")
    assert "<svg" in html and "t0.8-p0.6" in html and "<script" not in html


# --------------------------------------------------------------------------- one seed mapping


@pytest.mark.parametrize("owned_by, mapping", [("vllm", "the sample's derived seed"),
                                               ("me", "the sample's derived seed mod 2**31")])
def test_a_vllm_server_is_sent_the_whole_seed_as_vllm_in_process_is(reference, key, tmp_path, owned_by, mapping):
    """One seed mapping: the derived seed itself wherever a backend takes 64 bits (vLLM in process, vLLM's server),
    mod 2**31 where a server's sampler takes 32 (llama.cpp's); the manifest says which."""
    with SamplingServer(reference, None, owned_by) as server:
        run = evalkit.run_sweep(config_from_dict(served_config(server.base_url, tmp_path / "out")), progress=False,
                                cache=False)
    sent = sorted(b["seed"] for b in server.bodies if b.get("max_tokens") == 12 and b["seed"] > PROBE_SEEDS)
    derived = sorted(int(s) for s in run.samples["seed"])
    assert max(derived) >= 2**31  # the mapping matters for these seeds
    assert sent == (derived if owned_by == "vllm" else sorted(s % 2**31 for s in derived))
    assert run.manifest.model["rng"].endswith(f"seed = {mapping}")
    assert {s.generation["seed"] for s in run.manifest.settings} == {mapping}
