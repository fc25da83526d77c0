"""One translator from pydantic's validation errors to evalkit's one-line ConfigError."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from evalkit.config.schema import BACKEND_NAMES, MODELS, SweepConfig
from evalkit.errors import ConfigError, field_path, shown

SECRET_FIELDS = ("api_key_env",)  # a wrong value here may be the secret itself: never echoed


def config_error(error: ValidationError, source: str, overridden: list[str] = ()) -> ConfigError:
    """Every problem of the config, one line each (the first error of each field), so one run shows them all.
    A problem in a field that ``--set`` gave (``overridden``: its key paths) is said of ``--set``, not the file."""
    errors, seen = [], set()
    for entry in error.errors():
        one = _one(entry, source)
        full = ".".join(p for p in (one.path, _unknown_key(entry)) if p)
        if full and any(full == k or full.startswith((k + ".", k + "[")) or k.startswith(full + ".")
                        for k in overridden):
            one = ConfigError(one.detail, source="--set", path=one.path)
        if full not in seen:  # each unknown key of a section is a problem of its own
            seen.add(full)
            errors.append(one)
    if len(errors) == 1:
        return errors[0]
    combined = ConfigError(errors[0].detail, source=source, path=errors[0].path)
    combined.args = ("\n".join(str(e) for e in errors),)
    combined.lines = [str(e) for e in errors]
    return combined


def _unknown_key(entry: dict) -> str | None:
    return str(entry["loc"][-1]) if entry["type"] == "extra_forbidden" else None


def _one(first: dict, source: str) -> ConfigError:
    tagged = tuple(first["loc"])
    loc = _untagged(tagged)
    path = _loc_to_path(loc)
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        name = str(loc[-1])
        known = _fields_at(tagged[:-1])
        hint = difflib.get_close_matches(name, known, n=1)
        msg = f"unknown key {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint
                                         else f" (valid keys: {', '.join(known)})")
        path = _loc_to_path(loc[:-1]) or None
    else:
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] in ("model_type", "dict_type"):  # "a valid dictionary or instance of GridConfig"
            msg = "should be a mapping of keys (key: value, one per line or in {...})"
        if first["type"] == "backend" and not isinstance(value, dict):  # not a section at all
            msg = "should be a mapping of keys (key: value, one per line or in {...})"
        elif first["type"] == "backend":  # the model section's union: no member has this backend
            path, value = f"{path}.backend", value.get("backend")
        head, sep, rest = msg.partition(": ")
        # a model's own check naming one of its fields ("gguf_file: ..."; the model section: any backend's field)
        if sep and (head in _fields_at(tagged) or (path == "model" and any(head in m.model_fields for m in MODELS))):
            path, msg = f"{path}.{head}" if path else head, rest
        if "got " not in msg and first["type"] != "missing" and not path.endswith(SECRET_FIELDS):
            msg = msg.rstrip(".")
            msg += f", got {_short(value)}"
    return ConfigError(msg, source=source, path=path or None)


def _untagged(loc: tuple) -> tuple:
    """``loc`` without the tag pydantic adds for the member of the model section's union (its backend)."""
    return tuple(p for i, p in enumerate(loc) if not (i and loc[i - 1] == "model" and p in BACKEND_NAMES))


def _loc_to_path(loc: tuple) -> str:
    return field_path(loc)


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the config model found at ``loc`` (for "did you mean" hints)."""
    model: type[BaseModel] | None = SweepConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        member = {m.BACKEND: m for m in MODELS}.get(str(part)) if issubclass(model, MODELS) else None
        if member is not None:  # the union's tag: the backend's own section
            model = member
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            continue
        model = _model_in(field.annotation)
    return sorted(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None


def _short(value: Any) -> str:
    return shown(value)
