"""The points of a grid: one validated, immutable object per setting, for each kind of sweep.

Text (:class:`Setting`): every sampler people compare, as knobs, and the order of the chain that applies them.
Conventions follow transformers ``GenerationConfig``, vLLM ``SamplingParams`` and llama.cpp's ``common_params``;
each knob has a neutral ("off") value, its default:

- ``temperature`` 0, or between 1e-6 and 1e4; 0 means greedy decoding (argmax), the other filters are then moot.
- ``top_p`` in (0, 1]; ``typical_p`` in (0, 1]: 1 means off.
- ``top_k`` >= 0; ``min_p``, ``epsilon_cutoff``, ``eta_cutoff`` in [0, 1); ``top_n_sigma`` >= 0: 0 means off.
- ``xtc_probability`` in [0, 1] (0: off) with ``xtc_threshold`` in (0, 0.5].
- ``dry_multiplier`` >= 0 (0: off) with ``dry_base`` >= 1, ``dry_allowed_length`` >= 0, ``dry_penalty_last_n``
  (-1: the whole context, else >= 1) and ``dry_sequence_breakers`` (non-empty strings).
- ``mirostat`` 0 (off), 1 or 2, with ``mirostat_tau`` > 0 and ``mirostat_eta`` > 0; it replaces the truncation
  samplers (as in llama.cpp), so it takes no other knob but the temperature.
- ``repetition_penalty`` > 0 (1: off); ``presence_penalty``, ``frequency_penalty`` in [-2, 2] (0: off);
  ``penalty_scope``: which tokens the penalties count: ``auto`` (each engine's own), ``prompt+output``,
  ``output``, or an integer N, the last N tokens of prompt and output.
- ``no_repeat_ngram_size`` >= 0 and ``min_tokens`` >= 0: 0 means off.
- ``order``: the chain order, by name (:data:`ORDERS`) or as an explicit list of stages; ``auto`` (the default)
  is the backend's own order.

A knob that only qualifies another (``xtc_threshold`` of ``xtc_probability``, the ``dry_*`` of
``dry_multiplier``, ``mirostat_tau``/``_eta`` of ``mirostat``, ``penalty_scope`` of the penalties) is refused
when the knob it qualifies is off; a grid's lists leave it at its default in the points where that knob is off.

The chain: a list of stages, each one knob (its main knob: ``xtc_probability`` for XTC, ``dry_multiplier`` for
DRY, ``mirostat``) or a list of filters computed jointly on the same distribution (SGLang's top-k/top-p/min-p
kernel). Every engine applies its own order (:data:`ORDERS`); transformers and vLLM divide by the temperature
before truncating, llama.cpp truncates first and divides last; vLLM applies min-p before top-k and top-p;
SGLang computes top-k, top-p and min-p on one distribution. A named order holds the knobs its engine has; a
setting that sets a knob its order lacks is refused, naming the orders that have it.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, ClassVar, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from evalkit.errors import shown

Stage = tuple[str, ...]  # knobs applied together: one knob, or filters computed jointly on one distribution
Chain = tuple[Stage, ...]


def _chain(*stages: str | tuple[str, ...]) -> Chain:
    return tuple((s,) if isinstance(s, str) else tuple(s) for s in stages)


# The chain orders, by name: the stages of a text setting in the order an engine applies them, holding exactly the
# knobs that engine has. A new knob is a field of Setting, its place in each order that has it, and one transform
# in evalkit.generation.sampling.
ORDERS: dict[str, Chain] = {
    # transformers' GenerationMixin._get_logits_processor: processors (repetition penalty, no-repeat n-grams, min new
    # tokens), then the warpers: temperature, top-k, top-p, min-p, typical, epsilon, eta. evalkit's engine's own.
    "transformers": _chain("repetition_penalty", "no_repeat_ngram_size", "min_tokens", "temperature", "top_k",
                           "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"),
    # vllm.v1.sample.sampler.Sampler: the logits processors that can change the argmax (min tokens), the penalties,
    # the temperature, the argmax-invariant processors (min-p), then top-k and top-p. top-k commutes with min-p
    # (both keep a token by its own rank or ratio), top-p does not: it renormalizes.
    "vllm": _chain("min_tokens", "repetition_penalty", "frequency_penalty", "presence_penalty", "temperature",
                   "min_p", "top_k", "top_p"),
    # llama.cpp's common_params_sampling default chain: penalties, DRY, top-n-sigma, top-k, typical, top-p, min-p,
    # XTC, temperature, then the draw (mirostat replaces the truncation samplers: temperature, then mirostat).
    "llama_cpp": _chain("repetition_penalty", "frequency_penalty", "presence_penalty", "dry_multiplier",
                        "top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc_probability", "temperature",
                        "mirostat"),
    # SGLang: penalties before the temperature, then one kernel that computes top-k, top-p and min-p on the same
    # (temperature-scaled) probabilities: top-p is not renormalized after top-k.
    "sglang": _chain("min_tokens", "repetition_penalty", "frequency_penalty", "presence_penalty", "temperature",
                     ("top_k", "top_p", "min_p")),
}
AUTO_ORDER = "auto"  # a setting's order when it names none: the backend's own
OrderName = Literal["auto", "transformers", "vllm", "llama_cpp", "sglang"]
APPLICATION_ORDER = ORDERS["transformers"]
VLLM_ORDER = ORDERS["vllm"]
CORE_KNOBS = ("temperature", "top_p", "top_k", "min_p")  # the knobs every setting's record names, set or not

# A knob that only qualifies another: refused when that one is off.
QUALIFIES: dict[str, tuple[str, ...]] = {
    "xtc_threshold": ("xtc_probability",),
    "dry_base": ("dry_multiplier",), "dry_allowed_length": ("dry_multiplier",),
    "dry_penalty_last_n": ("dry_multiplier",), "dry_sequence_breakers": ("dry_multiplier",),
    "mirostat_tau": ("mirostat",), "mirostat_eta": ("mirostat",),
    "penalty_scope": ("repetition_penalty", "presence_penalty", "frequency_penalty"),
}
STAGE_KNOBS = frozenset(k for chain in ORDERS.values() for stage in chain for k in stage)  # what a stage names
PENALTIES = ("repetition_penalty", "presence_penalty", "frequency_penalty")
# The scope each order's engine gives a penalty when penalty_scope is auto (llama.cpp: penalty_last_n = 64).
AUTO_SCOPE: dict[str, dict[str, str | int]] = {
    "transformers": {"repetition_penalty": "prompt+output"},
    "vllm": {"repetition_penalty": "prompt+output", "presence_penalty": "output", "frequency_penalty": "output"},
    "sglang": {"repetition_penalty": "prompt+output", "presence_penalty": "output", "frequency_penalty": "output"},
    "llama_cpp": {k: 64 for k in PENALTIES},
    "explicit": {"repetition_penalty": "prompt+output", "presence_penalty": "output", "frequency_penalty": "output"},
}


def _fmt(x: float) -> str:
    text = repr(float(x))
    text = text[:-2] if text.endswith(".0") else text
    return "m" + text[1:] if text.startswith("-") else text  # a minus would read as the id's separator


def _finite(name: str, v: float, low: float, high: float, what: str, low_open=False, high_open=False) -> float:
    ok = math.isfinite(v) and (low < v if low_open else low <= v) and (v < high if high_open else v <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        span = f"{lo}{low:g}, {high:g}{hi}" if math.isfinite(high) else (f"> {low:g}" if low_open else f">= {low:g}")
        raise ValueError(f"{name} must be {'in ' if math.isfinite(high) else ''}{span} ({what}), got {shown(v)}")
    return v + 0.0


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


def _count(name: str, off: str, low: int = 0):
    def check(v: int) -> int:
        if v < low:
            raise ValueError(f"{name} must be >= {low} ({off}), got {shown(v)}")
        if v > TOP_K_MAX:
            raise ValueError(f"{name} must be at most {TOP_K_MAX}, got {shown(v)}")
        return v
    return check


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


def _unit(name: str, off: str, *, low_open=False, high_open=True, low=0.0, high=1.0):
    return AfterValidator(lambda v: _finite(name, v, low, high, off, low_open, high_open))


def _check_mirostat(v: int) -> int:
    if v not in (0, 1, 2):
        raise ValueError(f"mirostat must be 0 (off), 1 or 2 (its version), got {shown(v)}")
    return v


def _check_dry_last_n(v: int) -> int:
    if v == 0 or v < -1 or v > TOP_K_MAX:
        raise ValueError(f"dry_penalty_last_n must be -1 (the whole context) or a count >= 1 (to switch DRY off, set "
                         f"dry_multiplier 0), got {shown(v)}")
    return v


def _check_breakers(v: tuple[str, ...]) -> tuple[str, ...]:
    if any(not b for b in v):
        raise ValueError("dry_sequence_breakers must be non-empty strings, got an empty one")
    return tuple(v)


def _read_order(v):
    """An order as written: a name, a line of stages (``top_k+top_p > temperature``, as params() writes it), or a
    list of stages (YAML)."""
    if isinstance(v, str) and v not in ORDER_NAMES:
        return parse_order(v)
    if isinstance(v, list | tuple):
        return _check_order(tuple(tuple(s) if isinstance(s, list | tuple) else s for s in v))
    return v


def _read_scope(v):
    return int(v) if isinstance(v, str) and v.isdigit() else v  # "64", as params() writes it


def _read_breakers(v):
    if isinstance(v, str):  # the JSON list params() writes
        try:
            v = json.loads(v)
        except ValueError:
            raise ValueError(f"dry_sequence_breakers must be a list of strings, got {shown(v)}") from None
    return v


def _check_scope(v: str | int) -> str | int:
    if isinstance(v, bool) or (isinstance(v, int) and not 1 <= v <= TOP_K_MAX):
        raise ValueError(f"penalty_scope must be auto, prompt+output, output, or a token count >= 1 (the last N "
                         f"tokens), got {shown(v)}")
    return v


def _check_order(v: str | tuple) -> str | Chain:
    if isinstance(v, str):
        return v
    stages = _chain(*v)
    seen: list[str] = []
    for stage in stages:
        for knob in stage:
            if knob not in STAGE_KNOBS:
                raise ValueError(f"order: {shown(knob)} is not a stage of the chain (stages: "
                                 f"{', '.join(sorted(STAGE_KNOBS))})")
            if knob in seen:
                raise ValueError(f"order: {knob} is listed twice")
            seen.append(knob)
        if len(stage) > 1 and not set(stage) <= JOINT_FILTERS:
            raise ValueError(f"order: only filters can share a stage ({', '.join(sorted(JOINT_FILTERS))}), got "
                             f"{list(stage)}")
    if not stages:
        raise ValueError("order: an explicit order lists at least one stage")
    return stages


ORDER_NAMES = ("auto", *ORDERS)


def order_text(order: str | Chain) -> str:
    """An order as one line: its name, or its stages joined by " > " (a joint stage's filters by "+")."""
    return order if isinstance(order, str) else " > ".join(chain_labels(order))


def parse_order(text: str) -> Chain:
    """The stages of an order written as one line (``top_k+top_p > temperature``); refused when it names no stage."""
    stages = [tuple(k.strip() for k in stage.split("+")) for stage in text.split(">")]
    if len(stages) == 1 and len(stages[0]) == 1 and stages[0][0] not in STAGE_KNOBS:
        raise ValueError(f"order must be one of {', '.join(ORDER_NAMES)} or a list of stages, got {shown(text)}")
    return _check_order(tuple(stages))


JOINT_FILTERS = frozenset({"top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_n_sigma"})

Temperature = Annotated[float, AfterValidator(_check_temperature)]
TopP = Annotated[float, AfterValidator(_check_top_p)]
TopK = Annotated[int, AfterValidator(_check_top_k)]
MinP = Annotated[float, AfterValidator(_check_min_p)]
OrderList = tuple[Union[str, tuple[str, ...]], ...]
DEFAULT_BREAKERS = ("\n", ":", '"', "*")  # llama.cpp's


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


# Each knob's part of a setting id, beyond the core four: a short tag and its value (shown only when set).
ID_TAGS = {"typical_p": "ty", "epsilon_cutoff": "ep", "eta_cutoff": "et", "top_n_sigma": "ns",
           "xtc_probability": "xp", "xtc_threshold": "xt", "dry_multiplier": "dm", "dry_base": "db",
           "dry_allowed_length": "dl", "dry_penalty_last_n": "dn", "dry_sequence_breakers": "ds",
           "mirostat": "mi", "mirostat_tau": "mtau", "mirostat_eta": "meta", "repetition_penalty": "rp",
           "presence_penalty": "pp", "frequency_penalty": "fp", "penalty_scope": "ps",
           "no_repeat_ngram_size": "nr", "min_tokens": "mn"}
_STAGE_TAGS = {"temperature": "t", "top_p": "p", "top_k": "k", "min_p": "m", **ID_TAGS}


def _id_value(name: str, v) -> str:
    if name == "dry_sequence_breakers":
        return hashlib.blake2b("\x1f".join(v).encode(), digest_size=3).hexdigest()
    if name == "penalty_scope":
        return {"prompt+output": "all", "output": "out"}.get(v, str(v))
    if name == "dry_penalty_last_n" and v == -1:
        return "all"
    return _fmt(v) if isinstance(v, float) else str(v)


class Setting(_Knobs):
    """One point of the text sampling grid. Immutable and hashable, with a stable short id."""

    CORE: ClassVar[tuple[str, ...]] = CORE_KNOBS

    temperature: Temperature = 1.0  # >= 0; 0 = greedy
    top_p: TopP = 1.0  # (0, 1]; 1 = off
    top_k: TopK = 0  # >= 0; 0 = off
    min_p: MinP = 0.0  # [0, 1); 0 = off
    order: Annotated[Union[OrderName, OrderList], BeforeValidator(_read_order)] = AUTO_ORDER  # ORDERS, or stages
    typical_p: Annotated[float, _unit("typical_p", "1 means off", low_open=True, high_open=False)] = 1.0
    epsilon_cutoff: Annotated[float, _unit("epsilon_cutoff", "0 means off")] = 0.0
    eta_cutoff: Annotated[float, _unit("eta_cutoff", "0 means off")] = 0.0
    top_n_sigma: Annotated[float, _unit("top_n_sigma", "0 means off", high=math.inf, high_open=False)] = 0.0
    xtc_probability: Annotated[float, _unit("xtc_probability", "0 means off", high_open=False)] = 0.0
    xtc_threshold: Annotated[float, _unit("xtc_threshold", "above 0.5 XTC removes nothing", low_open=True,
                                          high=0.5, high_open=False)] = 0.1
    dry_multiplier: Annotated[float, _unit("dry_multiplier", "0 means off", high=math.inf, high_open=False)] = 0.0
    dry_base: Annotated[float, _unit("dry_base", "the penalty's growth per repeated token", low=1.0,
                                     high=math.inf, high_open=False)] = 1.75
    dry_allowed_length: Annotated[int, AfterValidator(_count("dry_allowed_length", "repeats this long are free"))] = 2
    dry_penalty_last_n: Annotated[int, AfterValidator(_check_dry_last_n)] = -1
    dry_sequence_breakers: Annotated[tuple[str, ...], BeforeValidator(_read_breakers),
                                     AfterValidator(_check_breakers)] = DEFAULT_BREAKERS
    mirostat: Annotated[int, AfterValidator(_check_mirostat)] = 0
    mirostat_tau: Annotated[float, _unit("mirostat_tau", "the target surprise in bits", low_open=True,
                                         high=math.inf, high_open=False)] = 5.0
    mirostat_eta: Annotated[float, _unit("mirostat_eta", "the learning rate", low_open=True, high_open=False)] = 0.1
    repetition_penalty: Annotated[float, _unit("repetition_penalty", "1 means off", low_open=True, high=math.inf,
                                               high_open=False)] = 1.0
    presence_penalty: Annotated[float, _unit("presence_penalty", "0 means off", low=-2.0, high=2.0,
                                             high_open=False)] = 0.0
    frequency_penalty: Annotated[float, _unit("frequency_penalty", "0 means off", low=-2.0, high=2.0,
                                              high_open=False)] = 0.0
    penalty_scope: Annotated[Union[Literal["auto", "prompt+output", "output"], int], BeforeValidator(_read_scope),
                             AfterValidator(_check_scope)] = "auto"
    no_repeat_ngram_size: Annotated[int, AfterValidator(_count("no_repeat_ngram_size", "0 means off"))] = 0
    min_tokens: Annotated[int, AfterValidator(_count("min_tokens", "0 means off"))] = 0

    @model_validator(mode="after")
    def _consistent(self) -> Setting:
        for knob, qualified in QUALIFIES.items():
            if knob in self.set_knobs() and not any(k in self.set_knobs() for k in qualified):
                raise ValueError(f"{knob} applies only when {' or '.join(qualified)} is set, and it is not")
        if self.mirostat:
            other = [k for k in self.set_knobs() if k not in ("temperature", "order", "mirostat", "mirostat_tau",
                                                               "mirostat_eta")]
            if other:
                raise ValueError(f"mirostat replaces the truncation samplers (as in llama.cpp): it takes no {other[0]}")
        if not isinstance(self.order, str):
            listed = {k for stage in self.order for k in stage}
            missing = [k for k in self.stage_knobs() if k not in listed]
            if missing:
                raise ValueError(f"order lists no stage for {missing[0]}, which this setting sets")
        return self

    def params(self) -> dict[str, float | int | str]:
        """Every knob's value as a scalar (the samples table's setting columns, the manifest): an explicit order as
        its stages joined (``top_k+top_p > temperature``), the penalty scope as text, the DRY sequence breakers as a
        JSON list. A Setting reads each form back."""
        out = super().params()
        out["order"] = order_text(self.order)
        out["penalty_scope"] = str(self.penalty_scope)
        out["dry_sequence_breakers"] = json.dumps(list(self.dry_sequence_breakers), ensure_ascii=False)
        return out

    def stage_knobs(self) -> list[str]:
        """The chain stages this setting activates (the temperature only when it is not 1)."""
        return [k for k in self.set_knobs() if k in STAGE_KNOBS]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def id(self) -> str:
        """Stable short id such as ``t0.7-p0.9`` (``-k40``, ``-m0.05``, ``-ovllm``, and a tag per other knob, only
        when set: ``-ty0.9``, ``-rp1.1``, ...)."""
        parts = [f"t{_fmt(self.temperature)}", f"p{_fmt(self.top_p)}"]
        if self.top_k:
            parts.append(f"k{self.top_k}")
        if self.min_p:
            parts.append(f"m{_fmt(self.min_p)}")
        if self.order != AUTO_ORDER:
            parts.append("o" + (self.order if isinstance(self.order, str) else
                                "_".join("".join(_STAGE_TAGS[k] for k in stage) for stage in self.order)))
        set_ = set(self.set_knobs())
        parts += [f"{tag}{_id_value(name, getattr(self, name))}" for name, tag in ID_TAGS.items() if name in set_]
        return "-".join(parts)

    def chain(self, backend_order: str) -> Chain:
        """The stages in the order they apply, with ``auto`` read as ``backend_order``."""
        if isinstance(self.order, tuple):
            return self.order
        return ORDERS[backend_order if self.order == AUTO_ORDER else self.order]

    def order_name(self, backend_order: str) -> str:
        """The named order that applies (``explicit`` for a list of stages)."""
        if isinstance(self.order, tuple):
            return "explicit"
        return backend_order if self.order == AUTO_ORDER else self.order

    def scope(self, penalty: str, backend_order: str) -> str | int:
        """Which tokens ``penalty`` counts: ``prompt+output``, ``output`` or N (the last N of prompt and output)."""
        if self.penalty_scope != "auto":
            return self.penalty_scope
        return AUTO_SCOPE[self.order_name(backend_order)].get(penalty, "prompt+output")

    def missing_in_order(self, backend_order: str) -> str | None:
        """The first knob this setting sets that its chain has no stage for (None: the chain has them all)."""
        listed = {k for stage in self.chain(backend_order) for k in stage}
        return next((k for k in self.stage_knobs() if k not in listed), None)

    def __str__(self) -> str:
        return self.id


def chain_labels(chain: Chain) -> tuple[str, ...]:
    """A chain as the manifest and ``evalkit backends`` write it: one name per stage, a joint stage's joined by +."""
    return tuple("+".join(stage) for stage in chain)


def orders_with(knob: str) -> list[str]:
    """The named orders that have a stage for ``knob``."""
    return [name for name, chain in ORDERS.items() if any(knob in stage for stage in chain)]


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
