"""Text metrics: evalkit's self-BLEU against nltk's loop (same definition), the lexical
metrics on 10,000 samples and the semantic ones on 1,000, measured in one run; then EAD, Vendi of order q, RKE
and homogeneity on 10,000 samples with the embeddings aside (random unit vectors of 384 dimensions put in the
embedding cache, so that the metrics' own code runs and no embedder does).

``--smoke``: self-BLEU on 20 and 40 samples (200 for evalkit alone), the lexical metrics on 200 samples, the
semantic ones on 50 and the embedding-aside ones on 200, 1 thread: the same code path and the same lines.

    python benchmarks/bench_metrics.py [--smoke]
"""

from __future__ import annotations

import argparse
import random
import time

from machine import print_load, print_machine, smoke_threads
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from evalkit.config import MetricSpec
from evalkit.scoring.metric import Group
from evalkit.scoring.registry import default_registry
from evalkit.settings import Setting
from evalkit.scoring import score_groups
from evalkit_metrics import semantic
from evalkit_metrics.homogeneity import runs_table, settings_table
from evalkit_metrics.self_bleu import self_bleu

WORDS = [f"w{i}" for i in range(300)]
FULL = dict(nltk=(100, 400), alone=4000, lexical=10_000, semantic=1000, aside=10_000)
SMOKE = dict(nltk=(20, 40), alone=200, lexical=200, semantic=50, aside=200)
EMB = "random-384"  # the embedder name under which the benchmark's vectors are cached


def corpus(rng: random.Random, n: int) -> list[list[str]]:
    return [[rng.choice(WORDS) for _ in range(rng.randint(30, 50))] for _ in range(n)]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def nltk_self_bleu(samples):
    smooth = SmoothingFunction().method1
    return [sentence_bleu(samples[:i] + samples[i + 1:], s, weights=(0.25,) * 4, smoothing_function=smooth)
            for i, s in enumerate(samples)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the smallest sizes: checks that the benchmark runs")
    smoke = parser.parse_args().smoke
    size = SMOKE if smoke else FULL
    if smoke:
        smoke_threads()
    print_machine("nltk", "sentence-transformers")
    rng = random.Random(0)
    print("self-BLEU-4 (method1), samples of 30-50 tokens over 300 word types")
    for n in size["nltk"]:
        samples = corpus(rng, n)
        t_ours, ours = timed(lambda: self_bleu(samples, 4))
        t_nltk, theirs = timed(lambda: nltk_self_bleu(samples))
        diff = max(abs(a - b) for a, b in zip(ours, theirs))
        print(f"  N={n:5d}: nltk {t_nltk:8.3f} s  evalkit {t_ours:7.4f} s  ratio {t_nltk / t_ours:7.1f}x  "
              f"max |difference| {diff:.1e}")
    samples = corpus(rng, size["alone"])
    t_ours, _ = timed(lambda: self_bleu(samples, 4))
    print(f"  N={size['alone']:5d}: evalkit {t_ours:.3f} s (nltk not run: its loop is quadratic)")

    texts = [" ".join(s) for s in corpus(rng, size["lexical"])]
    registry = default_registry()
    print(f"lexical metrics on {len(texts):,} samples (one group per 10 samples)")
    groups = [Group(prompt_id=str(i), prompt="", setting=Setting(), texts=tuple(texts[i:i + 10]),
                    token_ids=tuple(() for _ in texts[i:i + 10])) for i in range(0, len(texts), 10)]
    total = 0.0
    for name in ("distinct_1", "distinct_2", "ttr", "mattr", "mtld", "ent_n", "seq_rep_n"):
        metric = registry.create(MetricSpec(name=name))
        elapsed, _ = timed(lambda: [metric.compute(g) for g in groups])
        total += elapsed
        print(f"  {metric.id:32s} {elapsed:6.3f} s")
    print(f"  all lexical metrics: {total:.3f} s")

    n = size["semantic"]
    sentences = [" ".join(rng.choice(WORDS[:50]) for _ in range(rng.randint(8, 20))) for _ in range(n)]
    sem_groups = [Group(prompt_id=str(i), prompt="a prompt", setting=Setting(), texts=tuple(sentences[i:i + 10]),
                        token_ids=tuple(() for _ in range(10))) for i in range(0, n, 10)]
    print(f"semantic metrics on {n:,} samples, all-MiniLM-L6-v2 on CPU (embedder loaded first)")
    for name in ("semantic_diversity", "vendi"):
        metric = registry.create(MetricSpec(name=name))
        elapsed, _ = timed(lambda: score_groups(sem_groups, [metric]))
        print(f"  {metric.id:40s} {elapsed:6.3f} s (texts already embedded are reused)")
    embeddings_aside(rng, size["aside"])
    print_load()


def embeddings_aside(rng: random.Random, n: int) -> None:
    """EAD, Vendi of order q, RKE and homogeneity on ``n`` samples: 10 settings x n/100 prompts x 10 samples, their
    embeddings random unit vectors already in the cache."""
    import numpy as np
    import pandas as pd

    texts = [f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 50))) for i in range(n)]
    x = np.random.default_rng(0).normal(size=(n + 1, 384))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    semantic._CACHE.update({(EMB, t): v for t, v in zip([*texts, "a prompt"], x)})
    settings = [Setting(temperature=0.2 * (i + 1)) for i in range(10)]
    groups = [Group(prompt_id=str(i // 100), prompt="a prompt", setting=settings[(i // 10) % 10],
                    texts=tuple(texts[i:i + 10]), token_ids=tuple(() for _ in range(10))) for i in range(0, n, 10)]
    registry = default_registry()
    print(f"EAD, Vendi, RKE, homogeneity on {n:,} samples ({len(groups)} groups of 10; embeddings aside: cached "
          "random unit vectors, 384 dimensions)")
    for name in ("ead", f"vendi[emb={EMB}]", f"vendi[emb={EMB},q=2]", f"vendi[emb={EMB},q=inf]", f"rke[emb={EMB}]",
                 f"homogeneity[emb={EMB}]"):
        metric = registry.create(MetricSpec.model_validate(name))
        elapsed, _ = timed(lambda: score_groups(groups, [metric]))
        print(f"  {metric.id:40s} {elapsed:6.3f} s")
    whole = x[:n]
    side = min(n, 384)  # the smaller of the n x n kernel and the d x d matrix
    for q in (1.0, 2.0, float("inf")):
        elapsed, _ = timed(lambda: semantic.vendi(whole, q))
        print(f"  vendi q={q:g} of one group of {n:,}: {elapsed:.3f} s (eigenvalues of a {side} x {side} matrix)")
    elapsed, _ = timed(lambda: semantic.rke(whole))
    print(f"  rke of one group of {n:,}: {elapsed:.3f} s")
    frame = pd.DataFrame({"prompt_id": [g.prompt_id for g in groups for _ in g.texts],
                          "setting_id": [g.setting.id for g in groups for _ in g.texts],
                          "text": [t for g in groups for t in g.texts]})
    elapsed, table = timed(lambda: settings_table(frame, EMB))
    print(f"  homogeneity table, {len(settings)} x {len(settings)} settings: {elapsed:.3f} s ({len(table)} pairs)")
    elapsed, _ = timed(lambda: runs_table(frame, frame, EMB))
    print(f"  homogeneity across two runs: {elapsed:.3f} s")


if __name__ == "__main__":
    main()
