"""Reading what a user points evalkit at (configs, prompt files, files of generations, corpora): a regular
file, or a pipe (``evalkit run <(make-config)``), or one clear line. A device (``/dev/zero``) would never
end; a path that is not valid UTF-8 cannot be recorded in a run's manifest."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from evalkit.errors import ConfigError


MAX_NAME, MAX_PATH = 255, 4096  # bytes in one name and in a whole path (Linux)


def check_path_text(path: str | Path, field: str | None = None, source: str | None = None) -> None:
    """Refuse a path whose name is not valid UTF-8 (bytes that a manifest, an index or a report cannot hold),
    or too long for the file system, or a symbolic link that leads nowhere (dangling, or a loop)."""
    text = os.fspath(path)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "backslashreplace").decode("ascii", "replace")
        raise ConfigError(f"the path {shown[:80]!r} is not valid UTF-8: rename it", source=source, path=field) from None
    if len(encoded) > MAX_PATH or any(len(part.encode("utf-8")) > MAX_NAME for part in Path(text).parts):
        raise ConfigError(f"the path {text[:60]!r}... is too long (at most {MAX_NAME} bytes a name, {MAX_PATH} in "
                          "all)", source=source, path=field)
    if os.path.islink(text) and not os.path.exists(text):
        raise ConfigError(f"{text} is a symbolic link to nothing (dangling, or a loop)", source=source, path=field)


def read_regular(path: Path, what: str, *, source: str | None = None, field: str | None = None) -> bytes:
    """The bytes of a regular file or a pipe; a missing file, a folder or a device is refused in one line."""
    where = dict(source=source or str(path), path=field)
    check_path_text(path, field, source or str(path))
    if not os.fspath(path):
        raise ConfigError(f"{what}: the path is empty", **where)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", **where) from None
    except OSError as e:
        raise ConfigError(f"cannot read {what}: {e.strerror}", **where) from None
    if path.is_dir():
        raise ConfigError(f"{what} is a directory", **where)
    if not path.is_file() and not stat.S_ISFIFO(mode):
        raise ConfigError(f"{what} is a device or other special file, not a regular file", **where)
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what}: {e.strerror}", **where) from None
