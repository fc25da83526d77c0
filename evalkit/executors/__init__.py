"""Where generators run: in this process (:mod:`evalkit.executors.local`)."""

from evalkit.executors.local import LocalExecutor

__all__ = ["LocalExecutor"]
