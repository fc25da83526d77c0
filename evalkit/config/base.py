"""What every section of the sweep config shares: the strict pydantic base (no unknown keys, finite numbers,
no true/false for a number, valid Unicode text) and the test of whether a field was set."""

from __future__ import annotations

import functools
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, model_validator

from evalkit.errors import shown


def wants_number(annotation: Any) -> bool:
    """Whether a field's type is a number (or a list of them), and not also true/false."""
    if annotation in (int, float):
        return True
    if annotation is bool:
        return False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return wants_number(args[0])
    return any(wants_number(a) for a in args) and bool not in args


def refuse_bools_as_numbers(model: type[BaseModel], data: Any) -> None:
    """Raise (in a pydantic validator) where true/false stands for a number in ``data``."""
    name = bools_as_numbers(model, data)
    if name is not None:
        raise ValueError(f"{name}: a number is needed, not true/false, got {shown(data[name])}")


def bools_as_numbers(model: type[BaseModel], data: Any) -> str | None:
    """The first field of ``data`` where true/false stands for a number (pydantic would read it as 1/0)."""
    if not isinstance(data, dict):
        return None
    numeric = _numeric_fields(model)
    for name, value in data.items():
        values = value if isinstance(value, list) else [value]
        if name in numeric and any(isinstance(v, bool) for v in values):
            return name
    return None


@functools.cache
def _numeric_fields(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(name for name, f in model.model_fields.items() if wants_number(f.annotation))


LONE_SURROGATE = "not valid Unicode text (a lone surrogate, as from an escape such as \\ud800)"


def encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode (no lone surrogate, as a JSON or YAML escape such as \\ud800 makes)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # every number finite

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data: Any) -> Any:
        refuse_bools_as_numbers(cls, data)
        for name, value in data.items() if isinstance(data, dict) else ():
            for text in (value if isinstance(value, list) else [value])[:10_000]:
                if isinstance(text, str) and not encodable(text):
                    raise ValueError(f"{name}: {LONE_SURROGATE}, got {shown(text)}")
        return data


def _changed(model: BaseModel, name: str) -> bool:
    """Whether a field was given a value other than its default (a resolved config lists every field)."""
    default = type(model).model_fields[name].get_default(call_default_factory=True)
    return name in model.model_fields_set and getattr(model, name) != default
