"""The command line: a thin layer over the Python API.

User errors print one line (``error: ...``) and exit 2; ``--debug`` shows the traceback. The commands are
registered on :data:`app` in the order ``evalkit --help`` lists them: :mod:`~evalkit.cli.running` (run, score),
:mod:`~evalkit.cli.tracking` (report, runs, compare, history), :mod:`~evalkit.cli.calibrate`,
:mod:`~evalkit.cli.metrics`, :mod:`~evalkit.cli.backends`.
"""

from evalkit.cli.base import CRASHED, REPORT_FAILED, app, err, main, out, printable
from evalkit.cli import running, tracking, calibrate, metrics, backends  # noqa: I001 (registers the commands, in this order)
from evalkit.cli import export  # noqa: F401 (registers `evalkit export`)
from evalkit.cli import conformance  # noqa: F401 (registers `evalkit conformance`)
from evalkit.cli.running import _print_summary

__all__ = ["CRASHED", "REPORT_FAILED", "_print_summary", "app", "backends", "calibrate", "err", "main", "metrics",
           "out", "printable",
           "running", "tracking"]
