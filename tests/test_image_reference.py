"""Image metrics against reference images, each against its paper's definition or the reference code:
CLIP-FID (torchmetrics' Fréchet distance and scipy), KID (torchmetrics' poly_mmd), CMMD (the kernel written
out in torch), precision/recall/density/coverage (the prdc package by the authors of density/coverage),
on a tiny random open_clip model's embeddings; and a text-to-image sweep compared with reference images."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import evalkit
from evalkit.config import MetricSpec, config_from_dict
from evalkit.references import load_references
from evalkit.scoring.aggregate import POOLED
from evalkit.scoring.metric import Group
from evalkit.scoring.registry import default_registry
from evalkit.settings import ImageSetting
from evalkit_metrics.clip import image_embeddings
from evalkit_metrics.image_reference import cmmd, frechet_distance, kid, prdc

from conftest import write_jsonl
from tiny_diffusion import TINY_CLIP, t2i_config

TINY = {**TINY_CLIP, "embed_dim": 8}  # 8 dimensions: CLIP-FID is defined from 9 images a side


@pytest.fixture(scope="module")
def clip_and_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refimg")
    config = folder / "tiny-clip-ref.json"
    config.write_text(json.dumps(TINY))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(40):
        base = rng.integers(0, 255, (3,)) if i < 20 else rng.integers(0, 80, (3,))
        pixels = np.clip(base + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    torch.manual_seed(0)
    return str(config), paths


def features(rng, n, d=8, shift=0.0):
    x = rng.normal(shift, 1, size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_frechet_distance_matches_torchmetrics_and_the_definition():
    from scipy import linalg
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(1)
    real, fake = features(rng, 60), features(rng, 50, shift=0.3)
    mine = frechet_distance(real, fake)
    tm = _compute_fid(torch.tensor(real.mean(0)), torch.tensor(np.cov(real, rowvar=False)),
                      torch.tensor(fake.mean(0)), torch.tensor(np.cov(fake, rowvar=False))).item()
    assert mine == pytest.approx(tm, rel=1e-9)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    by_hand = (np.sum((real.mean(0) - fake.mean(0)) ** 2) + np.trace(s1) + np.trace(s2)
               - 2 * np.trace(linalg.sqrtm(s1 @ s2).real))
    assert mine == pytest.approx(by_hand, rel=1e-9)
    assert frechet_distance(real, real) == pytest.approx(0, abs=1e-6)


def test_kid_matches_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(2)
    real, fake = features(rng, 40), features(rng, 40, shift=0.2)
    assert kid(real, fake) == pytest.approx(poly_mmd(torch.tensor(real), torch.tensor(fake)).item(), rel=1e-9)


def test_kid_with_unequal_sizes_is_the_unbiased_estimate():
    rng = np.random.default_rng(3)
    real, fake = features(rng, 30), features(rng, 17)
    d = real.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = np.mean([k(real[i], real[j]) for i in range(30) for j in range(30) if i != j])
    yy = np.mean([k(fake[i], fake[j]) for i in range(17) for j in range(17) if i != j])
    xy = np.mean([k(a, b) for a in real for b in fake])
    assert kid(real, fake) == pytest.approx(xx + yy - 2 * xy, rel=1e-9)


def test_cmmd_matches_the_gaussian_kernel_mmd():
    rng = np.random.default_rng(4)
    real, fake = features(rng, 25), features(rng, 35, shift=0.5)
    x, y = torch.tensor(real), torch.tensor(fake)
    gauss = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * 10.0 ** 2)).mean()  # noqa: E731
    expected = 1000 * (gauss(x, x) + gauss(y, y) - 2 * gauss(x, y)).item()
    assert cmmd(real, fake) == pytest.approx(expected, rel=1e-9)
    assert cmmd(real, real) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_matches_the_reference_package(k):
    from prdc import compute_prdc

    rng = np.random.default_rng(5 + k)
    real, fake = features(rng, 50), features(rng, 45, shift=0.4)
    assert prdc(real, fake, k) == pytest.approx(compute_prdc(real, fake, nearest_k=k), abs=1e-12)


def metric(name, clip, **params):
    return default_registry().create(MetricSpec(name=name, params={"model": clip, "pretrained": "none", **params}))


def test_metrics_on_a_tiny_clip_models_embeddings(clip_and_images, tmp_path):
    clip, paths = clip_and_images
    refs = load_references(write_jsonl(tmp_path / "refs.jsonl", [{"image": p} for p in paths[:20]]), None,
                           images=True)
    groups = [Group(prompt_id=f"p{i}", prompt="x", setting=ImageSetting(), texts=(), token_ids=(),
                    images=tuple(paths[20 + 5 * i:25 + 5 * i]), reference_set=refs) for i in range(4)]
    real = image_embeddings(clip, "none", paths[:20])
    fake = image_embeddings(clip, "none", paths[20:40])
    expected = {"clip_fid": frechet_distance(real, fake), "clip_kid": kid(real, fake), "cmmd": cmmd(real, fake),
                **{f"clip_{k}": v for k, v in prdc(real, fake, 5).items()}}
    for name, value in expected.items():
        m = metric(name, clip)
        assert m.pooled and "reference_images" in m.requires()
        assert m.compute_pooled(groups).value == pytest.approx(value, rel=1e-9), name
    assert expected["clip_fid"] > 0 and expected["cmmd"] > 0


def test_fid_says_how_many_images_it_needs(clip_and_images, tmp_path):
    clip, paths = clip_and_images
    refs = load_references(write_jsonl(tmp_path / "refs.jsonl", [{"image": p} for p in paths[:5]]), None,
                           images=True)
    g = Group(prompt_id="p", prompt="x", setting=ImageSetting(), texts=(), token_ids=(), images=tuple(paths[5:9]),
              reference_set=refs)
    score = metric("clip_fid", clip).compute_pooled([g])
    assert math.isnan(score.value)
    assert score.reason == ("clip_fid needs at least 9 images on each side (more than the embedding's dimensions, "
                            "or the covariance is singular), got 4 generated and 5 reference images")
    prec = metric("clip_precision", clip, k=5).compute_pooled([g])
    assert math.isnan(prec.value) and "at least 6 images on each side" in prec.reason


def test_a_text_to_image_sweep_against_reference_images(tiny_sd, clip_and_images, tmp_path):
    pipeline, clip = tiny_sd
    _, paths = clip_and_images
    refs = write_jsonl(tmp_path / "refs.jsonl", [{"prompt_id": "cube", "image": p} for p in paths[:6]] +
                       [{"image": p} for p in paths[6:12]])
    spec = {"model": str(clip), "pretrained": "none"}
    config = t2i_config(pipeline, clip, tmp_path / "runs", references=str(refs), samples_per_prompt=4,
                        metrics=[{"name": "clip_score", **spec}, {"name": "clip_kid", **spec},
                                 {"name": "cmmd", **spec}, {"name": "clip_coverage", **spec, "k": 2}],
                        grid={"guidance_scale": [1.0, 5.0], "num_inference_steps": [2]}, report=True)
    run = evalkit.run_sweep(config_from_dict(config), progress=False)
    scores = run.scores
    pooled = scores[scores["prompt_id"] == POOLED]
    assert len(pooled) == 2 * 3 and pooled["value"].notna().all()
    samples = run.samples
    ref_emb = image_embeddings(str(clip), "none", paths[:12])
    for sid, df in samples.groupby("setting_id"):
        fake = image_embeddings(str(clip), "none", [str(run.path / p) for p in df["image_path"]])
        got = pooled.set_index(["setting_id", "metric"])["value"]
        kid_id = next(m for m in pooled["metric"] if m.startswith("clip_kid"))
        assert got[(sid, kid_id)] == pytest.approx(kid(ref_emb, fake), rel=1e-9)
    # CLIPScore of the reference images against their prompts is the human row (per prompt: only "cube" has some)
    values = run.manifest.references["values"]
    assert list(values) == [next(m for m in run.manifest.metrics if m.startswith("clip_score"))]
    html = (run.path / "report.html").read_text()
    assert 'id="human"' in html
    # CLIPScore against the distances to the references over the guidance scale: a trade-off pair each
    clip_score = next(m for m in run.manifest.metrics if m.startswith("clip_score"))
    for name in ("clip_kid", "cmmd"):
        x = next(m for m in run.manifest.metrics if m.startswith(name))
        assert f'data-x="{x}" data-y="{clip_score}"' in html
