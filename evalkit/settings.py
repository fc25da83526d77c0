"""The points of a grid: one validated, immutable object per setting, for each kind of sweep.

Text (:class:`Setting`): temperature, top-p, top-k, min-p, and the order of the chain that applies them.

Conventions follow transformers ``GenerationConfig`` and vLLM ``SamplingParams``:

- ``temperature`` 0, or between 1e-6 and 1e4; 0 means greedy decoding (argmax), the other filters are then moot.
- ``top_p`` in (0, 1]; 1.0 means no nucleus filtering.
- ``top_k`` >= 0; 0 means no top-k filtering.
- ``min_p`` in [0, 1); 0 means no min-p filtering.

- ``order``: the chain order, by name (:data:`ORDERS`); ``auto`` (the default) is the backend's own order.

When several are active they apply in the setting's chain order. ``transformers`` (evalkit's engine's own):
temperature, then top-k, then top-p, then min-p. ``vllm``: vLLM's sampler applies min-p right after the
temperature, before top-k and top-p: with top-p and min-p in one setting its distribution differs. A backend
honours some orders only (``evalkit backends`` lists them); a setting that names one it does not apply is
refused before the run starts.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from evalkit.errors import shown

# The chain orders, by name: the knobs of a text setting in the order an engine applies them. A new knob is a
# field of Setting and its place in each order here (and one transform in evalkit.generation.sampling).
ORDERS: dict[str, tuple[str, ...]] = {
    # transformers' logits warpers (TemperatureLogitsWarper, TopK, TopP, MinP): evalkit's engine's own order
    "transformers": ("temperature", "top_k", "top_p", "min_p"),
    # vllm.v1.sample.sampler.Sampler: temperature, the argmax-invariant logits processors (min-p), then top-k and
    # top-p. top-k commutes with min-p (both keep a token by its own rank or ratio), top-p does not: it renormalizes.
    "vllm": ("temperature", "min_p", "top_k", "top_p"),
}
AUTO_ORDER = "auto"  # a setting's order when it names none: the backend's own
OrderName = Literal["auto", "transformers", "vllm"]
APPLICATION_ORDER = ORDERS["transformers"]
VLLM_ORDER = ORDERS["vllm"]
CORE_KNOBS = ("temperature", "top_p", "top_k", "min_p")  # the knobs every setting's record names, set or not


def _fmt(x: float) -> str:
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


# Beyond these the logits divided by the temperature leave float32's range (tiny), or every token is equally
# likely long before (huge): a value outside is a typo, refused before it costs a sweep.
TEMPERATURE_MIN, TEMPERATURE_MAX = 1e-6, 1e4


def _check_temperature(v: float) -> float:
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {shown(v)}")
    if v != 0 and not TEMPERATURE_MIN <= v <= TEMPERATURE_MAX:
        raise ValueError(f"temperature must be 0 (greedy) or between {TEMPERATURE_MIN:g} and {TEMPERATURE_MAX:g}, "
                         f"got {shown(v)}")
    return v + 0.0  # -0.0 is 0.0 (and its setting id t0, not t-0)


def _check_top_p(v: float) -> float:
    if not math.isfinite(v) or not 0 < v <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 means no filtering), got {shown(v)}")
    return v


TOP_K_MAX = 2**31 - 1  # a C int in every sampler; more than any vocabulary


def _check_top_k(v: int) -> int:
    if v < 0:
        raise ValueError(f"top_k must be >= 0 (0 means no filtering), got {shown(v)}")
    if v > TOP_K_MAX:
        raise ValueError(f"top_k must be at most {TOP_K_MAX} (any value above the vocabulary size filters nothing), "
                         f"got {shown(v)}")
    return v


def _check_min_p(v: float) -> float:
    if not math.isfinite(v) or not 0 <= v < 1:
        raise ValueError(f"min_p must be in [0, 1) (0 means no filtering), got {shown(v)}")
    return v


Temperature = Annotated[float, AfterValidator(_check_temperature)]
TopP = Annotated[float, AfterValidator(_check_top_p)]
TopK = Annotated[int, AfterValidator(_check_top_k)]
MinP = Annotated[float, AfterValidator(_check_min_p)]


class _Knobs(BaseModel):
    """What every kind of setting shares: its knobs are its fields, each with its neutral value as default."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    CORE: ClassVar[tuple[str, ...]] = ()  # knobs every cache key names, set or not

    def params(self) -> dict[str, float | int | str]:
        """Every knob's value (the samples table's setting columns)."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    def set_knobs(self) -> list[str]:
        """The knobs this setting sets away from their neutral value (temperature: away from 1), in field order."""
        return [name for name, f in type(self).model_fields.items() if getattr(self, name) != f.default]

    def key_params(self) -> dict[str, float | int | str]:
        """What identifies the setting in a sample cache key: the core knobs, and any other knob that is set (so
        that a knob added to evalkit changes no key of a setting that does not use it)."""
        set_ = set(self.set_knobs())
        return {k: v for k, v in self.params().items() if k in self.CORE or k in set_}


def knob_type(name: str) -> object:
    """The type of Setting's knob ``name`` with its validators, for a model that reads the knob elsewhere (a grid
    axis, a scored file's line): a value there is checked as a setting checks it."""
    field = Setting.model_fields[name]
    return Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation


def shown_knobs(settings: list) -> list[str]:
    """The knobs a table of ``settings`` shows (summary.csv, the report): the core ones, and each other knob that
    some setting sets (a grid that uses no chain order has no order column)."""
    if not settings:
        return list(Setting.CORE)
    kind = type(settings[0])
    used = {k for s in settings for k in s.set_knobs()}
    return [k for k in kind.model_fields if k in kind.CORE or k in used]


class Setting(_Knobs):
    """One point of the text sampling grid. Immutable and hashable, with a stable short id."""

    CORE: ClassVar[tuple[str, ...]] = CORE_KNOBS

    temperature: Temperature = 1.0  # >= 0; 0 = greedy
    top_p: TopP = 1.0  # (0, 1]; 1 = off
    top_k: TopK = 0  # >= 0; 0 = off
    min_p: MinP = 0.0  # [0, 1); 0 = off
    order: OrderName = AUTO_ORDER  # the chain order (ORDERS); auto = the backend's own

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def id(self) -> str:
        """Stable short id such as ``t0.7-p0.9`` (``-k40``, ``-m0.05``, ``-ovllm`` only when active)."""
        parts = [f"t{_fmt(self.temperature)}", f"p{_fmt(self.top_p)}"]
        if self.top_k:
            parts.append(f"k{self.top_k}")
        if self.min_p:
            parts.append(f"m{_fmt(self.min_p)}")
        if self.order != AUTO_ORDER:
            parts.append(f"o{self.order}")
        return "-".join(parts)

    def chain(self, backend_order: str) -> tuple[str, ...]:
        """The knobs in the order they apply, with ``auto`` read as ``backend_order``."""
        return ORDERS[backend_order if self.order == AUTO_ORDER else self.order]

    def __str__(self) -> str:
        return self.id


# --------------------------------------------------------------------------- text-to-image
# One point of a text-to-image grid: guidance scale, step count, and the scheduler (by name,
# with its stochasticity parameter eta where it has one).

# scheduler name -> diffusers class name; the scheduler is built from the pipeline's own config
SCHEDULERS = {
    "ddim": "DDIMScheduler",  # deterministic at eta=0, ancestral-like noise for eta > 0
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",  # ancestral: fresh noise at every step
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
}
WITH_ETA = {"ddim"}


class ImageSetting(_Knobs):
    CORE: ClassVar[tuple[str, ...]] = ("guidance_scale", "num_inference_steps", "scheduler", "eta")

    guidance_scale: float = Field(7.5, ge=0, le=100, allow_inf_nan=False)  # classifier-free guidance; <= 1: off
    num_inference_steps: int = Field(30, ge=1, le=1000)
    scheduler: Literal["ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "lms"] = "ddim"
    eta: float = Field(0.0, ge=0, le=1)  # DDIM only: 0 deterministic, 1 DDPM-like noise

    @model_validator(mode="after")
    def _eta_needs_ddim(self) -> ImageSetting:
        if self.eta and self.scheduler not in WITH_ETA:
            raise ValueError(f"eta applies to the ddim scheduler only, not {shown(self.scheduler)}")
        return self

    @property
    def id(self) -> str:
        """Stable short id such as ``g7.5-s30-ddim`` (``-e0.5`` when eta is set)."""
        parts = [f"g{self.guidance_scale:g}", f"s{self.num_inference_steps}", self.scheduler]
        if self.eta:
            parts.append(f"e{self.eta:g}")
        return "-".join(parts)

    def __str__(self) -> str:
        return self.id
