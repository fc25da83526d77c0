"""The transformers text backend: any causal LM (hub id, local directory or GGUF file).

The model's forward pass is transformers'; decoding is evalkit's engine
(:mod:`evalkit.engine`), so no model generation default (a repetition penalty, a
default top_k) can change a setting.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from evalkit.backends import gguf
from evalkit.backends.base import ModelInfo, PreparedPrompt
from evalkit.backends.decoding import EngineBackend
from evalkit.config import ModelConfig, SweepConfig
from evalkit.errors import ConfigError, EvalkitError
from evalkit.prompts import Prompt

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
            return ModelSource("gguf", path, None, gguf.verify(path, mc.sha256))
        if mc.gguf_file:
            file = path / mc.gguf_file
            if not file.is_file():
                raise ConfigError(f"GGUF file does not exist: {file}", source=config.source, path="model.gguf_file")
            return ModelSource("gguf", file, None, gguf.verify(file, mc.sha256))
        if not (path / "config.json").is_file():
            raise ConfigError(f"not a transformers model directory (no config.json): {path}", **where)
        digest = _weights_hash(path)
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


def _weights_hash(directory: Path) -> str | None:
    files = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + gguf.sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def _quiet_libraries() -> None:
    """evalkit draws its own progress bars; silence the libraries' bars and advice."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    disable_progress_bars()


class HFTextBackend(EngineBackend):
    """A transformers causal LM behind the TextBackend interface."""

    def __init__(self, config: SweepConfig, source: ModelSource, device: str, status=lambda msg: None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        _quiet_libraries()
        mc = config.model
        self._source = config.source
        dtype = resolve_dtype(mc.dtype, device)
        converted_now = False
        if source.gguf is not None:
            status("checking the converted-model cache")
            if not gguf.converted_dir(source.gguf).is_dir():
                status("converting the GGUF file (one time; cached for later runs)")
            load_from, converted_now = gguf.ensure_converted(source.gguf)
            load_kwargs: dict[str, Any] = {}
        else:
            load_from, load_kwargs = source.load_args(mc.revision)
        status("loading the model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(load_from, **load_kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype, **load_kwargs)
        except OSError as e:
            raise ConfigError(f"cannot load {mc.id!r}: {str(e).splitlines()[0]}", source=config.source,
                              path="model.id") from None
        self.model.to(device).eval()

        # The model's suggested generation defaults play no part in evalkit's decoding; record them.
        ignored = self._special_tokens(self.tokenizer, self.model.generation_config)

        ctx = getattr(self.model.config, "max_position_embeddings", None)
        self.info = ModelInfo(
            backend="hf",
            id=mc.id,
            source=source.kind,
            path=str(source.gguf.path if source.gguf else (source.path or source.hub_id)),
            revision=getattr(self.model.config, "_commit_hash", None) if source.kind == "hub" else None,
            sha256=source.sha256,
            dtype=str(dtype).removeprefix("torch."),
            device=device,
            context_length=int(ctx) if ctx else None,
            eos_token_ids=self.eos_ids,
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            rng="evalkit engine: one splitmix64 stream per sample, a function of (sample seed, step) only",
            converted_now=converted_now,
            load_seconds=round(time.perf_counter() - started, 3),
            ignored_generation_defaults=ignored,
        )

    # ------------------------------------------------------------------ prompts

    def prepare(self, prompts: list[Prompt], *, chat_template: bool | str, system_prompt: str | None,
                max_new_tokens: int) -> list[PreparedPrompt]:
        use_template = self.info.has_chat_template if chat_template == "auto" else bool(chat_template)
        if use_template and not self.info.has_chat_template:
            raise ConfigError(f"the model {self.info.id!r} has no chat template", source=self._source,
                              path="prompts.chat_template")
        out = []
        for p in prompts:
            if use_template:
                rendered = self.tokenizer.apply_chat_template(p.chat(system_prompt), tokenize=False,
                                                              add_generation_prompt=True)
                ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
            else:
                if p.messages is not None:
                    raise ConfigError(f"prompt {p.id!r} is chat messages, but no chat template is applied",
                                      source=self._source, path="prompts")
                rendered = f"{system_prompt}\n\n{p.text}" if system_prompt else (p.text or "")
                ids = self.tokenizer(rendered)["input_ids"]
            self._check_fits(p.id, len(ids), max_new_tokens)
            out.append(PreparedPrompt(prompt=p, rendered=rendered, token_ids=tuple(ids), chat_template=use_template))
        return out
