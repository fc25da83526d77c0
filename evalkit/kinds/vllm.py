"""vLLM text sweeps: a text sweep whose samples vLLM's engine makes (see
:mod:`evalkit.generation.vllm_engine`). A run of this kind is a text run (its manifest says ``text``, and
names the engine); its samples carry token ids (the model's tokenizer is evalkit's) but only the token
statistics vLLM's logprobs give: the chosen token's log-probability, and the top-N for a truncated entropy."""

from __future__ import annotations

from evalkit.kinds.base import RunKind
from evalkit.rundir.columns import COLUMNS
from evalkit.scoring.metric import SERVED_NEEDS
from evalkit.settings import VLLM_ORDER

VLLM = RunKind(name="text", what="a vLLM sweep", columns=tuple(COLUMNS["text"]), needs=SERVED_NEEDS | {"token_ids"},
               sampling_order=VLLM_ORDER,
               hints=(("token_stats", "vLLM returns top-N logprobs: token_entropy with top: 20 is their lower bound, "
                                      "nll and perplexity take dist: model"),
                      ("model_features", "vLLM's generate returns no hidden states: use a sentence embedder, "
                                         "emb: all-MiniLM-L6-v2")))
