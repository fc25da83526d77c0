"""CLIP alignment and image diversity, through open_clip.

- clip_score (Hessel et al., EMNLP 2021, "CLIPScore"; ``jmhessel/clipscore``): for each image
  of the group, 2.5 * max(cos(E_image, E_text), 0), then the mean. The text is the prompt
  (text-to-image) or the sample's own text (captioning); ``prefix=yes`` puts "A photo depicts "
  before it, as the paper does. Text beyond the model's context (77 tokens for most CLIPs) is
  truncated by open_clip's tokenizer. This is not torchmetrics' CLIPScore (100 * cos, mean
  first, then clamped).
- ref_clip_score (RefCLIPScore, same paper): for each caption, the harmonic mean of its CLIP-S and
  max(max_r cos(E_caption, E_ref_r), 0) over the image's reference captions (the text side is not
  multiplied by 2.5; the paper clamps it at 0, its code does not), then the mean. With
  ``prefix=yes`` the references get the prefix too, as in the paper's code.
- clip_image_diversity: mean cosine distance between the CLIP image embeddings of distinct
  pairs of images of the group; clip_vendi: the Vendi score (q = 1) of those embeddings.

``model`` is an open_clip model name (``ViT-B-32``) or the path of a model-config JSON;
``pretrained`` an open_clip pretrained tag (from its cache or the hub), a local checkpoint
file, or ``none`` (random weights, for tests).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from evalkit.errors import EvalkitError
from evalkit.scoring.metric import Group, Metric, Score
from evalkit_metrics.semantic import mean_pairwise_distance, vendi

PREFIX = "A photo depicts "
WEIGHT = 2.5


@lru_cache(maxsize=2)
def load_clip(model: str, pretrained: str):
    """(model, preprocess, tokenizer) on CPU, in eval mode."""
    import open_clip

    name = model
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise EvalkitError(f"CLIP model config not found: {model}")
        open_clip.add_model_config(path)
        name = path.stem
    try:
        with _quiet_downloads():
            net, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None if pretrained == "none" else pretrained, device="cpu")
    except Exception as e:  # unknown name, missing weights offline: the user's to fix
        why = str(e).splitlines()[0].split(". Last error")[0] if str(e) else ""
        raise EvalkitError(f"cannot load CLIP model {model!r} with pretrained={pretrained!r}: "
                           f"{type(e).__name__}: {why}") from None
    net.eval()
    return net, preprocess, open_clip.get_tokenizer(name)


@contextmanager
def _quiet_downloads():
    """open_clip and huggingface_hub log every failed download attempt; evalkit reports the failure once."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _normalize(x) -> np.ndarray:
    x = x.detach().double().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


_IMAGES: dict[tuple[str, str, str], np.ndarray] = {}  # (model, pretrained, path) -> embedding, shared by the metrics


def image_embeddings(model: str, pretrained: str, paths: list[str]) -> np.ndarray:
    """L2-normalised CLIP embeddings of image files; each file is encoded once per model."""
    import torch
    from PIL import Image

    todo = list(dict.fromkeys(p for p in paths if (model, pretrained, p) not in _IMAGES))
    if todo:
        net, preprocess, _ = load_clip(model, pretrained)
        batch = []
        for p in todo:
            try:
                with Image.open(p) as im:
                    batch.append(preprocess(im.convert("RGB")))
            except OSError as e:
                raise EvalkitError(f"cannot read image {p}: {e}") from None
        with torch.inference_mode():
            vectors = _normalize(net.encode_image(torch.stack(batch)))
        _IMAGES.update({(model, pretrained, p): v for p, v in zip(todo, vectors)})
    return np.stack([_IMAGES[(model, pretrained, p)] for p in paths])


def text_embeddings(model: str, pretrained: str, texts: list[str]) -> np.ndarray:
    import torch

    net, _, tokenizer = load_clip(model, pretrained)
    with torch.inference_mode():
        return _normalize(net.encode_text(tokenizer(texts)))


def clip_scores(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """CLIP-S of each (image, text) row pair: 2.5 * max(cos, 0) (rows are L2-normalised)."""
    return WEIGHT * np.maximum((image * text).sum(axis=1), 0.0)


class ClipParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = "ViT-B-32"
    pretrained: str = "openai"


class ClipScoreParams(ClipParams):
    text: Literal["prompt", "sample"] = "prompt"  # prompt: text-to-image; sample: captions
    prefix: Literal["yes", "no"] = "yes"  # "A photo depicts " before the text (Hessel et al.)


class _Clip(Metric):
    needs = frozenset({"images"})
    Params = ClipParams

    def prepare(self) -> None:
        load_clip(self.params.model, self.params.pretrained)

    def signature(self) -> dict[str, object]:
        sig = self.params.model_dump()
        sig["model"] = Path(self.params.model).stem if self.params.model.endswith(".json") else self.params.model
        if Path(self.params.pretrained).is_file():
            sig["pretrained"] = Path(self.params.pretrained).name
        return sig


class ClipScore(_Clip):
    name = "clip_score"
    kind = "quality"
    definition = "mean over images of 2.5 * max(cos(CLIP image, CLIP text), 0); text = prompt or caption"
    reference = "Hessel et al. 2021, CLIPScore"
    Params = ClipScoreParams

    @property
    def needs(self) -> frozenset[str]:
        """text=prompt: the generated images and their prompt; text=sample: the captions and the image
        they were made for."""
        return frozenset({"images", "prompts"}) if self.params.text == "prompt" else frozenset(
            {"texts", "prompt_images"})

    def compute(self, group: Group) -> Score:
        if self.params.text == "prompt":
            images, texts = list(group.images), [group.prompt] * len(group.images)
        else:
            images, texts = [group.prompt_image] * len(group.texts) if group.prompt_image else [], list(group.texts)
        if not images:
            return Score.undefined("the group has no images")
        p = self.params
        scores = clip_scores(image_embeddings(p.model, p.pretrained, images),
                             text_embeddings(p.model, p.pretrained, _prefixed(p, texts)))
        return Score(float(scores.mean()), per_sample=tuple(float(s) for s in scores))


def _prefixed(params, texts: list[str]) -> list[str]:
    return [PREFIX + t for t in texts] if params.prefix == "yes" else list(texts)


def ref_clip_scores(clip_s: np.ndarray, captions: np.ndarray, references: np.ndarray) -> np.ndarray:
    """RefCLIP-S per caption: harmonic mean of its CLIP-S and max(max_r cos(caption, ref_r), 0)
    (rows L2-normalised); 0 where both are 0."""
    ref = np.maximum((captions @ references.T).max(axis=1), 0.0)
    total = clip_s + ref
    return np.divide(2 * clip_s * ref, total, out=np.zeros_like(total), where=total > 0)


class RefClipParams(ClipParams):
    prefix: Literal["yes", "no"] = "yes"  # "A photo depicts " before captions and references (Hessel et al.)


class RefClipScore(_Clip):
    name = "ref_clip_score"
    kind = "quality"
    definition = ("mean over captions of the harmonic mean of CLIP-S(image, caption) and "
                  "max(max over references of cos(caption, reference), 0)")
    reference = "Hessel et al. 2021, CLIPScore (RefCLIPScore)"
    needs = frozenset({"texts", "prompt_images", "references"})
    Params = RefClipParams

    def compute(self, group: Group) -> Score:
        if not group.references:
            return Score.undefined("the prompt has no reference captions")
        if not group.prompt_image or not group.texts:
            return Score.undefined("the group has no image or no captions")
        p = self.params
        image = image_embeddings(p.model, p.pretrained, [group.prompt_image])
        captions = text_embeddings(p.model, p.pretrained, _prefixed(p, list(group.texts)))
        clip_s = clip_scores(image, captions)  # the one image row broadcasts over the captions
        references = text_embeddings(p.model, p.pretrained, _prefixed(p, list(group.references)))
        scores = ref_clip_scores(clip_s, captions, references)
        return Score(float(scores.mean()), per_sample=tuple(float(s) for s in scores))


class ClipImageDiversity(_Clip):
    name = "clip_image_diversity"
    kind = "diversity"
    definition = "mean cosine distance between the CLIP image embeddings of distinct pairs of images"
    reference = "CLIP: Radford et al. 2021"

    def compute(self, group: Group) -> Score:
        if len(group.images) < 2:
            return Score.undefined("image diversity needs at least two images in the group")
        x = image_embeddings(self.params.model, self.params.pretrained, list(group.images))
        return Score(mean_pairwise_distance(x))


class ClipVendi(_Clip):
    name = "clip_vendi"
    kind = "diversity"
    definition = "Vendi score (q=1) of the group's CLIP image embeddings"
    reference = "Friedman & Dieng 2022, The Vendi Score"

    def compute(self, group: Group) -> Score:
        if not group.images:
            return Score.undefined("the group has no images")
        return Score(vendi(image_embeddings(self.params.model, self.params.pretrained, list(group.images))))
