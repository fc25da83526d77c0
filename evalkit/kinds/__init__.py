"""Run kinds: what a run makes and how it is read. One module per kind, each owning its setting
type, grid axes, sample columns, the needs it offers metrics, and how a generated record becomes
a samples row (and a cache entry).

| kind | made by | a sample is |
| --- | --- | --- |
| ``text`` | a text model (``model.backend: hf``) | a text with its tokens and per-token statistics |
| ``text`` (served) | a model behind a server (``openai``) | a text with the statistics its logprobs give |
| ``text`` (vLLM) | a text model run by vLLM (``vllm``) | a text with its tokens and what vLLM's logprobs give |
| ``image-to-text`` | a vision-language model (``vlm``) | a caption or answer of the prompt's image |
| ``text-to-image`` | a diffusers pipeline (``diffusers``) | a PNG file in ``images/`` |
| ``scored`` | ``evalkit score FILE`` | a text made elsewhere (with the image it describes, if any) |
"""

from __future__ import annotations

from evalkit.config import SweepConfig
from evalkit.kinds.base import RunKind
from evalkit.kinds.image_to_text import IMAGE_TO_TEXT
from evalkit.kinds.scored import SCORED, SCORED_CAPTIONS
from evalkit.kinds.served import SERVED
from evalkit.kinds.text import TEXT
from evalkit.kinds.text_to_image import TEXT_TO_IMAGE
from evalkit.kinds.vllm import VLLM

KINDS: dict[str, RunKind] = {k.name: k for k in (TEXT, IMAGE_TO_TEXT, TEXT_TO_IMAGE, SCORED)}

__all__ = ["IMAGE_TO_TEXT", "KINDS", "SCORED", "SCORED_CAPTIONS", "SERVED", "TEXT", "TEXT_TO_IMAGE", "VLLM", "RunKind",
           "kind_named", "kind_of"]
# a backend whose runs are of a known kind but offer metrics other things than its usual maker's
BY_BACKEND: dict[str, RunKind] = {"openai": SERVED, "vllm": VLLM}


def kind_of(config: SweepConfig) -> RunKind:
    """The kind of run a sweep config makes."""
    return BY_BACKEND.get(config.model.backend) or KINDS[config.kind]


def kind_named(name: str) -> RunKind:
    """The kind a run's manifest names."""
    return KINDS[name]
