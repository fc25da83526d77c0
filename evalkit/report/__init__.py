"""The HTML report: one self-contained, offline file that compares the settings of one run,
or the same settings across several runs.

``write_report(run_dirs, out)`` renders it; ``evalkit report`` and the end of ``evalkit run`` call it.
"""

from __future__ import annotations

from evalkit.report.build import render_report, write_report

__all__ = ["render_report", "write_report"]
