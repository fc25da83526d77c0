"""`evalkit calibrate` (evalkit.calibrate): bisection on a sampler's knob toward a mean sampling entropy.

The bisection itself is tested on curves given in code (values found by hand); the command on the tiny model, where
the calibrated setting's run must show the same entropy in its token_entropy[dist=sampling] column."""

import json
import math

import pytest
from typer.testing import CliRunner

import evalkit
from evalkit.calibrate import Bisection, Family, calibrate, pasted, sampler_families
from evalkit.cli import app

from conftest import base_config

runner = CliRunner()


def bisect(knob: str, curve, target: float, *, low: float, high: float, tolerance: float = 1e-3, steps: int = 40):
    """Run a Bisection on ``curve`` (value -> mean entropy); check at every step that each value asked lies inside
    the bracket and that the bracket holds the target. The result."""
    search = Bisection(Family(knob, low, high), target, tolerance, steps)
    while values := search.pending():
        if search.tried:
            (value,) = values
            assert min(search.cold[0], search.hot[0]) < value < max(search.cold[0], search.hot[0])
        search.tell([curve(v) for v in values])
        if search.status is None:
            assert search.cold[1] <= target <= search.hot[1]
    return search.result()


@pytest.mark.parametrize("knob, curve, target, low, high, value", [
    ("top_p", lambda v: 3 * v, 1.5, 0.01, 1.0, 0.5),  # entropy rises with the knob
    ("min_p", lambda v: 3 * (1 - v), 1.2, 0.0, 0.9, 0.6),  # falls with it
    ("temperature", lambda t: math.log(1 + t), math.log(2), 0.05, 2.0, 1.0),
    ("epsilon_cutoff", lambda e: 2 - 4 * e, 1.0, 0.0, 0.5, 0.25),
])
def test_bisection_finds_the_value_of_a_monotone_curve(knob, curve, target, low, high, value):
    result = bisect(knob, curve, target, low=low, high=high)
    assert result.status == "calibrated"
    assert abs(result.best[1] - target) <= 1e-3 and result.best[0] == pytest.approx(value, abs=3e-3)
    assert result.tried[:2] == [(low, curve(low)), (high, curve(high))]  # the range's ends first


def test_a_whole_number_knob_stops_where_the_midpoint_rounds_to_an_end():
    # log(k) = 2.0 lies between k = 7 (1.946) and k = 8 (2.079): no whole k is within 0.001
    result = bisect("top_k", lambda k: math.log(k), 2.0, low=1, high=400)
    assert result.status == "closest" and result.best[0] == 7
    assert all(isinstance(v, int) for v, _ in result.tried)


def test_a_wiggly_curve_still_ends_at_a_crossing_inside_the_bracket():
    # not monotone between the ends (a decode's mean can wiggle): the bracket still holds the target throughout
    curve = lambda v: 3 * v + 0.4 * math.sin(30 * v)  # noqa: E731
    result = bisect("top_p", curve, 1.5, low=0.01, high=1.0, tolerance=5e-3)
    assert result.status == "calibrated" and abs(curve(result.best[0]) - 1.5) <= 5e-3


@pytest.mark.parametrize("knob, curve, target, status", [
    ("top_p", lambda v: 3 * v, 3.5, "out of reach"),  # above the range's highest entropy
    ("min_p", lambda v: 3 * (1 - v), 0.1, "out of reach"),  # below its lowest (min_p 0.9 gives 0.3)
    ("top_p", lambda v: 3 * (1 - v), 1.5, "not monotone"),  # falls where top_p should raise it
])
def test_a_target_the_range_cannot_reach_is_said_after_its_ends(knob, curve, target, status):
    low, high = (0.01, 1.0) if knob == "top_p" else (0.0, 0.9)
    result = bisect(knob, curve, target, low=low, high=high)
    assert result.status == status and len(result.tried) == 2 and result.setting is None
    assert "\n" not in result.line() and result.line().startswith(f"{knob}: ")


def test_the_default_families_and_their_settings():
    every = sampler_families(None)
    assert [f.name for f in every] == ["temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff",
                                       "eta_cutoff", "top_n_sigma (order llama_cpp)",
                                       "temperature (xtc_probability 0.5, order llama_cpp)"]
    sigma = every[7]
    assert sigma.setting(1.5).order == "llama_cpp"  # evalkit's engine applies top-n-sigma in llama.cpp's order
    assert every[8].setting(0.7).id == "t0.7-p1-ollama_cpp-xp0.5"
    xtc = sampler_families([{"knob": "xtc_probability", "range": [0, 1], "fixed": {"xtc_threshold": 0.2}}])[0]
    assert xtc.setting(0.0).set_knobs() == ["order"]  # at its off value, XTC's threshold is left out
    assert xtc.setting(0.5).xtc_threshold == 0.2


@pytest.mark.parametrize("knob, low, high, a, b, mid", [
    ("top_k", 1, 400, 1, 400, 20),  # geometric: the ends are positive and 400x apart
    ("top_n_sigma", 0.01, 10.0, 0.01, 10.0, 0.3162),
    ("top_p", 0.01, 1.0, 0.01, 1.0, 0.1),
    ("top_p", 0.5, 1.0, 0.5, 1.0, 0.75),  # arithmetic: 2x apart
    ("min_p", 0.0, 0.9, 0.0, 0.9, 0.45),  # arithmetic: an end is 0
])
def test_the_midpoint_is_geometric_over_orders_of_magnitude(knob, low, high, a, b, mid):
    assert Family(knob, low, high).midpoint(a, b) == mid


def config(tiny_model, tmp_path, write_config, **extra):
    return write_config({**base_config(tiny_model, tmp_path / "runs", max_new_tokens=12), **extra})


def test_the_calibrated_settings_give_the_target_entropy_in_a_run(tiny_model, tmp_path, write_config):
    path = config(tiny_model, tmp_path, write_config)
    results = calibrate(path, 3.0, [{"knob": "top_p"}, {"knob": "min_p"}], tolerance=0.05, progress=False)
    assert [r.status for r in results] == ["calibrated", "calibrated"]
    assert all(abs(r.best[1] - 3.0) <= 0.05 for r in results)
    # the run of those settings (same prompts, seed, samples) measures the same mean entropy, to float error
    settings = [pasted(r.setting) for r in results]
    run = evalkit.run_sweep(path, overrides=[f"grid={json.dumps({'settings': settings})}",
                                             "metrics=[{name: token_entropy, dist: sampling}]"], progress=False,
                            cache=False)
    summary = run.summary.set_index("setting_id")["mean"]
    for r in results:
        assert summary[r.setting.id] == pytest.approx(r.best[1], abs=1e-4)


def test_higher_targets_move_each_knob_its_own_way(tiny_model, tmp_path, write_config):
    path = config(tiny_model, tmp_path, write_config)
    knobs = [{"knob": "top_p"}, {"knob": "min_p"}]
    low, high = (calibrate(path, h, knobs, tolerance=0.1, progress=False) for h in (2.0, 4.0))
    assert high[0].best[0] > low[0].best[0]  # top_p: more entropy, a larger nucleus
    assert high[1].best[0] < low[1].best[0]  # min_p: more entropy, a lower bar
    assert high[0].best[1] > low[0].best[1] and high[1].best[1] > low[1].best[1]


def test_the_command_prints_settings_to_paste_and_says_an_unreachable_target_in_one_line(tiny_model, tmp_path,
                                                                                          write_config):
    path = config(tiny_model, tmp_path, write_config)
    report = tmp_path / "calibration.json"
    result = runner.invoke(app, ["calibrate", str(path), "--entropy", "3", "--knob", "top_p", "--knob",
                                 "temperature=1.5:2", "--tolerance", "0.1", "--json", str(report), "-q"])
    assert result.exit_code == 0, result.output
    said = [line for line in result.stdout.splitlines() if "out of reach" in line and line.startswith("temperature")]
    assert len(said) == 1 and "temperature 1.5" in said[0] and "temperature 2)" in said[0]
    pasted = result.stdout[result.stdout.index("grid:\n  settings:"):].splitlines()[2:]
    assert len(pasted) == 1 and pasted[0].startswith("    - {top_p: ")
    written = json.loads(report.read_text())
    assert [f["status"] for f in written["families"]] == ["calibrated", "out of reach"]
    assert written["families"][0]["setting"] == {"top_p": written["families"][0]["value"]}


def test_no_family_reached_is_exit_1_with_nothing_to_paste(tiny_model, tmp_path, write_config):
    path = config(tiny_model, tmp_path, write_config)
    result = runner.invoke(app, ["calibrate", str(path), "--entropy", "1000", "--knob", "temperature=1.5:2", "-q"])
    assert result.exit_code == 1, result.output
    assert "out of reach" in result.stdout and "grid:" not in result.stdout
    assert result.stderr.strip() == "no family reached 1000 nats: no setting to paste"


@pytest.mark.parametrize("args, section, message", [
    (["--knob", "repetition_penalty"], None, "--knob[0].knob: knob must be one of temperature, top_k"),
    (["--knob", "top_p=1:0.5"], None, "--knob[0].range: range is [low, high] with low < high, got [1.0, 0.5]"),
    (["--knob", "top_p=a:b"], None, "--knob: expects KNOB=LOW:HIGH, got 'top_p=a:b'"),
    (["--knob", "top_p=0:1"], None, "--knob[0]: top_p 0: top_p must be in (0, 1]"),
    (["--knob", "top_p", "--entropy", "-1"], None, "--entropy: a mean entropy in nats, >= 0, got -1.0"),
    ([], [{"knob": "top_n_sigma", "fixed": {"order": "transformers"}}],
     "calibrate: backend hf does not honour top_n_sigma in the transformers order"),
    ([], [{"knob": "top_p", "rnage": [0.1, 1]}], "calibrate[0]: a family is a mapping with knob, range and fixed"),
    (["--knob", "top_p"], "served", "model.backend: calibration measures the sampling distribution's entropy per "
                                    "token, which backend openai does not give"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_model, tmp_path, write_config, args, section, message):
    extra = {"calibrate": section} if isinstance(section, list) else {}
    if section == "served":  # nothing listens there: refused before anything is sent
        extra = {"model": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "id": "m"}}
    path = config(tiny_model, tmp_path, write_config, **extra)
    entropy = [] if "--entropy" in args else ["--entropy", "2"]
    result = runner.invoke(app, ["calibrate", str(path), *entropy, *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_a_sweep_with_a_calibrate_section_runs_and_the_section_is_checked(tiny_model, tmp_path, write_config):
    from evalkit.api import plan_sweep
    from evalkit.errors import ConfigError

    good = config(tiny_model, tmp_path, write_config, calibrate=[{"knob": "top_p", "range": [0.2, 0.9]}])
    assert dict(plan_sweep(good))  # the section is calibrate's; the sweep itself plans as without it
    bad = config(tiny_model, tmp_path, write_config, calibrate=[{"knob": "top_q"}])
    with pytest.raises(ConfigError, match="knob must be one of") as e:
        plan_sweep(bad)
    assert e.value.path.startswith("calibrate")
