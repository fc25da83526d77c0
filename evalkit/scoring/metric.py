"""The metric plugin interface.

A metric declares what it needs from the samples (``needs``), takes validated
parameters (``Params``), and returns one :class:`Score` per group: the samples of one
prompt under one setting, plus per-sample values where they mean something.
Its output name carries every parameter that changes the number
(``distinct_2[tok=words]``), so two definitions never share a column.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from evalkit.checks import Checks
from evalkit.errors import EvalkitError
from evalkit.references import ReferenceSet
from evalkit.settings import Setting

# token_counts: each sample's number of new model tokens; token_stats: the engine's full per-token statistics
# (both distributions); model_logprobs: the chosen token's log-probability under the model; top_logprobs: the
# top-N log-probabilities a server returns; answers, tests: the prompts' checks (evalkit.checks);
# reference_texts, reference_images: a run's references (evalkit.references); model_features: the model's final
# hidden state of each text (samples and references), where the model runs in the process
NEEDS = frozenset({"texts", "token_ids", "token_counts", "token_stats", "model_logprobs", "top_logprobs", "prompts",
                   "images", "prompt_images", "references", "answers", "tests", "reference_texts",
                   "reference_images", "model_features"})
CHECK_NEEDS = frozenset({"answers", "tests"})  # what prompts with checks offer (every kind whose samples are texts)
# what a references section can offer (whether it does is checked against the run's references)
REFERENCE_NEEDS = frozenset({"reference_texts", "reference_images"})
VLM_NEEDS = frozenset({"prompt_images", "references"})  # what image-to-text samples add: the image, its captions
# what a run's samples offer is its kind's (evalkit.kinds) and its backend's (BackendSpec.needs, evalkit backends)


@dataclass(frozen=True)
class Group:
    """The samples of one prompt under one setting, in sample-index order."""

    prompt_id: str
    prompt: str
    setting: Setting
    texts: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    num_tokens: tuple[int, ...] = ()  # each sample's new model tokens (also where token_ids are unknown: served)
    # per-token statistics from the engine, by column name (logprob_model, entropy_sampling, ...);
    # empty when the samples came without them
    stats: dict[str, tuple[tuple[float, ...], ...]] = field(default_factory=dict)
    images: tuple[str, ...] = ()  # image file of each sample (image sweeps); empty for text
    prompt_image: str | None = None  # the image the samples answer (vision-language sweeps)
    references: tuple[str, ...] = ()  # reference captions of that image
    checks: Checks | None = None  # the prompt's answer or tests, where it carries them
    reference_set: ReferenceSet | None = None  # the run's references (texts or images), where it has some
    # the model's features of the run's texts by (prompt id, text), samples and references alike ("" for the
    # corpus): shared by every group; None unless a metric asked for them
    features: Mapping[tuple[str, str], np.ndarray] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Score:
    """A group's value; NaN only with a ``reason`` (never a silent 0)."""

    value: float
    reason: str | None = None
    per_sample: tuple[float, ...] | None = None
    per_sample_reasons: tuple[str | None, ...] | None = None  # why a sample's value is what it is, where one says

    def __post_init__(self):
        if math.isnan(self.value) and not self.reason:
            raise ValueError("a NaN score needs a reason")

    @classmethod
    def undefined(cls, reason: str, per_sample: tuple[float, ...] | None = None) -> Score:
        return cls(float("nan"), reason, per_sample)

    @classmethod
    def mean_of(cls, per_sample, reason: str) -> Score:
        """The mean of the defined (non-NaN) per-sample values; undefined with ``reason`` if none is."""
        values = tuple(float(v) for v in per_sample)
        defined = [v for v in values if not math.isnan(v)]
        if not defined:
            return cls.undefined(reason, per_sample=values)
        return cls(sum(defined) / len(defined), per_sample=values)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metric(abc.ABC):
    """Base class of a metric plugin.

    A plugin writes four members: ``name``, ``definition``, ``reference`` and ``compute(group) -> Score``;
    it may set ``Params`` (a pydantic model of its parameters), ``needs`` (a frozenset, or a property when
    it depends on the parameters), how reports read it (``kind``, ``direction``, ``scale``), and
    ``prepare``/``prepare_groups`` for resources and batched work. Everything else is derived.
    """

    name: ClassVar[str]  # registry name of the family, e.g. "distinct_n"
    definition: ClassVar[str]  # one line: what the number is
    reference: ClassVar[str]  # the paper (and reference implementation) it follows
    # what the metric reads from a group (see NEEDS); the one source of truth for what a run must offer
    needs: frozenset[str] = frozenset({"texts"})
    Params: ClassVar[type[BaseModel]] = NoParams
    # How reports read the number: a "diversity" or a "quality" measure, or "descriptive" (length,
    # entropy); direction +1 when a higher value means more diverse / better, -1 when a lower one does.
    kind: ClassVar[Literal["diversity", "quality", "descriptive"]] = "descriptive"
    direction: ClassVar[Literal[1, -1]] = 1
    scale: ClassVar[Literal["linear", "log"]] = "linear"  # how charts draw it (perplexity: log)

    @classmethod
    def incomplete(cls) -> list[str]:
        """What a class lacks to be a metric (the registry refuses it): the members a plugin must write."""
        missing = [a for a in ("name", "definition", "reference") if not isinstance(getattr(cls, a, None), str)]
        return missing + sorted(getattr(cls, "__abstractmethods__", ()))

    def __init__(self, params: BaseModel | None = None):
        self.params = params if params is not None else self.Params()

    @abc.abstractmethod
    def compute(self, group: Group) -> Score:
        """The group's value (and per-sample values where they mean something); NaN only with a reason."""

    def prepare(self) -> None:
        """Load what the metric needs (an embedder, a corpus) before any sample is generated,
        so that a missing resource fails the run at its start, not after generation."""

    def prepare_groups(self, groups: list[Group]) -> None:
        """Work shared by all groups of a run, done once before ``compute`` (batched embedding)."""

    bounds: ClassVar[tuple[float, float]] = (-math.inf, math.inf)  # the values it can take (intervals are clipped)

    @property
    def pooled(self) -> bool:
        """Whether the metric pools the prompts of a setting (one value per setting, not per group): see
        :class:`PooledMetric`."""
        return False

    # Whether the references get a value of this metric too (the human row of a report): metrics that read
    # only what references offer (texts or images, and prompts) have one unless they set this False.
    reference_row: ClassVar[bool] = True

    # ------------------------------------------------------------------ derived

    @property
    def base_name(self) -> str:
        """The name before the signature (``distinct_2``); families may fold a parameter in."""
        return self.name

    def signature(self) -> dict[str, object]:
        """Parameters shown in the output name (all of them, by default)."""
        return self.params.model_dump()

    @property
    def id(self) -> str:
        sig = ",".join(f"{k}={v}" for k, v in self.signature().items())
        return f"{self.base_name}[{sig}]" if sig else self.base_name

    def info(self) -> dict[str, object]:
        """What a report needs to read the number (kept in the run's manifest)."""
        info = {"kind": self.kind, "direction": self.direction, "scale": self.scale, "definition": self.definition}
        if self.pooled:
            info["pooled"] = True  # one value per setting over its prompts (no per-prompt values to pair)
            info["interval"] = "delete-a-group jackknife over prompts"
        if self.requires() & REFERENCE_NEEDS:
            info["against_references"] = True  # a distance to the references (MAUVE, FID): a trade-off axis
        return info

    def requires(self) -> frozenset[str]:
        """What a run must offer this configured metric: ``needs``, and token ids when it tokenizes with
        the model's own tokens (``tok=model``)."""
        extra = {"token_ids"} if getattr(self.params, "tok", None) == "model" else set()
        return frozenset(self.needs) | extra


class PooledMetric(Metric):
    """A metric of a whole set of samples (MAUVE, Zipf's coefficient, FID): it writes ``compute_pooled``, and has
    one value per setting over all its prompts' samples. One with a ``scope`` parameter is computed per group
    instead where ``scope=prompt`` (the same computation on one prompt's samples). Its interval is a
    delete-a-group jackknife over prompts that recomputes the value once per block, with at most
    ``interval_blocks`` blocks (:func:`evalkit.scoring.groups.pooled_intervals`)."""

    interval_blocks: ClassVar[int] = 20

    @property
    def pooled(self) -> bool:
        return getattr(self.params, "scope", "setting") == "setting"

    @abc.abstractmethod
    def compute_pooled(self, groups: list[Group]) -> Score:
        """The value of the samples of all ``groups`` (the prompts of one setting) taken together."""

    def compute(self, group: Group) -> Score:
        return self.compute_pooled([group])

    def for_interval(self, groups: list[Group]) -> PooledMetric:
        """The metric that recomputes the value of ``groups`` on parts of them for its interval: itself, or one
        with a setting that depends on the data's size fixed at the whole data's (MAUVE's cluster count)."""
        return self


# How a metric builds another that its parameters name (``effective[metric=distinct_2]``): the metric registry sets
# it (evalkit.scoring.registry), so that a metric module builds metrics without importing the registry, which
# imports the metric modules.
_named_metric_factory = None


def set_named_metric_factory(factory) -> None:
    """``factory(text)`` -> the :class:`Metric` that ``text`` (``name`` or ``name[key=value,...]``) names."""
    global _named_metric_factory
    _named_metric_factory = factory


def named_metric(text: str) -> Metric:
    """The metric ``text`` names, built by the registry as if listed in a config's ``metrics:``."""
    if _named_metric_factory is None:
        raise EvalkitError(f"{text}: metrics are built by the registry (evalkit.scoring.registry), not loaded yet")
    return _named_metric_factory(text)
