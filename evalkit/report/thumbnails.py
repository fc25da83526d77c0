"""The images of a report: small JPEG thumbnails inlined as ``data:`` URIs, within a size budget.

A run's thumbnails share one budget (``BUDGET`` bytes of base64 text). The largest side of
``SIDES`` whose thumbnails of every image fit it is used, estimated from a few images encoded at
each side; when not even the smallest fits, only the first images of each group are inlined and
the others are named by their path in the run directory (where the full images are).
"""

from __future__ import annotations

import base64
import io
import statistics
from dataclasses import dataclass
from pathlib import Path

BUDGET = 12 << 20  # bytes of inline images per run in a report
SAMPLE_SIDES = (160, 128, 96, 64, 48)  # pixels on the longer side of a generated image, largest first
PROMPT_SIDES = (256, 192, 128, 96, 64)  # ... of the image a caption describes
PROBE = 8  # images encoded to estimate the size of a thumbnail


def thumbnail(path: Path, side: int) -> str:
    """The image as a JPEG of at most ``side`` pixels on its longer side, as a ``data:`` URI."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Plan:
    side: int  # pixels on the longer side of every thumbnail
    per_group: int | None  # inline the first N images of each group; None: all of them
    n_images: int
    budget: int

    def describe(self) -> str:
        if self.per_group is None:
            return f"{self.n_images} as thumbnails of at most {self.side} px"
        return (f"the first {self.per_group} of each group as thumbnails of at most {self.side} px (report budget "
                f"{self.budget / 2**20:.0f} MB); all {self.n_images} are in the run directory")


def plan(paths: list[Path], groups: int, sides: tuple[int, ...], budget: int | None = None) -> Plan:
    """The largest side at which thumbnails of all ``paths`` fit ``budget`` (default ``BUDGET``), else how
    many per group fit at the smallest side."""
    budget = BUDGET if budget is None else budget
    n = len(paths)
    probe = [paths[round(i * (n - 1) / (PROBE - 1))] for i in range(PROBE)] if n > PROBE else paths
    size = 0.0
    for side in sides:
        size = statistics.fmean(len(thumbnail(p, side)) for p in probe) if probe else 0.0
        if size * n <= budget:
            return Plan(side, None, n, budget)
    return Plan(sides[-1], max(1, int(budget // size) // max(groups, 1)), n, budget)
