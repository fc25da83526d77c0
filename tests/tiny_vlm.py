"""Tiny randomly initialised vision-language models, built in code from their configs through
transformers' real classes and saved with a real processor (image processor, byte-level BPE
tokenizer, chat template): LLaVA (CLIP vision tower + Llama), Idefics3 (SmolVLM's architecture:
pixel attention masks, pixel shuffle), Qwen2-VL and Qwen2.5-VL (multimodal RoPE, windowed vision)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import bpe_tokenizer

# A ChatML template whose messages carry content lists ({"type": "image"} / {"type": "text"}), as
# vision-language processors expect; IMAGE stands for the model's image placeholder.
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
            "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}IMAGE{% else %}{{ c['text'] }}"
            "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_TEMPLATE = TEMPLATE.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256)


def build_tiny_llava(directory: Path) -> Path:
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = bpe_tokenizer(("<image>",))
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=TEMPLATE.replace("IMAGE", "<image>"))
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                       image_size=32, patch_size=8, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                bos_token_id=None, **TEXT),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_tiny_qwen2_vl(directory: Path, text: dict | None = None, vision: dict | None = None,
                        max_pixels: int = 64 * 64) -> Path:
    """A tiny Qwen2-VL; ``text``, ``vision`` and ``max_pixels`` make a bigger one (benchmarks)."""
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    tok = bpe_tokenizer(("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"))
    sizes = dict(min_pixels=16 * 16, max_pixels=max_pixels, patch_size=8, merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**sizes), tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor(**sizes),
                                 chat_template=QWEN_TEMPLATE)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, rope_scaling={"type": "mrope", "mrope_section": _mrope(text or TEXT)},
                         **(text or TEXT)),
        vision_config={"depth": 1, "embed_dim": 32, "num_heads": 4, "patch_size": 8, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "in_channels": 3, "mlp_ratio": 2, **(vision or {}),
                       "hidden_size": (text or TEXT)["hidden_size"]},
        **_vision_ids(tok))
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_tiny_idefics3(directory: Path) -> Path:
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tok = bpe_tokenizer(("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"))
    images = Idefics3ImageProcessor(do_image_splitting=False, max_image_size={"longest_edge": 32},
                                    size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4,  # (32/8)^2 / 2^2
                                  chat_template=TEMPLATE.replace("IMAGE", "<image>"))
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=None, **TEXT),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2)
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_tiny_qwen2_5_vl(directory: Path) -> Path:
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tok = bpe_tokenizer(("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"))
    sizes = dict(min_pixels=16 * 16, max_pixels=64 * 64, patch_size=8, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**sizes), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(**sizes), chat_template=QWEN_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}, **TEXT),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1],
                           in_channels=3), **_vision_ids(tok))
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _mrope(text: dict) -> list[int]:
    """Rotary frequencies split over (time, height, width), summing to half the head dimension."""
    q = text["hidden_size"] // text["num_attention_heads"] // 8
    return [2 * q, q, q]


def _vision_ids(tok) -> dict[str, int]:
    return {name: tok.convert_tokens_to_ids(token) for name, token in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}


def write_images(folder: Path, n: int = 3, seed: int = 0) -> list[Path]:
    """Random RGB images of different sizes (the processors resize them)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"image{i}.png"
        Image.fromarray(rng.integers(0, 255, (32 + 8 * i, 48 - 8 * i, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def vlm_config(model: Path, images: list[Path], output_dir: Path, clip_json: Path | None = None, **extra) -> dict:
    """A small captioning sweep: one question per image, two with reference captions."""
    per_image = [{"references": ["a red square", "a square drawn in red"]}, {"references": ["two cats on a mat"]},
                 {"prompt": "What is in the picture?"}]
    prompts = [{"id": f"img{i}", "image": str(p), **(per_image[i] if i < len(per_image) else {})}
               for i, p in enumerate(images)]
    metrics: list = ["distinct_2", "self_bleu", {"name": "token_entropy", "dist": "sampling"}]
    if clip_json is not None:
        clip = {"model": str(clip_json), "pretrained": "none"}
        metrics += [{"name": "clip_score", "text": "sample", **clip}, {"name": "ref_clip_score", **clip}]
    config = {"name": "vlm", "model": {"backend": "vlm", "id": str(model), "device": "cpu"},
              "prompts": {"items": prompts, "question": "Describe the image."},
              "grid": {"temperature": [0.0, 0.8, 1.2], "top_p": [0.9, 1.0]}, "samples_per_prompt": 3,
              "max_new_tokens": 6, "seed": 3, "metrics": metrics, "output_dir": str(output_dir), "report": False}
    config.update(extra)
    return config


def clip_json(folder: Path) -> Path:
    from tiny_diffusion import TINY_CLIP

    path = folder / "tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP), encoding="utf-8")
    return path
