"""Where generators run: in this process (:mod:`evalkit.executors.local`), or on the actors of a Ray
cluster (:mod:`evalkit.executors.ray_cluster`), as ``executor.kind`` says."""

from __future__ import annotations

from evalkit.config import SweepConfig
from evalkit.executors.local import LocalExecutor

__all__ = ["LocalExecutor", "executor_for"]


def executor_for(config: SweepConfig):
    """The executor ``config.executor.kind`` names; a Ray one refuses at once when Ray is not installed."""
    if config.executor.kind == "ray":
        from evalkit.executors.ray_cluster import RayExecutor

        return RayExecutor(config)
    return LocalExecutor(config)
