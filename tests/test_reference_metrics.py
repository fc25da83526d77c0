"""Reference data and the metrics that read it: references files, zipf, repetition (ends in a loop),
MAUVE against a direct mauve-text call, pooled metrics' intervals, the human row, and the decoding test."""

import json
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import evalkit
from evalkit.config import MetricSpec, config_from_dict
from evalkit.errors import ConfigError, EvalkitError
from evalkit.references import ReferenceSet, load_references
from evalkit.scoring.aggregate import POOLED
from evalkit.scoring.decoding_test import decoding_test, verdict
from evalkit.scoring.groups import pooled_intervals, score_groups
from evalkit.scoring.metric import Group
from evalkit.scoring.registry import default_registry
from evalkit.settings import Setting
from evalkit_metrics.repetition import ends_in_loop
from evalkit_metrics.semantic import embed
from evalkit_metrics.zipf import zipf_coefficient

from conftest import base_config, write_jsonl

WORDS = ("the cat sat on a mat while dogs ran over hills and rivers under bright skies near old towns "
         "a quiet morning light fell across the long road").split()


def metric(name, **params):
    return default_registry().create(MetricSpec(name=name, params=params))


def group(texts, pid="p0", setting=Setting(), refs=None):
    return Group(prompt_id=pid, prompt=f"prompt {pid}", setting=setting, texts=tuple(texts), token_ids=(),
                 reference_set=refs)


def corpus_of(texts):
    """References that are a corpus only."""
    return ReferenceSet(source="", sha256="", images=False, by_prompt={}, corpus=tuple(texts))


def random_texts(rng, n, vocab=len(WORDS), length=(8, 20)):
    return [" ".join(rng.choice(WORDS[:vocab], size=rng.integers(*length))) for _ in range(n)]


# ------------------------------------------------------------------------------------------ zipf


def degen_zipf(token_lists, n=5000):
    """Holtzman et al.'s definition as their script computes it: linregress of log count on log rank."""
    counts = Counter(t for tokens in token_lists for t in tokens)
    ys = np.array(sorted(counts.values(), reverse=True)[:n])
    xs = np.arange(1, len(ys) + 1)
    return -stats.linregress(np.log(xs), np.log(ys)).slope


def test_zipf_matches_the_papers_regression():
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{int(z)}" for z in rng.zipf(1.6, size=200)) for _ in range(12)]
    m = metric("zipf")
    groups = [group(texts[i:i + 4], pid=f"p{i}") for i in range(0, 12, 4)]
    value = m.compute_pooled(groups).value
    assert value == pytest.approx(degen_zipf([t.split() for t in texts]), rel=1e-12)
    assert m.pooled and m.id == "zipf[tok=words,max_rank=5000,scope=setting]"
    small = metric("zipf", max_rank=10)  # only the 10 most frequent tokens are fitted
    assert small.compute_pooled(groups).value == pytest.approx(degen_zipf([t.split() for t in texts], 10), rel=1e-12)
    per_prompt = metric("zipf", scope="prompt")
    assert not per_prompt.pooled
    assert per_prompt.compute(groups[0]).value == pytest.approx(degen_zipf([t.split() for t in texts[:4]]))


def test_zipf_of_a_perfect_power_law_is_its_exponent():
    counts = Counter({f"t{r}": round(1e6 / r ** 1.25) for r in range(1, 60)})
    assert zipf_coefficient(counts, 5000) == pytest.approx(1.25, abs=1e-3)


def test_zipf_needs_two_distinct_tokens():
    score = metric("zipf").compute_pooled([group(["same same same"])])
    assert math.isnan(score.value) and "two distinct tokens" in score.reason


# ------------------------------------------------------------------------------------ repetition


def degen_loop(tokens, max_n=90):
    """Holtzman et al.'s repetition test, restated: the phrase length with most back-to-back repeats at the
    end (first on ties); a loop when repeated and 3+ tokens long, or repeated more than 50 times."""
    rev = tokens[::-1]
    repeats = []
    for n in range(1, max_n + 1):
        k = 1
        while len(rev[n * k:n * (k + 1)]) == n and rev[n * k:n * (k + 1)] == rev[:n]:
            k += 1
        repeats.append(k)
    best = int(np.argmax(repeats))
    return repeats[best] > 1 and (best + 1 >= 3 or repeats[best] > 50)


@pytest.mark.parametrize("text,loop", [
    ("a b c a b c", True),  # a 3-token phrase twice
    ("x y z a b c a b c a b c", True),
    ("a b a b a b a b", False),  # a 2-token phrase: too short unless repeated more than 50 times
    ("a " * 50, False),
    ("a " * 51, True),
    ("the cat sat on the mat", False),
    ("", False),
])
def test_loop_examples(text, loop):
    assert ends_in_loop(text.split()) is loop
    if text:
        assert degen_loop(text.split()) is loop


def test_loops_match_the_papers_definition_on_random_sequences():
    rng = np.random.default_rng(3)
    for _ in range(400):
        head = list(rng.integers(0, 4, size=rng.integers(0, 12)))
        phrase = list(rng.integers(0, 3, size=rng.integers(1, 6)))
        tokens = head + phrase * int(rng.integers(1, 5)) + list(rng.integers(0, 3, size=rng.integers(0, 2)))
        assert ends_in_loop(tokens) == degen_loop(tokens), tokens


def test_repetition_is_the_share_of_looping_samples():
    s = metric("repetition").compute(group(["a b c a b c", "one two three", "go on go on go on x y z x y z"]))
    assert s.per_sample == (1.0, 0.0, 1.0) and s.value == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------ references


def refs_file(tmp_path, rows, name="refs.jsonl"):
    return write_jsonl(tmp_path / name, rows)


def test_references_per_prompt_and_corpus(tmp_path):
    path = refs_file(tmp_path, [{"prompt_id": "a", "text": "one"}, {"text": "corpus one"},
                                {"prompt_id": 7, "text": "two"}, {"prompt_id": "a", "text": "three"}])
    refs = load_references(path, ["a", "7", "b"], images=False)
    assert refs.by_prompt == {"a": ("one", "three"), "7": ("two",)}
    assert refs.corpus == ("corpus one",)
    assert refs.pooled(["7", "a", "a", "b"]) == ["two", "one", "three", "corpus one"]
    assert refs.info()["per_prompt"] == 3 and refs.info()["corpus"] == 1 and len(refs.sha256) == 64


@pytest.mark.parametrize("rows,message,line", [
    ([], "has no references", None),
    ([{"text": "ok"}, {"prompt_id": "zz", "text": "x"}], "prompt_id 'zz' is not a prompt of the run", 2),
    ([{"text": "ok"}, {"prompt_id": "a"}], "exactly one of 'text' or 'image'", 2),
    ([{"text": "   "}], "reference text is empty", 1),
    ([{"text": "ok"}, {"image": "missing.png"}], "a reference image, while line 1 has a reference text", 2),
])
def test_bad_references_are_refused_naming_the_line(tmp_path, rows, message, line):
    path = refs_file(tmp_path, rows)
    with pytest.raises(ConfigError) as e:
        load_references(path, ["a"], images=False)
    text = str(e.value)
    assert message in text and "\n" not in text
    if line:
        assert f"line {line}" in text


def test_bad_json_and_unreadable_images_are_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2.*invalid JSON"):
        load_references(bad, None, images=False)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    path = refs_file(tmp_path, [{"image": "broken.png"}])
    with pytest.raises(ConfigError, match="line 1: image .*broken.png cannot be read"):
        load_references(path, None, images=True)
    texts = refs_file(tmp_path, [{"text": "x"}], "texts.jsonl")
    with pytest.raises(ConfigError, match="the references are texts, and this run's samples are compared with images"):
        load_references(texts, None, images=True)


def test_a_metric_that_needs_references_is_refused_without_them(tiny_model, tmp_path):
    config = config_from_dict(base_config(tiny_model, tmp_path / "runs", metrics=["mauve"]))
    with pytest.raises(ConfigError, match=r"metrics\[0\].*compares the samples with reference texts, and the run "
                                          r"has none: add references: a JSONL file"):
        evalkit.plan_sweep(config)
    assert not (tmp_path / "runs").exists()


def test_a_reference_file_naming_unknown_prompts_fails_the_start(tiny_model, tmp_path):
    refs = refs_file(tmp_path, [{"prompt_id": "nope", "text": "x"}])
    config = config_from_dict(base_config(tiny_model, tmp_path / "runs", metrics=["zipf"],
                                          references=str(refs)))
    with pytest.raises(ConfigError, match="line 1: prompt_id 'nope' is not a prompt of the run"):
        evalkit.run_sweep(config, progress=False)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ MAUVE


@pytest.mark.slow
def test_mauve_equals_a_direct_mauve_text_call(tmp_path):
    import mauve

    rng = np.random.default_rng(5)
    refs_path = refs_file(tmp_path, [{"prompt_id": f"p{i % 4}", "text": t}
                                     for i, t in enumerate(random_texts(rng, 24))] +
                          [{"text": t} for t in random_texts(rng, 8)])
    refs = load_references(refs_path, [f"p{i}" for i in range(4)], images=False)
    groups = [group(random_texts(rng, 5, vocab=10), pid=f"p{i}", refs=refs) for i in range(4)]
    m = metric("mauve")
    m.prepare_groups(groups)
    value = m.compute_pooled(groups).value
    samples = [t for g in groups for t in g.texts]
    direct = mauve.compute_mauve(p_features=embed("all-MiniLM-L6-v2", refs.pooled(g.prompt_id for g in groups)),
                                 q_features=embed("all-MiniLM-L6-v2", samples), verbose=False).mauve
    assert value == pytest.approx(direct, abs=1e-12)
    assert 0 < value <= 1
    assert m.id == "mauve[emb=all-MiniLM-L6-v2,scope=setting,buckets=auto,scaling=5,explained_var=0.9,seed=25]"
    other = metric("mauve", scaling=2, buckets=3)  # the package's parameters reach it
    direct = mauve.compute_mauve(p_features=embed("all-MiniLM-L6-v2", refs.pooled(g.prompt_id for g in groups)),
                                 q_features=embed("all-MiniLM-L6-v2", samples), mauve_scaling_factor=2,
                                 num_buckets=3, verbose=False).mauve
    assert other.compute_pooled(groups).value == pytest.approx(direct, abs=1e-12)


def test_mauve_says_what_it_needs():
    refs = corpus_of(["a b"] * 30)
    score = metric("mauve").compute_pooled([group(["x y"] * 4, refs=refs)])
    assert math.isnan(score.value)
    assert "MAUVE needs at least 20 samples and 20 references (pooled over the setting's prompts), got 4 and 30" \
        == score.reason


# ----------------------------------------------------------------------- pooled metrics in a scored file


def scored_file(tmp_path, temperatures=(0.5, 1.0), prompts=6, samples=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for t in temperatures:
        for p in range(prompts):
            for text in random_texts(rng, samples, vocab=int(4 + 12 * t)):
                rows.append({"prompt_id": f"p{p}", "prompt": f"prompt {p}", "temperature": t, "text": text})
    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_jsonl(tmp_path / "gen.jsonl", rows)


@pytest.mark.slow
def test_pooled_metrics_and_the_human_row_in_a_scored_file(tmp_path):
    rng = np.random.default_rng(1)
    per_prompt = {f"p{p}": random_texts(rng, 3) for p in range(6)}
    corpus = random_texts(rng, 10)
    refs = refs_file(tmp_path, [{"prompt_id": p, "text": t} for p, ts in per_prompt.items() for t in ts] +
                     [{"text": t} for t in corpus])
    run = evalkit.score_file(scored_file(tmp_path), ["zipf", "distinct_2", "repetition", "mauve"], tmp_path / "out",
                             progress=False, references=refs, resamples=200)
    scores, summary = run.scores, run.summary
    zipf_rows = scores[scores["metric"].str.startswith("zipf")]
    assert set(zipf_rows["prompt_id"]) == {POOLED} and len(zipf_rows) == 2  # one per setting
    samples = run.samples
    for sid, df in samples.groupby("setting_id"):
        value = zipf_rows.set_index("setting_id").loc[sid, "value"]
        assert value == pytest.approx(degen_zipf([t.split() for t in df["text"]]), rel=1e-12)
        row = summary[(summary["setting_id"] == sid) & summary["metric"].str.startswith("zipf")].iloc[0]
        assert row["mean"] == pytest.approx(value) and row["n_prompts"] == 6
        assert row["ci_low"] < row["ci_high"]
    # the human row: each metric on the references (per prompt, then the mean; pooled: all of them)
    values = run.manifest.references["values"]
    zipf_id = next(m for m in values if m.startswith("zipf"))
    all_refs = [t for ts in per_prompt.values() for t in ts] + corpus
    assert values[zipf_id]["value"] == pytest.approx(degen_zipf([t.split() for t in all_refs]), rel=1e-12)
    assert values[zipf_id]["n"] == len(all_refs)
    d2 = metric("distinct_2")
    expected = np.mean([d2.compute(group(ts)).value for ts in per_prompt.values()])
    assert values["distinct_2[tok=words]"]["value"] == pytest.approx(expected)
    assert not any(m.startswith("mauve") for m in values)  # MAUVE of the references with themselves is 1
    assert run.manifest.references["sha256"] and run.manifest.protocol["references"] == run.manifest.references[
        "sha256"]


def test_a_pooled_interval_is_the_leave_one_prompt_out_jackknife():
    rng = np.random.default_rng(6)
    groups = [group(random_texts(rng, 3, vocab=int(rng.integers(5, 30))), pid=f"p{i}") for i in range(7)]
    m = metric("zipf")
    scores, _ = score_groups(groups, [m])
    value = scores["value"].iloc[0]
    table = pooled_intervals(groups, [m], scores, level=0.9, seed=0)
    left_out = np.array([m.compute_pooled(groups[:i] + groups[i + 1:]).value for i in range(7)])
    se = math.sqrt(6 / 7 * ((left_out - left_out.mean()) ** 2).sum())
    half = stats.t.ppf(0.95, 6) * se
    row = table.iloc[0]
    assert row["blocks"] == 7 and row["n_prompts"] == 7
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((value - half, value + half), rel=1e-12)


def test_pooled_intervals_group_many_prompts_into_seeded_blocks():
    rng = np.random.default_rng(7)
    groups = [group(random_texts(rng, 2, vocab=int(rng.integers(5, 30))), pid=f"p{i}") for i in range(45)]
    m = metric("zipf")
    scores, _ = score_groups(groups, [m])
    a, b, c = (pooled_intervals(groups, [m], scores, level=0.95, seed=s) for s in (1, 1, 2))
    assert a["blocks"].iloc[0] == 20
    assert a.equals(b) and not a[["ci_low"]].equals(c[["ci_low"]])
    value = scores["value"].iloc[0]
    assert a["ci_low"].iloc[0] < value < a["ci_high"].iloc[0]
    assert metric("mauve", ci_blocks=0).interval_blocks == 0  # MAUVE's interval can be skipped


def test_score_command_takes_references(tmp_path):
    refs = refs_file(tmp_path, [{"text": t} for t in random_texts(np.random.default_rng(2), 12)])
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "evalkit", "score", str(scored_file(tmp_path)), "--metrics",
                           "zipf,repetition", "--references", str(refs), "-o", str(out), "-q"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["references"]["corpus"] == 12
    # repetition is per prompt: a corpus alone gives it no reference value, and says why
    rep = manifest["references"]["values"]["repetition[tok=words]"]
    assert rep["value"] is None and "only a corpus" in rep["reason"]
    missing = subprocess.run([sys.executable, "-m", "evalkit", "score", str(scored_file(tmp_path)), "--metrics",
                              "mauve", "-o", str(tmp_path / "x")], capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: --metrics: mauve[emb=all-MiniLM-L6-v2,scope=setting,buckets=auto,scaling=5,explained_var=0.9,"
        "seed=25] compares the samples with reference texts, and the run has none: add --references a JSONL file "
        "of reference texts"]


# ----------------------------------------------------------------------------------- decoding test


def scores_table(values: dict[tuple[str, str], float], metric_id: str) -> pd.DataFrame:
    return pd.DataFrame([{"setting_id": s, "prompt_id": p, "metric": metric_id, "value": v}
                         for (s, p), v in values.items()])


TEMPS = {"a": 0.2, "b": 0.7, "c": 1.0, "d": 1.5}


def test_decoding_test_reads_spearman_per_prompt():
    rng = np.random.default_rng(0)
    rising = {(s, f"p{i}"): t + rng.normal(0, 0.2) for i in range(10) for s, t in TEMPS.items()}
    falling = {k: -v for k, v in rising.items()}
    noise = {(s, f"p{i}"): rng.normal() for i in range(10) for s in TEMPS}
    scores = pd.concat([scores_table(rising, "up"), scores_table(falling, "down"), scores_table(noise, "noise"),
                        scores_table(rising, "bleu")])
    info = {"up": {"kind": "diversity", "direction": 1}, "down": {"kind": "diversity", "direction": 1},
            "noise": {"kind": "diversity", "direction": 1}, "bleu": {"kind": "diversity", "direction": -1},
            "quality": {"kind": "quality", "direction": 1}}
    result = decoding_test(scores, TEMPS, info, resamples=500).set_index("metric")
    expected_up = np.mean([stats.spearmanr(list(TEMPS.values()), [rising[(s, f"p{i}")] for s in TEMPS]).statistic
                           for i in range(10)])
    assert result.loc["up", "rho"] == pytest.approx(expected_up)
    assert result.loc["up", "verdict"] == "ok" and result.loc["up", "n_prompts"] == 10
    assert result.loc["down", "verdict"] == "wrong sign"
    assert result.loc["bleu", "verdict"] == "wrong sign"  # rises with temperature, but should fall
    assert result.loc["noise", "verdict"] in ("weak", "wrong sign")
    assert "quality" not in result.index  # only diversity metrics are tested


def test_decoding_test_needs_three_temperatures_and_counts_a_flat_metric_as_not_moving():
    assert decoding_test(scores_table({("a", "p"): 1.0, ("b", "p"): 2.0}, "m"), {"a": 0.5, "b": 1.0},
                         {"m": {"kind": "diversity"}}) is None
    info = {"m": {"kind": "diversity", "direction": 1}}
    flat = scores_table({(s, "p"): 1.0 for s in TEMPS}, "m")
    row = decoding_test(flat, TEMPS, info).iloc[0]
    assert row["rho"] == 0.0 and row["verdict"] == "weak"
    # flat on 9 prompts of 10, rising on one: the metric mostly does not move, which is no pass
    mostly_flat = scores_table({**{(s, f"p{i}"): 1.0 for i in range(9) for s in TEMPS},
                                **{(s, "p9"): t for s, t in TEMPS.items()}}, "m")
    row = decoding_test(mostly_flat, TEMPS, info, resamples=500).iloc[0]
    assert row["rho"] == pytest.approx(0.1) and row["n_prompts"] == 10 and row["verdict"] == "weak"
    undefined = scores_table({(s, "p"): math.nan for s in TEMPS}, "m")
    assert decoding_test(undefined, TEMPS, info).iloc[0]["verdict"] == "undefined"
    pooled = scores_table({(s, POOLED): -t for s, t in TEMPS.items()}, "z")
    row = decoding_test(pooled, TEMPS, {"z": {"kind": "diversity", "direction": -1}}).iloc[0]
    assert row["rho"] == pytest.approx(-1.0) and row["verdict"] == "ok" and math.isnan(row["ci_low"])


def test_verdict_thresholds():
    assert verdict(0.8, 0.6, 0.9, 1) == "ok"
    assert verdict(0.8, -0.1, 0.9, 1) == "weak"
    assert verdict(0.3, 0.1, 0.5, 1) == "weak"
    assert verdict(-0.8, -0.9, -0.6, -1) == "ok"
    assert verdict(0.2, 0.1, 0.3, -1) == "wrong sign"
    assert verdict(-0.1, -0.4, 0.2, 1) == "weak"  # noise: its interval reaches 0 either way
    nan = float("nan")
    assert verdict(-0.3, nan, nan, 1) == "weak" and verdict(-0.6, nan, nan, 1) == "wrong sign"  # pooled


def test_a_rho_on_the_threshold_passes_whatever_its_last_bit():
    # ranks (1, 3, 5, 2, 4) against five temperatures: rho = 1 - 6 * 10 / 120 = 1/2 exactly, which scipy gives as
    # 0.49999999999999994 (flagged weak before the thresholds had a tolerance)
    temps = dict(zip("abcde", (0.2, 0.5, 0.7, 1.0, 1.5)))
    half = stats.spearmanr(list(temps.values()), [1, 3, 5, 2, 4]).statistic
    assert half != 0.5 and half == pytest.approx(0.5)
    nan = float("nan")
    assert verdict(half, nan, nan, 1) == "ok" and verdict(-half, nan, nan, 1) == "wrong sign"
    assert verdict(-half, nan, nan, -1) == "ok" and verdict(half, 0.1, 0.9, 1) == "ok"
    pooled = scores_table({(s, POOLED): v for s, v in zip(temps, (1, 3, 5, 2, 4))}, "z")
    row = decoding_test(pooled, temps, {"z": {"kind": "diversity", "direction": 1}}).iloc[0]
    assert row["rho"] == half and row["verdict"] == "ok"
    assert verdict(0.5 - 1e-6, nan, nan, 1) == "weak"  # a rho below 1/2 is still below it


def test_metrics_check_command(tmp_path):
    run = evalkit.score_file(scored_file(tmp_path, temperatures=(0.3, 0.7, 1.0, 1.5), prompts=5),
                             ["distinct_2", "self_bleu", "ttr"], tmp_path / "out", progress=False)
    done = subprocess.run([sys.executable, "-m", "evalkit", "metrics", "--check", str(run.path)],
                          capture_output=True, text=True, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("│") and ("distinct_2" in line
                                                                                    or "self_bleu" in line)]
    assert len(lines) == 2 and all(" ok " in line for line in lines)
    two = evalkit.score_file(scored_file(tmp_path / "..", temperatures=(0.5, 1.0)), ["distinct_2"],
                             tmp_path / "two", progress=False)
    refused = subprocess.run([sys.executable, "-m", "evalkit", "metrics", "--check", str(two.path)],
                             capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"error: --check: {two.path} has 2 temperatures; the decoding test needs "
                                      "at least 3")


def test_report_shows_the_human_row_and_the_decoding_test(tmp_path):
    rng = np.random.default_rng(4)
    refs = refs_file(tmp_path, [{"prompt_id": f"p{p}", "text": t} for p in range(5) for t in random_texts(rng, 4)])
    run = evalkit.score_file(scored_file(tmp_path, temperatures=(0.3, 0.7, 1.0, 1.5), prompts=5),
                             ["distinct_2", "zipf", "self_bleu"], tmp_path / "out", progress=False, references=refs)
    from evalkit.report import write_report
    from evalkit.report.data import load_views

    view = load_views([run.path])[0]
    table = view.human_likeness
    assert table["metrics"] == [m for m in run.manifest.metrics]  # every one of these has a reference value
    gaps = [[c["gap"] for c in r["cells"]] for r in table["rows"]]
    mean_ranks = [r["mean_rank"] for r in table["rows"]]
    assert mean_ranks == sorted(mean_ranks)
    summary = run.summary.set_index(["setting_id", "metric"])
    first = table["rows"][0]
    for m, c in zip(table["metrics"], first["cells"]):
        assert c["gap"] == pytest.approx(abs(summary.loc[(first["setting"], m), "mean"] - view.human(m)))
    assert all(np.isfinite(g).all() for g in gaps)
    html = write_report([run.path], tmp_path / "r.html").read_text()
    assert 'id="human"' in html and 'id="metric-checks"' in html
    assert html.count(">references<") >= 1 and "verdict-" in html


# ------------------------------------------------------------------ references under the model (perplexity)


def test_perplexity_of_the_references_under_a_local_model(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    refs = refs_file(tmp_path, [{"prompt_id": "en", "text": "Once upon a time there was a cat."},
                                {"prompt_id": "en", "text": "The end."},
                                {"prompt_id": "zh", "text": "秋天的早晨很安静。"},
                                {"text": "a corpus line has no prompt, so no log-probabilities"}])
    config = config_from_dict(base_config(tiny_model, tmp_path / "runs", references=str(refs),
                                          grid={"temperature": [1.0]}, samples_per_prompt=2, max_new_tokens=4,
                                          metrics=["nll", "perplexity", "distinct_1"]))
    run = evalkit.run_sweep(config, progress=False)
    values = run.manifest.references["values"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompts = run.prompts.set_index("id")
    per_prompt = {}
    for pid, texts in (("en", ["Once upon a time there was a cat.", "The end."]), ("zh", ["秋天的早晨很安静。"])):
        prompt_ids = tokenizer(prompts.loc[pid, "rendered"], add_special_tokens=False)["input_ids"]
        nlls = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([prompt_ids + ids])).logits[0].double()
            logp = torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)
            nlls.append(-logp.gather(1, torch.tensor(ids)[:, None])[:, 0].numpy())
        per_prompt[pid] = nlls
    expected_nll = np.mean([np.mean([n.mean() for n in nlls]) for nlls in per_prompt.values()])
    assert values["nll[dist=model]"]["value"] == pytest.approx(expected_nll, rel=1e-5)
    ppl = metric("perplexity")
    expected_ppl = np.mean([ppl.reduce([list(n) for n in nlls]).value for nlls in per_prompt.values()])
    assert values["perplexity[dist=model]"]["value"] == pytest.approx(expected_ppl, rel=1e-5)
    assert values["nll[dist=model]"]["n"] == 2  # two prompts have references


def test_references_of_a_scored_file_have_no_perplexity(tmp_path):
    refs = refs_file(tmp_path, [{"prompt_id": "p0", "text": "x y z"}])
    run = evalkit.score_file(scored_file(tmp_path), ["distinct_1"], tmp_path / "out", progress=False,
                             references=refs)
    assert list(run.manifest.references["values"]) == ["distinct_1[tok=words]"]


def test_mauve_on_the_models_own_hidden_states(tiny_model, tmp_path):
    import mauve
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rng = np.random.default_rng(8)
    prompt_ids = ["en", "zh", "p2"]
    refs = refs_file(tmp_path, [{"prompt_id": pid, "text": t} for pid in prompt_ids
                                for t in random_texts(rng, 8, length=(3, 8))] +
                     [{"text": t} for t in random_texts(rng, 4, length=(3, 8))])
    config = config_from_dict(base_config(tiny_model, tmp_path / "runs", references=str(refs),
                                          grid={"temperature": [1.0]}, samples_per_prompt=8, max_new_tokens=6,
                                          metrics=[{"name": "mauve", "emb": "model", "ci_blocks": 0}]))
    run = evalkit.run_sweep(config, progress=False)
    value = run.scores["value"].iloc[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    rendered = run.prompts.set_index("id")["rendered"]

    def last_state(ids):
        with torch.inference_mode():
            return model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1].double()

    def feature(pid, text):
        if pid is None:
            return last_state(tokenizer(text)["input_ids"]).numpy()
        head = tokenizer(rendered[pid], add_special_tokens=False)["input_ids"]
        return last_state(head + tokenizer(text, add_special_tokens=False)["input_ids"]).numpy()

    ref_rows = [json.loads(line) for line in refs.read_text().splitlines()]
    p = np.stack([feature(r.get("prompt_id"), r["text"]) for r in ref_rows])
    samples = run.samples
    order = samples.set_index("prompt_id").loc[prompt_ids].reset_index()  # groups in prompt order
    q = np.stack([feature(pid, t) for pid, t in zip(order["prompt_id"], order["text"])])
    direct = mauve.compute_mauve(p_features=p, q_features=q, verbose=False).mauve
    assert value == pytest.approx(direct, abs=1e-6)
    assert run.summary["ci_low"].isna().all()  # ci_blocks=0: no interval


def test_mauve_on_model_features_is_refused_where_there_is_no_local_model(tiny_model, tmp_path):
    refs = refs_file(tmp_path, [{"text": "x"}])
    ray = base_config(tiny_model, tmp_path / "runs", references=str(refs), metrics=["mauve[emb=model]"],
                      executor={"kind": "ray", "workers": 1})
    with pytest.raises(ConfigError, match=r"metrics\[0\]: mauve\[emb=model,.*\] reads the model's hidden states, "
                                          r"which a ray run does not return: use executor: local"):
        evalkit.plan_sweep(config_from_dict(ray))
    with pytest.raises(ConfigError, match="needs model_features, which a file of texts does not have"):
        evalkit.score_file(scored_file(tmp_path), ["mauve[emb=model]"], tmp_path / "out", progress=False,
                           references=refs)


# ------------------------------------------------------------------------------ edges found in review


def test_a_run_with_relative_references_resumes(tiny_model, tmp_path, monkeypatch):
    folder = tmp_path / "cfg"
    folder.mkdir()
    refs_file(folder, [{"prompt_id": "en", "text": "one two three four"}])
    config = base_config(tiny_model, tmp_path / "runs", references="refs.jsonl", grid={"temperature": [1.0]},
                         samples_per_prompt=2, max_new_tokens=4, metrics=["distinct_1", "zipf"])
    path = folder / "sweep.yaml"
    path.write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    run = evalkit.run_sweep(path, progress=False)
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["status"] = "interrupted"
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    resumed = evalkit.run_sweep(None, resume=run.path, progress=False)
    assert resumed.manifest.status == "complete"
    assert resumed.manifest.references["file"] == str((folder / "refs.jsonl").resolve())


def test_mauve_buckets_are_checked():
    with pytest.raises(ConfigError, match=r"metrics\.buckets"):
        metric("mauve", buckets=1)
    refs = corpus_of(["a b c"] * 25)
    score = metric("mauve", buckets=30).compute_pooled([group(["x y"] * 22, refs=refs)])
    assert math.isnan(score.value)
    assert score.reason == "mauve[buckets=30] needs at least 30 texts on each side, got 22 samples and 25 references"


def test_mauve_per_prompt_reads_only_that_prompts_references(tmp_path):
    rng = np.random.default_rng(9)
    path = refs_file(tmp_path, [{"prompt_id": "p0", "text": t} for t in random_texts(rng, 21)] +
                     [{"text": t} for t in random_texts(rng, 30, vocab=5)])
    refs = load_references(path, ["p0"], images=False)
    g = group(random_texts(rng, 22), pid="p0", refs=refs)
    m = metric("mauve", scope="prompt")
    m.prepare_groups([g])
    assert m.references_of([g], refs) == list(refs.by_prompt["p0"])
    import mauve

    direct = mauve.compute_mauve(p_features=embed("all-MiniLM-L6-v2", list(refs.by_prompt["p0"])),
                                 q_features=embed("all-MiniLM-L6-v2", list(g.texts)), verbose=False).mauve
    assert m.compute(g).value == pytest.approx(direct, abs=1e-12)


def test_the_pooled_marker_is_no_prompt_id(tmp_path, tiny_model):
    star = write_jsonl(tmp_path / "star.jsonl", [{"prompt_id": "*", "text": "a b"}])
    with pytest.raises(ConfigError, match=r"line 1: prompt '\*' is reserved"):
        evalkit.score_file(star, ["distinct_1"], tmp_path / "out", progress=False)
    config = base_config(tiny_model, tmp_path / "runs", prompts=[{"id": "*", "prompt": "hi"}])
    with pytest.raises(ConfigError, match=r"prompts.items\[0\]: prompt id '\*' is reserved"):
        evalkit.plan_sweep(config_from_dict(config))


def test_reference_lines_are_checked_one_by_one(tmp_path):
    with pytest.raises(ConfigError, match="line 1: prompt_id: a string or a whole number is needed, not "
                                          "true/false, got true"):
        load_references(refs_file(tmp_path, [{"prompt_id": True, "text": "x"}]), None, images=False)
    (tmp_path / "pic.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="line 1: the references are images, and this run's samples are compared "
                                          "with texts"):
        load_references(refs_file(tmp_path, [{"image": "pic.png"}], "i.jsonl"), None, images=False)


def test_the_references_hash_is_of_their_content(tmp_path):
    rows = [{"prompt_id": "a", "text": "one"}, {"text": "two"}, {"prompt_id": "a", "text": "three"}]
    a = load_references(refs_file(tmp_path, rows, "a.jsonl"), None, images=False)
    other = tmp_path / "b.jsonl"
    other.write_bytes(b"\xef\xbb\xbf\n" + b"\n\n".join(json.dumps(r).encode() for r in reversed(rows)) + b"\n")
    b = load_references(other, None, images=False)
    c = load_references(refs_file(tmp_path, rows[:2], "c.jsonl"), None, images=False)
    assert a.sha256 == b.sha256 != c.sha256


def test_zipf_intervals_stay_non_negative():
    groups = [group(["a b c d e f g h"], pid="p0"), group(["a a a a b"], pid="p1"), group(["x y"], pid="p2")]
    m = metric("zipf")
    scores, _ = score_groups(groups, [m])
    assert pooled_intervals(groups, [m], scores, level=0.95, seed=0)["ci_low"].iloc[0] >= 0


def test_the_human_row_says_why_a_metric_has_no_value(tmp_path):
    refs = refs_file(tmp_path, [{"prompt_id": "p0", "text": "x y z"}])
    run = evalkit.score_file(scored_file(tmp_path), ["zipf", "zipf[tok=chars]"], tmp_path / "out", progress=False,
                             references=refs)
    values = run.manifest.references["values"]
    assert values["zipf[tok=chars,max_rank=5000,scope=setting]"]["value"] is not None
    from evalkit.scoring.references import reference_values

    out = reference_values([metric("zipf", tok="model")], load_references(refs, None, images=False), {}, Setting())
    assert out["zipf[tok=model,max_rank=5000,scope=setting]"] == {
        "value": None, "n": 0, "reason": "zipf[tok=model,max_rank=5000,scope=setting] needs token_ids, which the "
                                         "references do not have"}


def test_compare_shows_pooled_changes_untested_and_leaves_out_other_references(tmp_path):
    from evalkit.compare.stats import Rule, compare_runs, gate, load_side

    rng = np.random.default_rng(10)
    refs_a = refs_file(tmp_path, [{"text": t} for t in random_texts(rng, 24)], "a.jsonl")
    refs_b = refs_file(tmp_path, [{"text": t} for t in random_texts(rng, 24, vocab=8)], "b.jsonl")
    metrics = ["distinct_2", "zipf", "mauve[ci_blocks=2]"]
    a = evalkit.score_file(scored_file(tmp_path / "x", seed=1), metrics, tmp_path / "a", progress=False,
                           references=refs_a)
    b = evalkit.score_file(scored_file(tmp_path / "y", seed=2), metrics, tmp_path / "b", progress=False,
                           references=refs_b)
    c = compare_runs(load_side(a.path), load_side(b.path), permutations=1000)
    table = c.table
    assert set(table["metric"]) == {"distinct_2[tok=words]", "zipf[tok=words,max_rank=5000,scope=setting]"}
    assert any("metrics against references, which differ between the runs: mauve" in n for n in c.not_compared)
    zipf = table[table["metric"].str.startswith("zipf")]
    assert zipf["p"].isna().all() and zipf["p_adjusted"].isna().all() and not zipf["significant"].any()
    assert table[table["metric"].str.startswith("distinct")]["p"].notna().all()
    with pytest.raises(EvalkitError, match="--fail-on: 'zipf' matches only pooled metrics"):
        gate(c, [Rule.parse("zipf:+0.1")])
    same = evalkit.score_file(scored_file(tmp_path / "z", seed=3), metrics, tmp_path / "c", progress=False,
                              references=refs_a)
    assert any(m.startswith("mauve") for m in compare_runs(load_side(a.path), load_side(same.path),
                                                           permutations=1000).table["metric"])


def test_the_sample_browser_leaves_pooled_metrics_out(tmp_path):
    from evalkit.report.data import load_views

    run = evalkit.score_file(scored_file(tmp_path), ["distinct_2", "zipf"], tmp_path / "out", progress=False)
    data = load_views([run.path])[0].browser_data()
    assert data["metrics"] == ["distinct_2[tok=words]"]
    assert all(v[0] is not None for per_prompt in data["scores"] for v in per_prompt)


def test_a_nightly_gate_on_pooled_metrics_is_refused_before_the_sweep(tiny_model, tmp_path, write_config):
    path = write_config(base_config(tiny_model, tmp_path / "runs", metrics=["distinct_1", "zipf"]))
    done = subprocess.run([sys.executable, "-m", "evalkit", "run", str(path), "--baseline", "latest", "--fail-on",
                           "zipf:+0.1"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --fail-on: 'zipf' matches only pooled metrics (one value per setting over its prompts: "
        "zipf[tok=words,max_rank=5000,scope=setting]), which have no paired test to gate on"]
    assert not (tmp_path / "runs").exists()


def test_compare_output_says_which_changes_were_not_tested(tmp_path):
    from evalkit.compare.format import headline, junit
    from evalkit.compare.stats import Rule, compare_runs, load_side

    a = evalkit.score_file(scored_file(tmp_path / "x", seed=1), ["distinct_2", "zipf"], tmp_path / "a",
                           progress=False)
    b = evalkit.score_file(scored_file(tmp_path / "y", seed=2), ["distinct_2", "zipf"], tmp_path / "b",
                           progress=False)
    c = compare_runs(load_side(a.path), load_side(b.path), permutations=1000)
    lines = headline(c, [])
    assert ": 2 setting x metric changes tested, " in lines[0]  # distinct_2 in two settings; zipf apart
    assert lines[1] == ("not tested: 2 changes of pooled metrics (one value per setting, no per-prompt pairs): "
                        "zipf[tok=words,max_rank=5000,scope=setting]")
    xml = junit(c, [Rule.parse("distinct_2:-0.5"), Rule.parse("zipf:+0.5")], []).decode()
    assert 'tests="2"' in xml and "zipf" not in xml  # the pooled metric has no test case


def test_mauve_intervals_keep_the_whole_datas_cluster_count(tmp_path):
    rng = np.random.default_rng(11)
    refs = load_references(refs_file(tmp_path, [{"text": t} for t in random_texts(rng, 34)]), None, images=False)
    groups = [group(random_texts(rng, 6), pid=f"p{i}", refs=refs) for i in range(5)]
    fixed = metric("mauve").for_interval(groups)
    assert fixed.params.buckets == 3  # round(min(30, 34) / 10), as mauve-text's auto; parts keep it
    assert metric("mauve", buckets=4).for_interval(groups).params.buckets == 4


def test_report_of_metrics_against_references_opens_on_a_pair_and_names_missing_human_values(tmp_path):
    from evalkit.report import write_report

    rng = np.random.default_rng(12)
    refs = refs_file(tmp_path, [{"text": t} for t in random_texts(rng, 24)])
    run = evalkit.score_file(scored_file(tmp_path), ["mauve[ci_blocks=0]", "zipf", "repetition"], tmp_path / "out",
                             progress=False, references=refs)
    html = write_report([run.path], tmp_path / "r.html").read_text()
    mauve_id = next(m for m in run.manifest.metrics if m.startswith("mauve"))
    zipf_id = next(m for m in run.manifest.metrics if m.startswith("zipf"))
    assert f'<option value="{zipf_id}" selected>' in html and f'<option value="{mauve_id}" selected>' in html
    assert f'data-x="{zipf_id}" data-y="{mauve_id}"' in html
    assert ("No reference value: <code>repetition[tok=words]</code> (repetition[tok=words] is computed per "
            "prompt") in html


def test_references_in_model_tokens_where_the_tokenizer_is_loaded(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    texts = {"en": ["Once upon a time there was a cat.", "The cat sat."], "zh": ["秋天的早晨很安静。"]}
    corpus = ["A corpus line, in model tokens too."]
    refs = refs_file(tmp_path, [{"prompt_id": p, "text": t} for p, ts in texts.items() for t in ts] +
                     [{"text": t} for t in corpus])
    config = config_from_dict(base_config(tiny_model, tmp_path / "runs", references=str(refs),
                                          grid={"temperature": [1.0]}, samples_per_prompt=2, max_new_tokens=4,
                                          metrics=["zipf[tok=model]", "distinct_1[tok=model]"]))
    values = evalkit.run_sweep(config, progress=False).manifest.references["values"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = {p: [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ts] for p, ts in texts.items()}
    every = [x for ts in ids.values() for x in ts] + [tokenizer(t, add_special_tokens=False)["input_ids"]
                                                      for t in corpus]
    assert values["zipf[tok=model,max_rank=5000,scope=setting]"]["value"] == pytest.approx(degen_zipf(every))
    d1 = metric("distinct_1", tok="model")
    expected = np.mean([d1.compute(Group(prompt_id=p, prompt="", setting=Setting(), texts=tuple(texts[p]),
                                         token_ids=tuple(tuple(x) for x in ids[p]))).value for p in texts])
    assert values["distinct_1[tok=model]"]["value"] == pytest.approx(expected)


def test_a_references_path_that_is_no_regular_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory, not a references file \(JSONL\)"):
        load_references(tmp_path, None, images=False)
    with pytest.raises(ConfigError, match="^/dev/zero: references file is a device or other special file"):
        load_references("/dev/zero", None, images=False)
    with pytest.raises(ConfigError, match="references file not found: .*missing.jsonl"):
        load_references(tmp_path / "missing.jsonl", None, images=False)
