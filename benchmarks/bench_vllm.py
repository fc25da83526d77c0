"""vLLM against evalkit's engine: the cases both are timed on, and vLLM's side of the race.

vLLM pins its own torch and transformers, so it lives in an environment of its own (``.venv-vllm``, made by
``.ci/vllm``). ``bench_generate.py --vllm .venv-vllm/bin/python`` times evalkit's engine on each case in the
main environment and runs this script in vLLM's for the same case, same model, same device, one after the
other in one run, and prints the ratios both ways. Run alone, this script prints vLLM's rates as JSON lines.

Cases (seed 0, every sample its own derived seed; throughput counts new tokens, end tokens excluded):

- ``grid``: 6 settings (temperature 0.3, 0.7, 1.0 x top_p 0.9, 1.0) x 8 samples x 4 prompts, 48 new tokens:
  the grid of bench_generate.py;
- ``many-samples``: 1 setting x 64 samples x 2 prompts: where a shared prompt prefill pays most;
- ``long-prompts``: 2 settings x 4 samples x 4 prompts of about 400 tokens: where prefill dominates.

``--smoke``: the smallest of each case (1 or 2 prompts, 1 to 4 samples, 4 new tokens), vLLM in eager mode (no
torch.compile warm-up), the same code path and the same lines.

    .venv-vllm/bin/python benchmarks/bench_vllm.py [--cases grid,many-samples] [--repeats 1] [--model default] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from machine import print_load, print_machine

PROMPTS = ["Describe the ocean in one sentence.", "Give one tip for learning to cook.", "用一句话描述秋天的早晨。",
           "Write the opening line of a mystery novel."]
PASSAGE = ("The lighthouse keeper climbed the spiral stairs every evening, counting the steps, checking the lamp, "
           "and writing the weather into a worn notebook before the ships came past the rocks. ")
CASES = {
    "grid": dict(temperature=[0.3, 0.7, 1.0], top_p=[0.9, 1.0], samples=8, prompts=4, long=False),
    "many-samples": dict(temperature=[1.0], top_p=[0.95], samples=64, prompts=2, long=False),
    "long-prompts": dict(temperature=[0.7, 1.0], top_p=[0.95], samples=4, prompts=4, long=True),
}
SMOKE = {  # the smallest of each case
    "grid": dict(temperature=[0.7, 1.0], top_p=[1.0], samples=2, prompts=1, long=False),
    "many-samples": dict(temperature=[1.0], top_p=[0.95], samples=4, prompts=1, long=False),
    "long-prompts": dict(temperature=[1.0], top_p=[0.95], samples=1, prompts=1, long=True),
}
SMOKE_NEW_TOKENS = 4


def case_config(case: str, *, backend: str, model: str, device: str, max_new_tokens: int, smoke: bool = False) -> dict:
    """The sweep config of ``case`` for ``backend`` (hf: evalkit's engine; vllm); ``smoke``: its smallest size, and
    vLLM without torch.compile."""
    c = (SMOKE if smoke else CASES)[case]
    texts = [(PASSAGE * 12 + "\n\nSummarize the passage above: " if c["long"] else "") + p for p in PROMPTS]
    model_config = {"id": model, "backend": backend, **({"max_model_len": 1024} if backend == "vllm" else {})}
    if backend == "vllm" and smoke:
        model_config["engine_args"] = {"enforce_eager": True}
    if device != "auto":
        model_config["device"] = device
    return {"name": f"bench-{case}", "model": model_config,
            "prompts": [{"id": f"p{i}", "prompt": texts[i]} for i in range(c["prompts"])],
            "grid": {"temperature": c["temperature"], "top_p": c["top_p"]}, "samples_per_prompt": c["samples"],
            "max_new_tokens": max_new_tokens, "seed": 0}


def prepared_units(backend, config):
    """(prepared prompts, work units) of a case, as a sweep plans them."""
    from evalkit.pipeline import plan
    from evalkit.prompts import load_prompts

    prepared = backend.prepare(load_prompts(config), chat_template="auto", system_prompt=None,
                               max_new_tokens=config.max_new_tokens)
    return prepared, plan(config, prepared, config.settings())


def timed(backend, units, max_new_tokens: int, batch: int, repeats: int) -> tuple[int, float]:
    """(new tokens, median seconds) of generating ``units``, after one warm-up run."""
    def once() -> int:
        return sum(len(r.token_ids) for r in backend.generate(units, max_new_tokens=max_new_tokens, batch_size=batch))

    once()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = once()
        runs.append((time.perf_counter() - start, tokens))
    seconds = statistics.median(t for t, _ in runs)
    return runs[0][1], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--smoke", action="store_true", help="the smallest cases, 4 new tokens, eager mode")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.max_new_tokens = 1, SMOKE_NEW_TOKENS
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    print_machine("vllm")

    from evalkit.config import config_from_dict
    from evalkit.generation import check_model, load_backend

    backend = None
    for case in args.cases.split(","):
        config = config_from_dict(case_config(case, backend="vllm", model=args.model, device=args.device,
                                              max_new_tokens=args.max_new_tokens, smoke=args.smoke))
        if backend is None:
            started = time.perf_counter()
            backend = load_backend(config, checked=check_model(config))
            load_s = time.perf_counter() - started
        prepared, units = prepared_units(backend, config)
        backend.check(config.settings(), prepared)
        tokens, seconds = timed(backend, units, args.max_new_tokens, 0, args.repeats)
        print(json.dumps({"case": case, "engine": backend.info.engine, "device": backend.info.device,
                          "dtype": backend.info.dtype, "samples": len(units), "tokens": tokens, "seconds": seconds,
                          "load_s": round(load_s, 1), "prompt_tokens": len(prepared[0].token_ids)}), flush=True)
    if backend is not None:
        backend.close()
    print_load()


if __name__ == "__main__":
    main()
