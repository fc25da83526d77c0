"""Metrics that read another metric of the same group: a metric named by a parameter (``quality=accuracy``,
``metric=distinct_2``, or with its own parameters ``self_bleu[n=4]`` in a YAML mapping), built by the registry
as if listed in ``metrics:``, and each sample's value from its per-sample scores (``Score.per_sample``)."""

from __future__ import annotations

import math
from dataclasses import replace

from evalkit.errors import ConfigError, EvalkitError
from evalkit.scoring.metric import Group, Metric, Score, named_metric


def build(text: str) -> Metric:
    """The metric that ``text`` names (``name`` or ``name[key=value,...]``); ValueError with the registry's
    message when there is none, for the caller's parameter validation."""
    try:
        metric = named_metric(text)
    except ConfigError as e:
        raise ValueError(f"{e.path}: {e.detail}" if e.path != text else e.detail) from None
    except (EvalkitError, ValueError) as e:
        raise ValueError(str(e)) from None
    if metric.pooled:
        raise ValueError(f"{metric.id} pools the prompts of a setting; a per-group metric is needed")
    return metric


def validated(text: str) -> str:
    """A pydantic validator's check of a metric named by a parameter."""
    build(text)
    return text


def per_sample(metric: Metric, group: Group) -> tuple[tuple[float, ...] | None, Score]:
    """Each sample's value of ``metric`` (None where it gives none) and its group score."""
    score = metric.compute(group)
    values = score.per_sample
    if values is not None and len(values) != len(group.texts or group.images):
        values = None
    return values, score


def passing(values: tuple[float, ...], at_least: float) -> list[bool]:
    """Which samples' values reach ``at_least`` (an undefined value never does)."""
    return [not math.isnan(v) and v >= at_least for v in values]


def subgroup(group: Group, keep: list[bool]) -> Group:
    """The group with only the samples ``keep`` marks, in their order (each per-sample field filtered alike)."""
    def pick(items):
        return tuple(x for x, k in zip(items, keep) if k) if len(items) == len(keep) else items

    stats = {k: pick(v) for k, v in group.stats.items()}
    return replace(group, texts=pick(group.texts), token_ids=pick(group.token_ids), num_tokens=pick(group.num_tokens),
                   images=pick(group.images), stats=stats)
