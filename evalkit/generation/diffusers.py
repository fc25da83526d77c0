"""Text-to-image generation through a diffusers pipeline (Stable Diffusion 1.x/2.x, SDXL and
others with the same call signature).

Each image has its own seed: a ``torch.Generator`` seeded with it draws the image's initial
latents and every noise the scheduler adds, so an image depends on its prompt, setting and
seed only, not on the batch it was made in. Every pipeline call has ``image.batch_size`` images
(a short batch is padded with a repeated seed whose image is dropped): CPU kernels round
differently for other batch shapes, and an image must not depend on how many others were
missing when it was made.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from evalkit.config import DiffusersModel, ImageOptions, SweepConfig
from evalkit.errors import EvalkitError
from evalkit.generation.base import ModelInfo, PreparedPrompt, ProgressFn, SampleRecord, WorkUnit
from evalkit.generation.model import ModelSource, check_local_model, quiet_libraries, resolve_dtype
from evalkit.generation.spec import BackendSpec
from evalkit.prompts import Prompt
from evalkit.settings import SCHEDULERS, WITH_ETA, ImageSetting

class DiffusersBackend:
    def __init__(self, model: str | Path, *, device: str = "cpu", dtype: str = "auto",
                 options: ImageOptions | None = None, info: dict[str, Any] | None = None,
                 load_kwargs: dict[str, Any] | None = None):
        import diffusers
        import torch

        started = time.perf_counter()
        self.device = device
        self.options = options or ImageOptions()
        self.dtype = str(resolve_dtype(dtype, device)).removeprefix("torch.")
        try:
            self.pipe = diffusers.DiffusionPipeline.from_pretrained(str(model), dtype=getattr(torch, self.dtype),
                                                                  **(load_kwargs or {}))
        except (OSError, ValueError) as e:
            raise EvalkitError(f"model.id: cannot load a diffusers pipeline from {model}: {e}") from None
        if not hasattr(self.pipe, "scheduler"):
            raise EvalkitError(f"model.id: {model} is not a text-to-image pipeline (it has no scheduler)")
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self._scheduler_config = dict(self.pipe.scheduler.config)
        self._scheduler_name: str | None = None
        self.info = ModelInfo(**{"backend": "diffusers", "id": str(model), "path": str(model), **(info or {}),
                                 "dtype": self.dtype, "device": device,
                                 "rng": "one torch.Generator per image, seeded with the image's seed",
                                 "load_seconds": round(time.perf_counter() - started, 3),
                                 "threads": torch.get_num_threads() if device == "cpu" else None})

    def _use_scheduler(self, name: str) -> None:
        if name != self._scheduler_name:
            import diffusers

            cls = getattr(diffusers, SCHEDULERS[name])
            self.pipe.scheduler = cls.from_config(self._scheduler_config)
            self._scheduler_name = name

    # ------------------------------------------------------------------ the Generator interface

    def prepare(self, prompts: list[Prompt], *, chat_template: bool | str = "auto", system_prompt: str | None = None,
                max_new_tokens: int = 0) -> list[PreparedPrompt]:
        """Plain text prompts (chat messages are refused before loading, see evalkit.kinds.text_to_image)."""
        return [PreparedPrompt(prompt=p, rendered=p.display, token_ids=(), chat_template=False) for p in prompts]

    def check(self, settings: list, prompts: list[PreparedPrompt], **options: Any) -> None:
        """Every setting of the grid is evalkit's to apply: nothing to check."""

    def generation_params(self, setting: ImageSetting, max_new_tokens: int = 0) -> dict[str, Any]:
        o = self.options
        return {**setting.params(), "width": o.width, "height": o.height, "negative_prompt": o.negative_prompt}

    def batch_size(self, requested: int | str = "auto", prompts: list[PreparedPrompt] | None = None,
                   max_new_tokens: int = 0) -> int:
        return self.options.batch_size  # images per pipeline call

    def generate(self, units: list[WorkUnit], *, max_new_tokens: int = 0, batch_size: int | None = None,
                 stop: tuple[str, ...] = (), progress: ProgressFn | None = None) -> Iterator[SampleRecord]:
        """Units of one prompt and setting go together, ``image.batch_size`` per call."""
        size = self.options.batch_size
        done = 0
        for _, group in itertools.groupby(units, key=lambda u: (u.prompt.prompt.id, u.setting.id)):
            group = list(group)
            for start in range(0, len(group), size):
                batch = group[start:start + size]
                seeds = [u.seed for u in batch] + [batch[-1].seed] * (size - len(batch))
                images = self.images(batch[0].prompt.rendered, batch[0].setting, seeds, width=self.options.width,
                                     height=self.options.height, negative_prompt=self.options.negative_prompt)
                for u, image in zip(batch, images):
                    done += 1
                    yield SampleRecord(unit=u, image=image)
                if progress:
                    progress(done, 0)

    def images(self, prompt: str, setting: ImageSetting, seeds: Sequence[int], *, width: int, height: int,
               negative_prompt: str | None = None):
        """One PIL image per seed, for ``prompt`` under ``setting``."""
        import torch

        call = pipeline_call(setting)
        self._use_scheduler(call.pop("scheduler"))
        generators = [torch.Generator(device="cpu").manual_seed(int(s) % 2**63) for s in seeds]
        with torch.inference_mode():
            result = self.pipe(prompt=[prompt] * len(seeds), negative_prompt=[negative_prompt] * len(seeds)
                               if negative_prompt else None, width=width, height=height, generator=generators,
                               output_type="pil", **call)
        return list(result.images)


def pipeline_call(setting: ImageSetting) -> dict[str, Any]:
    """What a setting makes of a pipeline call: the scheduler (by evalkit's name), and the call's own arguments."""
    eta = {"eta": setting.eta} if setting.scheduler in WITH_ETA else {}
    return {"scheduler": setting.scheduler, "num_inference_steps": setting.num_inference_steps,
            "guidance_scale": setting.guidance_scale, **eta}


def load(config: SweepConfig, source: ModelSource, device: str, status=lambda msg: None) -> DiffusersBackend:
    quiet_libraries()
    where, load_kwargs = source.load_args(config.model.revision)
    return DiffusersBackend(where, device=device, dtype=config.model.dtype, options=config.image,
                            info={"id": config.model.id, "source": source.kind, "sha256": source.sha256,
                                  "revision": config.model.revision}, load_kwargs=load_kwargs)


SPEC = BackendSpec(
    name="diffusers", config=DiffusersModel, what="a text-to-image sweep",
    summary="a diffusers text-to-image pipeline (a local directory or hub id)",
    needs=frozenset({"images"}), knobs=frozenset(ImageSetting.model_fields), orders=(),
    own_order=tuple(ImageSetting.model_fields), engine="diffusers", remote=False, load=load,
    check_model=check_local_model)
