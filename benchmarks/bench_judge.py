"""The judge's requests per second against the server's own rate: llama.cpp's server (``python -m llama_cpp.server``,
started here on 127.0.0.1, the embedded SmolLM2 GGUF on ``--threads`` threads) judging ``--samples`` fixed answers
to the quickstart's prompts (rubric helpfulness, temperature 0, seed 0, ``--max-tokens`` tokens, llama.cpp's grammar
for a short reason and a rating, so that every reply has the same shape):

- plain HTTP: the judge's request bodies sent one at a time with urllib: the server's own rate;
- evalkit's judge (:class:`evalkit.scoring.judge.Judge`, the served backend's client) at each ``--concurrency``,
  its cache off: what the client adds, and what requests in flight give;
- the judge cache: the same verdicts again, cache on (the rerun of a sweep): verdicts/s with no request.

The three are timed in ``--rounds`` rounds, in another order each round (a CPU shared with other work drifts), and
each line gives the median of its rounds' rates and their range.

llama.cpp's server decodes one request at a time; a server that
batches requests (vLLM, SGLang, a hosted API) is where concurrency pays.

``--smoke``: 4 samples, 4 tokens, concurrency 1 and 2, 1 round, 1 thread: the same code path and the same lines.

    python benchmarks/bench_judge.py [--samples 24] [--max-tokens 16] [--concurrency 1 8] [--rounds 3] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_served import free_port, start_server
from machine import SMOKE_THREADS, print_load, print_machine

from evalkit.config import load_config
from evalkit.config.judge import JudgeConfig
from evalkit.prompts import load_prompts
from evalkit.scoring.judge import Judge, JudgeCache, Reply, judge_cache_path
from evalkit_metrics.judge import parse_rating, score_prompt
from evalkit_metrics.rubrics import RUBRICS

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "EVALKIT_BENCH_KEY"
GRAMMAR = 'root ::= [a-zA-Z ,.]{0,12} "[[" [1-9] "]]"'
ANSWERS = ["Start with simple recipes and cook them often.", "Read widely, and write every day.",
           "Practice a little each day rather than a lot once a week.", "banana the the the banana"]


def spread(rates: list[float]) -> str:
    """The range of a mode's rates over its rounds."""
    return f"(rounds: {min(rates):.2f} to {max(rates):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3, help="each mode timed this many times, interleaved")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp's threads in the server")
    parser.add_argument("--smoke", action="store_true", help="4 samples, 4 tokens, concurrency 1 and 2, 1 thread")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.max_tokens, args.concurrency, args.rounds, args.threads = 4, 4, [1, 2], 1, SMOKE_THREADS
    print_machine("llama-cpp-python")

    key = os.urandom(16).hex()
    os.environ[KEY_ENV] = key
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    prompts = [p.text for p in load_prompts(load_config(ROOT / "configs" / "quickstart.yaml"))]
    rubric, scale = RUBRICS["helpfulness"]
    asked = [score_prompt(rubric, scale, f"{prompts[i % len(prompts)]} (#{i})", ANSWERS[i % len(ANSWERS)])
             for i in range(args.samples)]  # each one distinct: no two share a verdict
    print(f"judge: {args.samples} samples, rubric helpfulness, chat, temperature 0, seed 0, at most "
          f"{args.max_tokens} tokens, llama.cpp grammar")

    def judge(concurrency: int, cache: bool) -> Judge:
        config = JudgeConfig(base_url=url, id="smollm2", api_key_env=KEY_ENV, concurrency=concurrency,
                             max_tokens=args.max_tokens, extra_body={"grammar": GRAMMAR}, cache=cache)
        j = Judge(config, "bench", ["s"])
        j.connect()
        return j

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EVALKIT_JUDGE_CACHE"] = str(Path(tmp) / "judge.sqlite")
        server = start_server(port, key, Path(tmp) / "server.log", args.threads)
        try:
            plain = judge(1, False)
            plain.replies([score_prompt(rubric, scale, "Warm up.", "Ready.")])  # the server's first request is slow

            def send_plain() -> list[str]:
                for system, user in asked:
                    request = urllib.request.Request(url + "/chat/completions",
                                                     data=json.dumps(plain.body(system, user)).encode(),
                                                     headers={"Authorization": f"Bearer {key}",
                                                              "Content-Type": "application/json"})
                    with urllib.request.urlopen(request, timeout=300) as r:
                        json.loads(r.read())
                return []

            modes = [("plain", send_plain)] + [(c, judge(c, False).replies) for c in args.concurrency]
            rates: dict = {name: [] for name, _ in modes}
            parsed: dict = {}
            for r in range(args.rounds):
                for name, run in modes[r % len(modes):] + modes[: r % len(modes)]:
                    started = time.perf_counter()
                    replies = run(asked) if name != "plain" else run()
                    rates[name].append(len(asked) / (time.perf_counter() - started))
                    if name != "plain":
                        parsed[name], kept = sum(parse_rating(x, scale) is not None for x in replies), replies
            cached = judge(1, True)
            store = JudgeCache(judge_cache_path())  # the verdicts just had, as a first run leaves them
            for (system, user), reply in zip(asked, kept):
                store.put(cached.key(system, user), Reply(reply))
            store.close()
            started = time.perf_counter()
            cached.replies(asked)
            cache_rate = len(asked) / (time.perf_counter() - started)
        finally:
            server.terminate()
            server.wait(10)

    plain_rate = statistics.median(rates["plain"])
    print(f"plain HTTP to the server, sequential:   {plain_rate:7.2f} requests/s  {spread(rates['plain'])}")
    for concurrency in args.concurrency:
        rate = statistics.median(rates[concurrency])
        print(f"evalkit judge, concurrency {concurrency:2d}:          {rate:7.2f} requests/s  "
              f"{rate / plain_rate:.3f} of plain HTTP; {parsed[concurrency]}/{len(asked)} replies parsed  "
              f"{spread(rates[concurrency])}")
    print(f"judge cache, a rerun:                  {cache_rate:7.0f} verdicts/s, {cached.sent} requests sent")
    print_load()


if __name__ == "__main__":
    main()
