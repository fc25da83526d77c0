"""The one exception type for user errors.

A user error (bad config, missing file, unknown metric, a device that is not there)
is raised as :class:`EvalkitError` and printed by the CLI as one line, exit code 2.
Anything else is a bug and raises normally.
"""

from __future__ import annotations


class EvalkitError(Exception):
    """A problem with the user's input, reported as one clear line."""

    exit_code = 2


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
