"""Run kinds: what a run makes and how it is read. One module per kind, each owning its setting
type, grid axes, sample columns, the needs it offers metrics, and how a generated record becomes
a samples row (and a cache entry). Who makes a sweep's samples is its backend's
(:class:`~evalkit.generation.spec.BackendSpec`): the kind of a sweep is its backend's kind, with the metric inputs,
chain order and hints that backend declares (``evalkit backends`` lists them).

| kind | made by | a sample is |
| --- | --- | --- |
| ``text`` | a text model (``hf``, ``openai``, ``vllm``) | a text, with what its backend supplies |
| ``image-to-text`` | a vision-language model (``vlm``) | a caption or answer of the prompt's image |
| ``text-to-image`` | a diffusers pipeline (``diffusers``) | a PNG file in ``images/`` |
| ``scored`` | ``evalkit score FILE`` | a text made elsewhere (with the image it describes, if any) |
"""

from __future__ import annotations

import dataclasses

from evalkit.config import SweepConfig
from evalkit.generation import spec_of
from evalkit.kinds.base import RunKind
from evalkit.kinds.image_to_text import IMAGE_TO_TEXT
from evalkit.kinds.scored import SCORED, SCORED_CAPTIONS
from evalkit.kinds.text import TEXT
from evalkit.kinds.text_to_image import TEXT_TO_IMAGE

KINDS: dict[str, RunKind] = {k.name: k for k in (TEXT, IMAGE_TO_TEXT, TEXT_TO_IMAGE, SCORED)}

__all__ = ["IMAGE_TO_TEXT", "KINDS", "SCORED", "SCORED_CAPTIONS", "TEXT", "TEXT_TO_IMAGE", "RunKind", "kind_named",
           "kind_of"]


def kind_of(config: SweepConfig) -> RunKind:
    """The kind of run a sweep config makes, as its backend makes it: the kind's own metric inputs and those the
    backend supplies, its name for such a sweep, its chain order and its hints."""
    spec = spec_of(config.model.backend)
    kind = KINDS[spec.kind]
    return dataclasses.replace(kind, what=spec.what, needs=kind.needs | spec.needs, sampling_order=spec.own_order,
                               hints=spec.hints)


def kind_named(name: str) -> RunKind:
    """The kind a run's manifest names."""
    return KINDS[name]
