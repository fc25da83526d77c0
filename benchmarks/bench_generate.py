"""evalkit's engine against transformers ``generate``, on the same grid in one process.

Grid: 6 settings x 8 samples x 4 prompts, 48 new tokens, seed 0 (``--large`` for a GPU:
12 settings x 16 samples x 16 prompts). Three ways to produce it:

- baseline A: one ``generate(do_sample=True, num_return_sequences=8, ...)`` call per (prompt, setting);
- baseline B: one ``generate`` call per sample (timed on the first sample of every group:
  its rate does not depend on how many calls are made);
- evalkit's engine: every setting and sample of the grid in one batched decode.

Throughput counts new tokens (end-of-sequence excluded) per second; each figure is the median
of ``--repeats`` runs. Also printed: the share of a decode step at batch 64 spent in evalkit's
sampling transforms (warp + draw + statistics) against the model's forward pass.

    python benchmarks/bench_generate.py [--repeats 3] [--device auto] [--large]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from evalkit.backends import WorkUnit, load_backend
from evalkit.config import config_from_dict
from evalkit.prompts import load_prompts
from evalkit.sampling import SamplingParams, Setting, distribution, sample, warp
from evalkit.seeds import derive_seed, uniforms

PROMPTS = ["Describe the ocean in one sentence.", "Give one tip for learning to cook.", "用一句话描述秋天的早晨。",
           "Write the opening line of a mystery novel.", "What is a good name for a cat?", "Explain rain to a child.",
           "给学习编程的人一个建议。", "List three fruits.", "Why is the sky blue?", "Write a haiku about snow.",
           "What should I pack for a beach trip?", "Describe a busy market.", "如何保持健康？",
           "Invent a name for a new planet.", "Summarize the plot of Cinderella.", "What is your favorite season?"]
SMALL = dict(temperature=[0.3, 0.7, 1.0], top_p=[0.9, 1.0], samples=8, prompts=4)
LARGE = dict(temperature=[0.3, 0.7, 1.0, 1.3], top_p=[0.8, 0.95, 1.0], samples=16, prompts=16)


def median_rate(fn, repeats: int) -> tuple[float, float]:
    rates, times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = fn()
        elapsed = time.perf_counter() - start
        rates.append(tokens / elapsed)
        times.append(elapsed)
    return statistics.median(rates), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--large", action="store_true", help="12 settings x 16 samples x 16 prompts (for a GPU)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    grid = LARGE if args.large else SMALL
    prompts = [{"id": f"p{i}", "prompt": PROMPTS[i]} for i in range(grid["prompts"])]
    config = config_from_dict({"name": "bench", "prompts": prompts, "max_new_tokens": args.max_new_tokens,
                               "grid": {"temperature": grid["temperature"], "top_p": grid["top_p"]},
                               "samples_per_prompt": grid["samples"], "model": {"device": args.device}})
    backend = load_backend(config)
    model, device, n_new = backend.model, backend.info.device, args.max_new_tokens
    prepared = backend.prepare(load_prompts(config), chat_template="auto", system_prompt=None, max_new_tokens=n_new)
    settings = config.settings()
    samples = grid["samples"]
    units = [WorkUnit(p, s, i, derive_seed(0, p.prompt.id, s.id, i))
             for p in prepared for s in settings for i in range(samples)]
    batch = backend.batch_size("auto", prepared, n_new)
    eos = set(backend.eos_ids)

    def new_tokens(out, width):
        count = 0
        for row in out[:, width:].tolist():
            count += next((i for i, t in enumerate(row) if t in eos), len(row))
        return count

    def hf_generate(p, s, n):
        ids = torch.tensor([p.token_ids], device=device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                             num_return_sequences=n, temperature=s.temperature, top_p=s.top_p, top_k=0,
                             max_new_tokens=n_new, eos_token_id=backend.eos_ids, pad_token_id=backend.pad_id)
        return new_tokens(out, ids.shape[1])

    def baseline_a():
        torch.manual_seed(0)
        return sum(hf_generate(p, s, samples) for p in prepared for s in settings)

    def baseline_b():
        torch.manual_seed(0)
        return sum(hf_generate(p, s, 1) for p in prepared for s in settings)

    def engine():
        return sum(len(g.token_ids) for g in backend.generate(units, max_new_tokens=n_new, batch_size=batch))

    print(f"grid: {len(settings)} settings x {samples} samples x {len(prepared)} prompts, {n_new} new tokens, "
          f"{backend.info.id} on {device} ({backend.info.dtype}), engine batch {batch}, median of {args.repeats}")
    engine()  # warm-up
    rate_e, t_e = median_rate(engine, args.repeats)
    rate_a, t_a = median_rate(baseline_a, args.repeats)
    rate_b, t_b = median_rate(baseline_b, args.repeats)
    print(f"  baseline A  generate per (prompt, setting): {rate_a:8.1f} tokens/s  ({t_a:.1f} s)")
    print(f"  baseline B  generate per sample           : {rate_b:8.1f} tokens/s  ({t_b:.1f} s, first sample of each group)")
    print(f"  evalkit engine, whole grid in one decode  : {rate_e:8.1f} tokens/s  ({t_e:.1f} s)")
    print(f"  ratio engine / A: {rate_e / rate_a:.2f}x    engine / B: {rate_e / rate_b:.2f}x")
    print(sampling_share(model, prepared, device))


def sampling_share(model, prepared, device, rows: int = 64, steps: int = 5) -> str:
    """Time one decode step's forward pass and evalkit's sampling work on the same batch of 64 rows."""
    ids = torch.tensor([prepared[0].token_ids], device=device)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        cache = out.past_key_values
        cache.reorder_cache(torch.zeros(rows, dtype=torch.long, device=device))
        logits = out.logits[:, -1, :].expand(rows, -1).contiguous()
        mix = [Setting(temperature=t, top_p=p) for t in (0.3, 0.7, 1.0, 1.3) for p in (0.8, 0.95, 1.0)]
        params = SamplingParams.from_settings([mix[i % len(mix)] for i in range(rows)], device)
        seeds = torch.arange(rows).numpy().astype("uint64")
        token = logits.argmax(-1, keepdim=True)
        mask = torch.ones((rows, ids.shape[1] + 1), dtype=torch.long, device=device)

        def forward():
            model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
            cache.crop(-1)  # drop the token just added, so every timed step sees the same cache

        def sampling():
            z = logits.float()
            _, lse, entropy = distribution(z)
            draw = sample(warp(logits, params), torch.from_numpy(uniforms(seeds, 0)).to(device), rows)
            (z.gather(1, draw.tokens[:, None]) - lse).tolist(), draw.logprob.tolist(), entropy.tolist()

        timings = {}
        for name, fn in (("forward", forward), ("sampling", sampling)):
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            if device == "cuda":
                torch.cuda.synchronize()
            timings[name] = (time.perf_counter() - start) / steps
    share = timings["sampling"] / (timings["sampling"] + timings["forward"])
    return (f"  decode step at batch {rows}: forward {timings['forward'] * 1e3:.1f} ms, sampling transforms "
            f"{timings['sampling'] * 1e3:.1f} ms: {share:.1%} of the step")


if __name__ == "__main__":
    main()
