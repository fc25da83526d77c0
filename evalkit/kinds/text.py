"""Text sweeps: a text model samples every prompt under every setting (temperature, top-p, top-k,
min-p); each sample carries its tokens and per-token statistics from evalkit's engine."""

from __future__ import annotations

from evalkit.kinds.base import RunKind
from evalkit.rundir.columns import COLUMNS
from evalkit.scoring.metric import TEXT_NEEDS

# model_features: the transformers model is loaded in the process (executor: local; a Ray run is refused it)
TEXT = RunKind(name="text", what="a text sweep", columns=tuple(COLUMNS["text"]), needs=TEXT_NEEDS | {"model_features"})
