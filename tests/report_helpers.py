"""Runs the report tests share: a tiny-model sweep and a scored run of hostile texts."""

from __future__ import annotations

import json
from pathlib import Path

import evalkit
from evalkit.config import config_from_dict
from evalkit.api import score_file

from conftest import base_config

REPORT_METRICS = ["distinct_2", "self_bleu", "perplexity", "token_entropy", "mean_length"]
# Texts that would run script or break markup if a report inserted them as HTML.
HOSTILE = ["<script>window.__xss = 1; alert(1)</script>", "</textarea><b>x", '"><img src=x onerror="window.__xss=2">',
           "{{ 7 * 7 }} and {% raw %}", "</script><script>window.__xss=3</script>", "line one\nline  two\ttab",
           "see https://example.com/x?a=1&b=2", "<!-- comment --> & &amp; &lt;"]


def tiny_run(model: Path, runs: Path, **extra) -> evalkit.Run:
    config = base_config(model, runs, metrics=REPORT_METRICS, report=True, **extra)
    return evalkit.run_sweep(config_from_dict(config), progress=False)


def hostile_run(tmp: Path) -> evalkit.Run:
    rows = [{"prompt_id": f"p{p}", "prompt": f"<i>prompt</i> {p} </script>", "temperature": t, "top_p": 1.0,
             "sample_index": i, "text": HOSTILE[(p + i + int(t * 10)) % len(HOSTILE)]}
            for p in range(2) for t in (0.5, 1.0) for i in range(4)]
    path = tmp / "hostile.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return score_file(path, ["distinct_2", "self_bleu", "ttr"], tmp / "hostile", progress=False)
