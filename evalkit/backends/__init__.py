"""Generation backends behind one small interface (see :mod:`evalkit.backends.base`)."""

from __future__ import annotations

from collections.abc import Callable

from evalkit.backends.base import Generation, ModelInfo, PreparedPrompt, TextBackend, WorkUnit
from evalkit.config import SweepConfig

__all__ = ["Generation", "ModelInfo", "PreparedPrompt", "TextBackend", "WorkUnit", "check_model", "load_backend"]


def check_model(config: SweepConfig):
    """Everything about the model that can be checked before loading it: device, path, hash."""
    from evalkit.backends.hf import locate_model, resolve_device

    return locate_model(config), resolve_device(config.model.device, config.source)


def load_backend(config: SweepConfig, status: Callable[[str], None] = lambda msg: None,
                 checked=None) -> TextBackend:
    """Load the model; ``checked`` is what :func:`check_model` returned, if it ran already."""
    source, device = checked if checked is not None else check_model(config)
    if config.model.backend == "vlm":
        from evalkit.backends.vlm import VLMBackend

        return VLMBackend(config, source, device, status=status)
    from evalkit.backends.hf import HFTextBackend

    return HFTextBackend(config, source, device, status=status)
