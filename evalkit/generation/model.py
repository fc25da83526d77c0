"""Where a model comes from, and what it runs on: located, hashed and checked before anything is
loaded (a local directory, a GGUF file, the embedded default model or a hub id), the device and
dtype resolved. Every backend goes through here."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from evalkit.config import ModelConfig, SweepConfig
from evalkit.errors import ConfigError, EvalkitError, shown
from evalkit.generation import gguf

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def resolve_device(requested: str, source: str | None = None) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("'cuda' was requested but no CUDA GPU is available", source=source, path="model.device")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_dtype(requested: str, device: str):
    import torch

    if requested == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, requested)


class ModelSource:
    """Where a model comes from, found and checked before anything is loaded."""

    def __init__(self, kind: str, path: Path | None, hub_id: str | None, gguf_source: gguf.GGUFSource | None,
                 weights_sha256: str | None = None):
        self.kind, self.path, self.hub_id, self.gguf = kind, path, hub_id, gguf_source
        self.sha256 = gguf_source.sha256 if gguf_source else weights_sha256  # file or weight-files hash

    def load_args(self, revision: str | None) -> tuple[str, dict[str, Any]]:
        """What ``from_pretrained`` takes for a directory or hub model: where, and the hub revision if any."""
        where = str(self.path) if self.path else self.hub_id
        return where, ({"revision": revision} if self.kind == "hub" and revision else {})

    def checkpoint(self, revision: str | None, status=lambda msg: None) -> tuple[str, dict[str, Any], bool]:
        """(where a transformers checkpoint is, ``from_pretrained`` keyword arguments, whether a GGUF file was
        converted now): a GGUF file is de-quantized once into the cache, others load as they are."""
        if self.gguf is None:
            return (*self.load_args(revision), False)
        status("checking the converted-model cache")
        if not gguf.converted_dir(self.gguf).is_dir():
            status("converting the GGUF file (one time; cached for later runs)")
        where, converted_now = gguf.ensure_converted(self.gguf)
        return str(where), {}, converted_now


def locate_model(config: SweepConfig) -> ModelSource:
    """Resolve ``model.id`` to a local file, directory or hub id. Raises on a missing path or bad hash."""
    try:
        return _locate(config)
    except ConfigError:
        raise
    except EvalkitError as e:
        if "sha256 mismatch" in str(e):
            raise ConfigError(str(e), source=config.source, path="model.sha256") from None
        raise


def _locate(config: SweepConfig) -> ModelSource:
    mc: ModelConfig = config.model
    where = dict(source=config.source, path="model.id")
    if mc.id == "default":
        for name in ("gguf_file", "revision"):
            if getattr(mc, name):
                raise ConfigError(f"the embedded default model is one file of its own: {name} does not apply, got "
                                  f"{shown(getattr(mc, name))}", source=config.source, path=f"model.{name}")
        expected = mc.sha256 or gguf.DEFAULT_SHA256
        return ModelSource("embedded", None, None, gguf.verify(gguf.default_gguf_path(), expected))
    path = config.resolve_path(mc.id)
    looks_local = mc.id.startswith((".", "/", "~")) or mc.id.endswith(".gguf") or path.exists()
    if looks_local:
        if not path.exists():
            raise ConfigError(f"model path does not exist: {path}", **where)
        if path.is_file():
            if path.suffix != ".gguf":
                raise ConfigError(f"model file must be a .gguf file or a directory, got {path}", **where)
            return ModelSource("gguf", path, None, _checked_gguf(path, mc.sha256, config.source, "model.id"))
        if mc.gguf_file:
            file = path / mc.gguf_file
            if not file.exists():
                raise ConfigError(f"GGUF file does not exist: {file}", source=config.source, path="model.gguf_file")
            if not file.is_file():
                raise ConfigError(f"GGUF file is not a regular file: {file}", source=config.source,
                                  path="model.gguf_file")
            return ModelSource("gguf", file, None, _checked_gguf(file, mc.sha256, config.source, "model.gguf_file"))
        pipeline = mc.PIPELINE  # a diffusers pipeline: model_index.json and one folder per part
        marker = "model_index.json" if pipeline else "config.json"
        if not (path / marker).is_file():
            what = "diffusers pipeline" if pipeline else "transformers model"
            raise ConfigError(f"not a {what} directory (no {marker}): {path}", **where)
        digest = _weights_hash(path, recursive=pipeline)
        if mc.sha256 and digest != mc.sha256:
            raise ConfigError(f"sha256 mismatch for the weights in {path}: expected {mc.sha256}, got {digest}",
                              source=config.source, path="model.sha256")
        return ModelSource("local", path, None, None, weights_sha256=digest)
    if mc.gguf_file:
        from huggingface_hub import hf_hub_download

        try:
            file = Path(hf_hub_download(mc.id, mc.gguf_file, revision=mc.revision))
        except Exception as e:  # network or missing repo: a user problem, said in one line
            raise ConfigError(f"cannot fetch {mc.gguf_file} from {mc.id}: {type(e).__name__}", **where) from None
        return ModelSource("gguf", file, None, gguf.verify(file, mc.sha256))
    return ModelSource("hub", None, mc.id, None)


def _checked_gguf(file: Path, sha256: str | None, source: str, field: str):
    """The GGUF file, verified: it starts with the bytes ``GGUF``; before its first conversion (the only time a
    loader parses it) its header and tensor table are read, so a damaged file is refused in one line."""
    with open(file, "rb") as f:
        head = f.read(4)
    if head != b"GGUF":
        raise ConfigError(f"{file} is not a GGUF file (it does not start with the bytes 'GGUF')", source=source,
                          path=field)
    verified = gguf.verify(file, sha256)
    if not gguf.converted_dir(verified).is_dir():
        _gguf_tensors(file, source, field)
    return verified


def _gguf_tensors(file: Path, source: str, field: str) -> None:
    from gguf import GGUFReader

    try:  # the header and tensor table, read before a loader trusts them (a bogus count allocates without end)
        tensors = len(GGUFReader(file).tensors)
    except Exception as e:  # the gguf package raises several types for a damaged file
        raise ConfigError(f"{file} is a damaged GGUF file ({' '.join(str(e).split())[:100] or type(e).__name__})",
                          source=source, path=field) from None
    if tensors == 0:
        raise ConfigError(f"{file} is a GGUF file with no tensors: not a model", source=source, path=field)


def _weights_hash(directory: Path, recursive: bool = False) -> str | None:
    """sha256 over the weight files' names (relative to ``directory``) and contents."""
    found = directory.rglob("*") if recursive else directory.iterdir()
    files = sorted(p for p in found if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(directory).as_posix().encode() + b"\0" + gguf.sha256_file(f).encode() + b"\n")
    return h.hexdigest()


ENGINE_TRANSFORMERS = (5, 24)  # the first transformers that names the KV cache `cache` (evalkit's engine passes it)


def engine_transformers_here() -> bool:
    """Whether this environment's transformers is recent enough for evalkit's engine (vLLM's pins an older one)."""
    import re

    import transformers

    return tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2]) >= ENGINE_TRANSFORMERS


def check_transformers(config: SweepConfig) -> None:
    """Refuse, before loading, a transformers too old for evalkit's engine (vLLM's environment pins an older one)."""
    import transformers

    if not engine_transformers_here():
        need = ".".join(map(str, ENGINE_TRANSFORMERS))
        raise ConfigError(f"backend {config.model.backend} decodes with evalkit's engine, which needs transformers >= "
                          f"{need}, and this environment has {transformers.__version__} (vLLM's environment pins an "
                          "older one): run it in evalkit's main environment", source=config.source,
                          path="model.backend")


def check_local_model(config: SweepConfig, device: bool = True) -> tuple[ModelSource, str | None]:
    """Before loading a model whose weights evalkit reads: the model found (and hashed), and (``device``: here, not
    on a Ray worker, which resolves it where it loads) the device resolved."""
    return locate_model(config), resolve_device(config.model.device, config.source) if device else None


def check_engine_model(config: SweepConfig, device: bool = True) -> tuple[ModelSource, str | None]:
    """:func:`check_local_model`, for a model decoded by evalkit's engine (which needs a recent transformers)."""
    check_transformers(config)
    return check_local_model(config, device)


def quiet_libraries() -> None:
    """evalkit draws its own progress bars; silence the libraries' bars and advice."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    disable_progress_bars()


