"""The CPU engine's heap: large freed blocks kept for reuse.

A decode step on CPU allocates and frees the same large tensors every step (the logits, the layers' activations,
the sampling transforms' temporaries: 12 MB each for 64 rows of a 49k vocabulary). glibc's malloc maps such blocks
from the kernel and unmaps them when freed, so every step pays a page fault per 4 KiB of each one again: on 2 cores
a tenth of a decode step of SmolLM2-135M at batch 64, and half of an exponential over its logits. Raising malloc's
mmap and trim thresholds (``mallopt``) keeps freed blocks in the heap for the next step; the process then holds on
to memory it has freed (up to :data:`TRIM_THRESHOLD`) until it exits. Values and results do not change.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 512 << 20  # blocks below this come from the heap and are reused
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept, not given back to the kernel

_done = False


def keep_freed_blocks() -> bool:
    """Ask glibc's malloc to keep large freed blocks for reuse, once per process; False where the C library is not
    glibc (nothing is changed there)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # another C library (musl): its malloc has no such options
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                          TRIM_THRESHOLD))
    return _done
