"""The report at scale: a synthetic run of 60 settings x 20 prompts x 16 samples (19,200
samples with token statistics), scored, then reported. Prints the time to write the
report, its size, and Chromium's first paint of it (goals: < 30 s, < 20 MB, < 5 s).

    python benchmarks/bench_report.py [--keep DIR] [--screenshot PNG]
    python benchmarks/bench_report.py --report FILE.html --screenshot PNG   # paint/shoot an existing report

First paint needs Playwright and Chromium (/usr/bin/chromium, or EVALKIT_CHROMIUM).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import tempfile
import time
from pathlib import Path

import pandas as pd

from evalkit.config import MetricSpec
from evalkit.generation.base import ModelInfo
from evalkit.rundir import Manifest, RunWriter, SettingRecord
from evalkit.rundir.columns import COLUMNS
from evalkit.rundir.manifest import ci_info, utc_now
from evalkit.progress import Silent
from evalkit.scoring.registry import default_registry
from evalkit.report import write_report
from evalkit.settings import APPLICATION_ORDER, Setting
from evalkit.scoring import score_samples

WORDS = [f"word{i}" for i in range(2000)]
METRICS = ["distinct_2", "self_bleu", "ent_n", "mtld", "token_entropy", "perplexity", "mean_length"]
SHOT_HEIGHT = 1900
CHROMIUM = os.environ.get("EVALKIT_CHROMIUM", "/usr/bin/chromium")


def synthetic_run(root: Path) -> Path:
    """A complete run directory whose texts get more varied with temperature, top_p and min_p."""
    rng = random.Random(0)
    settings = [Setting(temperature=t, top_p=p, min_p=m) for t, p, m in
                itertools.product([0.3, 0.6, 0.9, 1.2, 1.5], [0.8, 0.9, 0.95, 1.0], [0.0, 0.05, 0.1])]
    rows = []
    for s in settings:
        spread = int(50 + 1900 * min(1.0, s.temperature * s.top_p * (1 - s.min_p) / 1.5))
        for p in range(20):
            for i in range(16):
                n = rng.randint(30, 60)
                text = " ".join(rng.choice(WORDS[:spread]) for _ in range(n))
                entropy = [rng.uniform(0, 2 * s.temperature) for _ in range(n)]
                logprob = [-rng.uniform(0, 1.5 * s.temperature) for _ in range(n)]
                rows.append({"prompt_id": f"p{p}", "prompt": f"Prompt number {p}: write something.",
                             "setting_id": s.id, **s.params(), "sample_index": i, "seed": rng.getrandbits(62),
                             "text": text, "num_new_tokens": n, "finish_reason": "length",
                             "token_ids": list(range(n)), "logprob_model": logprob, "logprob_sampling": logprob,
                             "entropy_model": entropy, "entropy_sampling": entropy, "n_kept": [10] * n})
    samples = pd.DataFrame(rows, columns=COLUMNS["text"])
    metrics = default_registry().create_all([MetricSpec(name=m) for m in METRICS])
    writer = RunWriter.create(root, Manifest(
        run_id="", name="bench-report", started_at=utc_now(), config_source="synthetic",
        config_as_given={}, model=ModelInfo(id="synthetic", dtype="n/a"), device="n/a", seed=0,
        sampling_order=list(APPLICATION_ORDER), settings=[SettingRecord(id=s.id, params=s.params(), generation={})
                                                          for s in settings],
        n_prompts=20, batch_size=0, metrics=[m.id for m in metrics], metric_info={m.id: m.info() for m in metrics},
        ci=ci_info(0.95, 1000, 0)))
    writer.write_config({"name": "bench-report", "samples_per_prompt": 16, "max_new_tokens": 60, "metrics": METRICS})
    writer.write_samples(samples)
    writer.write_scores(*score_samples(writer.path, samples, settings, metrics, level=0.95, resamples=1000, seed=0,
                                       ui=Silent()))
    run_dir = writer.complete(n_samples=len(samples)).path
    return run_dir


def first_paint(report: Path, screenshot: Path | None) -> tuple[float, float]:
    """(first contentful paint, load event) in seconds, from Chromium's navigation timing."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                    "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(report.resolve().as_uri(), wait_until="load")
        fcp = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime") / 1000
        load = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000
        if screenshot is not None:  # the top of the page: run, summary table, trade-off
            height = min(SHOT_HEIGHT, page.evaluate("document.body.scrollHeight"))
            clip = {"x": 0, "y": 0, "width": 1400, "height": height}
            page.screenshot(path=str(screenshot), full_page=True, clip=clip)
        browser.close()
    return fcp, load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="write the synthetic run here and keep it")
    ap.add_argument("--report", type=Path, help="measure this report instead of a synthetic run's")
    ap.add_argument("--screenshot", type=Path, help="save the top of the report as a PNG")
    args = ap.parse_args()
    if args.report is not None:
        fcp, load = first_paint(args.report, args.screenshot)
        print(f"{args.report}: {args.report.stat().st_size / 1e6:.1f} MB, first paint {fcp:.2f} s, load {load:.2f} s")
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    start = time.perf_counter()
    run_dir = synthetic_run(root)
    print(f"synthetic run (60 settings x 20 prompts x 16 samples, {len(METRICS)} metrics) made and scored in "
          f"{time.perf_counter() - start:.1f} s: {run_dir}")
    start = time.perf_counter()
    out = write_report([run_dir], run_dir / "report.html")
    seconds = time.perf_counter() - start
    size = out.stat().st_size / 1e6
    print(f"report written in {seconds:.1f} s (goal < 30 s): {size:.1f} MB (goal < 20 MB)")
    if Path(CHROMIUM).exists():
        fcp, load = first_paint(out, args.screenshot)
        print(f"Chromium: first contentful paint {fcp:.2f} s (goal < 5 s), load event {load:.2f} s")
    else:
        print(f"first paint not measured: no {CHROMIUM}")


if __name__ == "__main__":
    main()
