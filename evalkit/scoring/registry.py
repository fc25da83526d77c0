"""The metric registry: names map to metric classes; duplicates are refused, unknown
names get a "did you mean". Built-ins come from ``evalkit_metrics.BUILTINS``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from evalkit.config import MetricSpec
from evalkit.config.schema import bools_as_numbers
from evalkit.errors import ConfigError, EvalkitError, first_error, shown
from evalkit.scoring.metric import Metric, set_named_metric_factory


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type[Metric]
    fixed: dict[str, Any]  # parameters the name itself fixes (distinct_2 -> n=2)


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, cls: type[Metric], fixed: dict[str, Any] | None = None) -> None:
        if name in self._entries:
            raise ValueError(f"metric {name!r} is already registered")
        missing = cls.incomplete()
        if missing:
            raise ValueError(f"metric {name!r} ({cls.__name__}) does not define {', '.join(missing)}")
        self._entries[name] = Entry(name, cls, dict(fixed or {}))

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def create(self, spec: MetricSpec, *, where: str = "metrics", source: str | None = None) -> Metric:
        entry = self._entries.get(spec.name)
        if entry is None:
            hint = difflib.get_close_matches(spec.name, self.names(), n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(self.names())})"
            raise ConfigError(f"unknown metric {shown(spec.name)}{suggestion}", source=source, path=where)
        clash = sorted(set(spec.params) & set(entry.fixed))
        if clash:
            raise ConfigError(f"{spec.name!r} fixes {clash[0]}={entry.fixed[clash[0]]}; use 'distinct_n' style "
                              f"family names to set it", source=source, path=where)
        boolean = bools_as_numbers(entry.cls.Params, spec.params)
        if boolean is not None:
            raise ConfigError(f"a number is needed, not true/false, got {shown(spec.params[boolean])}", source=source,
                              path=f"{where}.{boolean}")
        try:
            params = entry.cls.Params.model_validate({**spec.params, **entry.fixed})
        except ValidationError as e:
            field, msg, err = first_error(e)
            value = err.get("input")
            if err["type"] == "extra_forbidden":
                known = ", ".join(entry.cls.Params.model_fields) or "none"
                msg = f"unknown parameter (parameters of {spec.name}: {known})"
            elif isinstance(value, float) and not math.isfinite(value):
                msg = "Input should be a finite number"
            got = "" if "got " in msg else f", got {shown(value)}"
            raise ConfigError(f"{msg}{got}", source=source, path=f"{where}.{field}" if field else where) from None
        return entry.cls(params)

    def create_all(self, specs: list[MetricSpec], source: str | None = None) -> list[Metric]:
        metrics = [self.create(s, where=f"metrics[{i}]", source=source) for i, s in enumerate(specs)]
        seen: dict[str, int] = {}
        for i, m in enumerate(metrics):
            if m.id in seen:
                raise ConfigError(f"metric {m.id} is listed twice (also metrics[{seen[m.id]}])", source=source,
                                  path=f"metrics[{i}]")
            seen[m.id] = i
        return metrics


def prepare_all(metrics: list[Metric], source: str | None = None) -> None:
    """Load every metric's resources (embedders, CLIP models) now, before any generation; a resource
    that cannot be had is reported with the config file and the metric's place in it."""
    for i, m in enumerate(metrics):
        try:
            m.prepare()
        except ConfigError:
            raise
        except EvalkitError as e:
            raise ConfigError(str(e), source=source, path=f"metrics[{i}]") from None


def require_checks(metrics: list[Metric], checks, source: str | None = None, where: str = "metrics[{}]") -> None:
    """Refuse a metric that judges answers or runs tests where no prompt carries any."""
    checks = list(checks)
    offered = {"answers": any(c.answer is not None for c in checks), "tests": any(c.tests is not None for c in checks)}
    for i, m in enumerate(metrics):
        for need, what in (("answers", "an answer"), ("tests", "tests")):
            if need in m.requires() and not offered[need]:
                raise ConfigError(f"{m.id} needs prompts with {what}, and no prompt has {what}", source=source,
                                  path=where.format(i))


ENTRY_POINT_GROUP = "evalkit.metrics"


def default_registry() -> Registry:
    """Built-in metrics, then third-party ones from the ``evalkit.metrics`` entry-point group.

    An entry point names a :class:`~evalkit.scoring.metric.Metric` subclass; its entry-point name is
    its registry name. A name that is already taken is refused.
    """
    from importlib.metadata import entry_points

    from evalkit_metrics import BUILTINS

    registry = Registry()
    for name, (cls, fixed) in BUILTINS.items():
        registry.register(name, cls, fixed)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            cls = ep.load()
        except Exception as e:  # a broken plugin is the user's to fix: say which one
            raise EvalkitError(f"metric plugin {ep.name!r} ({ep.value}) failed to load: "
                               f"{type(e).__name__}: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, Metric)):
            raise EvalkitError(f"metric plugin {ep.name!r} ({ep.value}) is not a Metric subclass")
        if ep.name in registry.names():
            raise EvalkitError(f"metric plugin {ep.name!r} ({ep.value}) clashes with a metric of the same name")
        if cls.incomplete():
            raise EvalkitError(f"metric plugin {ep.name!r} ({ep.value}) does not define {', '.join(cls.incomplete())}")
        registry.register(ep.name, cls)
    return registry


def _named(text: str) -> Metric:
    return default_registry().create(MetricSpec.model_validate(text), where=text)


set_named_metric_factory(_named)
