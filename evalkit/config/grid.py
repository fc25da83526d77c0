"""The config's ``grid`` section (the sampling settings a sweep runs, text or text-to-image) and its ``image``
section (text-to-image output)."""

from __future__ import annotations

import difflib
import itertools
import math
import typing
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from evalkit.config.base import _Strict
from evalkit.errors import shown
from evalkit.settings import SCHEDULERS, ImageSetting, MinP, Setting, Temperature, TopK, TopP

SETTINGS_MAX = 100_000  # settings in one grid (the product of its lists)


class GridConfig(_Strict):
    """Lists whose cartesian product is the grid, and/or an explicit list of settings."""

    temperature: list[Temperature] | None = None  # default [1.0] when only lists are given
    top_p: list[TopP] | None = None  # default [1.0]
    top_k: list[TopK] | None = None  # default [0]
    min_p: list[MinP] | None = None  # default [0.0]
    settings: list[Setting] | None = Field(None, max_length=SETTINGS_MAX)  # explicit points, after the product
    # text-to-image axes (backend diffusers); eta applies to ddim only and is 0 for other schedulers
    guidance_scale: list[Annotated[float, Field(ge=0, le=100)]] | None = None  # default [7.5]
    num_inference_steps: list[Annotated[int, Field(ge=1, le=1000)]] | None = None  # default [30]
    scheduler: list[str] | None = None  # default ["ddim"]; ddim, euler, euler_a, dpmpp_2m, pndm, lms
    eta: list[Annotated[float, Field(ge=0, le=1)]] | None = None  # default [0.0]

    TEXT_AXES: typing.ClassVar = ("temperature", "top_p", "top_k", "min_p", "settings")
    IMAGE_AXES: typing.ClassVar = ("guidance_scale", "num_inference_steps", "scheduler", "eta")

    @field_validator("temperature", "top_p", "top_k", "min_p", "settings", "guidance_scale", "num_inference_steps",
                     "scheduler", "eta")
    @classmethod
    def _non_empty(cls, v: list | None) -> list | None:
        if v is not None and not v:
            raise ValueError("list is empty")
        return v

    @model_validator(mode="after")
    def _not_too_many(self) -> GridConfig:
        """Refused before the lists are multiplied out, not by running out of memory."""
        for axes in ((self.temperature, self.top_p, self.top_k, self.min_p),
                     (self.guidance_scale, self.num_inference_steps, self.scheduler, self.eta)):
            size = math.prod(len(a) for a in axes if a) + (len(self.settings or []) if axes[0] is self.temperature
                                                            else 0)
            if size > SETTINGS_MAX:
                raise ValueError(f"the lists make {size} settings, more than {SETTINGS_MAX}: sweep fewer values")
        return self

    def expand(self) -> list[Setting]:
        """The grid's settings in a stable order, duplicates removed."""
        axes = (self.temperature, self.top_p, self.top_k, self.min_p)
        out: list[Setting] = []
        if any(a is not None for a in axes) or self.settings is None:
            t, p, k, m = (a if a is not None else [d] for a, d in zip(axes, (1.0, 1.0, 0, 0.0)))
            out += [Setting(temperature=a, top_p=b, top_k=c, min_p=d) for a, b, c, d in itertools.product(t, p, k, m)]
        out += self.settings or []
        return list(dict.fromkeys(out))

    def expand_images(self) -> list[ImageSetting]:
        """The text-to-image grid in a stable order; eta only varies for ddim."""
        for name in self.scheduler or []:
            if name not in SCHEDULERS:
                hint = difflib.get_close_matches(name, list(SCHEDULERS), n=1)
                raise ValueError(f"grid.scheduler: unknown scheduler, got {shown(name)}" + (
                    f" (did you mean {shown(hint[0])}?)" if hint else f" (known: {', '.join(SCHEDULERS)})"))
        out = [ImageSetting(guidance_scale=g, num_inference_steps=n, scheduler=sch, eta=e if sch == "ddim" else 0.0)
               for g, n, sch, e in itertools.product(self.guidance_scale or [7.5], self.num_inference_steps or [30],
                                                      self.scheduler or ["ddim"], self.eta or [0.0])]
        return list(dict.fromkeys(out))


class ImageOptions(_Strict):
    """Text-to-image output: size, negative prompt, and images per pipeline call."""

    width: int = Field(512, ge=8, le=8192, multiple_of=8)
    height: int = Field(512, ge=8, le=8192, multiple_of=8)
    negative_prompt: str | None = None
    batch_size: int = Field(4, ge=1, le=1024)
