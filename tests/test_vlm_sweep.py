"""Image-to-text sweeps end to end on tiny LLaVA, Idefics3, Qwen2-VL and Qwen2.5-VL models built in code, scored by
text metrics and by a tiny random open_clip model (CLIPScore of captions, RefCLIPScore)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import evalkit
from evalkit.generation import WorkUnit, load_backend
from evalkit.config import config_from_dict
from evalkit.errors import ConfigError
from evalkit.prompts import load_prompts
from evalkit.settings import Setting
from evalkit.seeds import derive_seed

from tiny_vlm import clip_json, vlm_config, write_images

MODELS = ["llava", "idefics3", "qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("vlm-images"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return clip_json(tmp_path_factory.mktemp("vlm-clip"))


def backend_and_prompts(model, images, tmp_path, **extra):
    config = config_from_dict(vlm_config(model, images, tmp_path / "runs", **extra))
    backend = load_backend(config)
    prompts = backend.prepare(load_prompts(config), chat_template="auto", system_prompt=None,
                              max_new_tokens=config.max_new_tokens)
    return backend, prompts


@pytest.mark.parametrize("name", MODELS)
def test_greedy_rows_equal_transformers_generate(tiny_vlms, images, tmp_path, name):
    """Greedy rows decoded beside sampled rows give exactly the tokens of transformers' own generate."""
    backend, prompts = backend_and_prompts(tiny_vlms[name], images, tmp_path)
    settings = [Setting(temperature=0.0), Setting(temperature=1.3), Setting(temperature=0.7, top_p=0.8)]
    units = [WorkUnit(prompt=p, setting=s, sample_index=i, seed=derive_seed(0, p.prompt.id, s.id, i))
             for p in prompts for s in settings for i in range(2)]
    out = {(g.unit.prompt.prompt.id, g.unit.setting.id, g.unit.sample_index): g
           for g in backend.generate(units, max_new_tokens=12, batch_size=5)}
    assert len(out) == len(units)
    for p in prompts:
        ids = torch.tensor([p.token_ids])
        with torch.inference_mode():
            ref = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **p.model_inputs,
                                         do_sample=False, max_new_tokens=12, eos_token_id=backend.eos_ids,
                                         pad_token_id=backend.pad_id)
        expected = [t for t in ref[0, ids.shape[1]:].tolist() if t not in backend.eos_ids]
        for i in range(2):
            assert list(out[(p.prompt.id, "t0-p1", i)].token_ids) == expected


@pytest.mark.parametrize("name", MODELS)
def test_token_logprobs_equal_a_full_forward_pass(tiny_vlms, images, tmp_path, name):
    """The engine's per-token log-probabilities (KV cache, positions left to the model: Qwen2-VL's
    multimodal RoPE deltas) equal one forward pass over the prompt and the whole sample."""
    backend, prompts = backend_and_prompts(tiny_vlms[name], images, tmp_path)
    s = Setting(temperature=1.0)
    units = [WorkUnit(prompt=p, setting=s, sample_index=i, seed=derive_seed(1, p.prompt.id, s.id, i))
             for p in prompts for i in range(4)]
    # a random model may sample an image placeholder, which a forward pass would take for a second image
    special = set(backend.tokenizer.added_tokens_encoder.values())
    checked = 0
    for g in backend.generate(units, max_new_tokens=10, batch_size=8):
        p = g.unit.prompt
        if special & set(g.token_ids):
            continue
        checked += 1
        full = torch.tensor([list(p.token_ids) + list(g.token_ids)])
        inputs = dict(p.model_inputs)
        if "mm_token_type_ids" in inputs:  # Qwen2-VL: which tokens are image tokens (the new ones are text)
            inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"],
                                                     torch.zeros((1, len(g.token_ids)), dtype=torch.long)], dim=1)
        with torch.inference_mode():
            logits = backend.model(input_ids=full, attention_mask=torch.ones_like(full), **inputs).logits
        logp = torch.log_softmax(logits[0].double(), dim=-1)
        n = len(p.token_ids)
        expected = [float(logp[n - 1 + k, t]) for k, t in enumerate(g.token_ids)]
        np.testing.assert_allclose(g.stats["logprob_model"], expected, atol=2e-4)
    assert checked >= 6


@pytest.fixture(scope="module")
def run(tiny_vlms, images, clip, tmp_path_factory):
    config = vlm_config(tiny_vlms["qwen2_vl"], images, tmp_path_factory.mktemp("vlm") / "runs", clip, report=True)
    config["metrics"] += [{"name": "distinct_1", "tok": "model"}, "perplexity", "semantic_diversity", "mean_length"]
    return evalkit.run_sweep(config_from_dict(config), progress=False, cache=False)


def test_captions_images_and_references_in_the_run(run, images):
    samples = run.samples
    assert len(samples) == 3 * 6 * 3
    assert run.manifest.model["backend"] == "vlm" and run.manifest.model["sha256"]
    for r in samples.itertuples():
        assert r.seed == derive_seed(3, r.prompt_id, r.setting_id, r.sample_index)
        source = images[int(r.prompt_id[-1])]
        assert (run.path / r.prompt_image).read_bytes() == source.read_bytes()  # a copy kept in the run
    refs = samples.groupby("prompt_id")["references"].first()
    assert list(refs["img0"]) == ["a red square", "a square drawn in red"] and len(refs["img2"]) == 0
    prompts = run.prompts.set_index("id")
    assert prompts.loc["img2", "prompt"] == "What is in the picture?"
    assert prompts.loc["img0", "prompt"] == "Describe the image."  # prompts.question
    assert "<|image_pad|>" in prompts.loc["img0", "rendered"]
    assert len(set(prompts["image_sha256"])) == 3
    greedy = samples[samples["temperature"] == 0]
    assert (greedy.groupby(["prompt_id", "setting_id"])["text"].nunique() == 1).all()
    assert samples["num_new_tokens"].between(0, 6).all()


def test_text_and_clip_metrics_of_captions(run):
    scores = run.scores
    metrics = set(scores["metric"])
    assert {"distinct_2[tok=words]", "token_entropy[dist=sampling]", "distinct_1[tok=model]",
            "perplexity[dist=model]", "semantic_diversity[emb=all-MiniLM-L6-v2]", "mean_length[unit=tokens]"} <= metrics
    assert not scores[scores["metric"] == "distinct_1[tok=model]"]["value"].isna().any()
    clip = scores[scores["metric"].str.startswith("clip_score[")]
    assert clip["metric"].iloc[0].endswith("text=sample,prefix=yes]")
    assert len(clip) == 18 and clip["value"].between(0, 2.5).all()
    ref = scores[scores["metric"].str.startswith("ref_clip_score[")]
    assert ref[ref["prompt_id"] != "img2"]["value"].between(0, 2.5).all()
    undefined = ref[ref["prompt_id"] == "img2"]
    assert undefined["value"].isna().all() and (undefined["reason"] == "the prompt has no reference captions").all()
    summary = run.summary[run.summary["metric"].str.startswith("ref_clip_score[")]
    assert (summary["n_prompts"] == 2).all() and (summary["n_undefined"] == 1).all()


def test_report_shows_each_prompt_image(run):
    html = (run.path / "report.html").read_text(encoding="utf-8")
    assert "://" not in html
    data = json.loads(html.split('id="evalkit-data">')[1].split("</script>")[0])["runs"][0]
    assert [p[0] for p in data["prompts"]] == ["img0", "img1", "img2"]
    assert all(p[2].startswith("data:image/jpeg;base64,") for p in data["prompts"])
    assert html.count('<figure class="chart heatmap">') == 9 and 'id="entropy"' in html


def test_same_seed_gives_the_same_captions_whatever_else_runs(run, tiny_vlms, images, clip, tmp_path):
    config = vlm_config(tiny_vlms["qwen2_vl"], images, tmp_path / "runs", metrics=["distinct_1"])
    config["grid"] = {"temperature": [1.2], "top_p": [0.9]}
    config["prompts"]["items"] = config["prompts"]["items"][::-1]
    again = evalkit.run_sweep(config_from_dict(config), progress=False, cache=False)
    before = run.samples.set_index(["prompt_id", "setting_id", "sample_index"])
    for r in again.samples.itertuples():
        assert list(r.token_ids) == list(before.loc[(r.prompt_id, r.setting_id, r.sample_index), "token_ids"])


def test_relative_image_paths_are_resolved_in_the_runs_config(tiny_vlms, images, tmp_path):
    from evalkit.config import load_config

    config = vlm_config(tiny_vlms["llava"], [Path(p.name) for p in images], tmp_path / "runs", metrics=["distinct_1"],
                        samples_per_prompt=1)
    config["grid"] = {"temperature": [1.0]}
    run = evalkit.run_sweep(config_from_dict(config, base_dir=images[0].parent), progress=False)
    again = load_prompts(load_config(run.path / "config.yaml"))  # what --resume reads
    assert [p.image for p in again] == [str(p.resolve()) for p in images]


def test_a_stopped_run_resumes_from_its_parts(run, tmp_path):
    copy = tmp_path / run.path.name
    shutil.copytree(run.path, copy)
    samples = pd.read_parquet(copy / "samples.parquet")
    (copy / "parts").mkdir()
    samples.iloc[:20].to_parquet(copy / "parts" / "part-000000.parquet", index=False)
    (copy / "samples.parquet").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    resumed = evalkit.run_sweep(None, resume=copy, progress=False, cache=False)
    assert resumed.manifest.samples_reused == {"from_parts": 20, "from_cache": 0, "generated": 34}
    pd.testing.assert_frame_equal(resumed.samples, samples)


def test_another_image_is_another_prompt_for_the_cache_and_for_comparisons(tiny_vlms, images, tmp_path, monkeypatch):
    from evalkit.compare import RunData, compare_runs

    monkeypatch.setenv("EVALKIT_SAMPLE_CACHE", str(tmp_path / "cache.sqlite"))  # a cache of this test's own
    config = vlm_config(tiny_vlms["llava"], images, tmp_path / "runs", metrics=["distinct_1"])
    config["grid"] = {"temperature": [1.0]}
    first = evalkit.run_sweep(config_from_dict(config), progress=False)
    assert first.manifest.samples_reused["generated"] == 9
    other = write_images(tmp_path / "other", n=1, seed=7)[0]
    config["prompts"]["items"][0]["image"] = str(other)  # same id and question, another image
    second = evalkit.run_sweep(config_from_dict(config), progress=False)
    assert second.manifest.samples_reused == {"from_parts": 0, "from_cache": 6, "generated": 3}
    with pytest.raises(evalkit.EvalkitError, match=r"prompt images differ: 1 with other images \(img0\)"):
        compare_runs(RunData.from_run(first), RunData.from_run(second))
    compare_runs(RunData.from_run(first), RunData.from_run(first))  # the same images compare


@pytest.mark.parametrize("change, message", [
    (lambda c: c["metrics"].append({"name": "clip_image_diversity"}),
     r"metrics\[1\]: clip_image_diversity\[.*\] needs images, which a vision-language sweep does not make"),
    (lambda c: c["prompts"]["items"][0].update(image=None, prompt="What is it?"),
     r"prompts.items\[0\]: prompt 'img0' has no image; every prompt of a vlm sweep names one"),
    (lambda c: c["prompts"]["items"][0].update(image="missing.png"), r"image of prompt 'img0' not found: .*missing"),
    (lambda c: c["prompts"].pop("question"), r"prompts.items\[0\]: prompt 'img0' has an image but no text"),
    (lambda c: c["model"].update(id="default"), r"model.id: a vlm sweep needs a vision-language model"),
    (lambda c: c["model"].update(backend="hf"), r"prompts.question: only a vlm sweep asks a question of its images"),
    (lambda c: (c["model"].update(backend="hf"), c["prompts"].update(question=None)),
     r"prompt 'img0' has an image, which only a vision-language sweep reads \(model.backend: vlm\)"),
])
def test_bad_vlm_configs_are_refused_before_anything_is_written(tiny_vlms, images, tmp_path, change, message):
    config = vlm_config(tiny_vlms["llava"], images, tmp_path / "runs", metrics=["distinct_1"])
    change(config)
    with pytest.raises(ConfigError, match=message):
        evalkit.run_sweep(config_from_dict(config), progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_file_that_is_not_an_image_is_refused(tiny_vlms, images, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    config = vlm_config(tiny_vlms["llava"], [bad, *images[1:]], tmp_path / "runs", metrics=["distinct_1"])
    with pytest.raises(ConfigError, match=r"image of prompt 'img0' is not a readable image"):
        evalkit.run_sweep(config_from_dict(config), progress=False)


def test_image_prompts_from_a_jsonl_file_resolve_against_it(tiny_vlms, images, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(images[0], folder / "a.png")
    (folder / "prompts.jsonl").write_text(json.dumps({"id": "a", "image": "a.png", "prompt": "What is it?",
                                                      "references": ["a thing"]}) + "\n", encoding="utf-8")
    config = vlm_config(tiny_vlms["llava"], images, tmp_path / "runs", metrics=["distinct_1"])
    config["prompts"] = {"file": str(folder / "prompts.jsonl")}
    prompts = load_prompts(config_from_dict(config, base_dir=tmp_path))
    assert prompts[0].image == str((folder / "a.png").resolve()) and prompts[0].references == ("a thing",)


def test_vlm_config_example_is_valid():
    from pathlib import Path

    from evalkit.config import load_config

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "vlm.yaml")
    assert config.model.backend == "vlm" and len(config.settings()) >= 6
    prompts = load_prompts(config)
    assert len(prompts) >= 4 and all(p.image and p.references and p.text for p in prompts)


def test_captions_made_elsewhere_are_scored_from_a_file(images, clip, tmp_path):
    from typer.testing import CliRunner

    from evalkit.cli import app
    from evalkit.config import MetricSpec
    from evalkit.scoring.metric import Group
    from evalkit.scoring.registry import default_registry

    data = tmp_path / "data"
    data.mkdir()
    for p in images[:2]:
        shutil.copy(p, data / p.name)
    captions = {"a": ["a red square", "noise", "a square"], "b": ["two cats", "a cat on a mat", "cats"]}
    rows = [{"prompt_id": pid, "prompt": "Describe the image.", "image": images[i].name, "text": text,
             "temperature": 0.7, **({"references": ["a red square"]} if pid == "a" else {})}
            for i, pid in enumerate(captions) for text in captions[pid]]
    (data / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    clip_params = f"model={clip},pretrained=none"
    metrics = f"distinct_1,clip_score[{clip_params},text=sample],ref_clip_score[{clip_params}]"
    result = CliRunner().invoke(app, ["score", str(data / "captions.jsonl"), "--metrics", metrics, "-o",
                                      str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    run = evalkit.load_run(tmp_path / "out")
    assert sorted(run.samples["prompt_image"].unique()) == sorted(
        f"prompt_images/{evalkit.prompts.sha256_of(p)[:16]}.png" for p in images[:2])
    scores = run.scores.set_index(["prompt_id", "metric"])["value"]
    registry = default_registry()
    for i, pid in enumerate(captions):
        group = Group(prompt_id=pid, prompt="Describe the image.", setting=Setting(temperature=0.7),
                      texts=tuple(captions[pid]), token_ids=(), prompt_image=str(images[i]),
                      references=("a red square",) if pid == "a" else ())
        for name, extra in [("clip_score", {"text": "sample"}), ("ref_clip_score", {})]:
            m = registry.create(MetricSpec(name=name, params={"model": str(clip), "pretrained": "none", **extra}))
            expected = m.compute(group).value
            got = scores[(pid, m.id)]
            assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-9)
    assert math.isnan(scores[("b", f"ref_clip_score[model={clip.stem},pretrained=none,prefix=yes]")])

    rows[1]["image"] = images[1].name  # the same prompt, another image
    (data / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = CliRunner().invoke(app, ["score", str(data / "captions.jsonl"), "--metrics", "distinct_1", "-o",
                                      str(tmp_path / "out2")])
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("captions.jsonl: line 2: prompt 'a' has another image than on its first line")
    assert not (tmp_path / "out2").exists()



def test_system_prompt_messages_and_raw_prompts(tiny_vlms, images, tmp_path):
    model = tiny_vlms["llava"]
    config = vlm_config(model, images[:1], tmp_path / "runs")
    config["prompts"].update(system_prompt="Be brief.",
                             items=[{"id": "m", "image": str(images[0]), "messages": [
                                 {"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "Noise."},
                                 {"role": "user", "content": "Are you sure?"}]}])
    backend = load_backend(config_from_dict(config))
    prompt = load_prompts(config_from_dict(config))
    rendered = backend.prepare(prompt, chat_template="auto", system_prompt="Be brief.", max_new_tokens=4)[0].rendered
    assert rendered == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>What is it?<|im_end|>\n"
                        "<|im_start|>assistant\nNoise.<|im_end|>\n<|im_start|>user\nAre you sure?<|im_end|>\n"
                        "<|im_start|>assistant\n")

    raw = vlm_config(model, images[:1], tmp_path / "runs")
    raw["prompts"]["items"][0]["prompt"] = "Caption: <image>"
    prepared = backend.prepare(load_prompts(config_from_dict(raw)), chat_template=False, system_prompt=None,
                               max_new_tokens=4)
    assert prepared[0].rendered == "Caption: <image>"
    assert prepared[0].token_ids.count(backend.model.config.image_token_index) == 16  # (32/8)^2 patches, no CLS
    raw["prompts"]["items"][0]["prompt"] = "Caption:"
    with pytest.raises(ConfigError, match="prompt 'img0' has no image token '<image>'; without a chat template"):
        backend.prepare(load_prompts(config_from_dict(raw)), chat_template=False, system_prompt=None, max_new_tokens=4)
