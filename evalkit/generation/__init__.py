"""Generators behind one interface (:class:`~evalkit.generation.base.Generator`), found by
``model.backend`` in one registry. A new backend is one module with a ``load`` function and one
line here; nothing heavy (torch, transformers) is imported until a backend loads."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from evalkit.config import SweepConfig
from evalkit.generation.base import Generator, ModelInfo, PreparedPrompt, SampleRecord, WorkUnit

__all__ = ["BACKENDS", "Generator", "ModelInfo", "PreparedPrompt", "SampleRecord", "WorkUnit", "check_model",
           "load_backend"]

# model.backend -> the module whose load(config, source, device, status) returns a Generator
BACKENDS = {
    "hf": "evalkit.generation.hf",  # transformers causal LM, decoded by evalkit's engine
    "vlm": "evalkit.generation.vlm",  # transformers image-text-to-text model, decoded by evalkit's engine
    "diffusers": "evalkit.generation.diffusers",  # diffusers text-to-image pipeline
    "openai": "evalkit.generation.served",  # a model behind an OpenAI-compatible server
    "vllm": "evalkit.generation.vllm_engine",  # a transformers causal LM decoded by vLLM's engine in this process
}

# decoded by evalkit's engine, which passes the KV cache as transformers >= 5.24 names it
ENGINE_BACKENDS = ("hf", "vlm")


def check_model(config: SweepConfig, device: bool = True):
    """Everything about the model that can be checked before loading it: (source, device). A backend module
    may check it its own way, with a ``check_model`` function. ``device=False`` leaves the device to be
    resolved where the model loads (a Ray worker on another machine): None."""
    module = importlib.import_module(BACKENDS[config.model.backend])
    if hasattr(module, "check_model"):
        return module.check_model(config, device=device)
    from evalkit.generation.model import check_transformers, locate_model, resolve_device

    if config.model.backend in ENGINE_BACKENDS:
        check_transformers(config)
    return locate_model(config), resolve_device(config.model.device, config.source) if device else None


def load_backend(config: SweepConfig, status: Callable[[str], None] = lambda msg: None,
                 checked=None) -> Generator:
    """Load the model's generator; ``checked`` is what :func:`check_model` returned, if it ran already."""
    source, device = checked if checked is not None else check_model(config)
    if device is None:
        from evalkit.generation.model import resolve_device

        device = resolve_device(config.model.device, config.source)
    module = importlib.import_module(BACKENDS[config.model.backend])
    return module.load(config, source, device, status=status)
