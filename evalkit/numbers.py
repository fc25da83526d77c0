"""How evalkit shows a number to a reader (tables, reports): short, and "nan" when undefined."""

from __future__ import annotations

import math


def fmt(x: float) -> str:
    if x is None or math.isnan(x):
        return "nan"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"
