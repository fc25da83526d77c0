"""evalkit: measure what sampling settings do to a generative model.

The Python API: :func:`run_sweep`, :func:`plan_sweep`, :func:`score_file`, :func:`load_run`, :func:`export_run`,
:func:`backends` and the config.
Its names are imported on first use, so that ``import evalkit`` (and the command's start-up) stays light.
"""

from evalkit.version import __version__

_WHERE = {"backends": "evalkit.api", "plan_sweep": "evalkit.api", "run_sweep": "evalkit.api",
          "score_file": "evalkit.api", "export_run": "evalkit.export",
          "SweepConfig": "evalkit.config", "load_config": "evalkit.config", "ConfigError": "evalkit.errors",
          "EvalkitError": "evalkit.errors", "Run": "evalkit.rundir", "load_run": "evalkit.rundir",
          "Setting": "evalkit.settings"}

__all__ = ["ConfigError", "EvalkitError", "Run", "Setting", "SweepConfig", "__version__", "backends", "export_run",
           "load_config", "load_run", "plan_sweep", "run_sweep", "score_file"]


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'evalkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
