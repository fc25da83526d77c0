"""evalkit's served-model client against llama-cpp-python in-process, on the same grid and seeds.

The quickstart's grid (12 settings: temperature x top_p) on ``--prompts`` of its prompts, ``--samples``
samples each, ``--max-new-tokens`` tokens, the embedded SmolLM2 GGUF on ``--threads`` threads (2):

- in-process: llama-cpp-python's ``Llama.create_completion`` in this process, one call per sample in
  grid order, with the sample's seed and every knob (what evalkit sends to the server), the model
  built as the server builds it (``logits_all``, which logprobs need, the same threads);
- plain HTTP: the same requests to llama.cpp's server (``python -m llama_cpp.server``, started here
  on 127.0.0.1), one at a time, with urllib: the server's own cost, without evalkit's client;
- evalkit: the same requests through evalkit's client, at each ``--concurrency``. The capability
  check is timed apart (it runs once per sweep).

Prints tokens/s (completion tokens as the server counts them), evalkit's ratio to plain HTTP (what
its client adds) and to in-process (what serving adds), and how many samples equal the in-process
ones (the same seed gives the same text, up to llama.cpp reusing a cached prompt prefix).
llama.cpp's server decodes one request at a time, so concurrency only overlaps HTTP and JSON here; on
vLLM or SGLang, which batch requests, it is what fills the GPU.

``--smoke``: 2 of the quickstart's settings (temperature 0.3 and 1.3 at top_p 0.95), 1 prompt, 2 samples, 4
tokens, concurrency 1 and 2, 1 thread: the same code path and the same lines. (llama.cpp's threads wait for each
other at every step, spinning: on 2 cores shared with anything else, 2 threads can take seconds per token.)

    python benchmarks/bench_served.py [--prompts 3] [--samples 2] [--max-new-tokens 24] [--concurrency 1 4 8] [--smoke]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from machine import SMOKE_THREADS, print_load, print_machine

from evalkit.config import load_config
from evalkit.generation import load_backend
from evalkit.generation.gguf import default_gguf_path
from evalkit.generation.served.protocol import OPTIONAL_KNOBS, SEED_MODULUS
from evalkit.pipeline import plan
from evalkit.prompts import load_prompts

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "EVALKIT_BENCH_KEY"
SMOKE_GRID = {"temperature": [0.3, 1.3], "top_p": [0.95]}  # 2 of the quickstart's settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, key: str, log: Path, threads: int = 2) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf_path()), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", str(threads),
         "--n_threads_batch", str(threads), "--api_key", key],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    for _ in range(480):
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                         headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(req, timeout=2):
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"llama.cpp server exited; see {log}")
            time.sleep(0.25)
    process.kill()
    raise SystemExit("llama.cpp server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp's threads, in the server and in-process")
    parser.add_argument("--smoke", action="store_true", help="2 settings, 1 prompt, 2 samples, 4 tokens, 1 thread")
    args = parser.parse_args()
    if args.smoke:
        args.prompts, args.samples, args.max_new_tokens, args.concurrency = 1, 2, 4, [1, 2]
        args.threads = SMOKE_THREADS
    print_machine("llama-cpp-python")

    from llama_cpp import Llama

    key = os.urandom(16).hex()
    os.environ[KEY_ENV] = key
    port = free_port()
    quick = load_config(ROOT / "configs" / "quickstart.yaml")
    items = [{"id": p.id, "prompt": p.text} for p in load_prompts(quick)[: args.prompts]]
    grid = SMOKE_GRID if args.smoke else quick.grid.model_dump(exclude_none=True)

    def config(concurrency: int):
        from evalkit.config import config_from_dict

        return config_from_dict({
            "name": "bench-served", "prompts": items, "grid": grid,
            "samples_per_prompt": args.samples, "max_new_tokens": args.max_new_tokens, "metrics": ["distinct_1"],
            "model": {"backend": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "id": "smollm2",
                      "api_key_env": KEY_ENV, "concurrency": concurrency}})

    first = config(1)
    settings = first.settings()
    print(f"grid: {len(settings)} settings x {len(items)} prompts x {args.samples} samples = "
          f"{len(settings) * len(items) * args.samples} samples of at most {args.max_new_tokens} tokens")

    # baseline: in-process, sequential
    llm = Llama(model_path=str(default_gguf_path()), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads,
                logits_all=True, verbose=False)
    units = None
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(port, key, Path(tmp) / "server.log", args.threads)
        try:
            results = []
            for concurrency in args.concurrency:
                backend = load_backend(config(concurrency))
                prepared = backend.prepare(load_prompts(first), chat_template="auto", system_prompt=None,
                                           max_new_tokens=args.max_new_tokens)
                started = time.perf_counter()
                backend.check(settings, prepared, logprobs=0)
                check_s = time.perf_counter() - started
                units = plan(first, prepared, settings)
                started = time.perf_counter()
                records = list(backend.generate(units, max_new_tokens=args.max_new_tokens))
                elapsed = time.perf_counter() - started
                tokens = sum(r.num_tokens for r in records)
                results.append((concurrency, tokens / elapsed, check_s, {r.unit.key: r.text for r in records}))
            started = time.perf_counter()
            tokens = 0
            for u in units:
                body = backend.body(u.prompt, u.setting, u.seed, args.max_new_tokens)
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                                 data=json.dumps(body).encode(),
                                                 headers={"Authorization": f"Bearer {key}",
                                                          "Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=120) as r:
                    tokens += json.loads(r.read())["usage"]["completion_tokens"]
            plain_rate = tokens / (time.perf_counter() - started)
            # what evalkit sends that llama-cpp-python's create_completion takes (not vLLM's repetition_penalty, ...)
            takes = inspect.signature(llm.create_completion).parameters
            sent = {k: v[0] for k, v in OPTIONAL_KNOBS.items() if k in takes}
            started = time.perf_counter()
            tokens, baseline = 0, {}
            for u in units:
                s = u.setting
                out = llm.create_completion(u.prompt.rendered, max_tokens=args.max_new_tokens,
                                            temperature=s.temperature, top_p=s.top_p, seed=u.seed % SEED_MODULUS,
                                            **{**sent, "top_k": s.top_k, "min_p": s.min_p})
                tokens += out["usage"]["completion_tokens"]
                baseline[u.key] = out["choices"][0]["text"]
            base_rate = tokens / (time.perf_counter() - started)
        finally:
            server.terminate()
            server.wait(10)

    print(f"llama-cpp-python in-process, sequential:  {base_rate:6.1f} tokens/s")
    print(f"plain HTTP to the server, sequential:    {plain_rate:6.1f} tokens/s  "
          f"({plain_rate / base_rate:.3f} of in-process)")
    for concurrency, rate, check_s, texts in results:
        same = sum(texts[k] == baseline[k] for k in baseline)
        print(f"evalkit client, concurrency {concurrency:2d}:          {rate:6.1f} tokens/s  "
              f"{rate / plain_rate:.3f} of plain HTTP, {rate / base_rate:.3f} of in-process; "
              f"{same}/{len(baseline)} samples equal in-process; capability check {check_s:.1f} s")
    print_load()


if __name__ == "__main__":
    main()
