"""Homogeneity between two runs (``evalkit compare --homogeneity``): per setting both have, the mean cosine
similarity of sentence embeddings between their samples of the same prompt, beside each run's similarity with
itself (:func:`evalkit_metrics.homogeneity.runs_table`). Needs both run directories: the samples are read and
embedded (with the embedder a run's metrics name, else the default one)."""

from __future__ import annotations

import pandas as pd

from evalkit.compare.stats import RunData
from evalkit.errors import EvalkitError
from evalkit.rundir.reader import load_run


def embedder_of(*runs: RunData) -> str:
    """The embedder that the runs' embedding metrics name (``emb=``; ``homogeneity``'s first), else the default."""
    from evalkit_metrics.semantic import DEFAULT_EMBEDDER

    found = []
    for run in runs:
        for metric in dict.fromkeys(run.scores["metric"]):
            name, _, params = str(metric).partition("[")
            for p in params.rstrip("]").split(","):
                if p.startswith("emb="):
                    found.append((name != "homogeneity", p[4:]))
    return min(found)[1] if found else DEFAULT_EMBEDDER


def runs_homogeneity(base: RunData, new: RunData, emb: str | None = None) -> tuple[pd.DataFrame, str]:
    """(the table, the embedder used)."""
    from evalkit_metrics.homogeneity import runs_table
    from evalkit_metrics.semantic import load_embedder

    for run in (base, new):
        if run.path is None or not (run.path / "manifest.json").is_file():
            raise EvalkitError(f"--homogeneity needs the run directory of {run.label} (its samples are embedded)")
    emb = emb or embedder_of(base, new)
    load_embedder(emb)
    return runs_table(load_run(base.path).samples, load_run(new.path).samples, emb), emb
