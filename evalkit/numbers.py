"""How evalkit shows a number to a reader (tables, reports): short, and "nan" when undefined."""

from __future__ import annotations

import math


def fmt(x: float) -> str:
    if x is None or math.isnan(x):
        return "nan"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"


def count(n: int, noun: str) -> str:
    """``1 prompt``, ``3 prompts``: ``noun`` is the plural, cut to the singular for one."""
    return f"{n} {noun.removesuffix('s') if n == 1 else noun}"
