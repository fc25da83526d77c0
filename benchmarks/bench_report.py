"""The report at scale: a synthetic run of 60 settings x 20 prompts x 16 samples (19,200 samples with token
statistics), made, written and scored by the pipeline as a real run is, then reported. Prints the time to write the
report, its size, and Chromium's first paint of it, each as a share of its goal (< 10 s, < 10 MB, < 0.5 s).

The synthetic model stands in for a text model's generator only: its samples are SampleRecords (random words whose
variety grows with temperature, top_p and min_p, drawn from each unit's own seed, with per-token statistics), and
from there on everything is the pipeline's own: the sweep config and its checks, the manifest, the prompts file,
``generate`` (the kind's cacheable form of each record, its samples row, the run's parts, read back in grid order),
the scoring and the completed run, then the report. A column the pipeline changes changes here too.

    python benchmarks/bench_report.py [--keep DIR] [--screenshot PNG] [--smoke]
    python benchmarks/bench_report.py --report FILE.html --screenshot PNG   # paint/shoot an existing report

First paint needs Playwright and Chromium (/usr/bin/chromium, or EVALKIT_CHROMIUM). ``--smoke``: 4 settings x 2
prompts x 4 samples, the same code path and the same lines (the goals are for the full size).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from machine import print_load, print_machine

from evalkit.config import config_from_dict
from evalkit.generation.base import ModelInfo, PreparedPrompt, SampleRecord, WorkUnit
from evalkit.pipeline import Scoring, Sweep, generate, new_manifest, plan, score_and_complete, write_report
from evalkit.plan import checked_inputs
from evalkit.progress import Silent
from evalkit.rundir import RunWriter
from evalkit.scoring.registry import prepare_all

WORDS = [f"word{i}" for i in range(2000)]
METRICS = ["distinct_2", "self_bleu", "ent_n", "mtld", "token_entropy", "perplexity", "mean_length"]
FULL = dict(grid={"temperature": [0.3, 0.6, 0.9, 1.2, 1.5], "top_p": [0.8, 0.9, 0.95, 1.0], "min_p": [0.0, 0.05, 0.1]},
            prompts=20, samples=16)
SMOKE = dict(grid={"temperature": [0.3, 1.5], "top_p": [0.9, 1.0], "min_p": [0.0]}, prompts=2, samples=4)
GOALS = {"seconds": 10.0, "mb": 10.0, "paint_s": 0.5}  # at the full size
MAX_NEW_TOKENS = 60
SHOT_HEIGHT = 1900
CHROMIUM = os.environ.get("EVALKIT_CHROMIUM", "/usr/bin/chromium")


@dataclass
class SyntheticModel:
    """A text model's generator and its executor, without a model: each unit's sample is drawn from its own seed
    (what evalkit's engine does), a text of 30-60 words from a vocabulary that widens with the setting."""

    info: ModelInfo

    def prepare(self, prompts: list) -> list[PreparedPrompt]:
        return [PreparedPrompt(prompt=p, rendered=p.text, token_ids=tuple(range(len(p.text.split()))),
                               chat_template=False) for p in prompts]

    def generation_params(self, setting, max_new_tokens: int) -> dict:
        return {"engine": "synthetic", "greedy": setting.greedy, **setting.params(), "max_new_tokens": max_new_tokens,
                "eos_token_ids": list(self.info.eos_token_ids)}

    def record(self, unit: WorkUnit, max_new_tokens: int) -> SampleRecord:
        s, rng = unit.setting, random.Random(unit.seed)
        spread = int(50 + 1900 * min(1.0, s.temperature * s.top_p * (1 - s.min_p) / 1.5))
        ids = [rng.randrange(spread) for _ in range(rng.randint(30, max_new_tokens))]
        entropy = [rng.uniform(0, 2 * s.temperature) for _ in ids]
        logprob = [-rng.uniform(0, 1.5 * s.temperature) for _ in ids]
        stats = {"logprob_model": logprob, "logprob_sampling": logprob, "entropy_model": entropy,
                 "entropy_sampling": entropy, "n_kept": [10] * len(ids)}
        return SampleRecord(unit=unit, token_ids=tuple(ids), text=" ".join(WORDS[i] for i in ids),
                            finish_reason="length" if len(ids) == max_new_tokens else "eos", stats=stats)

    def run(self, units: list[WorkUnit], *, max_new_tokens: int, batch_size: int, stop: tuple[str, ...] = (),
            progress=None):
        """The executor's side: every unit's record, in order."""
        for n, unit in enumerate(units, 1):
            yield self.record(unit, max_new_tokens)
            if progress is not None and n % batch_size == 0:
                progress(n, n // batch_size)


def sweep_dict(size: dict, output_dir: Path) -> dict:
    """The sweep config of the synthetic run, as a user would write it."""
    prompts = [{"id": f"p{i}", "prompt": f"Prompt number {i}: write something."} for i in range(size["prompts"])]
    return {"name": "bench-report", "model": {"id": "synthetic"}, "prompts": prompts, "grid": size["grid"],
            "samples_per_prompt": size["samples"], "max_new_tokens": MAX_NEW_TOKENS, "metrics": METRICS, "seed": 0,
            "output_dir": str(output_dir)}


def synthetic_run(root: Path, size: dict) -> tuple[Path, int]:
    """A complete run directory made as a sweep makes one (the model aside); (its path, its samples)."""
    ui = Silent()
    as_given = sweep_dict(size, root)
    config = config_from_dict(as_given, source="bench_report.py")
    kind, settings, metrics, prompts, _, _ = checked_inputs(config)
    prepare_all(metrics, source=config.source)
    model = SyntheticModel(ModelInfo(backend="hf", id="synthetic", source="synthetic", dtype="n/a", device="cpu",
                                     eos_token_ids=[len(WORDS)]))
    prepared = model.prepare(prompts)
    batch_size = 64
    manifest = new_manifest(config, kind, model, settings, metrics, len(prepared), batch_size, [], as_given)
    writer = RunWriter.create(root, manifest)
    try:
        writer.write_config(config.model_dump(mode="json"))  # as run: every default filled in
        writer.write_prompts([kind.prompt_line(p, writer) for p in prepared])
        writer.write_manifest()
        started = time.perf_counter()
        sweep = Sweep(config, kind, writer, model, model, batch_size, use_cache=False, ui=ui)
        samples, reused = generate(sweep, plan(config, prepared, settings))
        timings = {"load_s": 0.0, "generate_s": round(time.perf_counter() - started, 3)}
        scoring = Scoring(settings, metrics, config.ci.level, config.ci.resamples, config.seed, {}, None,
                          {p.prompt.id: p.prompt.display for p in prepared})
        run = score_and_complete(writer, samples, scoring, ui, timings=timings, reused=reused)
    finally:
        writer.close()
    return run.path, len(samples)


def browser_missing() -> str | None:
    """What first paint needs and this machine lacks (Chromium, Playwright), or None."""
    import importlib.util

    if not Path(CHROMIUM).exists():
        return CHROMIUM
    return None if importlib.util.find_spec("playwright") else "playwright"


def first_paint(report: Path, screenshot: Path | None) -> tuple[float, float, str]:
    """(first contentful paint, load event) in seconds, from Chromium's navigation timing, and its version."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                    "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(report.resolve().as_uri(), wait_until="load")
        # either may be recorded after the load event's handlers have run: waited for (30 s at most)
        paint = "performance.getEntriesByName('first-contentful-paint')"
        navigation = "performance.getEntriesByType('navigation')[0]"
        page.wait_for_function(f"{paint}.length > 0 && {navigation}.loadEventEnd > 0", timeout=30_000)
        fcp = page.evaluate(f"{paint}[0].startTime") / 1000
        load = page.evaluate(f"{navigation}.loadEventEnd") / 1000
        if screenshot is not None:  # the top of the page: run, summary table, trade-off
            height = min(SHOT_HEIGHT, page.evaluate("document.body.scrollHeight"))
            clip = {"x": 0, "y": 0, "width": 1400, "height": height}
            page.screenshot(path=str(screenshot), full_page=True, clip=clip)
        version = browser.version
        browser.close()
    return fcp, load, version


def paint_line(report: Path, screenshot: Path | None) -> str:
    fcp, load, version = first_paint(report, screenshot)
    return (f"Chromium {version}: first contentful paint {fcp:.2f} s (goal < {GOALS['paint_s']:g} s: "
            f"{fcp / GOALS['paint_s']:.2f} of it), load event {load:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="write the synthetic run here and keep it")
    ap.add_argument("--report", type=Path, help="measure this report instead of a synthetic run's")
    ap.add_argument("--screenshot", type=Path, help="save the top of the report as a PNG")
    ap.add_argument("--smoke", action="store_true", help="the smallest run (4 settings x 2 prompts x 4 samples)")
    args = ap.parse_args()
    print_machine("playwright")
    if args.report is not None:
        print(f"{args.report}: {args.report.stat().st_size / 1e6:.1f} MB")
        print(paint_line(args.report, args.screenshot))
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        measure(root, SMOKE if args.smoke else FULL, args.screenshot)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print_load()


def measure(root: Path, size: dict, screenshot: Path | None) -> None:
    """Make the synthetic run under ``root``, write its report, paint it; print each figure against its goal."""
    n_settings = len(config_from_dict(sweep_dict(size, root)).settings())
    start = time.perf_counter()
    run_dir, n = synthetic_run(root, size)
    print(f"synthetic run ({n_settings} settings x {size['prompts']} prompts x {size['samples']} samples = {n:,} "
          f"samples, {len(METRICS)} metrics) made, written and scored in {time.perf_counter() - start:.1f} s: "
          f"{run_dir}", flush=True)
    start = time.perf_counter()
    write_report(run_dir, Silent())
    seconds = time.perf_counter() - start
    out = run_dir / "report.html"
    mb = out.stat().st_size / 1e6
    print(f"report written in {seconds:.1f} s (goal < {GOALS['seconds']:g} s: {seconds / GOALS['seconds']:.2f} of it): "
          f"{mb:.1f} MB (goal < {GOALS['mb']:g} MB: {mb / GOALS['mb']:.2f} of it)", flush=True)
    missing = browser_missing()
    print(f"first paint not measured: {missing} is missing" if missing else paint_line(out, screenshot))


if __name__ == "__main__":
    main()
