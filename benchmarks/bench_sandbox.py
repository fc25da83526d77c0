"""Running generated code: 1,000 small candidates (half passing, half failing an assert, some timing out)
through evalkit's sandbox, against the same programs run without one, in the same process:

- in-process ``exec`` (no isolation at all: the floor),
- a plain subprocess per candidate (``python -I`` with the sandbox's own wrapper and limits: what
  isolation by process alone costs),
- evalkit's sandbox (bubblewrap: namespaces, read-only file system, its own /tmp).

Prints candidates/s for each and the sandbox's overhead per candidate over a plain subprocess. Timing-out
candidates are run only under the two subprocess modes (an in-process loop cannot be stopped).

``--smoke``: 20 candidates, 1 of them looping against a 0.5 s limit: the same code path and the same lines.

    python benchmarks/bench_sandbox.py [--n 1000] [--timeouts 10] [--timeout 1] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import site
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from machine import print_load, print_machine

from evalkit.sandbox import Limits, Program, Sandbox, wrapper


def candidates(n: int, timeouts: int) -> list[str]:
    """n programs: a function and its tests; even ones pass, odd ones fail; ``timeouts`` of them loop."""
    out = []
    for i in range(n - timeouts):
        body = f"return sorted(xs)[:{i % 7 + 1}]" if i % 2 == 0 else "return xs[:1]"
        out.append(f"def smallest(xs):\n    {body}\n\nxs = list(range({i % 50 + 10}, 0, -1))\n"
                   f"assert smallest(xs) == list(range(1, {i % 7 + 2}))\n# candidate {i}\n")
    out += [f"while True:\n    pass  # candidate {n - timeouts + i}\n" for i in range(timeouts)]
    return out


def in_process(programs: list[str]) -> int:
    passed = 0
    for p in programs:
        try:
            exec(compile(p, "candidate.py", "exec"), {"__name__": "__candidate__"})
            passed += 1
        except AssertionError:
            pass
    return passed


def plain_subprocess(programs: list[str], limits: Limits, workers: int) -> int:
    args = [str(v) for v in (limits.cpu, limits.memory, limits.processes, limits.files, limits.file_size)]
    args += [d for d in site.getsitepackages() if os.path.isdir(d)]

    def one(program: str) -> bool:
        try:
            done = subprocess.run([sys.executable, "-I", "-S", "-c", wrapper(), *args],
                                  input=Program(program).stdin("t"), capture_output=True,
                                  timeout=limits.timeout + 0.5, env={})
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(one, programs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--timeouts", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--smoke", action="store_true", help="20 candidates, 1 loop, a 0.5 s limit")
    a = ap.parse_args()
    if a.smoke:
        a.n, a.timeouts, a.timeout = 20, 1, 0.5
    print_machine()
    workers = os.cpu_count() or 1
    limits = Limits(timeout=a.timeout)
    programs = candidates(a.n, a.timeouts)
    quick = programs[: a.n - a.timeouts]
    print(f"{a.n} candidates ({a.timeouts} loop forever, timeout {a.timeout:g} s), {workers} workers")

    started = time.perf_counter()
    passed = in_process(quick)
    t_exec = time.perf_counter() - started
    print(f"in-process exec      {len(quick) / t_exec:9.0f} candidates/s  ({passed} passed, loops left out)")

    started = time.perf_counter()
    passed = plain_subprocess(programs, limits, workers)
    t_plain = time.perf_counter() - started
    print(f"plain subprocess     {a.n / t_plain:9.1f} candidates/s  ({passed} passed) {t_plain:.1f} s")

    sandbox = Sandbox(limits, workers=workers)
    sandbox.check()
    started = time.perf_counter()
    outcomes = sandbox.run_many(programs)
    t_box = time.perf_counter() - started
    counts = {s: sum(o.status == s for o in outcomes) for s in ("passed", "failed", "timeout")}
    print(f"evalkit sandbox      {a.n / t_box:9.1f} candidates/s  ({counts}) {t_box:.1f} s")
    started = time.perf_counter()
    sandbox.run_many(programs)
    print(f"  again (cached)     {a.n / (time.perf_counter() - started):9.0f} candidates/s")
    per = (t_box - t_plain) * workers / a.n
    print(f"sandbox / plain subprocess time: {t_box / t_plain:.2f}x; overhead {per * 1000:.1f} ms of a worker's time "
          f"per candidate")
    print_load()


if __name__ == "__main__":
    main()
