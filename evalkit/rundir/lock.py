"""One writer per run directory: an OS-level lock (``flock``) on ``<run>/.lock``, held while a process
writes the run and released by the OS when that process ends, however it ends.

A second writer (``--resume`` of a run that is still running, a second ``--resume`` of the same run) is
refused in one line before anything is loaded. The lock file is removed when its holder lets go;
a writer that locked a file which was removed meanwhile tries again on the new one.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from evalkit.errors import EvalkitError

LOCK_NAME = ".lock"


class RunLock:
    def __init__(self, run_dir: Path, what: str = "--resume"):
        self.path = Path(run_dir) / LOCK_NAME
        self.what = what
        self.fd: int | None = None
        self.unsupported = False  # the file system has no flock

    def acquire(self) -> RunLock:
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            raise EvalkitError(f"{self.what}: {self.path} is not a regular file (the run directory is damaged): "
                               "remove it if no evalkit process writes this run")
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise EvalkitError(f"{self.what}: cannot lock {self.path.parent} ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                by = f"process {holder}" if holder else "another process"
                raise EvalkitError(f"{self.what}: {self.path.parent} is being written by {by}; wait for it to "
                                   "end, or stop it and resume then") from None
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):  # NFS without locks, Lustre, FUSE
                    self.unsupported = True  # the run goes on unlocked, as before locks existed
                    return self
                raise EvalkitError(f"{self.what}: cannot lock {self.path.parent} ({e.strerror})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return self
            os.close(fd)  # its holder let go and removed it meanwhile: lock the new one
        raise EvalkitError(f"{self.what}: cannot lock {self.path.parent}")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: nobody else holds this file
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
