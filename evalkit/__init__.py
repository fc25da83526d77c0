"""evalkit: measure what sampling settings do to a generative model."""

__version__ = "0.1.0"

from evalkit.config import SweepConfig, load_config  # noqa: E402
from evalkit.errors import ConfigError, EvalkitError  # noqa: E402
from evalkit.runner import run_sweep  # noqa: E402
from evalkit.sampling import Setting  # noqa: E402
from evalkit.store import Run, load_run  # noqa: E402

__all__ = ["ConfigError", "EvalkitError", "Run", "Setting", "SweepConfig", "__version__", "load_config",
           "load_run", "run_sweep"]
