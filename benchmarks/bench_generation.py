"""Generation and loading on the embedded default model, as ratios against a baseline in the same run.

1. Batching: the hf backend batches every prompt and sample of a setting into one
   ``generate`` call; the baseline makes one call per prompt (its samples only),
   as a loop over ``model.generate`` would. Same work units, same tokens budget.
2. Loading: de-quantizing the GGUF file with transformers (the baseline) against
   loading evalkit's cached conversion.

    python benchmarks/bench_generation.py [--prompts 8] [--samples 4] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from evalkit.backends import WorkUnit, gguf, load_backend
from evalkit.config import config_from_dict
from evalkit.prompts import load_prompts
from evalkit.seeds import derive_seed

PROMPTS = ["Describe the ocean in one sentence.", "Give one tip for learning to cook.", "用一句话描述秋天的早晨。",
           "Write the opening line of a mystery novel.", "What is a good name for a cat?",
           "Explain rain to a child.", "给学习编程的人一个建议。", "List three fruits."]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_batching(args) -> None:
    prompts = [{"id": f"p{i}", "prompt": PROMPTS[i % len(PROMPTS)]} for i in range(args.prompts)]
    config = config_from_dict({"name": "bench", "prompts": prompts, "grid": {"temperature": [0.8]},
                               "samples_per_prompt": args.samples, "max_new_tokens": args.max_new_tokens,
                               "model": {"device": args.device}})
    backend = load_backend(config)
    prepared = backend.prepare(load_prompts(config), chat_template="auto", system_prompt=None,
                               max_new_tokens=args.max_new_tokens)
    setting = config.settings()[0]
    units = [WorkUnit(p, setting, i, derive_seed(0, p.prompt.id, i)) for p in prepared for i in range(args.samples)]

    def run(batch_size):
        gens = list(backend.generate(units, max_new_tokens=args.max_new_tokens, batch_size=batch_size))
        return sum(len(g.token_ids) for g in gens)

    run(args.samples)  # warm-up
    base_s, base_tokens = timed(lambda: run(args.samples))  # one call per prompt
    batch_s, batch_tokens = timed(lambda: run(len(units)))  # one call for the setting
    print(f"batching  {len(units)} samples x {args.max_new_tokens} new tokens on {backend.info.device}")
    print(f"  baseline  one generate per prompt : {base_s:7.2f} s  {base_tokens / base_s:7.1f} tokens/s")
    print(f"  evalkit   one generate per setting: {batch_s:7.2f} s  {batch_tokens / batch_s:7.1f} tokens/s")
    print(f"  ratio (throughput, evalkit / baseline): {(batch_tokens / batch_s) / (base_tokens / base_s):.2f}x")


def bench_loading() -> None:
    from transformers import AutoModelForCausalLM

    source = gguf.verify(gguf.default_gguf_path(), gguf.DEFAULT_SHA256)
    folder, name = str(source.path.parent), source.path.name
    base_s, _ = timed(lambda: AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32))
    target, _ = gguf.ensure_converted(source)
    cached_s, _ = timed(lambda: AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32))
    print("loading   SmolLM2-135M-Instruct Q4_1")
    print(f"  baseline  de-quantize the GGUF file : {base_s:7.2f} s")
    print(f"  evalkit   load the cached conversion: {cached_s:7.2f} s")
    print(f"  ratio (time, baseline / evalkit): {base_s / cached_s:.1f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    from transformers.utils import logging

    logging.disable_progress_bar()
    bench_loading()
    bench_batching(args)


if __name__ == "__main__":
    main()
