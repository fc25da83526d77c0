"""CLIPScore and CLIP image diversity on a tiny randomly initialised open_clip model built in
the test (open_clip's own BPE tokenizer), against a hand computation."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics.pairwise import cosine_distances

import evalkit
from evalkit.config import MetricSpec, config_from_dict
from evalkit.errors import ConfigError
from evalkit.scoring.metric import Group
from evalkit.scoring.registry import default_registry, prepare_all
from evalkit.settings import Setting
from evalkit_metrics.clip import load_clip

from conftest import base_config

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    config = folder / "tiny-clip-test.json"
    config.write_text(json.dumps(TINY))
    rng = np.random.default_rng(0)
    images = []
    for i in range(4):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    torch.manual_seed(0)
    return str(config), images


def metric(name, config, **params):
    return default_registry().create(MetricSpec(name=name, params={"model": config, "pretrained": "none", **params}))


def by_hand(config, images, texts):
    net, preprocess, tokenizer = load_clip(config, "none")
    with torch.inference_mode():
        img = net.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images])).double()
        txt = net.encode_text(tokenizer(texts)).double()
    img = img / img.norm(dim=1, keepdim=True)
    txt = txt / txt.norm(dim=1, keepdim=True)
    return img.numpy(), txt.numpy()


def group(images, texts, prompt="a red square", prompt_image=None, references=()):
    return Group(prompt_id="p", prompt=prompt, setting=Setting(), texts=tuple(texts),
                 token_ids=tuple(() for _ in texts), images=tuple(images), prompt_image=prompt_image,
                 references=tuple(references))


def test_clip_score_matches_the_definition(tiny_clip):
    config, images = tiny_clip
    m = metric("clip_score", config)
    assert m.id == "clip_score[model=tiny-clip-test,pretrained=none,text=prompt,prefix=yes]"
    score = m.compute(group(images, ["x"] * 4))
    img, txt = by_hand(config, images, ["A photo depicts a red square"] * 4)
    expected = [2.5 * max(float(a @ b), 0.0) for a, b in zip(img, txt)]
    np.testing.assert_allclose(score.per_sample, expected, atol=1e-6)
    assert score.value == pytest.approx(np.mean(expected), abs=1e-6)
    assert all(0 <= v <= 2.5 for v in score.per_sample)


def test_clip_score_of_captions_without_prefix(tiny_clip):
    config, images = tiny_clip
    captions = ["a dog", "a cat on a mat", "秋天的早晨", "x" * 500]  # the last is truncated at 77 tokens
    m = metric("clip_score", config, text="sample", prefix="no")
    assert m.requires() == {"texts", "prompt_images"}
    score = m.compute(group([], captions, prompt="Describe the image.", prompt_image=images[1]))
    img, txt = by_hand(config, [images[1]] * 4, captions)
    np.testing.assert_allclose(score.per_sample, 2.5 * np.maximum((img * txt).sum(1), 0), atol=1e-6)


# RefCLIP-S by hand (Hessel et al. 2021, eq. 2): H(CLIP-S(c, v), max(max_r cos(c, r), 0)), where the paper's
# code prefixes references too and takes max over references without the clamp
@pytest.mark.parametrize("prefix", ["yes", "no"])
def test_ref_clip_score_matches_the_definition(tiny_clip, prefix):
    config, images = tiny_clip
    captions = ["a red square on white", "two cats", "a square"]
    refs = ["a red square", "a square drawn in red on a white ground"]
    m = metric("ref_clip_score", config, prefix=prefix)
    assert m.id == f"ref_clip_score[model=tiny-clip-test,pretrained=none,prefix={prefix}]"
    score = m.compute(group([], captions, prompt_image=images[2], references=refs))
    pre = "A photo depicts " if prefix == "yes" else ""
    img, cap = by_hand(config, [images[2]] * 3, [pre + c for c in captions])
    _, ref = by_hand(config, [images[2]], [pre + r for r in refs])
    expected = []
    for i in range(3):
        c = 2.5 * max(float(img[i] @ cap[i]), 0.0)
        r = max(max(float(cap[i] @ ref[j]) for j in range(2)), 0.0)
        expected.append(0.0 if c + r == 0 else 2 * c * r / (c + r))
    np.testing.assert_allclose(score.per_sample, expected, atol=1e-6)
    assert score.value == pytest.approx(np.mean(expected), abs=1e-6)
    # a caption equal to a reference has text similarity 1, so RefCLIP-S = 2c / (c + 1)
    same = m.compute(group([], [refs[0]], prompt_image=images[2], references=refs)).per_sample[0]
    c = 2.5 * max(float(by_hand(config, [images[2]], [pre + refs[0]])[0][0]
                        @ by_hand(config, [images[2]], [pre + refs[0]])[1][0]), 0.0)
    assert same == pytest.approx(2 * c / (c + 1), abs=1e-6)


def test_ref_clip_score_without_references_is_undefined(tiny_clip):
    config, images = tiny_clip
    score = metric("ref_clip_score", config).compute(group([], ["a dog"], prompt_image=images[0]))
    assert math.isnan(score.value) and score.reason == "the prompt has no reference captions"


def test_image_diversity_and_vendi(tiny_clip):
    config, images = tiny_clip
    g = group(images, ["x"] * 4)
    img, _ = by_hand(config, images, ["x"])
    d = cosine_distances(img)
    assert metric("clip_image_diversity", config).compute(g).value == pytest.approx(
        d[~np.eye(4, dtype=bool)].mean(), abs=1e-6)
    v = metric("clip_vendi", config).compute(g).value
    assert 1 <= v <= 4
    same = metric("clip_vendi", config).compute(group([images[0]] * 3, ["x"] * 3)).value
    assert same == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(metric("clip_image_diversity", config).compute(group(images[:1], ["x"])).value)


def test_text_sweeps_refuse_image_metrics(tiny_model, tmp_path, tiny_clip):
    config, _ = tiny_clip
    data = base_config(tiny_model, tmp_path / "runs",
                       metrics=[{"name": "clip_score", "model": config, "pretrained": "none"}])
    with pytest.raises(ConfigError, match=r"metrics\[0\]: clip_score\[.*\] needs images, which a text sweep"):
        evalkit.run_sweep(config_from_dict(data), progress=False)
    assert not (tmp_path / "runs").exists()


def test_unavailable_clip_weights_fail_up_front(tmp_path):
    m = default_registry().create(MetricSpec(name="clip_score", params={"pretrained": str(tmp_path / "none.pt")}))
    with pytest.raises(evalkit.EvalkitError, match="cannot load CLIP model 'ViT-B-32'"):
        prepare_all([m])
