"""Text-to-image sweeps end to end on a tiny Stable Diffusion pipeline and a tiny CLIP model."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

import evalkit
from evalkit.config import config_from_dict
from evalkit.errors import ConfigError
from evalkit.seeds import derive_seed

from tiny_diffusion import t2i_config


@pytest.fixture(scope="module")
def run(tiny_sd, tmp_path_factory):
    pipeline, clip = tiny_sd
    config = t2i_config(pipeline, clip, tmp_path_factory.mktemp("t2i") / "runs", report=True)
    return evalkit.run_sweep(config_from_dict(config), progress=False)


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im)


def test_images_files_seeds_and_scores(run):
    samples = run.samples
    assert len(samples) == 2 * 4 * 3
    assert [s.id for s in run.manifest.settings] == ["g1-s2-ddim", "g1-s3-ddim", "g5-s2-ddim", "g5-s3-ddim"]
    for r in samples.itertuples():
        assert r.seed == derive_seed(4, r.prompt_id, r.setting_id, r.sample_index)
        assert pixels(run.path / r.image_path).shape == (32, 32, 3)
    assert len({pixels(run.path / p).tobytes() for p in samples["image_path"]}) == len(samples)  # all different
    scores = run.scores
    clip = scores[scores["metric"].str.startswith("clip_score")]["value"]
    assert len(clip) == 8 and clip.between(0, 2.5).all()
    diversity = scores[scores["metric"].str.startswith("clip_image_diversity")]["value"]
    assert len(diversity) == 8 and diversity.between(0, 2).all()
    vendi = scores[scores["metric"].str.startswith("clip_vendi")]["value"]
    assert vendi.between(1, 3).all()
    assert set(run.summary.columns) >= {"guidance_scale", "num_inference_steps", "scheduler", "eta", "mean"}


def test_report_has_image_heatmaps_and_thumbnails(run):
    html = (run.path / "report.html").read_text(encoding="utf-8")
    assert "://" not in html
    assert html.count('<figure class="chart heatmap">') == 3
    assert "guidance_scale × num_inference_steps" in html and 'id="entropy"' not in html
    data = json.loads(html.split('id="evalkit-data">')[1].split("</script>")[0])["runs"][0]
    thumbs = [row[3] for per_prompt in data["samples"] for per_setting in per_prompt for row in per_setting]
    assert len(thumbs) == 24 and all(t.startswith("data:image/jpeg;base64,") for t in thumbs)


def test_same_seed_and_setting_give_the_same_image_whatever_else_runs(run, tiny_sd, tmp_path):
    pipeline, clip = tiny_sd
    config = t2i_config(pipeline, clip, tmp_path / "runs",
                        metrics=[{"name": "clip_score", "model": str(clip), "pretrained": "none"}])
    config["grid"] = {"guidance_scale": [5.0], "num_inference_steps": [3]}  # one setting of the four
    config["prompts"] = config["prompts"][::-1]
    again = evalkit.run_sweep(config_from_dict(config), progress=False)
    for r in again.samples.itertuples():
        assert (again.path / r.image_path).read_bytes() == (run.path / r.image_path).read_bytes()


def test_a_killed_run_keeps_its_images_and_resumes(run, tiny_sd, tmp_path):
    import shutil

    copy = tmp_path / run.path.name
    shutil.copytree(run.path, copy)
    before = {p: pixels(copy / p) for p in run.samples["image_path"]}
    removed = list(run.samples["image_path"])[5:11]
    for p in removed:
        (copy / p).unlink()
    (copy / "samples.parquet").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    resumed = evalkit.run_sweep(None, resume=copy, progress=False, cache=False)  # the cache holds every image
    assert resumed.manifest.status == "complete"
    assert resumed.manifest.samples_reused == {"from_parts": 24 - 6, "from_cache": 0, "generated": 6}
    for p, image in before.items():
        assert np.array_equal(pixels(copy / p), image)


def test_text_metrics_and_text_axes_are_refused(tiny_sd, tmp_path):
    pipeline, clip = tiny_sd
    with pytest.raises(ConfigError, match="distinct_2.* needs texts, which a text-to-image sweep does not make"):
        evalkit.run_sweep(config_from_dict(t2i_config(pipeline, clip, tmp_path, metrics=["distinct_2"])),
                          progress=False)
    bad = t2i_config(pipeline, clip, tmp_path)
    bad["grid"] = {"temperature": [0.7]}
    with pytest.raises(ConfigError, match="grid.temperature: a diffusers .* sweep has no temperature axis"):
        config_from_dict(bad)
    bad["grid"] = {"scheduler": ["eular"]}
    with pytest.raises(ConfigError, match="did you mean 'euler'"):
        config_from_dict(bad)


def test_t2i_config_example_is_valid():
    from pathlib import Path

    from evalkit.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "t2i.yaml")
    assert config.model.backend == "diffusers" and len(config.settings()) >= 6


def test_thumbnails_shrink_to_fit_the_report_budget(tmp_path):
    from evalkit.report import thumbnails

    rng = np.random.default_rng(0)
    paths = []
    for i in range(10):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (300, 240, 3), dtype=np.uint8)).save(paths[-1])
    sizes = {side: np.mean([len(thumbnails.thumbnail(p, side)) for p in paths]) for side in thumbnails.SAMPLE_SIDES}
    assert all(sizes[a] > sizes[b] for a, b in zip(thumbnails.SAMPLE_SIDES, thumbnails.SAMPLE_SIDES[1:]))
    roomy = thumbnails.plan(paths, groups=5, sides=thumbnails.SAMPLE_SIDES, budget=int(sizes[160] * 10) + 1)
    assert (roomy.side, roomy.per_group) == (160, None)
    tight = thumbnails.plan(paths, groups=5, sides=thumbnails.SAMPLE_SIDES, budget=int(sizes[96] * 10) + 1)
    assert (tight.side, tight.per_group) == (96, None)
    with Image.open(io.BytesIO(base64.b64decode(thumbnails.thumbnail(paths[0], 96).split(",")[1]))) as im:
        assert max(im.size) == 96
    over = thumbnails.plan(paths, groups=5, sides=thumbnails.SAMPLE_SIDES, budget=int(sizes[48] * 5) + 1)
    assert (over.side, over.per_group) == (48, 1) and "the first 1 of each group" in over.describe()


def test_images_beyond_the_budget_are_named_not_inlined(run, monkeypatch, tmp_path):
    from evalkit.report import thumbnails, write_report

    largest = max(len(thumbnails.thumbnail(run.path / p, 48)) for p in run.samples["image_path"])
    monkeypatch.setattr(thumbnails, "BUDGET", largest * 8 * 2)  # two of the three images of each of the 8 groups
    html = write_report([run.path], tmp_path / "small.html").read_text(encoding="utf-8")
    data = json.loads(html.split('id="evalkit-data">')[1].split("</script>")[0])["runs"][0]
    rows = [row for per_prompt in data["samples"] for per_setting in per_prompt for row in per_setting]
    inline = [row[3] for row in rows if row[3].startswith("data:image/jpeg;base64,")]
    named = [row[3] for row in rows if not row[3].startswith("data:")]
    assert len(inline) == 16 and len(named) == 8
    assert all(n.startswith("images/") and n.endswith("-002.png") for n in named)
    assert "the first 2 of each group as thumbnails of at most 48 px" in html


@pytest.mark.slow
def test_a_second_run_takes_its_images_from_the_sample_cache(run, tiny_sd, tmp_path, monkeypatch):
    pipeline, clip = tiny_sd
    monkeypatch.setenv("EVALKIT_SAMPLE_CACHE", str(tmp_path / "cache.sqlite"))
    config = t2i_config(pipeline, clip, tmp_path / "runs",
                        metrics=[{"name": "clip_score", "model": str(clip), "pretrained": "none"}])
    first = evalkit.run_sweep(config_from_dict(config), progress=False)
    assert first.manifest.samples_reused == {"from_parts": 0, "from_cache": 0, "generated": 24}
    again = evalkit.run_sweep(config_from_dict(config), progress=False)
    assert again.manifest.samples_reused == {"from_parts": 0, "from_cache": 24, "generated": 0}
    for r in again.samples.itertuples():
        assert (again.path / r.image_path).read_bytes() == (run.path / r.image_path).read_bytes()
    config["image"] = {**config["image"], "batch_size": 3}  # another batch shape: not the same images
    other = evalkit.run_sweep(config_from_dict(config), progress=False)
    assert other.manifest.samples_reused["from_cache"] == 0
    config["prompts"] = [{**p, "prompt": p["prompt"] + " at night"} for p in config["prompts"]]  # same ids
    night = evalkit.run_sweep(config_from_dict(config), progress=False)
    assert night.manifest.samples_reused["from_cache"] == 0


def test_resume_refuses_a_pipeline_whose_weights_changed(tiny_sd, tmp_path):
    import shutil

    pipeline, clip = tiny_sd
    copy = tmp_path / "pipeline"
    shutil.copytree(pipeline, copy)
    config = t2i_config(copy, clip, tmp_path / "runs", metrics=[{"name": "clip_score", "model": str(clip),
                                                                  "pretrained": "none"}])
    config["grid"] = {"guidance_scale": [1.0], "num_inference_steps": [2]}
    done = evalkit.run_sweep(config_from_dict(config), progress=False)
    assert done.manifest.model["sha256"] and len(done.manifest.model["sha256"]) == 64
    manifest = json.loads((done.path / "manifest.json").read_text())
    (done.path / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    weights = sorted(copy.rglob("*.safetensors"))[0]
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(evalkit.EvalkitError, match="was made with other model weights"):
        evalkit.run_sweep(None, resume=done.path, progress=False)
