"""Generators behind one interface (:class:`~evalkit.generation.base.Generator`), each backend one declared
:class:`~evalkit.generation.spec.BackendSpec` found by ``model.backend`` in one registry. A new backend is one
module that declares its ``SPEC`` and one line here; nothing heavy (torch, transformers) is imported until a
backend loads."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from evalkit.config import SweepConfig
from evalkit.generation.base import Generator, ModelInfo, PreparedPrompt, SampleRecord, WorkUnit
from evalkit.generation.spec import Abilities, BackendSpec

__all__ = ["BACKENDS", "Abilities", "BackendSpec", "Generator", "ModelInfo", "PreparedPrompt", "SampleRecord",
           "WorkUnit", "all_specs", "check_model", "load_backend", "spec_of"]

# model.backend -> the module that declares its SPEC
BACKENDS = {
    "hf": "evalkit.generation.hf",  # transformers causal LM, decoded by evalkit's engine
    "vlm": "evalkit.generation.vlm",  # transformers image-text-to-text model, decoded by evalkit's engine
    "diffusers": "evalkit.generation.diffusers",  # diffusers text-to-image pipeline
    "openai": "evalkit.generation.served",  # a model behind an OpenAI-compatible server
    "vllm": "evalkit.generation.vllm_engine",  # a transformers causal LM decoded by vLLM's engine in this process
}


def spec_of(backend: str) -> BackendSpec:
    """The spec of ``model.backend``'s backend."""
    spec = importlib.import_module(BACKENDS[backend]).SPEC
    assert spec.name == backend and spec.config.BACKEND == backend, f"{BACKENDS[backend]} declares {spec.name}"
    return spec


def all_specs() -> list[BackendSpec]:
    return [spec_of(name) for name in BACKENDS]


def check_model(config: SweepConfig, device: bool = True):
    """Everything about the model that can be checked before loading it: (source, device). ``device=False`` leaves
    the device to be resolved where the model loads (a Ray worker on another machine): None."""
    return spec_of(config.model.backend).check_model(config, device=device)


def load_backend(config: SweepConfig, status: Callable[[str], None] = lambda msg: None,
                 checked=None) -> Generator:
    """Load the model's generator; ``checked`` is what :func:`check_model` returned, if it ran already."""
    spec = spec_of(config.model.backend)
    source, device = checked if checked is not None else spec.check_model(config)
    if device is None:
        from evalkit.generation.model import resolve_device

        device = resolve_device(config.model.device, config.source)
    return spec.load(config, source, device, status=status)
