"""The one exception type for user errors.

A user error (bad config, missing file, unknown metric, a device that is not there)
is raised as :class:`EvalkitError` and printed by the CLI as one line, exit code 2.
Anything else is a bug and raises normally.
"""

from __future__ import annotations


class EvalkitError(Exception):
    """A problem with the user's input, reported as one clear line."""

    exit_code = 2


class Stopped(EvalkitError):
    """A run that started and was then stopped by a fault outside it (a server that fails a sample's request for
    good): what it made is kept and ``evalkit run --resume`` continues it, so it exits as an interrupted run does
    (130), and the run adds the resume hint to its message (:meth:`resumable`)."""

    exit_code = 130

    def resumable(self, run_dir) -> None:
        """Add ``resume with: ...`` for ``run_dir`` to the message."""
        self.args = (f"{self.args[0] if self.args else 'stopped'}; resume with: evalkit run --resume {run_dir}",)


def shown(value, limit: int = 60) -> str:
    """A value as echoed in an error message, as YAML or JSON would write it (null, true, a date as
    2024-01-01, [1, true]), cut to ``limit`` characters; a huge value (an alias bomb) is never walked whole."""
    text = _render(value, [limit + 4])
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _render(value, budget: list[int]) -> str:
    """``value`` written out until ``budget[0]`` characters are spent."""
    import datetime

    if budget[0] <= 0:
        return "..."
    if value is None or isinstance(value, bool):
        text = {None: "null", True: "true", False: "false"}[value]
    elif isinstance(value, (datetime.date, datetime.datetime)):
        text = value.isoformat()
    elif isinstance(value, int) and abs(value) > 10**60:  # repr would need its thousands of digits
        text = f"a number of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4000'} digits"
    elif isinstance(value, (bytes, bytearray)):
        text = f"binary data ({len(value)} bytes)"
    elif isinstance(value, (set, frozenset)):
        text = f"a set of {len(value)}"
    elif isinstance(value, (list, tuple, dict)):
        items = value.items() if isinstance(value, dict) else value
        opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
        parts = []
        budget[0] -= 2
        for item in items:
            if budget[0] <= 0:
                parts.append("...")
                break
            parts.append(f"{_render(item[0], budget)}: {_render(item[1], budget)}" if isinstance(value, dict)
                         else _render(item, budget))
        return opening + ", ".join(parts) + closing
    else:
        text = repr(value)
    budget[0] -= len(text) + 2
    return text


def what_is(value) -> str:
    """What a value read from YAML or JSON is, in a user's words (never a Python type name)."""
    import datetime

    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "a date"
    if isinstance(value, (bytes, bytearray)):
        return "binary data"
    if isinstance(value, (set, frozenset)):
        return "a set"
    return "a value of another kind"


def first_error(error) -> tuple[str, str, dict]:
    """(dotted field, message, raw entry) of a pydantic ValidationError's first error."""
    err = error.errors()[0]
    return field_path(err["loc"]), err["msg"].removeprefix("Value error, "), err


def field_path(loc) -> str:
    """A pydantic error location as the user wrote it: ``grid.top_k[0]``, without the tags pydantic adds for
    the branches of a union (``str``, ``function-after[...]``, ``list[...]``)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "list[", "dict[", "literal[", "tuple[")) or part in (
                "str", "int", "float", "bool", "none", "constrained-str", "constrained-int"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


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


# A Ctrl-C or SIGTERM, once received, stays asked for until the process ends. Python raises a signal handler's
# exception wherever the main thread is; inside a finalizer (a __del__, a weakref callback) it is printed as
# "Exception ignored" and lost, and the run would go on. The command's handler (:func:`stop_on_signal`) records it,
# and :func:`raise_if_stopped`, called at every step of a run's progress, raises it again there.
_STOPS: list[int] = []


def stop_on_signal(signum: int, frame=None) -> None:
    """The command's handler of SIGINT and SIGTERM: stop like Ctrl-C (SIGTERM: exit code 143), and remember it."""
    import signal

    _STOPS.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def raise_if_stopped() -> None:
    """Raise the stop a signal asked for, if one was asked for (a run's safe points call this)."""
    if _STOPS:
        import signal

        raise Terminated() if _STOPS[0] == signal.SIGTERM else KeyboardInterrupt()
