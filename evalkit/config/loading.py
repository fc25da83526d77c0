"""Loading a sweep config: YAML, ``--set`` overrides, validation; errors name the file, the field and the value."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from evalkit.config.errors import config_error
from evalkit.config.schema import MetricSpec, SweepConfig, split_metric
from evalkit.errors import ConfigError, EvalkitError, shown, what_is
from evalkit.inputs import read_regular

MAX_CONFIG_BYTES = 16 * 2**20



def preset_names() -> list[str]:
    folder = resources.files("evalkit_presets")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    if name not in preset_names():
        raise EvalkitError(f"--preset: unknown preset {shown(name)} (presets: {', '.join(preset_names())})")
    return Path(str(resources.files("evalkit_presets") / f"{name}.yaml"))


def load_config(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Read, override and validate a YAML sweep config. Raises ConfigError."""
    path = Path(path)
    source = str(path)
    raw = read_regular(path, "config file")
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file is {len(raw)} bytes, more than {MAX_CONFIG_BYTES}: put prompts in a prompt "
                          "file (prompts: {file: ...})", source=source)
    try:
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file is not UTF-8 (byte {e.start})", source=source) from None
    data = parse_yaml(text, source)
    return config_from_dict(data, source=source, base_dir=path.resolve().parent, overrides=overrides)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys are defaults, not repeats
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a name, got {what_is(key)}", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"invalid YAML at {where}: {e.problem}", source=source) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {str(e).splitlines()[0]}", source=source) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", source=source) from None
    except ValueError as e:  # a number of more than 4300 digits
        why = "a number of more than 4300 digits" if "digits" in str(e) else str(e)[:120]
        raise ConfigError(f"invalid YAML: {why}", source=source) from None
    if data is None:
        raise ConfigError("the file is empty: a sweep config is a YAML mapping with at least name and prompts",
                          source=source)
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of keys at the top level (name: ..., prompts: ...), got "
                          f"{what_is(data)}", source=source)
    return data



def config_from_dict(
    data: dict[str, Any],
    *,
    source: str = "<config>",
    base_dir: Path | str = ".",
    overrides: list[str] | None = None,
) -> SweepConfig:
    data = apply_overrides(data, overrides or [], source)
    try:
        config = SweepConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(e, source, [o.partition("=")[0].strip() for o in overrides or []]) from None
    config._source = source
    config._base_dir = Path(base_dir)
    return config


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; the value is parsed as YAML (``[0.5, 1.0]``, ``4``, ``true``)."""
    data = copy.deepcopy(data)
    if overrides:  # `model: default` and `prompts: [...]` are shorthands; expand them so keys can go below
        if isinstance(data.get("model"), str):
            data["model"] = {"id": data["model"]}
        if isinstance(data.get("prompts"), list):
            data["prompts"] = {"items": data["prompts"]}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"expects KEY.PATH=VALUE, got {shown(item)}", path="--set")
        try:
            value = yaml.load(raw, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            why = str(getattr(e, "problem", None) or "").strip()
            raise ConfigError(f"cannot parse value {shown(raw)} as YAML{': ' + why if why else ''}", source="--set",
                              path=key) from None
        node = data
        parts = key.split(".")
        if any(part.isdigit() for part in parts):
            raise ConfigError("a list is set whole, not by index: give the whole list, as in "
                              "grid.temperature=[0.5,1.0]", source="--set", path=key[:80])
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"'{part}' is not a mapping", source="--set", path=key)
            node = child
        node[parts[-1]] = value
    return data


# --------------------------------------------------------------------------- metrics named on a command line


def metric_list(value: str) -> list[str]:
    """Comma-separated metrics; commas inside brackets separate parameters: ``distinct_2,clip_score[text=sample]``."""
    items, current, depth = [], "", 0
    for char in value:
        if char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            break
        current += char
    if depth != 0:
        raise ConfigError(f"unbalanced brackets in {shown(value, 83)}: expected NAME[KEY=VALUE,...],NAME,...",
                          path="--metrics")
    return [m.strip() for m in [*items, current] if m.strip()]



def metric_spec(text: str) -> MetricSpec:
    """``name`` or ``name[key=value,...]``; values that read as numbers are numbers."""
    try:
        name, params = split_metric(text)
    except ValueError as e:
        raise ConfigError(str(e), path="--metrics") from None
    return MetricSpec(name=name, params=params)
