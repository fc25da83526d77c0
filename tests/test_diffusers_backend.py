"""The diffusers backend on a tiny Stable Diffusion pipeline built in code."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")

from evalkit.generation.diffusers import DiffusersBackend  # noqa: E402
from evalkit.errors import EvalkitError  # noqa: E402
from evalkit.settings import ImageSetting  # noqa: E402

from tiny_diffusion import build_tiny_pipeline, clip_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return DiffusersBackend(build_tiny_pipeline(tmp_path_factory.mktemp("sd")), device="cpu")


def pixels(images):
    return [np.asarray(im) for im in images]


@pytest.mark.parametrize("text", ["a photo of a cat", "A Lighthouse, at NIGHT!", "naïve café 123", "日本語"])
def test_tokenizer_built_from_open_clips_vocabulary_matches_open_clip(tmp_path, text):
    import open_clip

    ours = clip_tokenizer(tmp_path)(text).input_ids
    theirs = [int(t) for t in open_clip.get_tokenizer("ViT-B-32")([text])[0] if t]
    assert ours == theirs


@pytest.mark.slow
def test_same_seed_and_setting_give_the_same_image_at_any_place_in_the_batch(backend):
    setting = ImageSetting(guidance_scale=5.0, num_inference_steps=3)
    four = pixels(backend.images("a cat", setting, [11, 12, 13, 14], width=32, height=32))
    shuffled = pixels(backend.images("a cat", setting, [13, 14, 12, 11], width=32, height=32))
    assert four[0].shape == (32, 32, 3)
    assert [a.tobytes() for a in four] == [shuffled[i].tobytes() for i in (3, 2, 0, 1)]
    assert not np.array_equal(four[0], four[1])  # other seeds, other images


@pytest.mark.parametrize("other", [dict(guidance_scale=1.0), dict(num_inference_steps=5), dict(scheduler="euler_a"),
                                   dict(eta=1.0)])
@pytest.mark.slow
def test_each_setting_changes_the_image(backend, other):
    base = ImageSetting(guidance_scale=5.0, num_inference_steps=3)
    changed = base.model_copy(update=other)
    a = pixels(backend.images("a cat", base, [5], width=32, height=32))[0]
    b = pixels(backend.images("a cat", ImageSetting(**changed.params()), [5], width=32, height=32))[0]
    assert not np.array_equal(a, b)


def test_setting_ids_and_checks():
    assert ImageSetting(guidance_scale=7.5, num_inference_steps=30).id == "g7.5-s30-ddim"
    assert ImageSetting(guidance_scale=3, num_inference_steps=20, eta=0.5).id == "g3-s20-ddim-e0.5"
    with pytest.raises(ValueError, match="eta applies to the ddim scheduler only"):
        ImageSetting(scheduler="euler", eta=0.5)
    with pytest.raises(ValueError):
        ImageSetting(scheduler="nope")


@pytest.mark.parametrize("grid, message", [
    ("grid.scheduler=[euler]", "grid.eta: eta applies to the ddim scheduler only, and no scheduler of the grid is "
                               "one (got euler)"),
    ("grid.settings=[{guidance_scale: 5}]", "grid.settings: a diffusers (text-to-image) sweep has no settings axis"),
])
def test_a_grid_value_no_image_setting_takes_is_refused_not_dropped(grid, message):
    from pathlib import Path

    from evalkit.config import load_config
    from evalkit.errors import ConfigError

    t2i = Path(__file__).resolve().parents[1] / "configs" / "t2i.yaml"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(t2i, [grid, "grid.eta=[0.5]"]).settings()
    ids = [s.id for s in load_config(t2i, ["grid.scheduler=[euler, ddim]", "grid.eta=[0, 0.5]"]).settings()]
    assert any(i.endswith("-ddim-e0.5") for i in ids) and not any("euler-e" in i for i in ids)


def test_a_directory_that_is_no_pipeline_is_refused(tmp_path):
    with pytest.raises(EvalkitError, match="cannot load a diffusers pipeline"):
        DiffusersBackend(tmp_path, device="cpu")
