"""A tiny randomly initialised Stable Diffusion pipeline, built in code through diffusers' real
classes, with a real CLIP tokenizer built from the BPE vocabulary that open_clip ships."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def _byte_chars() -> list[str]:
    """CLIP's byte-to-unicode table: printable bytes stand for themselves, the others for 256, 257, ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def clip_tokenizer(directory: Path):
    """The CLIP tokenizer (49,408 tokens) from open_clip's merges file."""
    import open_clip
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = [tuple(line.split()) for line in gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 1]]
    chars = _byte_chars()
    vocab = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges), "<|startoftext|>",
             "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                          encoding="utf-8")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77,
                         pad_token="<|endoftext|>")


def build_tiny_pipeline(directory: Path) -> Path:
    """Save a tiny StableDiffusionPipeline (32x32 images, latents 16x16) into ``directory``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_tokenizer(directory / "_tokenizer")
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        projection_dim=32))
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=32, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=32, sample_size=32)
    # steps_offset=1: the pipeline would set it anyway, with a FutureWarning that the config is outdated
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(directory / "pipeline")
    return directory / "pipeline"


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def t2i_config(pipeline: Path, clip_json: Path, output_dir: Path, **extra) -> dict:
    """A small text-to-image sweep on the tiny pipeline, scored by a tiny random open_clip model."""
    clip = {"model": str(clip_json), "pretrained": "none"}
    config = {"name": "t2i", "model": {"backend": "diffusers", "id": str(pipeline), "device": "cpu"},
              "prompts": [{"id": "cube", "prompt": "a red cube"}, {"id": "cat", "prompt": "a cat on a mat"}],
              "grid": {"guidance_scale": [1.0, 5.0], "num_inference_steps": [2, 3]}, "samples_per_prompt": 3,
              "image": {"width": 32, "height": 32, "batch_size": 2}, "seed": 4,
              "metrics": [{"name": "clip_score", **clip}, {"name": "clip_image_diversity", **clip},
                          {"name": "clip_vendi", **clip}],
              "output_dir": str(output_dir), "report": False}
    config.update(extra)
    return config
