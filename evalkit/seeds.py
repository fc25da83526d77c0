"""Derived seeds: a random stream is a function of named parts, never of batch position."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts`` (stable across runs and platforms)."""
    text = "\x1f".join([str(int(seed)), *(str(p) for p in parts)])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


_STREAM = np.uint64(0xD1B54A32D192ED03)


def uniforms(seeds: np.ndarray, step: int | np.ndarray, stream: int = 0) -> np.ndarray:
    """One uniform in [0, 1) per seed for decode step ``step`` (counter-based, splitmix64); ``step`` is one step for
    every seed or each seed's own.

    A sample's random numbers are a function of its own seed and the step only, so they do
    not depend on the batch it was decoded in. ``stream`` > 0 names another stream of the same seed (a sampler's
    own chance, such as XTC's): the seed is mixed with the stream's number first; stream 0 is the draw's.
    """
    with np.errstate(over="ignore"):
        base = seeds.astype(np.uint64)
        if stream:
            base = _mix(base ^ (_STREAM * np.uint64(stream)))
        z = _mix(base + _GOLDEN * (np.asarray(step, dtype=np.uint64) + np.uint64(1)))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
