"""Text sweeps: a text model samples every prompt under every setting; each sample is a text, with what the
backend that made it supplies (evalkit's engine: tokens and per-token statistics; a server: the statistics its
logprobs give; see ``evalkit backends``)."""

from __future__ import annotations

from evalkit.kinds.base import RunKind
from evalkit.rundir.columns import COLUMNS
from evalkit.scoring.metric import CHECK_NEEDS

# what every text sample offers, whoever made it; the backend's spec adds what its generator supplies
TEXT_BASE_NEEDS = frozenset({"texts", "prompts", "reference_texts"}) | CHECK_NEEDS
TEXT = RunKind(name="text", what="a text sweep", columns=tuple(COLUMNS["text"]), needs=TEXT_BASE_NEEDS)
