"""Image-to-text sweeps: a vision-language model answers each prompt's image (a caption, a visual
question) under every text setting. The run keeps a copy of each image (named by its sha256) and
its reference captions; the image's hash is part of what identifies the prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evalkit.config import SweepConfig
from evalkit.generation.base import PreparedPrompt, WorkUnit
from evalkit.kinds.base import RunKind
from evalkit.rundir.columns import COLUMNS
from evalkit.rundir.files import prompt_image_name
from evalkit.rundir.writer import RunWriter
from evalkit.kinds.text import TEXT_BASE_NEEDS
from evalkit.scoring.metric import VLM_NEEDS


@dataclass(frozen=True)
class ImageToText(RunKind):
    def prompt_line(self, p: PreparedPrompt, writer: RunWriter) -> dict[str, Any]:
        prompt = p.prompt
        return {**super().prompt_line(p, writer), "image": writer.keep_prompt_image(prompt.image, prompt.image_sha256),
                "image_source": prompt.image, "image_sha256": prompt.image_sha256,
                "references": list(prompt.references)}

    def row(self, unit: WorkUnit, result: dict[str, Any], writer: RunWriter, config: SweepConfig) -> dict[str, Any]:
        p = unit.prompt.prompt
        return {**super().row(unit, result, writer, config), "prompt_image": prompt_image_name(p.image, p.image_sha256),
                "references": list(p.references)}


IMAGE_TO_TEXT = ImageToText(name="image-to-text", what="a vision-language sweep",
                            columns=tuple(COLUMNS["image-to-text"]), needs=TEXT_BASE_NEEDS | VLM_NEEDS, noun="images")
