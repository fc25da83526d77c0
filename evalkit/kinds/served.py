"""Served text sweeps: a model behind an OpenAI-compatible server samples every prompt under every
setting, one request per sample. A run of this kind is a text run (its manifest says ``text``); its
samples carry no token ids (the server's tokenizer is not evalkit's) and only the token statistics the
server's logprobs give (see :mod:`evalkit.generation.served`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evalkit.config import SweepConfig
from evalkit.generation.base import PreparedPrompt, WorkUnit
from evalkit.kinds.base import RunKind
from evalkit.rundir.columns import COLUMNS
from evalkit.rundir.writer import RunWriter
from evalkit.scoring.metric import SERVED_NEEDS


@dataclass(frozen=True)
class Served(RunKind):
    def prompt_line(self, p: PreparedPrompt, writer: RunWriter) -> dict[str, Any]:
        """The prompt as sent (raw text, or the chat messages as JSON); its tokens are the server's."""
        return {**super().prompt_line(p, writer), "n_tokens": None}

    def decides(self, unit: WorkUnit, config: SweepConfig, eos: list[int]) -> list:
        """No local token ids: the prompt as sent is part of the key (the endpoint, model, server fingerprint
        and the knobs sent with every request are in the model id of the key)."""
        return [config.max_new_tokens, list(config.stop), unit.prompt.rendered]


SERVED = Served(name="text", what="a served-model sweep", columns=tuple(COLUMNS["text"]), needs=SERVED_NEEDS,
                sampling_order=("the server's own order",),  # llama.cpp, for one, applies temperature last
                hints=(("token_stats", "a server returns top-N logprobs: token_entropy with top: 20 is their "
                                       "lower bound, nll and perplexity take dist: model"),
                       ("token_ids", "the server's token ids are not returned: use tok: words"),
                       ("model_features", "a server returns no hidden states: use a sentence embedder, "
                                          "emb: all-MiniLM-L6-v2")))
