"""Metrics against references: MAUVE on 1,000 vs 1,000 texts (embedding and MAUVE timed apart, and the
cost of its jackknife interval), and CLIP-FID, KID, CMMD and precision/recall/density/coverage on
500 vs 500 image embeddings of CLIP ViT-B-32's size (512), each against a reference implementation of the
same definition in the same run (torchmetrics, prdc).

``--smoke``: MAUVE on 100 vs 100 texts, the image metrics on 100 vs 100 embeddings, 1 thread: the same code path
and the same lines.

    python benchmarks/bench_references.py [--smoke]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from machine import SMOKE_THREADS, print_load, print_machine

from evalkit_metrics.image_reference import cmmd, frechet_distance, kid, prdc
from evalkit_metrics.mauve import MauveParams, mauve_value
from evalkit_metrics.semantic import embed, load_embedder

WORDS = ("the a of and to in was it he she they we light sea house road night morning river town window "
         "letter train snow boat music bread winter summer quiet long old new small bright cold warm slow "
         "walked found opened watched carried heard waited kept closed turned").split()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def texts(rng: random.Random, n: int, vocab: int) -> list[str]:
    return [" ".join(rng.choice(WORDS[:vocab]) for _ in range(rng.randint(25, 45))) for _ in range(n)]


def features(rng: np.random.Generator, n: int, d: int, shift: float) -> np.ndarray:
    x = rng.normal(shift, 1, size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


FULL = dict(texts=1000, images=500)
SMOKE = dict(texts=100, images=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="100 vs 100 texts and embeddings")
    smoke = parser.parse_args().smoke
    size = SMOKE if smoke else FULL
    import torch

    torch.set_num_threads(SMOKE_THREADS if smoke else 2)
    print_machine("sentence-transformers", "mauve-text", "torchmetrics", "prdc")
    from prdc import compute_prdc
    from torchmetrics.image.fid import _compute_fid
    from torchmetrics.image.kid import poly_mmd

    rng = random.Random(0)
    n = size["texts"]
    refs, samples = texts(rng, n, len(WORDS)), texts(rng, n, 30)
    load_embedder("all-MiniLM-L6-v2")
    t_embed, _ = timed(lambda: (embed("all-MiniLM-L6-v2", refs), embed("all-MiniLM-L6-v2", samples)))
    p, q = embed("all-MiniLM-L6-v2", refs), embed("all-MiniLM-L6-v2", samples)
    params = MauveParams()
    t_mauve, value = timed(lambda: mauve_value(p, q, params))
    print(f"MAUVE, {n:,} samples vs {n:,} references (all-MiniLM-L6-v2 features, 384-d)")
    print(f"  embedding {2 * n:,} texts: {t_embed:6.2f} s")
    print(f"  MAUVE (mauve-text, buckets auto = {n // 10}): {t_mauve:6.2f} s  (value {value:.3f}); "
          f"ratio to embedding {t_mauve / t_embed:.2f}x")
    keep = np.random.default_rng(0).permutation(n)[:n - n // 20]  # one jackknife block of 20 left out
    t_block, _ = timed(lambda: mauve_value(p, q[keep], params))
    print(f"  its interval (20 jackknife blocks, each without 5% of the samples): {20 * t_block:6.2f} s, "
          f"{20 * t_block / t_mauve:.0f}x one value; embedding is not repeated")

    g = np.random.default_rng(1)
    m = size["images"]
    real, fake = features(g, m, 512, 0.0), features(g, m, 512, 0.05)
    print(f"image metrics, {m} vs {m} embeddings of 512 dimensions (CLIP ViT-B-32's size)")
    t_ours, ours = timed(lambda: frechet_distance(real, fake))
    tr, tf = torch.tensor(real), torch.tensor(fake)
    t_tm, theirs = timed(lambda: _compute_fid(tr.mean(0), torch.cov(tr.T), tf.mean(0), torch.cov(tf.T)).item())
    print(f"  clip_fid: evalkit {t_ours:6.3f} s  torchmetrics {t_tm:6.3f} s  ratio {t_tm / t_ours:5.2f}x  "
          f"|difference| {abs(ours - theirs):.1e}")
    t_ours, ours = timed(lambda: kid(real, fake))
    t_tm, theirs = timed(lambda: poly_mmd(tr, tf).item())
    print(f"  clip_kid: evalkit {t_ours:6.3f} s  torchmetrics poly_mmd {t_tm:6.3f} s  ratio {t_tm / t_ours:5.2f}x  "
          f"|difference| {abs(ours - theirs):.1e}")
    t_ours, ours = timed(lambda: cmmd(real, fake))
    gauss = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / 200).mean()  # noqa: E731
    t_torch, theirs = timed(lambda: (1000 * (gauss(tr, tr) + gauss(tf, tf) - 2 * gauss(tr, tf))).item())
    print(f"  cmmd:     evalkit {t_ours:6.3f} s  torch cdist {t_torch:6.3f} s  ratio {t_torch / t_ours:5.2f}x  "
          f"|difference| {abs(ours - theirs):.1e}")
    t_ours, ours = timed(lambda: prdc(real, fake, 5))
    t_ref, theirs = timed(lambda: compute_prdc(real, fake, nearest_k=5))
    diff = max(abs(ours[k] - theirs[k]) for k in ours)
    print(f"  precision/recall/density/coverage (k=5): evalkit {t_ours:6.3f} s  prdc {t_ref:6.3f} s  "
          f"ratio {t_ref / t_ours:5.2f}x  max |difference| {diff:.1e}")
    print_load()


if __name__ == "__main__":
    main()
