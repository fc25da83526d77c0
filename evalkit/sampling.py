"""Sampling parameters: one validated, immutable object per grid point.

Conventions follow transformers ``GenerationConfig`` and vLLM ``SamplingParams``:

- ``temperature`` >= 0; 0 means greedy decoding (argmax), the other filters are then moot.
- ``top_p`` in (0, 1]; 1.0 means no nucleus filtering.
- ``top_k`` >= 0; 0 means no top-k filtering.
- ``min_p`` in [0, 1); 0 means no min-p filtering.

When several are active they apply in transformers' order:
temperature, then top-k, then top-p, then min-p.
"""

from __future__ import annotations

import math

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

APPLICATION_ORDER = ("temperature", "top_k", "top_p", "min_p")


def _fmt(x: float) -> str:
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _check_temperature(v: float) -> float:
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {v}")
    return v


def _check_top_p(v: float) -> float:
    if not math.isfinite(v) or not 0 < v <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 means no filtering), got {v}")
    return v


def _check_top_k(v: int) -> int:
    if v < 0:
        raise ValueError(f"top_k must be >= 0 (0 means no filtering), got {v}")
    return v


def _check_min_p(v: float) -> float:
    if not math.isfinite(v) or not 0 <= v < 1:
        raise ValueError(f"min_p must be in [0, 1) (0 means no filtering), got {v}")
    return v


Temperature = Annotated[float, AfterValidator(_check_temperature)]
TopP = Annotated[float, AfterValidator(_check_top_p)]
TopK = Annotated[int, AfterValidator(_check_top_k)]
MinP = Annotated[float, AfterValidator(_check_min_p)]


class Setting(BaseModel):
    """One point of the text sampling grid. Immutable and hashable, with a stable short id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: Temperature = 1.0  # >= 0; 0 = greedy
    top_p: TopP = 1.0  # (0, 1]; 1 = off
    top_k: TopK = 0  # >= 0; 0 = off
    min_p: MinP = 0.0  # [0, 1); 0 = off

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def id(self) -> str:
        """Stable short id such as ``t0.7-p0.9`` (``-k40``, ``-m0.05`` only when active)."""
        parts = [f"t{_fmt(self.temperature)}", f"p{_fmt(self.top_p)}"]
        if self.top_k:
            parts.append(f"k{self.top_k}")
        if self.min_p:
            parts.append(f"m{_fmt(self.min_p)}")
        return "-".join(parts)

    def params(self) -> dict[str, float | int]:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "min_p": self.min_p}

    def __str__(self) -> str:
        return self.id
