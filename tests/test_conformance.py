"""`evalkit conformance` (evalkit/conformance.py): the tests' statistics against independent computations, evalkit's
engine passing on the tiny model, engines broken on purpose (top-p ignored, the wrong order, seeds ignored, a batch
neighbour changing a seeded draw) caught with the right verdict, and the control's "inconclusive" with too few draws."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from evalkit.conformance import core as cf
from evalkit.cli import app
from evalkit.config import config_from_dict
from evalkit.generation import load_backend
from evalkit.prompts import load_prompts
from evalkit.settings import Setting

from conftest import base_config

SHARPEN = 12.0  # a randomly initialised model's logits are nearly flat: sharpen them (as test_sampler_frequencies)
NUCLEUS = Setting(temperature=0.7, top_p=0.8)
ORDERED = Setting(temperature=0.5, top_p=0.8)  # where the order matters: llama.cpp divides by T after top-p
GREEDY = Setting(temperature=0.0)


# --------------------------------------------------------------------------- statistics


def exact_multinomial_p(observed: list[int], probs: list[float]) -> float:
    """The exact multinomial test with the chi-square statistic: the probability of every outcome at least as far
    (enumerated: small n only)."""
    n, k = sum(observed), len(observed)
    e = np.array(probs) * n
    stat = lambda x: float(((np.array(x) - e) ** 2 / e).sum())  # noqa: E731
    seen, total = stat(observed), 0.0
    for head in itertools.product(range(n + 1), repeat=k - 1):
        if sum(head) <= n:
            x = [*head, n - sum(head)]
            if stat(x) >= seen - 1e-9:
                total += stats.multinomial.pmf(x, n, probs)
    return total


@pytest.mark.parametrize("observed, probs", [([14, 9, 7], [0.5, 0.3, 0.2]), ([6, 12, 12], [0.5, 0.3, 0.2]),
                                             ([8, 8, 6, 8], [0.25, 0.25, 0.25, 0.25])])
def test_few_categories_monte_carlo_matches_the_exact_multinomial_test(observed, probs):
    got = cf.fit(np.array(observed, dtype=float), np.array(probs))
    assert got.test.startswith("monte-carlo")
    assert got.p_value == pytest.approx(exact_multinomial_p(observed, probs), abs=0.01)


def test_two_categories_is_the_exact_binomial_test_and_the_tail_is_pooled():
    # 1000 draws: tokens 0 and 1 expected 700 and 296; tokens 2..5 expected 1 each, pooled (4 < 5: into token 1)
    probs = np.array([0.7, 0.296, 0.001, 0.001, 0.001, 0.001])
    observed = np.array([680, 316, 1, 0, 2, 1], dtype=float)
    got = cf.fit(observed, probs)
    assert got.test == "binomial"
    assert got.p_value == pytest.approx(stats.binomtest(680, 1000, 0.7).pvalue)


def test_many_categories_is_chi_square_over_the_pooled_categories():
    probs = np.array([0.3, 0.3, 0.3, 0.05, 0.02, 0.02, 0.005, 0.005])  # n=200: 60, 60, 60, 10, 4+4+1+1 pooled
    observed = np.array([55, 62, 64, 9, 5, 3, 2, 0], dtype=float)
    expected = np.array([60, 60, 60, 10, 10])
    pooled = np.array([55, 62, 64, 9, 10])
    got = cf.fit(observed, probs)
    assert got.test == "chi-square[k=5]" or got.test == "monte-carlo[k=5]"
    assert got.p_value == pytest.approx(stats.chisquare(pooled, expected).pvalue, abs=0.02)


def test_a_draw_outside_the_support_fails_and_is_named():
    got = cf.fit(np.array([50, 40, 0, 3], dtype=float), np.array([0.5, 0.5, 0.0, 0.0]))
    assert (got.p_value, got.test, got.outside, got.outside_tokens) == (0.0, "support", 3, (3,))


def test_end_tokens_fold_into_one_category():
    probs = cf.fold_end(np.array([0.5, 0.2, 0.3]), [1])
    assert probs.tolist() == [0.5, 0.0, 0.3, 0.2]
    assert cf.counts(np.array([0, cf.END, 2, cf.END]), 4).tolist() == [1, 0, 1, 2]


REPETITIONS = 1000
ZIPF = 1 / np.arange(1, 61) / (1 / np.arange(1, 61)).sum()  # Zipf over 60 tokens: chi-square over ~40 categories
MARGIN = 3 * math.sqrt(cf.ALPHA * (1 - cf.ALPHA) / REPETITIONS)  # 3 standard errors of a rate alpha: 0.021


@pytest.mark.slow
@pytest.mark.parametrize("probs, test", [(ZIPF, "chi-square"), (np.array([0.55, 0.25, 0.15, 0.05]), "monte-carlo"),
                                         (np.array([0.8, 0.2]), "binomial")])
def test_a_conforming_sampler_is_rejected_at_most_alpha_of_the_time(probs, test):
    """False alarms: 1,000 repetitions of 2,000 draws (the default) from a known distribution, each test."""
    rng = np.random.default_rng(7)
    fits = [cf.fit(rng.multinomial(2000, probs).astype(float), probs) for _ in range(REPETITIONS)]
    assert all(f.test.startswith(test) for f in fits)
    assert sum(f.p_value < cf.ALPHA for f in fits) / REPETITIONS <= cf.ALPHA + MARGIN


def test_a_conforming_backend_fails_a_report_of_six_rows_at_most_alpha_of_the_time():
    """Holm over the rows: the chance that any row of a conforming backend fails stays at alpha."""
    from evalkit.compare.stats import holm

    rng = np.random.default_rng(11)
    failed = sum((holm(np.array([cf.fit(rng.multinomial(2000, ZIPF).astype(float), ZIPF).p_value
                                 for _ in range(6)])) < cf.ALPHA).any() for _ in range(REPETITIONS))
    assert failed / REPETITIONS <= cf.ALPHA + MARGIN


def test_power_against_a_total_variation_of_0_015():
    """The top token 0.015 less likely, the rest scaled up: rarely caught at 2,000 draws, caught 80% of the time at
    the draws that draws_needed names (about 24,000)."""
    shifted = ZIPF.copy()
    shifted[0] -= 0.015
    shifted[1:] += 0.015 * ZIPF[1:] / ZIPF[1:].sum()
    assert 0.5 * np.abs(shifted - ZIPF).sum() == pytest.approx(0.015)
    rng = np.random.default_rng(5)

    def power(n: int) -> float:
        return float(np.mean([cf.fit(rng.multinomial(n, shifted).astype(float), ZIPF).p_value < cf.ALPHA
                              for _ in range(REPETITIONS)]))

    needed = cf.draws_needed(shifted, ZIPF, 2000, cf.ALPHA)
    assert 20_000 < needed < 30_000
    assert power(2000) < 0.15
    assert 0.75 <= power(needed) <= 0.85


def test_draws_needed_gives_the_power_it_promises():
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    control = np.array([0.45, 0.3, 0.17, 0.08])  # total variation 0.05
    n = cf.draws_needed(probs, control, 100, 0.05)
    rng = np.random.default_rng(3)
    power = np.mean([stats.chisquare(x, control * n).pvalue < 0.05 for x in rng.multinomial(n, probs, size=2000)])
    assert 0.74 <= power <= 0.86
    assert cf.draws_needed(probs, control, 100, 0.05 / 20) > n  # a stricter level needs more draws


def test_draws_needed_where_the_control_removes_tokens():
    # the control drops token 2 (mass 0.1): a draw of it rejects, and 80% of 16 draws show one (1 - 0.9^16 = 0.81)
    assert cf.draws_needed(np.array([0.5, 0.4, 0.1]), np.array([0.55, 0.45, 0.0]), 100, 0.05) <= 16


# --------------------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def sharp_model(tiny_model, tmp_path_factory):
    """The tiny model with its output layer sharpened, saved (the command loads it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    folder = tmp_path_factory.mktemp("sharp-tiny")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def engine(sharp_model, tmp_path_factory):
    config = config_from_dict(base_config(sharp_model, tmp_path_factory.mktemp("unused")))
    backend = load_backend(config)
    backend.prepared = backend.prepare(load_prompts(config)[:1], chat_template="auto", system_prompt=None,
                                       max_new_tokens=8)[0]
    return backend


class Broken:
    """evalkit's engine with a fault: ``setting`` rewrites each unit's setting, ``seed`` its seed (from the unit and
    its place in the batch)."""

    def __init__(self, backend, setting=lambda s: s, seed=lambda unit, i: unit.seed):
        self.backend, self.rewrite, self.reseed = backend, setting, seed

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def generate(self, units, **kwargs):
        changed = [dataclasses.replace(u, setting=self.rewrite(u.setting), seed=self.reseed(u, i))
                   for i, u in enumerate(units)]
        back = {id(c): u for c, u in zip(changed, units)}
        for record in self.backend.generate(changed, **kwargs):
            yield dataclasses.replace(record, unit=back[id(record.unit)])


OPTIONS = cf.Options(draws=800, seed=5, batch_size=800, continuations=(0, 4))


def check(generator, settings, options=OPTIONS):
    return cf.check(generator, cf.Reference.of(generator.backend if isinstance(generator, Broken) else generator),
                    settings, generator.prepared, backend="hf", order="transformers", options=options)


def test_evalkit_engine_passes(engine):
    report = check(engine, [NUCLEUS, ORDERED.model_copy(update={"order": "llama_cpp"}), GREEDY])
    assert [c.verdict for c in report.cases] == ["pass"] * 6, [c.as_dict() for c in report.cases]
    assert all(s.passed for s in report.seeds) and report.seeds[0].distinct > 1
    assert not report.failed
    controlled = [c for c in report.cases if c.control is not None]
    assert len(controlled) == 4 and all(c.control_adjusted < cf.ALPHA for c in controlled)
    assert [c.context for c in report.cases[:2]] == ["prompt", "prompt+4"]


def test_an_engine_that_ignores_top_p_fails(engine):
    broken = Broken(engine, setting=lambda s: s.model_copy(update={"top_p": 1.0}))
    report = check(broken, [NUCLEUS])
    assert report.failed
    assert all(c.verdict.startswith("fail: ") and "outside the support" in c.verdict for c in report.cases)
    assert all(s.passed for s in report.seeds)  # its seeds are still its own


def test_an_engine_that_applies_the_wrong_order_fails(engine):
    broken = Broken(engine, setting=lambda s: s.model_copy(update={"order": "llama_cpp"}))
    report = check(broken, [ORDERED])
    assert report.failed and all(c.verdict.startswith("fail") for c in report.cases)


def test_an_engine_that_ignores_seeds_fails_the_seed_checks(engine):
    fresh = itertools.count(10**6)
    report = check(Broken(engine, seed=lambda unit, i: next(fresh)), [NUCLEUS],
                   dataclasses.replace(OPTIONS, draws=200))
    assert [s.passed for s in report.seeds] == [False, False] and report.failed


def test_an_engine_whose_batch_neighbours_change_a_seeded_draw_fails(engine):
    shifted = Broken(engine, seed=lambda unit, i: unit.seed + i)  # the seed moved by the unit's place in its batch
    report = check(shifted, [NUCLEUS], dataclasses.replace(OPTIONS, draws=200))
    same, among = report.seeds
    assert same.passed and not among.passed and report.failed


def test_too_few_draws_for_the_control_is_inconclusive(engine):
    report = check(engine, [NUCLEUS], dataclasses.replace(OPTIONS, draws=20, continuations=(0,)))
    (case,) = report.cases
    assert case.verdict.startswith("inconclusive: too few draws (about ")
    assert case.needed > 20 and f"about {case.needed} would do" in case.verdict
    assert not report.failed
    enough = check(engine, [NUCLEUS], dataclasses.replace(OPTIONS, draws=2 * case.needed, continuations=(0,)))
    assert enough.cases[0].verdict == "pass"


def test_controls_are_other_orders_and_top_p_moved():
    labels = [label for label, _, _ in cf.controls(ORDERED, "transformers")]
    assert labels == ["order vllm", "order llama_cpp", "order sglang", "top_p 0.75", "top_p 0.85"]
    assert cf.controls(GREEDY, "transformers") == []
    assert [label for label, _, _ in cf.controls(Setting(temperature=0.7), "transformers")][-1] == "top_p 0.95"


# --------------------------------------------------------------------------- the command


def write(tmp_path, model) -> str:
    import yaml

    config = base_config(model, tmp_path / "out", grid={"temperature": [0.0, 0.7], "top_p": [1.0]})
    path = tmp_path / "conformance.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return str(path)


def test_the_command_passes_on_evalkit_engine_and_writes_json(sharp_model, tmp_path):
    result = CliRunner().invoke(app, ["conformance", write(tmp_path, sharp_model), "--draws", "500", "--json",
                                      str(tmp_path / "c.json"), "-q", "--set", "seed=3"])
    assert result.exit_code == 0, result.output
    assert "6 pass, 0 fail, 0 inconclusive of 6" in result.output
    assert "same seed twice: 16/16 equal" in result.output
    data = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    assert data["failed"] is False and data["draws"] == 500 and data["seed"] == 3
    assert {c["setting"] for c in data["cases"]} == {"t0-p1", "t0.7-p1"}
    assert all(c["verdict"] == "pass" and math.isfinite(c["p_holm"]) for c in data["cases"])


def test_the_command_exits_1_on_a_broken_engine(sharp_model, tmp_path, monkeypatch):
    import evalkit.generation

    real = evalkit.generation.load_backend
    monkeypatch.setattr(evalkit.generation, "load_backend",
                        lambda config, **kw: Broken(real(config, **kw), setting=lambda s: s.model_copy(
                            update={"top_p": 1.0})))
    result = CliRunner().invoke(app, ["conformance", write(tmp_path, sharp_model), "--setting",
                                      "temperature=0.7,top_p=0.8", "--draws", "300", "-q"])
    assert result.exit_code == 1, result.output
    assert "0 pass, 3 fail" in result.output and "outside the support" in result.output


@pytest.mark.parametrize("args, message", [
    (["--setting", "top_p=2"], "top_p must be in (0, 1]"),
    (["--setting", "nonsense"], "expects a setting id of the config"),
    (["--draws", "3"], "--draws"),
])
def test_the_command_refuses_bad_input_with_exit_2(sharp_model, tmp_path, args, message):
    result = CliRunner().invoke(app, ["conformance", write(tmp_path, sharp_model), *args, "-q"])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_plan_counts_the_draws_and_loads_nothing(tmp_path):
    config = base_config(tmp_path / "no-such-model", tmp_path / "out", grid={"temperature": [0.0, 0.7]})
    import yaml

    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = CliRunner().invoke(app, ["conformance", str(path), "--plan", "--draws", "100"])
    assert result.exit_code == 0, result.output
    assert "6 rows x 100 = 600 single-token draws, and 112 for the seed checks" in result.output


def test_a_backend_without_its_own_model_is_checked_against_the_same_weights(sharp_model, engine, tmp_path):
    """vLLM in process: the reference is the config's model through transformers (here: the hf backend's)."""
    config = config_from_dict(base_config(sharp_model, tmp_path))
    reference = cf.load_reference(config, None, object())
    tokens = engine.prepared.token_ids
    assert reference.model is not engine.model
    assert np.array_equal(reference.expected(NUCLEUS, tokens, "transformers"),
                          cf.Reference.of(engine).expected(NUCLEUS, tokens, "transformers"))


def test_vllm_in_process_is_checked_against_its_weights_through_transformers_alone(sharp_model, engine, tmp_path):
    """A backend with a tokenizer and end tokens but no transformers model (vLLM): the same weights through
    transformers' own classes, which vLLM's environment has (evalkit's engine needs a newer transformers)."""
    import types

    config = config_from_dict(base_config(sharp_model, tmp_path))
    reference = cf.load_reference(config, None, types.SimpleNamespace(tokenizer=engine.tokenizer,
                                                                      eos_ids=engine.eos_ids))
    tokens = engine.prepared.token_ids
    assert reference.model is not engine.model and reference.tokenizer is engine.tokenizer
    assert np.allclose(reference.expected(NUCLEUS, tokens, "vllm"), cf.Reference.of(engine).expected(
        NUCLEUS, tokens, "vllm"), atol=1e-6)


def test_a_reference_in_vllms_environment_runs_through_transformers_alone(sharp_model, engine, tmp_path,
                                                                          monkeypatch):
    """--reference where evalkit's engine cannot run (vLLM's environment): the model through transformers' own
    classes, with its own tokenizer and end tokens (as evalkit's backends find them)."""
    import evalkit.generation.model as model_module

    monkeypatch.setattr(model_module, "engine_transformers_here", lambda: False)
    config = config_from_dict(base_config(sharp_model, tmp_path))
    reference = cf.load_reference(config, str(sharp_model), None)
    tokens = engine.prepared.token_ids
    assert reference.model is not engine.model and reference.tokenizer is not engine.tokenizer
    assert reference.eos_ids == engine.eos_ids
    assert reference.encode(engine.prepared.rendered) == tuple(engine.tokenizer(
        engine.prepared.rendered, add_special_tokens=False)["input_ids"])
    assert np.allclose(reference.expected(NUCLEUS, tokens, "vllm"), cf.Reference.of(engine).expected(
        NUCLEUS, tokens, "vllm"), atol=1e-6)
