"""Shared fixtures: a tiny randomly initialised Llama-style model with a real byte-level
BPE tokenizer and a chat template, built in code (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

CORPUS = [
    "Write a short story about a lighthouse keeper.",
    "Give one tip for learning to cook and to bake bread.",
    "The ocean is vast, deep and blue; the sky is wide.",
    "用一句话描述秋天的早晨。给学习编程的人一个建议。",
    "def add(a, b): return a + b  # numbers 0123456789",
] * 20

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bpe_tokenizer(extra_special_tokens: tuple[str, ...] = ()):
    """A real byte-level BPE tokenizer (320 tokens) trained on CORPUS, with ChatML's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                                  *extra_special_tokens],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def build_tiny_model(directory: Path, *, chat_template: bool = True, context: int = 128) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = bpe_tokenizer()
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    return _saved(LlamaForCausalLM(config), fast, directory)


def _saved(model, tokenizer, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_gemma(directory: Path, *, sliding_window: int = 4) -> Path:
    """A tiny Gemma 3 text model: a sliding-window layer (of ``sliding_window`` tokens, shorter than the prompts)
    and a full-attention one, the architecture's own norms and scalings."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    fast = bpe_tokenizer()
    fast.chat_template = CHAT_TEMPLATE
    config = Gemma3TextConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                              sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention"],
                              max_position_embeddings=128, eos_token_id=fast.eos_token_id,
                              pad_token_id=fast.pad_token_id, bos_token_id=None)
    torch.manual_seed(1)
    return _saved(Gemma3ForCausalLM(config), fast, directory)


# What a test module needs, by module: its markers (see pyproject.toml); server, ray, browser, sandbox and vllm tests
# are slow.
MODULE_MARKERS = {"test_served": ("server",), "test_ray": ("ray",), "test_report_browser": ("browser",),
                  "test_sandbox": ("sandbox",), "test_humaneval": ("sandbox",), "test_vllm": ("vllm",),
                  "test_default_model": ("slow",),
                  "test_sampler_sweep": ("slow",),  # three sweeps over every engine order's samplers
                  "test_resume_cache": ("slow",),  # runs stopped part way in a child process, then resumed
                  "test_vlm_sweep": ("slow",),  # four tiny vision-language models built and run
                  # a tiny Stable Diffusion pipeline built and run
                  "test_image_sweep": ("slow",), "test_image_reference": ("slow",), "test_diffusers_backend": ("slow",)}
SLOW_MARKERS = {"server", "ray", "browser", "sandbox", "vllm"}


def pytest_collection_modifyitems(config, items):
    """Markers by module and by fixture (a test that starts llama.cpp's server is a server test wherever it is)."""
    for item in items:
        names = set(MODULE_MARKERS.get(item.module.__name__.rpartition(".")[2], ()))
        if "llama_server" in getattr(item, "fixturenames", ()):
            names.add("server")
        names |= {m.name for m in item.iter_markers()}
        if names & SLOW_MARKERS:
            names.add("slow")
        for name in sorted(names - {m.name for m in item.iter_markers()}):
            item.add_marker(getattr(pytest.mark, name))


@pytest.fixture(scope="session", autouse=True)
def sample_cache(tmp_path_factory):
    """Every test's sample cache is a fresh file, never the user's."""
    import os

    path = tmp_path_factory.mktemp("sample-cache") / "samples.sqlite"
    old = os.environ.get("EVALKIT_SAMPLE_CACHE")
    os.environ["EVALKIT_SAMPLE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EVALKIT_SAMPLE_CACHE", None)
    else:
        os.environ["EVALKIT_SAMPLE_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_no_template(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-plain"), chat_template=False)


def base_config(model: Path | str, output_dir: Path, **extra) -> dict:
    config = {
        "name": "tiny",
        "model": {"id": str(model), "device": "cpu"},
        "prompts": [{"id": "en", "prompt": "Write a short story."}, {"id": "zh", "prompt": "描述秋天的早晨。"},
                    "Give one tip for learning to cook."],
        "grid": {"temperature": [0.0, 0.7, 1.3], "top_p": [0.8, 1.0]},
        "samples_per_prompt": 3,
        "max_new_tokens": 8,
        "seed": 1,
        "output_dir": str(output_dir),
        "report": False,  # the report's own tests ask for it
    }
    config.update(extra)
    return config


def held_run(hold_after: int, release: Path | None = None) -> list[str]:
    """Python arguments that run ``evalkit`` (its command line follows them) with the run held, asleep as a slow
    decode step would be, once it has written ``hold_after`` parts: until the file ``release`` exists, or with none
    until a signal stops it. A run on a loaded machine cannot finish between a test seeing its parts and what the
    test does next."""
    until = f"not pathlib.Path({str(release)!r}).exists()" if release is not None else "True"
    code = f"""
import pathlib, sys, time
from evalkit.rundir import parts
flush, held = parts.PartWriter.flush, []
def flush_then_hold(self):
    flush(self)
    if not held and self.count >= {hold_after}:
        held.append(True)
        while {until}:
            time.sleep(0.05)
parts.PartWriter.flush = flush_then_hold
sys.argv = ["evalkit", *sys.argv[1:]]
from evalkit.launch import main
main()
"""
    return ["-c", code]


def wait_for_parts(out: Path, proc, minimum: int = 1, pattern: str = "*/parts/part-*.parquet") -> Path:
    """The run directory under ``out`` once ``minimum`` parts are there; the process ``proc`` (a Popen) ending
    first fails the test. The deadline is for a hung run only, not for a slow machine."""
    import time

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        parts = list(out.glob(pattern))
        if len(parts) >= minimum:
            return parts[0].parent.parent
        if proc.poll() is not None:
            _, stderr = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before writing {minimum} parts: {stderr}")
        time.sleep(0.05)
    raise AssertionError(f"the run wrote no {minimum} parts in 900 s")


@pytest.fixture
def write_config(tmp_path):
    """Write a config dict (or YAML text) to a file and return its path."""

    def write(content, name: str = "sweep.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, allow_unicode=True),
                        encoding="utf-8")
        return path

    return write


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """(pipeline directory, tiny CLIP config JSON): a tiny Stable Diffusion pipeline and CLIP model."""
    import json

    pytest.importorskip("diffusers")
    from tiny_diffusion import TINY_CLIP, build_tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    clip = folder / "tiny-clip.json"
    clip.write_text(json.dumps(TINY_CLIP), encoding="utf-8")
    return build_tiny_pipeline(folder), clip


@pytest.fixture(scope="session")
def tiny_vlms(tmp_path_factory) -> dict[str, Path]:
    """Tiny randomly initialised vision-language models saved with their processors."""
    import tiny_vlm

    folder = tmp_path_factory.mktemp("tiny-vlm")
    return {name: getattr(tiny_vlm, f"build_tiny_{name}")(folder / name)
            for name in ("llava", "idefics3", "qwen2_vl", "qwen2_5_vl")}


API_KEY_ENV = "EVALKIT_TEST_API_KEY"  # the served-model tests' key lives here (a sentinel: grepped for later)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """llama.cpp's server on 127.0.0.1 serving the embedded GGUF, with a sentinel API key; always stopped."""
    import os
    import uuid

    from served_helpers import LlamaServer, require_llama_cpp

    require_llama_cpp()
    key = f"sk-evalkit-sentinel-{uuid.uuid4().hex}"
    server = LlamaServer(tmp_path_factory.mktemp("llama-server"), key).start()
    old = os.environ.get(API_KEY_ENV)
    os.environ[API_KEY_ENV] = key
    try:
        yield server
    finally:
        server.stop()
        if old is None:
            os.environ.pop(API_KEY_ENV, None)
        else:
            os.environ[API_KEY_ENV] = old


def served_config(base_url: str, output_dir: Path, **extra) -> dict:
    """A small sweep of the served SmolLM2 (2 prompts x 2 settings x 2 samples)."""
    config = {
        "name": "served",
        "model": {"backend": "openai", "base_url": base_url, "id": "smollm2", "api_key_env": API_KEY_ENV,
                  "concurrency": 4, "max_retries": 2, "backoff_s": 0.05, "timeout_s": 60},
        "prompts": [{"id": "story", "prompt": "Once upon a time, in a lighthouse,"},
                    {"id": "cook", "prompt": "One tip for learning to cook:"}],
        "grid": {"temperature": [0.8, 1.2]},
        "samples_per_prompt": 2,
        "max_new_tokens": 12,
        "seed": 3,
        "metrics": ["distinct_1", "nll"],
        "output_dir": str(output_dir),
        "report": False,
    }
    for key, value in extra.items():
        if key == "model":
            config["model"] = {**config["model"], **value}
        else:
            config[key] = value
    return config


@pytest.fixture(scope="module")
def sandboxed():
    """Skip where bubblewrap's sandbox cannot run (a failure instead under EVALKIT_REQUIRE_SANDBOX=1)."""
    import os

    from evalkit.sandbox import Sandbox, SandboxUnavailable

    try:
        Sandbox().check()
    except SandboxUnavailable as e:
        if os.environ.get("EVALKIT_REQUIRE_SANDBOX") == "1":
            raise RuntimeError(f"EVALKIT_REQUIRE_SANDBOX=1 but {e}") from None
        pytest.skip(str(e))
