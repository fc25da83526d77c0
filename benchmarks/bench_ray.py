"""The Ray executor against the local one, on the same grid and seeds.

The quickstart's 12 settings on ``--prompts`` of its prompts, ``--samples`` samples, ``--max-new-tokens``
tokens, the embedded SmolLM2 (``--model`` for another), run three ways: locally; on Ray with 1 worker
(given every CPU, as the local run has them); on Ray with ``--workers`` workers (the CPUs shared among
them, or one GPU each with ``--gpus``). Generation rate = new tokens / the manifest's generate_s (the
workers' start and model load are in load_s, printed apart). Every Ray run's samples are compared with the
local run's: equal to the bit where a worker runs as many CPU threads as the local run (the float sums
of a matrix product split by thread count on CPU).

Also measured: the driver's write rate, records per second through the run writer's parts (the rows of
this grid, written again and again): the ceiling of a Ray sweep, since the driver alone writes. With a
per-worker rate r and a write rate w, N workers scale as min(N r, w) samples/s.

``--smoke``: 2 of the quickstart's settings (temperature 0.3 and 1.3 at top_p 0.95), 1 prompt, 2 samples, 4
tokens, the write rate over 0.3 s: the same code path and the same lines.

    python benchmarks/bench_ray.py [--prompts 2] [--samples 4] [--max-new-tokens 24] [--workers 2] [--gpus] [--smoke]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
from machine import print_load, print_machine

import evalkit
from evalkit.config import config_from_dict, load_config
from evalkit.prompts import load_prompts
from evalkit.rundir.columns import COLUMNS
from evalkit.rundir.parts import PartWriter

ROOT = Path(__file__).resolve().parents[1]
SMOKE_GRID = {"temperature": [0.3, 1.3], "top_p": [0.95]}  # 2 of the quickstart's settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpus", action="store_true", help="one GPU per worker (and the local run on CUDA)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--smoke", action="store_true", help="2 settings, 1 prompt, 2 samples, 4 tokens")
    args = parser.parse_args()
    if args.smoke:
        args.prompts, args.samples, args.max_new_tokens = 1, 2, 4
    write_seconds = 0.3 if args.smoke else 3.0
    print_machine("ray")

    import ray

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    quick = load_config(ROOT / "configs" / "quickstart.yaml")
    items = [{"id": p.id, "prompt": p.text} for p in load_prompts(quick)[: args.prompts]]
    grid = SMOKE_GRID if args.smoke else quick.grid.model_dump(exclude_none=True)
    out = Path(tempfile.mkdtemp(prefix="bench-ray-"))

    def run(executor: dict) -> evalkit.Run:
        return evalkit.run_sweep(config_from_dict({
            "name": "bench-ray", "model": {"id": args.model}, "prompts": items,
            "grid": grid, "samples_per_prompt": args.samples,
            "max_new_tokens": args.max_new_tokens, "metrics": ["distinct_1"], "report": False,
            "output_dir": str(out), "executor": executor}), progress=False, cache=False)

    gpu = 1 if args.gpus else 0
    runs = [("local", run({"kind": "local"}))]
    runs.append(("Ray, 1 worker", run({"kind": "ray", "workers": 1, "cpus_per_worker": cpus, "gpus_per_worker": gpu})))
    runs.append((f"Ray, {args.workers} workers", run({
        "kind": "ray", "workers": args.workers, "cpus_per_worker": max(cpus / args.workers, 0.5),
        "gpus_per_worker": gpu})))
    base = runs[0][1]
    n = len(base.samples)
    base_rate = base.samples["num_new_tokens"].sum() / base.manifest.timings["generate_s"]
    print(f"grid: {n} samples ({args.prompts} prompts x {len(base.manifest.settings)} settings x {args.samples}), "
          f"{args.max_new_tokens} tokens at most, model {args.model}, {cpus} CPUs")
    for name, r in runs:
        t = r.manifest.timings
        rate = r.samples["num_new_tokens"].sum() / t["generate_s"]
        same = r.samples.equals(base.samples)
        same_text = sum(a == b for a, b in zip(r.samples["text"], base.samples["text"]))
        print(f"{name:<16} {rate:8.1f} tokens/s  {rate / base_rate:.3f} of local  (load {t['load_s']:.1f} s, "
              f"generate {t['generate_s']:.1f} s; {r.manifest.executor.get('threads_per_worker', 'local')} threads; "
              f"samples equal local to the bit: {same}, texts equal: {same_text}/{n})")

    rows = base.samples.to_dict("records")
    with tempfile.TemporaryDirectory() as tmp:
        writer = PartWriter(Path(tmp), list(COLUMNS["text"]))
        started = time.perf_counter()
        written = 0
        while time.perf_counter() - started < write_seconds:
            for row in rows:
                writer.add(row)
            written += len(rows)
        writer.flush()
        rate = written / (time.perf_counter() - started)
    per_worker = n / runs[1][1].manifest.timings["generate_s"]
    print(f"driver write rate: {rate:,.0f} samples/s through the parts; one worker here makes {per_worker:.1f} "
          f"samples/s, so the driver would be the ceiling from about {rate / per_worker:,.0f} such workers")
    ray.shutdown()
    shutil.rmtree(out, ignore_errors=True)
    pd.set_option("display.width", 120)
    print_load()


if __name__ == "__main__":
    main()
