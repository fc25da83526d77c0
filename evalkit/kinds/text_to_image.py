"""Text-to-image sweeps: a diffusers pipeline draws every prompt under every setting (guidance
scale, steps, scheduler, eta), N images each, written as PNG files into ``<run dir>/images/`` as
they are made. Image ``i`` of a prompt under a setting has the seed ``derive_seed(seed, prompt id,
setting id, i)``; the same seed, setting and ``image.batch_size`` give the same PNG bytes, whatever
else the grid holds and however a run was resumed (an image file kept before its row was is a
finished sample)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

from evalkit.config import SweepConfig
from evalkit.errors import ConfigError
from evalkit.generation.base import PreparedPrompt, SampleRecord, WorkUnit
from evalkit.kinds.base import Axes, RunKind, unit_fields
from evalkit.rundir.columns import COLUMNS, IMAGE_SETTING
from evalkit.rundir.writer import RunWriter
from evalkit.settings import ImageSetting


def image_path(prompt_id: str, setting_id: str, index: int) -> str:
    return f"images/{setting_id}/{prompt_id}-{index:03d}.png"


@dataclass(frozen=True)
class TextToImage(RunKind):
    def prompt_line(self, p: PreparedPrompt, writer: RunWriter) -> dict[str, Any]:
        return {"id": p.prompt.id, "prompt": p.prompt.display}

    def cached(self, record: SampleRecord) -> dict[str, Any]:
        buf = io.BytesIO()
        record.image.save(buf, format="PNG")
        return {"png": base64.b64encode(buf.getvalue()).decode("ascii")}

    def row(self, unit: WorkUnit, result: dict[str, Any], writer: RunWriter, config: SweepConfig) -> dict[str, Any]:
        """Writes the image (its PNG bytes, as made or as cached) and returns its row."""
        path = image_path(unit.prompt.prompt.id, unit.setting.id, unit.sample_index)
        writer.write_file(path, base64.b64decode(result["png"]))
        return self._row(unit, path, config)

    def _row(self, unit: WorkUnit, path: str, config: SweepConfig) -> dict[str, Any]:
        return {**unit_fields(unit), "text": "", "image_path": path, "width": config.image.width,
                "height": config.image.height}

    def decides(self, unit: WorkUnit, config: SweepConfig, eos: list[int]) -> list:
        o = config.image  # the prompt has no token ids; pixels depend on the batch shape (CPU kernels round by it)
        return [unit.prompt.rendered, o.width, o.height, o.negative_prompt, o.batch_size]

    def check_prompts(self, prompts: list, source: str | None) -> None:
        for p in prompts:
            if p.messages is not None:
                raise ConfigError(f"prompt {p.id!r}: a text-to-image prompt is plain text, not chat messages",
                                  source=source, path="prompts")
            if p.checks is not None:
                raise ConfigError(f"prompt {p.id!r} has an answer or tests, which judge texts: a text-to-image "
                                  "sweep makes images", source=source, path="prompts")

    def recovered(self, unit: WorkUnit, config: SweepConfig, writer: RunWriter) -> dict[str, Any] | None:
        path = image_path(unit.prompt.prompt.id, unit.setting.id, unit.sample_index)
        return self._row(unit, path, config) if (writer.path / path).is_file() else None


TEXT_TO_IMAGE = TextToImage(name="text-to-image", what="a text-to-image sweep",
                            columns=tuple(COLUMNS["text-to-image"]),
                            needs=frozenset({"prompts", "reference_images"}), setting_type=ImageSetting,
                            sampling_order=tuple(IMAGE_SETTING),
                            report_axes=Axes("guidance_scale", "num_inference_steps", ("scheduler", "eta")))
