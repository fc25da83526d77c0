"""What the code sandbox (:mod:`evalkit.sandbox`) builds from the host: the program's read-only file system,
the system calls it is refused, the user ids its programs run as under root, and how many programs the
machine's memory holds at once."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path

from evalkit.errors import EvalkitError

SHM_SIZE = 8 << 20  # bytes of a program's /dev/shm (the rest of /dev is read-only)


class SandboxUnavailable(EvalkitError):
    """No sandbox can be made on this machine: generated code is then never run."""


# What the program sees of the host, read-only: the system's programs and libraries, the few files of
# /etc that the C library and Python read, and the interpreter with its environment (added by command()).
# No /home, /root, /run or /var: no one's files, and no host service's Unix socket.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
             "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/alternatives")


@functools.cache
def _mounts(tmp_size: int) -> tuple[str, ...]:
    """bwrap's arguments that build the program's file system (the same for every program of a process)."""
    # its /tmp first: an interpreter or environment under the host's /tmp is bound on top of it, read-only
    mounts = ["--size", str(tmp_size), "--perms", "1777", "--tmpfs", "/tmp"]
    made = {"/tmp"}
    for path in (*SYSTEM_DIRS, *ETC_FILES, *_interpreter_paths()):
        if not os.path.lexists(path):
            continue
        for parent in reversed(Path(path).parents[:-1]):  # bwrap would make them for root only (0700)
            if str(parent) not in made:
                made.add(str(parent))
                mounts += ["--perms", "0755", "--dir", str(parent)]
        if os.path.islink(path) and path in SYSTEM_DIRS:  # /bin -> usr/bin on a merged /usr
            mounts += ["--symlink", os.readlink(path), path]
        else:
            mounts += ["--ro-bind", path, path]
    mounts += ["--dev", "/dev", "--size", str(SHM_SIZE), "--perms", "1777", "--tmpfs", "/dev/shm",
               "--remount-ro", "/dev", "--proc", "/proc"]
    return tuple(mounts)


# System calls a program is refused (EPERM), beyond what its namespaces and limits already bar: System V
# shared memory and memory files (memfd: their pages count against no limit of the process), the kernel's
# keyrings (the caller's secrets), reading or tracing other processes' memory, and kernel interfaces no test needs.
DENIED_SYSCALLS = ("shmget", "shmat", "memfd_create", "memfd_secret", "keyctl", "add_key", "request_key",
                   "ptrace", "process_vm_readv", "process_vm_writev", "perf_event_open", "bpf", "userfaultfd",
                   "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "init_module",
                   "finit_module", "fanotify_init", "mount", "umount2", "pivot_root", "unshare", "setns",
                   "open_by_handle_at", "name_to_handle_at")


def _fits(budget: int) -> int:
    """How many programs of ``budget`` bytes at most the machine's available memory holds at once (at least 1)."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return os.cpu_count() or 1
    return max(1, available // budget)


@functools.cache
def seccomp_filter() -> bytes:
    """The compiled seccomp filter (BPF) that bwrap installs before the interpreter starts (libseccomp)."""
    import errno

    import pyseccomp

    f = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            f.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
        except (ValueError, OSError):  # not a system call of this architecture
            pass
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


@functools.cache
def uid_block() -> int:
    """Under root: a block of 100 user ids that no other evalkit process on this machine holds (a lock held
    for this process's life), so that two evaluators' programs never share a process count."""
    import fcntl

    folder = Path(tempfile.gettempdir()) / f"evalkit-sandbox-uids-{os.geteuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    for block in range(100_000):
        fd = os.open(folder / f"{block}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held.append(fd)  # kept open: the lock lasts as long as this process
        return block
    raise SandboxUnavailable("every block of sandbox user ids is held by another evalkit process")


_held: list[int] = []


@functools.cache
def _site_dirs() -> list[str]:
    import site

    return [d for d in site.getsitepackages() if os.path.isdir(d)]


def _interpreter_paths() -> list[str]:
    """What the interpreter needs beyond the system's directories: its installation, the virtual
    environment it runs in, and that environment's site-packages (outermost first, nested ones left out)."""
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), os.path.abspath(sys.prefix),
             os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(os.path.abspath(sys.executable)),
             *_site_dirs()}
    kept: list[str] = []
    for path in sorted(p for p in paths if os.path.isdir(p)):
        if not any(path.startswith(k.rstrip("/") + "/") or path == k for k in kept) and \
                not any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRS):
            kept.append(path)
    return kept
