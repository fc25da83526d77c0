"""Run untrusted Python (a model's code) and a prompt's tests in a sandbox, the tests out of the code's reach.

Generated code is untrusted. Each program runs under bubblewrap (``bwrap``, Debian's ``bubblewrap``):

- a file system of its own, read-only, that holds only the system's programs and libraries
  (``/usr``, ``/lib``...), a few files of ``/etc``, and the interpreter with its environment: no
  ``/home``, ``/root``, ``/run`` or ``/var``, so no one's files and no host service's Unix socket;
  a fresh, size-capped tmpfs as ``/tmp``, which is also the working directory and HOME, and a small
  ``/dev/shm`` are the only places it can write (gone when it ends);
- its own network namespace (no network: not even the host's loopback), PID namespace (every
  process it starts dies with it), IPC and UTS namespaces, a new session, and an empty environment
  (no API keys: only HOME, PATH and LANG are set);
- as an unprivileged user: the caller where that is not root (in a user namespace of its own); under
  root, a user id of its own per program running at once, so that the process limit holds (the kernel
  exempts root from it) and no program's processes count against another's;
- resource limits set before the program's first line runs: CPU seconds, address space (per process),
  processes and threads (together a bound on the program's memory), open files, file size, no core files;
  stdin is ``/dev/null``; stdout and
  stderr go to one file, of which the last :data:`TAIL` bytes are read;
- a wall-clock limit, after which the namespace's first process (and with it every other) is killed.

The verdict comes from where the program cannot reach (:mod:`evalkit.sandbox_harness`). A :class:`Program` is the
candidate's module (the prompt's prefix and the sample's code) and its tests. Two processes run it:

- the *supervisor* holds the tests and a random token. It is out of the program's reach: non-dumpable
  (``PR_SET_DUMPABLE`` 0), so that no process of its user may open its ``/proc/<pid>/mem``, ``maps``, ``environ``
  or ``fd``, nor trace it (the seccomp filter refuses ``ptrace`` and ``process_vm_*`` besides); and it forks the
  candidate's process before it reads its input, so that neither the token nor the tests were ever in that
  process's memory;
- the *candidate's process* runs the module, then answers the supervisor's requests over a pair of pipes;
- the supervisor runs the prompt's prefix and the tests in its own interpreter, which never runs a line of the
  candidate's: the module's plain data (numbers, text, bytes, lists, tuples, dicts, sets, and a few standard
  values: Fraction, Decimal, datetime, Counter, deque, namedtuples, numpy arrays) crosses as JSON and is rebuilt
  with Python's own types; its functions, classes and other objects become proxies whose every use is a request
  (an exception raised there is raised here, by its builtin class or a stand-in of the candidate's; lists, dicts
  and sets changed in place by a call are copied back). The names the prefix defines stay the prompt's (the
  helpers the tests call), but for the entry point and stubs (a body of only a docstring, ``pass``, ``...``).
  When the tests end, it kills every other process and writes the token and the verdict as the last line.

So a program cannot forge a pass: it cannot write the verdict (it lacks the token, and its processes are dead
before the verdict is written), reach the supervisor's memory, or change how the tests run (builtins, assert
helpers, ``os._exit``, trace functions and the prompt's helpers are the supervisor's own). What it still decides:
what its functions return and raise; how its own objects behave (their truth value, ``len``, ``str``, ``hash``,
what they hold, and how two of them compare: ``assert obj`` or ``f(x) == f(y)`` trust them); never how its object
compares with a value of the tests (``==`` is identity, ``<`` and ``+`` raise TypeError), so an object of a class of
its own, an ``int`` or ``list`` subclass included, fails a test that expects plain data. Other limits: module-level
values are read once, after the module ran; plain data crosses by value (a list returned twice is two lists; one
nested more than 200 deep does not cross); an object the tests pass to its code can only be called, shown, hashed
and compared there; each request costs a round trip through a pipe (tens of microseconds; a test that calls the
candidate's code ten thousand times takes a second or more).

What the program does to the harness is flagged, where it is seen, and fails it (:attr:`Outcome.tamper`): exiting
with status 0 before its tests end, writing to the harness's pipe, an object that says it equals a random string,
code that compiles only with the tests after it (a dangling decorator that would replace ``check``), and, seen from
inside its own interpreter (best effort: a program that hides it still cannot pass), builtins or ``os``/``sys``
functions replaced, a function of its own put into another module (``math.isclose``,
``unittest.TestCase.assertEqual``), a trace or profile function, another process's ``/proc/<pid>/mem`` opened.
Outcomes are cached in the process by (program hash, limits): identical candidates (greedy decoding
repeats itself) run once.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import json
import marshal
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import queue
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from evalkit.sandbox_host import SHM_SIZE, SandboxUnavailable, _fits, _mounts, _site_dirs, seccomp_filter, uid_block

MAX_WORKERS = 64
# Under root, each program runs as a user of its own, so that no program's processes count against
# another's limit: SLOT_UIDS + 100 x (this process's id mod 10^6) + its worker slot (no account needed).
SLOT_UIDS = 1_800_000_000
TAIL = 4096  # bytes of a program's output kept (the verdict is its last line)
TAMPERED = "tampers with the harness: "  # how a tampering sample's reason starts (sample_scores.parquet)



@functools.cache
def wrapper() -> str:
    """What runs inside the sandbox (``python -I -S -c WRAPPER CPU MEMORY PROCESSES FILES FILE_SIZE SITE_DIRS...``):
    :mod:`evalkit.sandbox_harness`, whose docstring says how its three processes keep the verdict out of the
    program's reach, compiled here once (compiling it in every sandbox would cost more than the rest of its start).
    It puts the environment's site-packages on the path without running their .pth hooks (a third of a start-up)."""
    source = (Path(__file__).parent / "sandbox_harness.py").read_text(encoding="utf-8")
    code = compile(source, "sandbox_harness.py", "exec", optimize=2, dont_inherit=True)
    packed = binascii.b2a_base64(zlib.compress(marshal.dumps(code), 9), newline=False).decode()
    return f"import binascii, marshal, zlib; exec(marshal.loads(zlib.decompress(binascii.a2b_base64({packed!r}))))"


@dataclass(frozen=True)
class Program:
    """What one sample runs: ``code``, the candidate's module (after the prompt's ``prefix``), then ``tests``, in
    another process that sees the module's names; the tests keep the names the prefix defines (the prompt's
    helpers), but for ``entry_point`` and stubs. A program without tests passes when its module runs to its end."""

    code: str
    tests: str = ""
    prefix: str = ""
    entry_point: str = ""

    def stdin(self, token: str) -> bytes:
        """What the harness reads: the token, then the job."""
        job = {"prefix": self.prefix, "code": self.code, "tests": self.tests, "entry_point": self.entry_point}
        return token.encode() + b"\n" + json.dumps(job).encode()


@dataclass(frozen=True)
class Limits:
    """What one program may use. ``timeout`` is part of a code metric's id; the rest is fixed per release."""

    timeout: float = 3.0  # wall-clock seconds (Chen et al.'s human-eval uses 3)
    memory: int = 512 << 20  # bytes of address space per process
    processes: int = 8  # tasks (processes and threads) the program may run at once, the harness's supervisor among them
    files: int = 64  # open file descriptors
    file_size: int = 16 << 20  # bytes, the largest file it may write (its output included)
    tmp_size: int = 64 << 20  # bytes of its /tmp

    @property
    def budget(self) -> int:
        """The most memory one program can hold: each of its processes' address space, its /tmp and /dev/shm
        (memfd_create and System V shared memory, which no limit would count, are refused)."""
        return self.memory * self.processes + self.tmp_size + SHM_SIZE

    @property
    def cpu(self) -> int:
        """CPU seconds: the wall-clock limit, rounded up (a program cannot outrun it on CPU either)."""
        return max(1, math.ceil(self.timeout))


@dataclass(frozen=True)
class Outcome:
    """What became of one program: ``passed`` (its tests ran to their end), ``failed`` (an exception, a crash, an
    exit before its end, a limit, tampering) or ``timeout`` (killed at the wall-clock limit); ``detail`` says why
    for a failure (the exception, on one line); ``tamper``: what the program did to the harness, where it was
    seen (such a program fails)."""

    status: Literal["passed", "failed", "timeout"]  # timeout: the wall-clock or the CPU-time limit
    detail: str = ""
    tamper: tuple[str, ...] = ()

    @property
    def reason(self) -> str | None:
        """Why a tampering program failed (None for any other): :data:`TAMPERED` and what it did."""
        return TAMPERED + "; ".join(self.tamper) if self.tamper else None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class Sandbox:
    """Runs programs with :class:`Limits`, ``workers`` at a time (default: one per CPU core, no more than the
    available memory holds at the limits' :attr:`~Limits.budget`)."""

    _cache: dict[tuple[str, Limits], Outcome] = {}
    _cache_lock = threading.Lock()
    _checked: dict[tuple, str | None] = {}

    def __init__(self, limits: Limits | None = None, workers: int | None = None):
        self.limits = limits or Limits()
        self.workers = min(MAX_WORKERS, max(1, workers or min(os.cpu_count() or 1, _fits(self.limits.budget))))

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
            return "setpriv not found (util-linux), which runs programs as users of their own when evalkit runs as root"
        try:
            seccomp_filter()
        except Exception as e:  # pyseccomp missing, or libseccomp.so.2 not found
            return f"no seccomp filter could be made (libseccomp: {type(e).__name__}: {str(e)[:120]})"
        outcome = self._run(Program(f"print({1 + 1})"), 0)
        if not outcome.passed:
            return f"bwrap could not start a program ({outcome.detail or outcome.status})"
        return None

    def run(self, program: str | Program) -> Outcome:
        return self.run_many([program])[0]

    def run_many(self, programs: list[str | Program]) -> list[Outcome]:
        """Each program's outcome, in order (a string: a program without tests); each distinct program runs once
        (cached by its hash and the limits)."""
        self.check()
        jobs = [p if isinstance(p, Program) else Program(p) for p in programs]
        keys = [(_digest(p), self.limits) for p in jobs]
        with Sandbox._cache_lock:
            todo = {k: p for k, p in zip(keys, jobs) if k not in Sandbox._cache}
        if todo:
            slots: queue.SimpleQueue[int] = queue.SimpleQueue()  # a user id per program running at once (root)
            for slot in range(self.workers):
                slots.put(slot)

            def run_in_a_slot(program: Program) -> Outcome:
                slot = slots.get()
                try:
                    return self._run(program, slot)
                finally:
                    slots.put(slot)

            with ThreadPoolExecutor(max_workers=min(self.workers, len(todo))) as pool:
                outcomes = dict(zip(todo, pool.map(run_in_a_slot, todo.values())))
            with Sandbox._cache_lock:
                Sandbox._cache.update(outcomes)
        with Sandbox._cache_lock:
            return [Sandbox._cache[k] for k in keys]

    # ------------------------------------------------------------------ one program

    def _run(self, program: Program, slot: int) -> Outcome:
        token = secrets.token_hex(16)
        lim = self.limits
        args = [str(v) for v in (lim.cpu, lim.memory, lim.processes, lim.files, lim.file_size)] + _site_dirs()
        filter_r, filter_w = os.pipe()  # the seccomp filter, read by bwrap (a few hundred bytes: fits the pipe)
        os.write(filter_w, seccomp_filter())
        os.close(filter_w)
        try:
            proc = subprocess.Popen([*command(lim, slot, seccomp_fd=filter_r), "-I", "-S", "-c", wrapper(), *args],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={},
                                    start_new_session=True, pass_fds=(filter_r,))
        except OSError as e:
            return Outcome("failed", f"could not start bwrap: {e.strerror or e}")
        finally:
            os.close(filter_r)
        # its output comes through a pipe, of which only the last TAIL bytes are kept: it fills no disk
        kept = bytearray()
        reader = threading.Thread(target=_keep_tail, args=(proc.stdout, kept), daemon=True)
        reader.start()
        timed_out = False
        try:
            try:
                proc.stdin.write(program.stdin(token))
                proc.stdin.close()
            except BrokenPipeError:  # it ended before reading its program
                pass
            try:
                proc.wait(timeout=lim.timeout + 0.5)  # + bwrap's and the interpreter's start
            except subprocess.TimeoutExpired:
                timed_out = True
        finally:
            _kill_group(proc)
            reader.join(timeout=5)
            proc.stdout.close()
        if timed_out:
            return Outcome("timeout", f"still running after {lim.timeout:g} s")
        tail = bytes(kept).decode("utf-8", "replace")
        lines = [line for line in tail.splitlines() if line.strip()]
        if lines and lines[-1].startswith(token + " "):  # the harness's verdict: no one else knows the token
            return _verdict(json.loads(lines[-1][len(token) + 1:]), lim)
        signal_number = -proc.returncode if proc.returncode < 0 else proc.returncode - 128  # bwrap: 128 + signal
        if 0 < signal_number < 65:
            why = _killed_by(signal_number, lim)
            return Outcome("timeout" if why.startswith("CPU time") else "failed", why)
        return Outcome("failed", (lines[-1] if lines else f"exit status {proc.returncode}")[:300])


def _digest(program: Program) -> str:
    parts = (program.prefix, program.code, program.tests, program.entry_point)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _verdict(verdict: dict, limits: Limits) -> Outcome:
    tamper = tuple(str(t) for t in verdict.get("tamper") or ())
    if verdict.get("passed") and not tamper:
        return Outcome("passed")
    if verdict.get("signal"):
        why = _killed_by(int(verdict["signal"]), limits)
        return Outcome("timeout" if why.startswith("CPU time") and not tamper else "failed", why, tamper)
    detail = str(verdict.get("detail") or "") or (TAMPERED + tamper[0] if tamper else "failed")
    return Outcome("failed", detail[:300], tamper)


def _killed_by(number: int, limits: Limits) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return {"SIGXCPU": f"CPU time limit ({limits.cpu} s)", "SIGXFSZ": f"file size limit ({limits.file_size} bytes)",
            "SIGKILL": "killed", "SIGSEGV": "crashed (SIGSEGV)"}.get(name, f"killed by {name}")


def _keep_tail(stream, kept: bytearray) -> None:
    """Read ``stream`` to its end, keeping its last :data:`TAIL` bytes in ``kept``."""
    while chunk := stream.read1(65536):
        kept += chunk
        del kept[:-TAIL]


def _kill_group(proc: subprocess.Popen) -> None:
    """End what is left of a program still running: bwrap's child (the PID namespace's first process: every
    process in the namespace dies with it), then, should bwrap not end with it, its process group. A bwrap
    that ended is only reaped (its process id may be another's already)."""
    if proc.poll() is not None:
        return
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
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # bwrap is not reaped yet: the group is still its own
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def command(limits: Limits, slot: int = 0, seccomp_fd: int | None = None) -> list[str]:
    """The bwrap command line up to the interpreter (its arguments follow); ``seccomp_fd`` holds the filter."""
    env = ["--clearenv", "--setenv", "HOME", "/tmp", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8"]
    common = ["--die-with-parent", "--new-session", *env, *_mounts(limits.tmp_size), "--chdir", "/tmp",
              *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else [])]
    bwrap = shutil.which("bwrap") or "bwrap"
    if os.geteuid() != 0:
        return [bwrap, "--unshare-all", *common, "--", sys.executable]
    # root: no user namespace (the kernel would count its processes as root's, which no limit binds);
    # bwrap keeps only the right to change user, and setpriv drops to the slot's user with no capabilities
    uid = SLOT_UIDS + 100 * uid_block() + slot
    return [bwrap, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", *common, "--",
            shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--", sys.executable]
