"""The one exception type for user errors.

A user error (bad config, missing file, unknown metric, a device that is not there)
is raised as :class:`EvalkitError` and printed by the CLI as one line, exit code 2.
Anything else is a bug and raises normally.
"""

from __future__ import annotations


class EvalkitError(Exception):
    """A problem with the user's input, reported as one clear line."""

    exit_code = 2


def shown(value, limit: int = 60) -> str:
    """A value as echoed in an error message: its repr, cut to ``limit`` characters (an input can be huge)."""
    text = repr(value) if not isinstance(value, (list, dict, tuple)) or _small(value) else _cut_repr(value, limit)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _small(value, budget: int = 200) -> bool:
    """Whether a nested list or mapping has few enough items to print (an alias bomb has billions)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > budget:
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return True


def _cut_repr(value, limit: int) -> str:
    """The start of a large container's repr, without building the whole of it."""
    opening = {list: "[", tuple: "(", dict: "{"}.get(type(value), "[")
    parts, size = [], 1
    items = value.items() if isinstance(value, dict) else value
    for item in items:
        text = (f"{item[0]!r}: {shown(item[1], limit)}" if isinstance(value, dict) else shown(item, limit))
        parts.append(text)
        size += len(text) + 2
        if size > limit:
            break
    return opening + ", ".join(parts) + ", ..."


def first_error(error) -> tuple[str, str, dict]:
    """(dotted field, message, raw entry) of a pydantic ValidationError's first error."""
    err = error.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    return field, err["msg"].removeprefix("Value error, "), err


class ConfigError(EvalkitError):
    """A config value that is invalid: names the file, the field path and the value."""

    def __init__(self, message: str, *, source: str | None = None, path: str | None = None):
        self.source = source
        self.path = path
        self.detail = message
        where = ": ".join(p for p in (source, path) if p)
        super().__init__(f"{where}: {message}" if where else message)


class Terminated(KeyboardInterrupt):
    """SIGTERM: stopped like Ctrl-C (what was made is kept, a run is marked interrupted), exit code 143."""

    exit_code = 143

    def __init__(self, message: str = "terminated"):
        super().__init__(message)
