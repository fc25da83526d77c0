"""Text-to-image generation through a diffusers pipeline (Stable Diffusion 1.x/2.x, SDXL and
others with the same call signature).

Each image has its own seed: a ``torch.Generator`` seeded with it draws the image's initial
latents and every noise the scheduler adds, so an image depends on its prompt, setting and
seed only, not on the batch it was made in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from evalkit.errors import EvalkitError
from evalkit.image_settings import SCHEDULERS, WITH_ETA, ImageSetting

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DiffusersBackend:
    def __init__(self, model: str | Path, *, device: str = "cpu", dtype: str = "auto"):
        import diffusers

        self.device = device
        self.dtype = ("bfloat16" if device == "cuda" else "float32") if dtype == "auto" else dtype
        try:
            self.pipe = diffusers.DiffusionPipeline.from_pretrained(str(model), dtype=DTYPES[self.dtype])
        except (OSError, ValueError) as e:
            raise EvalkitError(f"model.id: cannot load a diffusers pipeline from {model}: {e}") from None
        if not hasattr(self.pipe, "scheduler"):
            raise EvalkitError(f"model.id: {model} is not a text-to-image pipeline (it has no scheduler)")
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self._scheduler_config = dict(self.pipe.scheduler.config)
        self._scheduler_name: str | None = None

    def _use_scheduler(self, name: str) -> None:
        if name != self._scheduler_name:
            import diffusers

            cls = getattr(diffusers, SCHEDULERS[name])
            self.pipe.scheduler = cls.from_config(self._scheduler_config)
            self._scheduler_name = name

    @torch.inference_mode()
    def generate(self, prompt: str, setting: ImageSetting, seeds: Sequence[int], *, width: int, height: int,
                 negative_prompt: str | None = None):
        """One PIL image per seed, for ``prompt`` under ``setting``."""
        self._use_scheduler(setting.scheduler)
        generators = [torch.Generator(device="cpu").manual_seed(int(s) % 2**63) for s in seeds]
        kwargs = {"eta": setting.eta} if setting.scheduler in WITH_ETA else {}
        result = self.pipe(prompt=[prompt] * len(seeds), negative_prompt=[negative_prompt] * len(seeds)
                           if negative_prompt else None, num_inference_steps=setting.num_inference_steps,
                           guidance_scale=setting.guidance_scale, width=width, height=height, generator=generators,
                           output_type="pil", **kwargs)
        return list(result.images)
