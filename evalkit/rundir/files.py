"""Durable file writes for run directories: every file is written to a temporary name, fsynced and
renamed into place, so a reader sees whole files only; a run directory's name is unique."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import tempfile
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit.errors import EvalkitError
from evalkit.inputs import check_path_text


def check_writable(output_dir: Path, source: str | None = None, field: str = "output_dir") -> None:
    """Refuse an output directory that cannot be created or written, without creating anything."""
    from evalkit.errors import ConfigError

    check_path_text(output_dir, field, source)
    probe = output_dir
    while not probe.exists():
        if probe.is_symlink():  # a link to nothing further up: mkdir would fail there
            raise ConfigError(f"{probe} is a symbolic link to nothing (dangling, or a loop)", source=source,
                              path=field)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{probe} exists and is not a directory", source=source, path=field)
    try:  # os.access says yes to root everywhere, and knows nothing of /proc or a read-only mount: try it
        with tempfile.TemporaryFile(dir=probe, prefix=".evalkit-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"{output_dir} is not writable ({e.strerror or type(e).__name__})", source=source,
                          path=field) from None


def check_not_an_input(target: Path, field: str, runs: list = (), index: Path | None = None) -> None:
    """Refuse an output that would overwrite what the command reads: a file of a run it reads (its
    report.html excepted) or the run index."""
    resolved = Path(target).expanduser().resolve()
    if index is not None and resolved == Path(index).expanduser().resolve():
        raise EvalkitError(f"{field}: {target} is the run index this command reads; give another file")
    for run in runs:
        run = Path(run).resolve()
        if resolved.is_relative_to(run) and resolved != run / "report.html":
            raise EvalkitError(f"{field}: {target} is inside the run directory {run}, which this command reads; "
                               "give a file elsewhere")


def check_database(path: Path, source: str | None = None, field: str = "index",
                   tables: dict[str, tuple[str, ...]] | None = None) -> None:
    """Refuse, up front, an SQLite file (run index, sample cache) that a run could not open or create at its end:
    a folder in its place, a file that is not a database, or nowhere writable to make it."""
    from evalkit.errors import ConfigError

    path = Path(path).expanduser()
    check_path_text(path, field, source)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a database file", source=source, path=field)
    if path.exists() and not path.is_file():  # a FIFO would block SQLite's open, beyond Ctrl-C's reach
        raise ConfigError(f"{path} is not a regular file (a FIFO or a device), not a database file", source=source,
                          path=field)
    if not path.exists():
        check_writable(path.parent, source, field)
        return
    with open(path, "rb") as f:
        header = f.read(16)
    if header and header != b"SQLite format 3\x00":  # an empty file becomes a database on first use
        raise ConfigError(f"{path} is not an SQLite database (file is not a database)", source=source, path=field)
    try:  # immutable: no lock taken and no -wal or -shm file left behind
        with closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True)) as db:
            found = {t: {row[1] for row in db.execute(f"PRAGMA table_info({t})")} for t in tables or {}}
    except sqlite3.DatabaseError:  # a read torn by a writer at work (a shared index): its tables are checked later
        found = {}
    for table, have in found.items():  # a table of that name made by something else
        if have and set(tables[table]) - have:
            raise ConfigError(f"{path} has a table '{table}' without the columns {', '.join(tables[table])}: it is "
                              f"some other database", source=source, path=field)
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{path} is not writable", source=source, path=field)


def create_run_dir(output_dir: Path, name: str, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    output_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        path = output_dir / (f"{stamp}-{name}" if attempt == 1 else f"{stamp}-{name}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise EvalkitError(f"output_dir: cannot create a run directory under {output_dir}")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all, creating its missing folders; a folder in its place is refused
    in one line, and no temporary file is left behind."""
    path = Path(path).expanduser()
    check_path_text(path)
    if path.is_dir():
        raise EvalkitError(f"{path} is a directory; give a file name")
    if path.exists() and not path.is_file():  # a device or a FIFO: renaming over it would replace it
        raise EvalkitError(f"{path} is not a regular file (a device or a FIFO); give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise EvalkitError(f"cannot write {path}: a file is in the way of its folder") from None
    except OSError as e:
        raise EvalkitError(f"cannot write {path}: {e.strerror or type(e).__name__}") from None
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise EvalkitError(f"cannot write {path}: {e.strerror or type(e).__name__}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prompt_image_name(source: str | Path, sha256: str) -> str:
    """Where an input image is kept in a run directory: named by its content, so equal images share a file."""
    return f"prompt_images/{sha256[:16]}{Path(source).suffix.lower()}"


def keep_prompt_image(run_dir: Path, source: str | Path, sha256: str) -> str:
    """Copy an input image into ``run_dir/prompt_images/`` (once); its path relative to the run directory."""
    name = prompt_image_name(source, sha256)
    if not (run_dir / name).is_file():
        (run_dir / name).parent.mkdir(exist_ok=True)
        write_atomic(run_dir / name, Path(source).read_bytes())
    return name


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8"))


def write_table(path: Path, df: pd.DataFrame) -> None:
    """A table as CSV (``.csv``) or Parquet, written atomically and fsynced like every other file."""
    buf = io.BytesIO()
    if path.suffix == ".csv":
        df.to_csv(buf, index=False)
    else:
        df.to_parquet(buf, index=False)
    write_atomic(path, buf.getvalue())



