"""Loading the embedded default model: de-quantizing its GGUF file with transformers (the
baseline) against loading evalkit's cached conversion, as a ratio measured in the same run.

``--smoke`` runs the same: a GGUF file smaller than the embedded one is not at hand, so its one load is the
smallest size (about 15 s on 2 CPU cores, nearly all of it gguf's reader parsing the file's metadata).

    python benchmarks/bench_load.py [--smoke]
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import print_load, print_machine

from evalkit.generation import gguf


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


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
    parser.add_argument("--smoke", action="store_true", help="the same run (it has no smaller size)")
    parser.parse_args()
    from transformers.utils import logging

    print_machine("gguf")
    logging.disable_progress_bar()
    bench_loading()
    print_load()


if __name__ == "__main__":
    main()
