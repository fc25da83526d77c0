"""The config's ``grid`` section (the sampling settings a sweep runs, text or text-to-image) and its ``image``
section (text-to-image output)."""

from __future__ import annotations

import difflib
import itertools
import math
import typing
from typing import Annotated

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from evalkit.config.base import _Strict
from evalkit.errors import shown
from evalkit.settings import QUALIFIES, SCHEDULERS, WITH_ETA, ImageSetting, Setting, knob_type

SETTINGS_MAX = 100_000  # settings in one grid (the product of its lists)




def _point(point: dict) -> Setting:
    """One point of the product as a Setting; a combination no setting can be (mirostat with top_k) is refused in
    one line naming the lists' values that make it (ValueError)."""
    try:
        return Setting(**point)
    except ValidationError as e:
        fields = Setting.model_fields
        values = ", ".join(f"{k} {shown(v)}" for k, v in point.items() if v != fields[k].default)
        why = str(e.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ValueError(f"the grid's lists combine {values}, which is no setting: {why}") from None


def _qualified(point: dict) -> dict:
    """``point`` with each qualifying knob at its default where the knob it qualifies is off."""
    fields = Setting.model_fields
    for knob, qualified in QUALIFIES.items():
        if all(point[q] == fields[q].default for q in qualified):
            point[knob] = fields[knob].default
    return point


class _Grid(_Strict):
    """Lists whose cartesian product is the grid, and/or an explicit list of settings. The text axes are the
    fields of :class:`~evalkit.settings.Setting` (one list each, default: the knob's neutral value); a new
    knob of the setting is an axis here with nothing to add."""

    KNOB_AXES: typing.ClassVar = tuple(Setting.model_fields)  # temperature, top_p, top_k, min_p, order, ...
    TEXT_AXES: typing.ClassVar = (*KNOB_AXES, "settings")
    IMAGE_AXES: typing.ClassVar = ("guidance_scale", "num_inference_steps", "scheduler", "eta")

    @field_validator("*")
    @classmethod
    def _non_empty(cls, v: list | None) -> list | None:
        if v is not None and not v:
            raise ValueError("list is empty")
        return v

    def _knob_lists(self) -> list[list | None]:
        return [getattr(self, name) for name in self.KNOB_AXES]

    @model_validator(mode="after")
    def _not_too_many(self) -> _Grid:
        """Refused before the lists are multiplied out, not by running out of memory."""
        for axes, explicit in ((self._knob_lists(), len(self.settings or [])),
                               ([self.guidance_scale, self.num_inference_steps, self.scheduler, self.eta], 0)):
            size = math.prod(len(a) for a in axes if a) + explicit
            if size > SETTINGS_MAX:
                raise ValueError(f"the lists make {size} settings, more than {SETTINGS_MAX}: sweep fewer values")
        return self

    @model_validator(mode="after")
    def _qualifiers_have_their_knob(self) -> _Grid:
        """A list of a knob that qualifies another (xtc_threshold, dry_base, ...) needs a list of that one with a
        value that switches it on: else no point of the grid would apply it."""
        for knob, qualified in QUALIFIES.items():
            if getattr(self, knob) is None:
                continue
            if not any(v != Setting.model_fields[q].default for q in qualified for v in getattr(self, q) or []):
                raise ValueError(f"{knob} applies only when {' or '.join(qualified)} is set, and no list of the grid "
                                 f"sets it")
        return self

    def expand(self) -> list[Setting]:
        """The grid's settings in a stable order, duplicates removed. In a point where a knob is off, the knobs that
        qualify it (:data:`evalkit.settings.QUALIFIES`) are at their default: one point, not one per value."""
        axes = self._knob_lists()
        out: list[Setting] = []
        if any(a is not None for a in axes) or self.settings is None:
            lists = [a if a is not None else [Setting.model_fields[n].default] for a, n in zip(axes, self.KNOB_AXES)]
            out += [_point(_qualified(dict(zip(self.KNOB_AXES, values)))) for values in itertools.product(*lists)]
        out += self.settings or []
        return list(dict.fromkeys(out))

    def expand_images(self) -> list[ImageSetting]:
        """The text-to-image grid in a stable order; eta only varies for ddim."""
        for name in self.scheduler or []:
            if name not in SCHEDULERS:
                hint = difflib.get_close_matches(name, list(SCHEDULERS), n=1)
                raise ValueError(f"grid.scheduler: unknown scheduler, got {shown(name)}" + (
                    f" (did you mean {shown(hint[0])}?)" if hint else f" (known: {', '.join(SCHEDULERS)})"))
        schedulers = self.scheduler or ["ddim"]
        if any(self.eta or []) and not WITH_ETA & set(schedulers):  # else no point of the grid would apply it
            raise ValueError(f"grid.eta: eta applies to the {' or '.join(sorted(WITH_ETA))} scheduler only, and no "
                             f"scheduler of the grid is one (got {', '.join(schedulers)})")
        out = [ImageSetting(guidance_scale=g, num_inference_steps=n, scheduler=sch, eta=e if sch in WITH_ETA else 0.0)
               for g, n, sch, e in itertools.product(self.guidance_scale or [7.5], self.num_inference_steps or [30],
                                                      schedulers, self.eta or [0.0])]
        return list(dict.fromkeys(out))


GridConfig = create_model(
    "GridConfig", __base__=_Grid, __module__=__name__,
    # the text axes, in the setting's field order: a list of the knob's values, each checked as a setting checks it
    **{name: (list[knob_type(name)] | None, None) for name in Setting.model_fields},
    settings=(list[Setting] | None, Field(None, max_length=SETTINGS_MAX)),  # explicit points, after the product
    # text-to-image axes (backend diffusers); eta applies to ddim only and is 0 for other schedulers
    guidance_scale=(list[Annotated[float, Field(ge=0, le=100)]] | None, None),  # default [7.5]
    num_inference_steps=(list[Annotated[int, Field(ge=1, le=1000)]] | None, None),  # default [30]
    scheduler=(list[str] | None, None),  # default ["ddim"]; ddim, euler, euler_a, dpmpp_2m, pndm, lms
    eta=(list[Annotated[float, Field(ge=0, le=1)]] | None, None))  # default [0.0]


class ImageOptions(_Strict):
    """Text-to-image output: size, negative prompt, and images per pipeline call."""

    width: int = Field(512, ge=8, le=8192, multiple_of=8)
    height: int = Field(512, ge=8, le=8192, multiple_of=8)
    negative_prompt: str | None = None
    batch_size: int = Field(4, ge=1, le=1024)
