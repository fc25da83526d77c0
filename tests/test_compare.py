"""Comparing runs: the statistics, the not-comparable cases, the regression gate and its exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from evalkit.cli import app
from evalkit.compare import RunData, Rule, compare_runs, gate, holm, matches, sign_flip_pvalues
from evalkit.errors import EvalkitError

from compare_helpers import INFO, SETTINGS, fake_run, noisy_scores

PROTOCOL = {"kind": "sweep", "max_new_tokens": 32, "samples_per_prompt": 4, "stop": [], "chat_template": "auto",
            "system_prompt": None, "prompts": {f"p{i}": f"Prompt {i}" for i in range(20)}}
RULES = [Rule.parse(r) for r in ("distinct_2:-0", "self_bleu:+0")]  # any significant drop of diversity


def side(label: str, scores, protocol=PROTOCOL) -> RunData:
    return RunData(label, "nightly", scores, dict(protocol), INFO)


@pytest.mark.parametrize("n", [3, 8, 12])
def test_sign_flip_p_values_equal_scipys_exact_paired_permutation_test(n):
    rng = np.random.default_rng(n)
    diffs = [rng.normal(0.3, 1, size=n) for _ in range(5)]
    ours = sign_flip_pvalues(diffs, permutations=10_000, seed=0)
    for d, p in zip(diffs, ours):
        ref = stats.permutation_test((d, np.zeros(n)), lambda x, y, axis: np.mean(x - y, axis=axis),
                                     permutation_type="samples", n_resamples=np.inf, alternative="two-sided")
        assert p == pytest.approx(ref.pvalue, abs=1e-12)


def test_sign_flip_random_patterns_when_exact_is_too_many():
    rng = np.random.default_rng(0)
    d = rng.normal(0.2, 1, size=40)
    p = sign_flip_pvalues([d], permutations=20_000, seed=3)[0]
    ref = stats.ttest_1samp(d, 0).pvalue  # the permutation distribution is close to t for n = 40
    assert abs(p - ref) < 0.02
    assert sign_flip_pvalues([d], permutations=20_000, seed=3)[0] == p  # seeded
    assert np.isnan(sign_flip_pvalues([np.zeros(0)], permutations=10, seed=0)[0])


@pytest.mark.parametrize("p, adjusted", [
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),  # by hand: 4x0.005, 3x0.01, 2x0.03, max(1x0.04, 0.06)
    ([0.5, np.nan, 0.01], [0.5, np.nan, 0.02]),
    ([0.6, 0.6], [1.0, 1.0]),
])
def test_holm(p, adjusted):
    assert np.allclose(holm(np.array(p)), adjusted, equal_nan=True)


@pytest.mark.parametrize("pattern, metric, ok", [
    ("self_bleu", "self_bleu[n=4,smooth=method1,tok=words]", True),
    ("self_bleu[n=4]", "self_bleu[n=4,smooth=method1,tok=words]", True),
    ("self_bleu[n=3]", "self_bleu[n=4,smooth=method1,tok=words]", False),
    ("self_bleu[tok=words,n=4]", "self_bleu[n=4,smooth=method1,tok=words]", True),
    ("distinct_2", "distinct_2[tok=words]", True),
    ("distinct", "distinct_2[tok=words]", False),
])
def test_metric_patterns(pattern, metric, ok):
    assert matches(pattern, metric) is ok


@pytest.mark.parametrize("text, metric, tolerance", [
    ("self_bleu[n=4]:+0.02", "self_bleu[n=4]", 0.02), ("distinct_2:-0.03", "distinct_2", -0.03),
    ("mtld:-5", "mtld", -5.0), ("x:+1e-3", "x", 0.001)])
def test_rule_parsing(text, metric, tolerance):
    rule = Rule.parse(text)
    assert (rule.metric, rule.tolerance) == (metric, tolerance)


@pytest.mark.parametrize("text", ["self_bleu:0.02", "self_bleu", ":+1", "self_bleu:+x", "a b:+1",
                                  "self_bleu[n=4,n=4]:+0.02", "self_bleu[n=4:+0.02"])
def test_bad_rules_are_refused(text):
    with pytest.raises(EvalkitError, match="--fail-on"):
        Rule.parse(text)


@pytest.mark.slow
def test_same_model_other_seed_raises_no_alarm_in_95_of_100_trials():
    alarms = 0
    for trial in range(100):
        rng = np.random.default_rng(1000 + trial)
        c = compare_runs(side("base", noisy_scores(rng)), side("new", noisy_scores(rng)), seed=trial)
        alarms += bool(gate(c, RULES))
    assert alarms <= 5


def test_a_planted_shift_is_caught_in_the_bad_direction_only():
    setting, metric = SETTINGS[2].id, "distinct_2[tok=words]"
    for trial in range(10):
        rng = np.random.default_rng(trial)
        base = side("base", noisy_scores(rng))
        drop = side("new", noisy_scores(rng, shift={(setting, metric): -0.05}))
        c = compare_runs(base, drop, seed=trial)
        found = {(r.setting_id, r.metric): r for _, r in gate(c, RULES)}
        assert (setting, metric) in found  # caught (other pairs may raise a rare false alarm)
        assert found[setting, metric].delta == pytest.approx(-0.05, abs=0.03)
        assert found[setting, metric].ci_high < 0
        assert gate(c, [Rule.parse("distinct_2:-0.1")]) == []  # within tolerance
        rise = side("new", noisy_scores(rng, shift={(setting, metric): +0.05}))
        c = compare_runs(base, rise, seed=trial)
        assert c.table.set_index(["setting_id", "metric"]).loc[(setting, metric), "significant"]
        assert (setting, metric) not in {(r.setting_id, r.metric) for _, r in gate(c, RULES)}  # more diverse: fine


def test_runs_that_differ_in_protocol_are_not_comparable():
    rng = np.random.default_rng(0)
    base = side("base", noisy_scores(rng))
    for change, message in [({"max_new_tokens": 64}, "max_new_tokens differs: 32 vs 64"),
                            ({"prompts": {**PROTOCOL["prompts"], "p3": "Other"}}, "prompts differ: 1 with other text"),
                            ({"stop": ["\n"]}, "stop differs")]:
        new = side("new", noisy_scores(rng), {**PROTOCOL, **change})
        with pytest.raises(EvalkitError, match=f"new is not comparable with base: {message}"):
            compare_runs(base, new)


def test_settings_and_metric_definitions_only_one_run_has_are_listed():
    rng = np.random.default_rng(0)
    base_scores, new_scores = noisy_scores(rng), noisy_scores(rng, settings=SETTINGS[:4])
    new_scores.loc[new_scores["metric"] == "distinct_2[tok=words]", "metric"] = "distinct_2[tok=chars]"
    c = compare_runs(side("base", base_scores), side("new", new_scores))
    assert set(c.table["setting_id"]) == {s.id for s in SETTINGS[:4]}
    assert "distinct_2[tok=words]" not in set(c.table["metric"])
    assert f"settings only in base: {SETTINGS[4].id}, {SETTINGS[5].id}" in c.not_compared
    assert "metrics only in base: distinct_2[tok=words]" in c.not_compared
    assert "metrics only in new: distinct_2[tok=chars]" in c.not_compared


# ------------------------------------------------------------------------------------ through the CLI

@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(7)
    base = fake_run(tmp_path / "runs", "nightly", noisy_scores(rng), started_at="2026-11-01T00:00:00Z")
    shift = {(SETTINGS[1].id, "self_bleu[n=4,smooth=method1,tok=words]"): +0.06}
    new = fake_run(tmp_path / "runs", "nightly", noisy_scores(rng, shift=shift), started_at="2026-11-02T00:00:00Z")
    return base, new


def test_gate_exit_codes_and_junit(pair, tmp_path):
    base, new = pair
    cli = CliRunner()
    junit = tmp_path / "gate.xml"
    result = cli.invoke(app, ["compare", str(base), str(new), "--fail-on", "self_bleu[n=4]:+0.02",
                              "--fail-on", "distinct_2:-0.03", "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    assert "REGRESSION: 1 change(s) beyond tolerance" in result.output
    assert f"{SETTINGS[1].id} self_bleu[n=4,smooth=method1,tok=words]" in result.output
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == str(2 * len(SETTINGS)) and suite.get("failures") == "1"
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [c.get("classname") for c in failed] == [f"nightly.{SETTINGS[1].id}"]

    result = cli.invoke(app, ["compare", str(base), str(new), "--fail-on", "self_bleu:+0.1"])  # within tolerance
    assert result.exit_code == 0, result.output
    result = cli.invoke(app, ["compare", str(base), str(base), "--fail-on", "self_bleu:+0"])
    assert result.exit_code == 0, result.output


def test_a_comparison_across_engines_is_allowed_and_marked(tmp_path):
    """An evalkit run against a vLLM run of the same protocol: compared, and every format says across which
    engines; two runs of one engine say nothing of it."""
    from evalkit.generation.base import ModelInfo

    rng = np.random.default_rng(3)
    base = fake_run(tmp_path / "runs", "nightly", noisy_scores(rng), started_at="2026-11-01T00:00:00Z")
    vllm = ModelInfo(backend="vllm", id="test-model", sha256="ab" * 32, dtype="float32", engine="vllm 0.32.0")
    new = fake_run(tmp_path / "runs", "nightly", noisy_scores(rng), started_at="2026-11-02T00:00:00Z", model=vllm)
    cli = CliRunner()
    text = cli.invoke(app, ["compare", str(base), str(new)])
    assert text.exit_code == 0, text.output
    assert "cross-engine comparison: base sampled by evalkit, new by vllm 0.32.0" in " ".join(text.output.split())
    as_json = cli.invoke(app, ["compare", str(base), str(new), "--format", "json"])
    assert "vllm 0.32.0" in json.loads(as_json.output)["cross_engine"]
    html = tmp_path / "engines.html"
    assert cli.invoke(app, ["compare", str(base), str(new), "--format", "html", "-o", str(html)]).exit_code == 0
    assert "cross-engine comparison: base sampled by evalkit, new by vllm 0.32.0" in html.read_text(encoding="utf-8")
    junit = tmp_path / "engines.xml"
    cli.invoke(app, ["compare", str(base), str(new), "--fail-on", "distinct_2:-0.5", "--junit", str(junit)])
    [prop] = ET.parse(junit).getroot().iter("property")
    assert prop.get("name") == "cross_engine" and "vllm 0.32.0" in prop.get("value")
    same = cli.invoke(app, ["compare", str(base), str(base), "--format", "json"])
    assert json.loads(same.output)["cross_engine"] is None


def test_compare_formats(pair, tmp_path):
    base, new = pair
    cli = CliRunner()
    result = cli.invoke(app, ["compare", str(base), str(new), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert len(data["changes"]) == len(SETTINGS) * len(INFO) and data["regressions"] == []
    flagged = [c for c in data["changes"] if c["significant"]]
    assert [(c["setting_id"], c["metric"]) for c in flagged] == [(SETTINGS[1].id,
                                                                  "self_bleu[n=4,smooth=method1,tok=words]")]
    result = cli.invoke(app, ["compare", str(base), str(new), "--format", "markdown", "--metric", "self_bleu"])
    assert result.exit_code == 0 and "| setting | `self_bleu[n=4,smooth=method1,tok=words]` |" in result.output
    assert "↓" in result.output  # self-BLEU up: less diverse
    result = cli.invoke(app, ["compare", str(base), str(new), "-o", str(tmp_path / "c.txt")])
    assert result.exit_code == 0 and "change of the mean" in (tmp_path / "c.txt").read_text(encoding="utf-8")
    out = tmp_path / "c.html"
    result = cli.invoke(app, ["compare", str(base), str(new), "--format", "html", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert '<section id="changes">' in out.read_text(encoding="utf-8")


def test_compare_refuses_what_it_cannot_compare(pair, tmp_path):
    base, _ = pair
    other = fake_run(tmp_path / "runs", "nightly", noisy_scores(np.random.default_rng(1)), max_new_tokens=64)
    cli = CliRunner()
    result = cli.invoke(app, ["compare", str(base), str(other)])
    assert result.exit_code == 2
    assert "not comparable" in result.output and "max_new_tokens differs: 32 vs 64" in result.output
    assert len(result.output.strip().splitlines()) == 1
    for args, message in [(["--fail-on", "nope:+1"], "'nope' matches no metric"),
                          (["--fail-on", "self_bleu"], "is not METRIC:+TOLERANCE"),
                          (["--metric", "mtld"], "'mtld' matches no metric"),
                          (["--metric", "self_bleu[n=4"], "--metric: expected NAME[KEY=VALUE,...]"),
                          (["--metric", "self_bleu[n=4,n=4]"], "--metric: parameter 'n' appears twice"),
                          (["--fail-on", "self_bleu[n=4,n=4]:+0.1"], "--fail-on: parameter 'n' appears twice"),
                          (["--format", "pdf"], "--format")]:
        result = cli.invoke(app, ["compare", str(base), str(base), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    result = cli.invoke(app, ["compare", str(base), str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a run directory" in result.output
