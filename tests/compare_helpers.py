"""Run directories made in the tests from chosen per-prompt values, for comparisons and history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from evalkit.generation.base import ModelInfo
from evalkit.rundir import Manifest, RunWriter, SettingRecord
from evalkit.settings import Setting
from evalkit.scoring import aggregate

SETTINGS = [Setting(temperature=t, top_p=p) for t in (0.5, 1.0, 1.5) for p in (0.9, 1.0)]
INFO = {"distinct_2[tok=words]": {"kind": "diversity", "direction": 1},
        "self_bleu[n=4,smooth=method1,tok=words]": {"kind": "diversity", "direction": -1},
        "mean_length[unit=tokens]": {"kind": "descriptive", "direction": 1}}
METRICS = list(INFO)


def noisy_scores(rng: np.random.Generator, n_prompts: int = 20, noise: float = 0.02,
                 shift: dict[tuple[str, str], float] | None = None, settings=SETTINGS) -> pd.DataFrame:
    """Per-prompt values: a fixed prompt effect (the same in every run, seeded apart from ``rng``)
    plus independent noise; ``shift`` adds a constant to (setting id, metric)."""
    prompt_effect = np.random.default_rng(12345).normal(0.5, 0.1, size=n_prompts)
    rows = []
    for s in settings:
        for m in METRICS:
            values = prompt_effect + s.temperature * 0.1 + rng.normal(0, noise, size=n_prompts)
            values = values + (shift or {}).get((s.id, m), 0.0)
            rows += [{"setting_id": s.id, "prompt_id": f"p{i}", "metric": m, "value": float(v), "reason": None}
                     for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def fake_run(root: Path, name: str, scores: pd.DataFrame, *, started_at: str = "2026-11-01T00:00:00Z",
             max_new_tokens: int = 32, settings=SETTINGS, prompt_text: str = "Prompt {}",
             model: ModelInfo | None = None) -> Path:
    """A complete run directory with these scores (and one sample per group, for the report)."""
    prompts = list(dict.fromkeys(scores["prompt_id"]))
    summary = aggregate(scores, settings, level=0.95, resamples=200, seed=0)
    samples = pd.DataFrame([{"prompt_id": p, "prompt": prompt_text.format(p), "setting_id": s.id, **s.params(),
                             "sample_index": 0, "seed": 0, "text": f"text {p} {s.id}", "num_new_tokens": 2,
                             "finish_reason": "eos", "token_ids": [1, 2]} for s in settings for p in prompts])
    writer = RunWriter.create(root, Manifest(
        run_id="", name=name, started_at=started_at,
        config_source="test", config_as_given={},
        model=model or ModelInfo(id="test-model", sha256="ab" * 32, dtype="float32"),
        device="cpu", seed=0, sampling_order=[], settings=[SettingRecord(id=s.id, params=s.params(), generation={})
                                                           for s in settings],
        n_prompts=len(prompts), batch_size=1, metrics=list(dict.fromkeys(scores["metric"])),
        metric_info=INFO, ci={"method": "percentile bootstrap over prompts", "level": 0.95, "resamples": 200,
                              "seed": 0}))
    writer.write_config({"name": name, "max_new_tokens": max_new_tokens, "samples_per_prompt": 1, "stop": [],
                         "output_dir": str(root), "prompts": {"chat_template": "auto", "system_prompt": None}})
    writer.write_prompts([{"id": p, "prompt": prompt_text.format(p)} for p in prompts])
    writer.write_samples(samples)
    writer.write_scores(scores, pd.DataFrame(columns=["setting_id", "prompt_id", "sample_index", "metric", "value"]),
                        summary)
    run_dir = writer.complete(n_samples=len(samples), ended_at=started_at).path
    return run_dir
