"""evalkit: measure what sampling settings do to a generative model.

The Python API: :func:`run_sweep`, :func:`plan_sweep`, :func:`score_file`, :func:`load_run` and the config.
"""

from evalkit.version import __version__
from evalkit.api import plan_sweep, run_sweep, score_file
from evalkit.config import SweepConfig, load_config
from evalkit.errors import ConfigError, EvalkitError
from evalkit.rundir import Run, load_run
from evalkit.settings import Setting

__all__ = ["ConfigError", "EvalkitError", "Run", "Setting", "SweepConfig", "__version__", "load_config",
           "load_run", "plan_sweep", "run_sweep", "score_file"]
