"""Text metrics: evalkit's self-BLEU against nltk's loop (same definition), the lexical
metrics on 10,000 samples and the semantic ones on 1,000, measured in one run.

    python benchmarks/bench_metrics.py
"""

from __future__ import annotations

import random
import time

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from evalkit.config import MetricSpec
from evalkit.scoring.metric import Group
from evalkit.scoring.registry import default_registry
from evalkit.settings import Setting
from evalkit.scoring import score_groups
from evalkit_metrics.self_bleu import self_bleu

WORDS = [f"w{i}" for i in range(300)]


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
    rng = random.Random(0)
    print("self-BLEU-4 (method1), samples of 30-50 tokens over 300 word types")
    for n in (100, 400):
        samples = corpus(rng, n)
        t_ours, ours = timed(lambda: self_bleu(samples, 4))
        t_nltk, theirs = timed(lambda: nltk_self_bleu(samples))
        diff = max(abs(a - b) for a, b in zip(ours, theirs))
        print(f"  N={n:5d}: nltk {t_nltk:8.3f} s  evalkit {t_ours:7.4f} s  ratio {t_nltk / t_ours:7.1f}x  "
              f"max |difference| {diff:.1e}")
    samples = corpus(rng, 4000)
    t_ours, _ = timed(lambda: self_bleu(samples, 4))
    print(f"  N= 4000: evalkit {t_ours:.3f} s (nltk not run: its loop is quadratic)")

    texts = [" ".join(s) for s in corpus(rng, 10_000)]
    registry = default_registry()
    print("lexical metrics on 10,000 samples (one group per 10 samples)")
    groups = [Group(prompt_id=str(i), prompt="", setting=Setting(), texts=tuple(texts[i:i + 10]),
                    token_ids=tuple(() for _ in texts[i:i + 10])) for i in range(0, len(texts), 10)]
    total = 0.0
    for name in ("distinct_1", "distinct_2", "ttr", "mattr", "mtld", "ent_n", "seq_rep_n"):
        metric = registry.create(MetricSpec(name=name))
        elapsed, _ = timed(lambda: [metric.compute(g) for g in groups])
        total += elapsed
        print(f"  {metric.id:32s} {elapsed:6.3f} s")
    print(f"  all lexical metrics: {total:.3f} s")

    sentences = [" ".join(rng.choice(WORDS[:50]) for _ in range(rng.randint(8, 20))) for _ in range(1000)]
    sem_groups = [Group(prompt_id=str(i), prompt="a prompt", setting=Setting(), texts=tuple(sentences[i:i + 10]),
                        token_ids=tuple(() for _ in range(10))) for i in range(0, 1000, 10)]
    print("semantic metrics on 1,000 samples, all-MiniLM-L6-v2 on CPU (embedder loaded first)")
    for name in ("semantic_diversity", "vendi"):
        metric = registry.create(MetricSpec(name=name))
        elapsed, _ = timed(lambda: score_groups(sem_groups, [metric]))
        print(f"  {metric.id:40s} {elapsed:6.3f} s (texts already embedded are reused)")


if __name__ == "__main__":
    main()
