"""evalkit's engine against transformers ``generate`` for a vision-language model, in one process.

Grid: 6 settings (temperature x top_p) x 8 samples x 4 images (224 x 224), 32 new tokens, seed 0.
The model is a Qwen2-VL built in code with random weights (text: 6 layers of width 256; vision:
2 layers; 196 image tokens per image), or ``--model DIR`` for a real one. Three ways to produce the grid:

- baseline A: one ``generate(do_sample=True, num_return_sequences=8, ...)`` call per (image, setting);
- baseline B: one ``generate`` call per sample (timed on the first sample of every group);
- evalkit's engine: every setting and sample of an image in one batched decode, the image encoded once.

Throughput counts new tokens (end-of-sequence excluded) per second; each figure is the median
of ``--repeats`` runs.

``--smoke``: 2 settings x 2 samples x 1 image of 64 x 64, 4 new tokens, 1 run, 1 thread, the tests' smallest
Qwen2-VL: the same code path and the same lines.

    python benchmarks/bench_vlm.py [--repeats 3] [--device auto] [--model DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from machine import print_load, print_machine, smoke_threads

from evalkit.generation import load_backend
from evalkit.config import config_from_dict
from evalkit.prompts import load_prompts

from bench_generate import race

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the model builders of the tests

TEXT = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
            max_position_embeddings=1024)
VISION = dict(depth=2, embed_dim=128, num_heads=4)
FULL = dict(grid={"temperature": [0.3, 0.7, 1.0], "top_p": [0.9, 1.0]}, samples=8, images=4, side=224,
            model=dict(text=TEXT, vision=VISION, max_pixels=224 * 224))
SMOKE = dict(grid={"temperature": [0.7, 1.0], "top_p": [1.0]}, samples=2, images=1, side=64,
             model={})  # tiny_vlm's own sizes
SMOKE_NEW_TOKENS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--model", default=None, help="a local image-text-to-text model directory")
    parser.add_argument("--smoke", action="store_true", help="the smallest grid, 4 new tokens, 1 run")
    args = parser.parse_args()
    size = SMOKE if args.smoke else FULL
    if args.smoke:
        args.repeats, args.max_new_tokens = 1, SMOKE_NEW_TOKENS
        smoke_threads()
    print_machine()
    work = Path(tempfile.mkdtemp(prefix="bench-vlm-"))
    model_dir = args.model
    if model_dir is None:
        from tiny_vlm import build_tiny_qwen2_vl

        model_dir = build_tiny_qwen2_vl(work / "qwen2-vl", **size["model"])
    from PIL import Image

    rng = np.random.default_rng(0)
    prompts = []
    for i in range(size["images"]):
        path = work / f"image{i}.png"
        side = size["side"]
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
        prompts.append({"id": f"img{i}", "image": str(path)})
    n_new, samples = args.max_new_tokens, size["samples"]
    config = config_from_dict({"name": "bench", "model": {"backend": "vlm", "id": str(model_dir),
                                                          "device": args.device},
                               "prompts": {"items": prompts, "question": "Describe the image."},
                               "grid": size["grid"],
                               "samples_per_prompt": samples, "max_new_tokens": n_new})
    backend = load_backend(config)
    prepared = backend.prepare(load_prompts(config), chat_template="auto", system_prompt=None, max_new_tokens=n_new)
    race(backend, prepared, config.settings(), samples, n_new, args.repeats, what="image",
         header="random Qwen2-VL" if args.model is None else args.model, engine_label="one decode per image")
    shutil.rmtree(work, ignore_errors=True)
    print_load()


if __name__ == "__main__":
    main()
