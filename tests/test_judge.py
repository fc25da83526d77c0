"""judge_score: an LLM judge through the served backend's client, against a real llama.cpp server on 127.0.0.1
(the tiny model is a poor judge, but the wiring, the parsing, the cache, the faults and the key handling are real),
with the fault-injecting proxy of served_helpers in front of it where a test needs faults or counts requests.
A llama.cpp grammar (judge.extra_body) makes the tiny model write a verdict where a test needs parsed ones."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

import evalkit
from evalkit.cli import app
from evalkit.config import config_from_dict
from evalkit.config.judge import JudgeConfig
from evalkit.errors import ConfigError, EvalkitError, Stopped
from evalkit.scoring.judge import Judge, JudgeFailed
from evalkit_metrics.judge import (JudgeScore, JudgeParams, both_orders, pair_prompt, parse_rating, parse_verdict,
                                   score_prompt)

from conftest import API_KEY_ENV
from served_helpers import FaultProxy, InThreadServer

GRAMMAR = 'root ::= [a-zA-Z ,.]{0,20} "[[" [1-9] "]]"'  # llama.cpp: a short reason, then a rating the parser takes


@pytest.fixture(autouse=True)
def judge_cache(tmp_path, monkeypatch):
    """Each test's judge cache and run index are its own."""
    monkeypatch.setenv("EVALKIT_JUDGE_CACHE", str(tmp_path / "judge.sqlite"))
    monkeypatch.setenv("EVALKIT_INDEX", str(tmp_path / "index.sqlite"))
    return tmp_path / "judge.sqlite"


def judged_config(model_url: str, judge_url: str, output_dir, judge: dict | None = None, **extra) -> dict:
    """One prompt x 2 settings x 2 samples of the served SmolLM2, judged by the same model."""
    config = {
        "name": "judged",
        "model": {"backend": "openai", "base_url": model_url, "id": "smollm2", "api_key_env": API_KEY_ENV,
                  "concurrency": 2, "max_retries": 2, "backoff_s": 0.05, "timeout_s": 60},
        "prompts": [{"id": "cook", "prompt": "One tip for learning to cook:"}],
        "grid": {"temperature": [0.5, 1.5]},
        "samples_per_prompt": 2,
        "max_new_tokens": 8,
        "seed": 3,
        "metrics": ["distinct_1", "judge_score[rubric=advice]"],
        "output_dir": str(output_dir),
        "report": False,
        "judge": {"base_url": judge_url, "id": "smollm2", "api_key_env": API_KEY_ENV, "max_tokens": 12,
                  "concurrency": 2, "max_retries": 2, "backoff_s": 0.05, "timeout_s": 60,
                  "extra_body": {"grammar": GRAMMAR}, **(judge or {})},
    }
    config.update(extra)
    return config


def sweep(config: dict, cache: bool = True) -> evalkit.Run:
    return evalkit.run_sweep(config_from_dict(config), progress=False, cache=cache)


def judge_posts(proxy: FaultProxy) -> list[dict]:
    return [body for _, _, _, body, _ in proxy.posts()]


JUDGE_ID = "judge_score[rubric=advice,judge=smollm2]"


# ---------------------------------------------------------------------- parsing, without a server

@pytest.mark.parametrize("reply, scale, expected", [
    ("Helpful and specific. Rating: [[7]]", (1, 10), 7.0),
    ("[[ 7 ]]", (1, 10), 7.0),
    ("[[7.5]]", (1, 10), 7.5),
    ("Rating: [[6]]. To repeat: [[6]]", (1, 10), 6.0),
    ("The format is [[rating]]; mine: [[4]]", (1, 10), 4.0),  # the format's placeholder echoed is no rating
    ("[[7]] or maybe [[8]]", (1, 10), None),  # two ratings: no guess between them
    ("[[11]]", (1, 10), None),  # off the scale
    ("[[0]]", (1, 10), None),
    ("[[5]]", (1, 5), 5.0),
    ("[[6]]", (1, 5), None),
    ("Rating: 7/10", (1, 10), None),  # not the format asked for
    ("[7]", (1, 10), None),
    ("", (1, 10), None),
    ("[[rating]]", (1, 10), None),
])
def test_a_rating_is_parsed_strictly(reply, scale, expected):
    assert parse_rating(reply, scale) == expected


@pytest.mark.parametrize("reply, expected", [
    ("A is more specific. [[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "C"), ("[[ A ]]", "A"),
    ("[[A]] ... final: [[A]]", "A"), ("[[A]] or [[B]]", None), ("A is better", None), ("[A]", None), ("", None),
    ("[[D]]", None),
])
def test_a_verdict_is_parsed_strictly(reply, expected):
    assert parse_verdict(reply) == expected


@pytest.mark.parametrize("sample_first, baseline_first, expected", [
    ("A", "B", 1.0),  # picked in both orders: a win
    ("B", "A", 0.0),  # the baseline picked in both orders: a loss
    ("A", "A", 0.5),  # position A picked both times: position bias, a tie
    ("B", "B", 0.5),
    ("C", "B", 0.5), ("A", "C", 0.5), ("C", "C", 0.5),
    (None, "B", None), ("A", None, None),  # unparsed: no value
])
def test_a_win_needs_both_orders(sample_first, baseline_first, expected):
    assert both_orders(sample_first, baseline_first) == expected


def test_prompts_carry_the_rubric_the_request_and_the_response():
    system, user = score_prompt("Rate the story.", (1, 5), "Tell a story.", "Once there was <b>a fox</b>.")
    assert "Rate the story." in system and "scale of 1 to 5" in system and "Rating: [[3]]" in system
    assert "Tell a story." in user and "Once there was <b>a fox</b>." in user
    system, user = pair_prompt("Rate it.", "Q?", "first answer", "second answer")
    assert '"[[A]]" if assistant A is better' in system
    assert user.index("first answer") < user.index("second answer")


def test_the_metric_id_names_the_rubric_its_text_and_the_judge():
    class Stub:
        mode, baseline, model_id = "score", None, "judge-model"

    m = JudgeScore(JudgeParams(rubric="story"))
    assert m.id == "judge_score[rubric=story]"  # unbound: as listed
    m.bind_judge(Stub(), {})
    assert m.id == "judge_score[rubric=story,judge=judge-model]" and m.bounds == (1.0, 10.0)
    own = JudgeScore(JudgeParams(rubric="mine"))
    own.bind_judge(Stub(), {"mine": ("Rate the rhyme.", (1, 5))})
    other = JudgeScore(JudgeParams(rubric="mine"))
    other.bind_judge(Stub(), {"mine": ("Rate the rhythm.", (1, 5))})
    assert own.id.startswith("judge_score[rubric=mine@") and own.id != other.id  # another text, another column
    Stub.mode, Stub.baseline = "pairwise", "t0.7-p1"
    pair = JudgeScore(JudgeParams(rubric="story"))
    pair.bind_judge(Stub(), {})
    assert pair.id == "judge_score[rubric=story,mode=pairwise,vs=t0.7-p1,judge=judge-model]"
    assert pair.bounds == (0.0, 1.0)


# ---------------------------------------------------------------------- bad configs, without a server

def refused(tmp_path, metrics=None, judge: dict | None = None, drop_judge: bool = False, **extra) -> str:
    from evalkit.plan import checked_inputs

    config = judged_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", tmp_path / "runs", judge=judge, **extra)
    if metrics is not None:
        config["metrics"] = metrics
    if drop_judge:
        del config["judge"]
    with pytest.raises(ConfigError) as e:
        checked_inputs(config_from_dict(config, source="c.yaml", base_dir=tmp_path))
    return str(e.value)


def test_bad_judge_configs_are_one_line_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "sk-test-key-0123456789")
    assert refused(tmp_path, drop_judge=True) == (
        "c.yaml: metrics[1]: judge_score[rubric=advice] needs a judge: section (the judging model's base_url and id; "
        "see docs/judge.md)")
    assert refused(tmp_path, metrics=["judge_score[rubric=stroy]"]).startswith(
        "c.yaml: metrics[0].rubric: unknown rubric 'stroy' (did you mean 'story'?); built in: helpfulness, story,")
    assert refused(tmp_path, metrics=["judge_score[rubric=mine]"], judge={"rubrics": {"mien": "Rate it."}}).endswith(
        "the config's judge.rubrics: mien")
    assert refused(tmp_path, judge={"temperature": 0.7, "seed": None}).startswith(
        "c.yaml: judge.seed: a judge that samples (temperature 0.7) needs a fixed seed")
    assert refused(tmp_path, judge={"extra_body": {"temperature": 1}}) == (
        "c.yaml: judge.extra_body: temperature is set by evalkit from the judge's own fields, not through "
        "extra_body, got temperature set")
    assert refused(tmp_path, judge={"base_url": "http://user:pw@example.com/v1"}).startswith(
        "c.yaml: judge.base_url: base_url must not hold credentials")
    assert refused(tmp_path, judge={"mode": "pairwise", "baseline": "t9"}).startswith(
        "c.yaml: judge.baseline: the baseline is none of the sweep's settings (t0.5-p1, t1.5-p1), got 't9'")
    assert refused(tmp_path, judge={"baseline": "t0.5-p1"}) == (
        "c.yaml: judge.baseline: only mode pairwise compares with a baseline; this judge's mode is score, got "
        "'t0.5-p1'")
    assert refused(tmp_path, judge={"mode": "pairwise"}, grid={"temperature": [0.7]}) == (
        "c.yaml: judge.mode: pairwise compares each setting's samples with the baseline setting's, and the sweep has "
        "1 setting: use mode score, or add settings")
    assert refused(tmp_path, metrics=["judge_score[rubric=mine]"],
                   judge={"rubrics": {"mine": {"file": "nowhere.txt"}}}).startswith(
        "c.yaml: judge.rubrics.mine.file: cannot read the rubric")
    assert refused(tmp_path, judge={"rubrics": {"mine": {"text": "x", "file": "y"}}}) == (
        "c.yaml: judge.rubrics.mine: a rubric needs exactly one of 'text' or 'file', got {'text': 'x', 'file': 'y'}")
    assert refused(tmp_path, judge={"unknwon_knob": 1}).startswith("c.yaml: judge: unknown key 'unknwon_knob' (valid "
                                                                    "keys: api, api_key_env, backoff_s, base_url,")
    monkeypatch.delenv(API_KEY_ENV)
    assert refused(tmp_path) == ("c.yaml: judge.api_key_env: the environment variable EVALKIT_TEST_API_KEY is not set "
                                 "(it should hold the judge's API key)")


def test_a_rubric_file_is_read_relative_to_the_config(tmp_path, monkeypatch):
    from evalkit.plan import checked_inputs

    monkeypatch.setenv(API_KEY_ENV, "sk-test-key-0123456789")
    (tmp_path / "rubric.txt").write_text("Rate the recipe's clarity.\n", encoding="utf-8")
    config = judged_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", tmp_path / "runs",
                           judge={"rubrics": {"clarity": {"file": "rubric.txt", "scale": [1, 5]}}},
                           metrics=["judge_score[rubric=clarity]"])
    loaded = config_from_dict(config, source=str(tmp_path / "c.yaml"), base_dir=tmp_path)
    metrics = checked_inputs(loaded)[2]
    assert metrics[0].rubric_text == "Rate the recipe's clarity." and metrics[0].rating_scale == (1, 5)
    from evalkit.api import _resolved

    # the run directory's config.yaml names the file by its absolute path: a resumed run reads the same rubric
    assert _resolved(loaded)["judge"]["rubrics"]["clarity"]["file"] == str((tmp_path / "rubric.txt").resolve())


# ---------------------------------------------------------------------- against the server

def test_a_judged_sweep_reports_the_judge_on_the_quality_axis_and_a_rerun_asks_nothing(llama_server, tmp_path):
    from evalkit.report.build import chart_set
    from evalkit.report.data import RunView

    with FaultProxy(llama_server.port) as proxy:
        config = judged_config(llama_server.base_url, proxy.base_url, tmp_path / "runs", report=True)
        # the judge as another metric's quality bar: its verdicts come from the same requests (the judge cache)
        config["metrics"].append("effective[metric=distinct_1,quality=judge_score[rubric=advice],min=1]")
        run = sweep(config)
        first = judge_posts(proxy)
        again = sweep(config)
        second = judge_posts(proxy)[len(first):]
    assert len(first) == 4 and second == []  # one request per sample, then the cache: none
    for body in first:  # every knob explicit
        assert body["temperature"] == 0.0 and body["seed"] == 0 and body["max_tokens"] == 12 and body["top_p"] == 1.0
        assert body["grammar"] == GRAMMAR and body["model"] == "smollm2" and body["n"] == 1
        assert "Rate the response as advice" in body["messages"][0]["content"]
        assert body["messages"][1]["content"].startswith("[Request]\nOne tip for learning to cook:")
    per = run.sample_scores[run.sample_scores["metric"] == JUDGE_ID]
    assert len(per) == 4 and per["value"].between(1, 9).all()
    assert per["reason"].str.contains(r"\[\[[1-9]\]\]").all()  # the judge's own words, verdict included
    assert list(again.sample_scores[again.sample_scores["metric"] == JUDGE_ID]["value"]) == list(per["value"])
    gated = run.sample_scores[run.sample_scores["metric"].str.startswith("effective[")]
    assert len(gated) == 4 and (gated["value"] == 1).all()  # every parsed rating is at least 1
    judge = run.manifest.metric_info[JUDGE_ID]["judge"]
    assert judge["id"] == "smollm2" and judge["base_url"] == proxy.base_url and judge["api"] == "chat"
    assert judge["sent_with_every_request"] == {"model": "smollm2", "temperature": 0.0, "top_p": 1.0,
                                                "max_tokens": 12, "n": 1, "stream": False, "seed": 0,
                                                "grammar": GRAMMAR}
    assert judge["api_key_env"] == API_KEY_ENV and judge["rubric"]["name"] == "advice"
    assert judge["listed"]["id"] == "smollm2" and judge["server_kind"] == "llama-cpp-python"
    charts = chart_set(RunView(run, "r0"))
    assert JUDGE_ID in charts["ys"] and any(p["y"] == JUDGE_ID and p["n"] == 2 for p in charts["pairs"])
    html = (run.path / "report.html").read_text(encoding="utf-8")
    assert f'data-y="{JUDGE_ID}"' in html and '<section id="judge">' in html
    assert "4 of 4 samples judged; <strong>0 unparsed</strong>" in html


def test_replies_without_a_verdict_are_unparsed_and_counted_never_guessed(llama_server, tmp_path):
    # the tiny model without a grammar seldom writes [[N]]; an empty reply never holds one
    def script(n, method, path, body):
        return "empty" if method == "POST" and n % 2 == 0 else None

    with FaultProxy(llama_server.port, script) as proxy:
        # a config's own rubric, as untrusted as the samples: the report escapes it
        hostile = {"hostile": "Rate the advice. <script>window.__xss = 1</script>"}
        config = judged_config(llama_server.base_url, proxy.base_url, tmp_path / "runs", report=True,
                               judge={"api": "completions", "extra_body": {}, "max_tokens": 6, "rubrics": hostile},
                               metrics=["distinct_1", "judge_score[rubric=hostile]"])
        run = sweep(config)
        prompts = [body["prompt"] for body in judge_posts(proxy)]
    jid = next(m for m in run.manifest.metrics if m.startswith("judge_score"))
    assert jid.startswith("judge_score[rubric=hostile@") and jid.endswith(",judge=smollm2]")
    per = run.sample_scores[run.sample_scores["metric"] == jid]
    unparsed = per["reason"].str.startswith("unparsed")
    assert unparsed.sum() >= 2 and (per["value"].isna() == unparsed).all()  # no value exactly where no verdict
    assert per[~unparsed]["reason"].str.contains(r"\[\[").all()
    assert len(prompts) == 4 and all(p.endswith("[The End of the Assistant's Response]\n\n") for p in prompts)
    html = (run.path / "report.html").read_text(encoding="utf-8")
    assert f"{(~unparsed).sum()} of 4 samples judged; <strong>{unparsed.sum()} unparsed</strong>" in html
    assert "<script>window.__xss" not in html and "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in html
    assert all("<script>window.__xss = 1</script>" in p for p in prompts)  # the judge got the rubric as written
    scores = run.scores[run.scores["metric"] == jid]
    for r in scores.itertuples():  # a group with no parsed reply is NaN with the count, never a 0
        assert not math.isnan(r.value) or "unparsed" in r.reason


def direct_judge(url: str, **knobs) -> Judge:
    config = JudgeConfig(base_url=url, id="smollm2", api_key_env=API_KEY_ENV, max_tokens=4, backoff_s=0.05,
                         **{"max_retries": 2, "extra_body": {"grammar": GRAMMAR}, **knobs})
    judge = Judge(config, "c.yaml", ["s"])
    judge.connect()
    return judge


PROMPTS = [("Rate the answer on a scale of 1 to 9.", f"[Request]\nA tip?\n\n[Response]\nTip {i}.") for i in range(3)]


def test_transient_faults_are_retried_and_change_no_verdict(llama_server, tmp_path):
    want = direct_judge(llama_server.base_url, cache=False).replies(PROMPTS)
    faults = {2: ("status", 500, {}), 3: ("status", 429, {"Retry-After": "0"}), 4: "disconnect", 5: "garbage",
              6: ("slow", 3)}
    with FaultProxy(llama_server.port, lambda n, method, path, body: faults.get(n)) as proxy:
        judge = direct_judge(proxy.base_url, cache=False, concurrency=1, timeout_s=2, max_retries=6)
        assert judge.replies(PROMPTS) == want
    assert len(proxy.posts()) == 3 + 5 and judge.sent == 3


def test_lasting_faults_stop_with_one_line_and_a_resumed_run_asks_only_the_rest(llama_server, tmp_path):
    with FaultProxy(llama_server.port, lambda n, m, p, body: ("status", 500, {}) if m == "POST" else None) as proxy:
        judge = direct_judge(proxy.base_url, max_retries=1)
        with pytest.raises(JudgeFailed) as e:
            judge.replies(PROMPTS[:1])
    assert isinstance(e.value, Stopped) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"the judge ('smollm2' at {proxy.base_url}) failed: POST ")
    assert "500" in str(e.value) and "(after 1 retry)" in str(e.value)
    with FaultProxy(llama_server.port, lambda n, m, p, body: ("slow", 3) if m == "POST" else None) as proxy:
        judge = direct_judge(proxy.base_url, max_retries=0, timeout_s=1)
        with pytest.raises(JudgeFailed, match=r"within 1 s \(judge.timeout_s\)"):
            judge.replies(PROMPTS[:1])
    # a sweep whose judge fails part way: exit 130 with the resume hint; resumed, only what is missing is asked
    state = {"ok": 2}

    def script(n, method, path, body):
        if method != "POST":
            return None
        state["ok"] -= 1
        return None if state["ok"] >= 0 else ("status", 503, {})

    config = judged_config(llama_server.base_url, "", tmp_path / "runs",
                           judge={"max_retries": 0, "concurrency": 1})
    with FaultProxy(llama_server.port, script) as proxy:
        config["judge"]["base_url"] = proxy.base_url
        with pytest.raises(Stopped) as stopped:
            sweep(config)
        assert "resume with: evalkit run --resume" in str(stopped.value)
        run_dir = next((tmp_path / "runs").iterdir())
        state["ok"] = 100
        done = evalkit.run_sweep(None, resume=run_dir, progress=False, cache=True)
    posts = [b for _, m, _, b, a in proxy.log if m == "POST"]
    assert len(posts) == 2 + 1 + 2  # two judged, one refused, then the two the cache lacked
    per = done.sample_scores[done.sample_scores["metric"] == JUDGE_ID]
    assert per["value"].notna().all() and len(per) == 4


def test_pairwise_asks_both_orders_and_records_both(llama_server, tmp_path):
    with FaultProxy(llama_server.port) as proxy:
        config = judged_config(llama_server.base_url, proxy.base_url, tmp_path / "runs",
                               judge={"mode": "pairwise", "extra_body": {
                                   "grammar": 'root ::= [a-zA-Z ,.]{0,10} "[[" [ABC] "]]"'}})
        run = sweep(config)
    bodies = judge_posts(proxy)
    assert len(bodies) == 2 * 2  # the baseline's 2 samples are not sent; each other sample twice
    users = [b["messages"][1]["content"] for b in bodies]
    samples = run.samples.set_index(["setting_id", "sample_index"])["text"]
    for i in range(2):
        mine, base = samples[("t1.5-p1", i)], samples[("t0.5-p1", i)]
        first = f"Assistant A's Response]\n{mine}\n"
        second = f"Assistant A's Response]\n{base}\n"
        assert sum(first in u for u in users) == 1 and sum(second in u for u in users) == 1
    pid = "judge_score[rubric=advice,mode=pairwise,vs=t0.5-p1,judge=smollm2]"
    per = run.sample_scores[run.sample_scores["metric"] == pid]
    base = per[per["setting_id"] == "t0.5-p1"]
    assert (base["value"] == 0.5).all() and base["reason"].str.startswith("the baseline setting itself").all()
    other = per[per["setting_id"] == "t1.5-p1"]
    assert other["value"].isin([0.0, 0.5, 1.0]).all()
    assert other["reason"].str.contains("sample shown first: .*; baseline shown first: ").all()
    assert run.manifest.metric_info[pid]["judge"]["baseline"] == "t0.5-p1"


def test_plan_counts_the_judges_requests_and_tokens_and_sends_nothing(llama_server, tmp_path, write_config):
    with FaultProxy(llama_server.port) as proxy:
        path = write_config(judged_config(proxy.base_url, proxy.base_url, tmp_path / "runs",
                                          metrics=["distinct_1", "judge_score[rubric=advice]",
                                                   "judge_score[rubric=story]"]))
        result = CliRunner().invoke(app, ["run", str(path), "--plan"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("  ", 1) for line in result.stdout.splitlines() if "  " in line)
    assert lines["judge requests, at most"].strip().startswith("8 (2 rubrics; fewer where the judge cache holds a "
                                                               "verdict), at most 2 in flight")
    prompt_tokens, completion = lines["judge tokens, about"].strip().split(" prompt + at most ")
    assert int(prompt_tokens) > 8 * 100 and completion == f"{8 * 12} completion"
    assert proxy.log == [] and not (tmp_path / "runs").exists()


def test_the_judges_key_is_written_nowhere(llama_server, tmp_path, monkeypatch, judge_cache):
    key = llama_server.api_key
    # every reply of the judge quotes the key (completions: in the text the judge's reasons are made of)
    with FaultProxy(llama_server.port, lambda n, m, p, body: "leak-key") as proxy:
        config = judged_config(llama_server.base_url, proxy.base_url, tmp_path / "runs", report=True,
                               judge={"api": "completions"})
        run = sweep(config)
    per = run.sample_scores[run.sample_scores["metric"] == JUDGE_ID]
    assert per["reason"].str.contains(r"Bearer \*\*\*").all()
    assert run.manifest.metric_info[JUDGE_ID]["judge"]["listed"]["owned_by"] == "owner Bearer ***"
    with FaultProxy(llama_server.port, lambda n, m, p, body: "echo-key") as proxy:  # a refusal quoting the key
        config = judged_config(llama_server.base_url, proxy.base_url, tmp_path / "refused")
        path = tmp_path / "refused.yaml"
        import yaml

        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        result = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert result.exit_code == 2 and "invalid credentials: Bearer ***" in result.stderr, result.output
    assert "judge.api_key_env" in result.stderr and key not in result.output
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"report.html", "manifest.json", "config.yaml", "judge.sqlite", "sample_scores.parquet"} <= {
        p.name for p in files}
    for path in files:
        assert key.encode() not in path.read_bytes(), path


def test_an_unknown_judge_model_or_an_unreachable_judge_is_one_line(llama_server, tmp_path, write_config):
    path = write_config(judged_config(llama_server.base_url, llama_server.base_url, tmp_path / "runs",
                                      judge={"id": "gpt-judge"}))
    result = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert result.exit_code == 2 and result.stderr.strip().endswith(
        "judge.id: 'gpt-judge' is not served by " + llama_server.base_url + " (served: 'smollm2')"), result.output
    path = write_config(judged_config(llama_server.base_url, "http://127.0.0.1:9/v1", tmp_path / "runs"))
    result = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert result.exit_code == 2 and "judge.base_url: cannot reach http://127.0.0.1:9/v1/models" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.server
def test_bench_judge_smoke_run():
    import re
    import subprocess
    import sys
    from pathlib import Path

    from served_helpers import require_llama_cpp

    require_llama_cpp()
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "benchmarks/bench_judge.py", "--smoke"], cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    n = r"[\d,]+(?:\.\d+)?"
    for pattern in [r"^judge: 4 samples, rubric helpfulness, chat, temperature 0, seed 0, at most 4 tokens",
                    rf"^plain HTTP to the server, sequential: +{n} requests/s  \(rounds: {n} to {n}\)$",
                    *(rf"^evalkit judge, concurrency +{c}: +{n} requests/s  {n} of plain HTTP; \d/4 replies parsed  "
                      rf"\(rounds: {n} to {n}\)$" for c in (1, 2)),
                    rf"^judge cache, a rerun: +{n} verdicts/s, 0 requests sent$"]:
        assert re.search(pattern, done.stdout, re.MULTILINE), (pattern, done.stdout)


def test_evalkit_metrics_lists_the_judge_with_its_paper():
    result = CliRunner().invoke(app, ["metrics"])
    assert result.exit_code == 0 and "judge_score" in result.stdout and "Zheng et al. 2023" in result.stdout


def test_a_metric_without_its_judge_is_refused_when_it_prepares():
    with pytest.raises(EvalkitError, match="needs a judge: section"):
        JudgeScore().prepare()


# ---------------------------------------------------------------------- NoveltyBench's equivalence by the judge

class ScriptedJudge(InThreadServer):
    """An OpenAI-compatible judge on 127.0.0.1 whose replies the test writes: ``reply(system, user)`` gives the text;
    every reply names a model and a system_fingerprint, as vLLM's and OpenAI's servers do. POSTs are logged."""

    def __init__(self, reply, model: str = "judge-v1", fingerprint: str = "fp_scripted"):
        import json
        from http.server import BaseHTTPRequestHandler

        self.posts: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "judge", "object": "model", "owned_by": "scripted"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts.append(body)
                system, user = (m["content"] for m in body["messages"])
                self._send({"id": "c", "object": "chat.completion", "model": model, "system_fingerprint": fingerprint,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": reply(system, user)}}]})

            def _send(self, data: dict):
                payload = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._serve(Handler)

    def pairs(self) -> list[tuple[str, str]]:
        """The (response 1, response 2) of every equivalence request, in the order received."""
        import re

        found = [re.search(r"\[The Start of Response 1\]\n(.*)\n\[The End of Response 1\]\n\n"
                           r"\[The Start of Response 2\]\n(.*)\n\[The End of Response 2\]",
                           b["messages"][1]["content"], re.DOTALL) for b in self.posts]
        return [m.groups() for m in found if m]



def last_word(text: str) -> str:
    words = text.lower().replace(".", " ").replace("!", " ").split()
    return words[-1] if words else ""


def animal_judge(system: str, user: str) -> str:
    """Two responses are the same when they end in the same word; one saying "mumble" gets no verdict; a rating
    request gets 7."""
    from evalkit_metrics.noveltybench import EQUIVALENCE_SYSTEM

    if system != EQUIVALENCE_SYSTEM:
        return "Fine advice. Rating: [[7]]"
    a, b = user.split("[The Start of Response 1]\n")[1].split("\n[The End of Response 1]")[0], \
        user.split("[The Start of Response 2]\n")[1].split("\n[The End of Response 2]")[0]
    if "mumble" in a + b:
        return "I cannot tell."
    return "The same animal. [[no]]" if last_word(a) == last_word(b) else "Another animal. [[YES]]"


class Recording:
    """A UI that records each phase's name, total and last update (evalkit.progress.Silent's interface)."""

    def __init__(self):
        self.phases: list[dict] = []

    def note(self, message: str) -> None:
        pass

    def phase(self, description: str, total: int | None = None):
        from contextlib import contextmanager

        from evalkit.progress import Phase

        record = {"name": description, "total": total, "advanced": 0, "statuses": []}
        self.phases.append(record)

        class Recorded(Phase):
            def advance(self, n: int = 1) -> None:
                record["advanced"] += n

            def update(self, *, completed=None, status=None, total=None):
                record.update({k: v for k, v in {"completed": completed, "final_total": total}.items()
                               if v is not None})
                if status is not None:
                    record["statuses"].append(status)

        @contextmanager
        def opened():
            yield Recorded()

        return opened()


def scripted_metrics(url: str):
    from evalkit.scoring.judge import judged
    from evalkit.scoring.metric import named_metric
    from evalkit.scoring.registry import default_registry

    default_registry()
    judge = Judge(JudgeConfig(base_url=url, id="judge", max_retries=0), "c.yaml", ["s"])
    metrics = [named_metric("distinct_k[check=judge]"),
               named_metric("utility_k[check=judge,quality=judge_score[rubric=advice]]")]
    for _, m in judged(metrics):
        m.bind_judge(judge, {})
    for m in metrics:
        m.prepare()
    return judge, metrics


ANIMALS = ("a cat", "A cat.", "a dog", "my cat!", "a bird", "the dog")  # classes 0 0 1 0 2 1


def test_the_judge_check_partitions_as_its_replies_say_asks_each_pair_once_and_counts_no_verdict(tmp_path):
    from evalkit.scoring.judge import judging
    from evalkit.scoring.metric import Group
    from evalkit.settings import Setting

    groups = [Group(prompt_id="pets", prompt="Name a pet.", setting=Setting(), texts=ANIMALS, token_ids=()),
              Group(prompt_id="mum", prompt="Name a pet.", setting=Setting(), texts=("one cat", "a mumble"),
                    token_ids=())]
    with ScriptedJudge(animal_judge) as server:
        judge, (distinct, utility_k) = scripted_metrics(server.base_url)
        assert distinct.id == "distinct_k[check=judge,judge=judge]"
        assert utility_k.id == "utility_k[check=judge,judge=judge,quality=judge_score[rubric=advice,judge=judge],p=0.8]"
        ui = Recording()
        judging(groups, [distinct, utility_k], ui)
        scores = [m.compute(g) for m in (distinct, utility_k) for g in groups]
        first_posts = list(server.posts)
        # a rerun: another judge, other metric objects, the same judge cache: nothing is sent
        judge2, (distinct2, utility2) = scripted_metrics(server.base_url)
        judging(groups, [distinct2, utility2], Recording())
        again = [m.compute(g) for m in (distinct2, utility2) for g in groups]
    # each sample against each earlier class's first sample until one is its equal, once for both metrics
    asked = [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (2, 4), (2, 5)]
    assert sorted(server.pairs()) == sorted([(ANIMALS[i], ANIMALS[j]) for i, j in asked] + [("one cat", "a mumble")])
    ratings = [b for b in first_posts if "Rating" in b["messages"][0]["content"]]
    assert len(first_posts) == 8 + 8 and len(ratings) == 8 and len(server.posts) == 16
    d_pets, d_mum, u_pets, u_mum = scores
    assert d_pets.value == 3 and d_pets.per_sample == (1, 0, 1, 0, 1, 0)
    p = 0.8  # NoveltyBench's patience; every sample rated 7; classes open at samples 0, 2 and 4
    assert u_pets.value == pytest.approx((1 - p) / (1 - p ** 6) * 7 * (1 + p ** 2 + p ** 4))
    for s in (d_mum, u_mum):  # the one pair without a verdict: no value, the reply counted, no guess
        assert math.isnan(s.value) and s.reason.startswith("unparsed: 1 of the judge's 1 replies on this group's "
                                                           "pairs held no verdict ([[yes]] or [[no]])")
        assert "I cannot tell." in s.reason
    assert [s.value for s in again[:1]] == [3] and math.isnan(again[1].value)
    assert judge.usage()["requests"] == {"asked": 8 + 8 + 8, "sent": 16, "retried": 0, "from_cache": 0,
                                         "repeated": 8}
    assert judge.usage()["replies_by"] == {"model": {"judge-v1": 16}, "system_fingerprint": {"fp_scripted": 16}}
    assert judge2.usage()["requests"] == {"asked": 24, "sent": 0, "retried": 0, "from_cache": 16, "repeated": 8}
    assert judge2.usage()["replies_by"] == {"model": {"judge-v1": 16}, "system_fingerprint": {"fp_scripted": 16}}
    for usage in (judge.usage(), judge2.usage()):
        r = usage["requests"]
        assert r["asked"] == r["sent"] + r["from_cache"] + r["repeated"]
    (phase,) = ui.phases
    # the bar's total: at most 15 + 1 pairs per metric and 8 ratings; it ends at the 24 verdicts had
    assert phase["name"] == "judging" and phase["total"] == 16 + 16 + 8 and phase["advanced"] == 24
    assert phase["final_total"] == phase["completed"] == 24
    assert phase["statuses"][-1] == "16 sent, 0 from the judge cache"


def test_identical_samples_are_asked_about_once_and_each_request_counted_once():
    """A greedy setting's samples are one text: the round asks the same question twice in one call, which is sent
    once; the manifest's counts add up (asked = sent + from the cache + repeated)."""
    from evalkit.scoring.judge import judging
    from evalkit.scoring.metric import Group
    from evalkit.settings import Setting

    groups = [Group(prompt_id="same", prompt="Name a pet.", setting=Setting(), texts=("a cat",) * 3, token_ids=()),
              Group(prompt_id="none", prompt="Name a pet.", setting=Setting(), texts=(), token_ids=())]
    with ScriptedJudge(animal_judge) as server:
        judge, (distinct, _) = scripted_metrics(server.base_url)
        judging(groups, [distinct], Recording())
        score = distinct.compute(groups[0])
    requests = judge.usage()["requests"]
    assert len(server.posts) == 1 and score.value == 1
    assert requests == {"asked": 2, "sent": 1, "retried": 0, "from_cache": 0, "repeated": 1}


def test_runs_sharing_an_old_judge_cache_each_add_its_new_columns_or_find_them(tmp_path):
    """A cache written before replies kept their model and fingerprint gets the columns; a run that finds another
    run added them between its look and its change carries on."""
    import sqlite3

    from evalkit.scoring.judge import JudgeCache, Reply

    path = tmp_path / "judge.sqlite"
    old = sqlite3.connect(str(path))
    old.execute("CREATE TABLE verdicts (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
    old.execute("INSERT INTO verdicts VALUES ('k', 'Rating: [[7]]')")
    old.commit()
    old.close()

    real_connect = sqlite3.connect

    class LateConnection:  # its ALTER finds the column another run added after this one's PRAGMA
        def __init__(self, *a, **kw):
            self.db = real_connect(*a, **kw)

        def execute(self, sql, *args):
            if sql.startswith("ALTER TABLE verdicts ADD COLUMN"):
                other = real_connect(str(path))
                other.execute(sql)
                other.commit()
                other.close()
            return self.db.execute(sql, *args)

        def close(self):
            self.db.close()

    sqlite3.connect = LateConnection
    try:
        cache = JudgeCache(path)
    finally:
        sqlite3.connect = real_connect
    cache.put("k2", Reply("Rating: [[3]]", "m", "fp"))
    assert cache.get(["k", "k2"]) == {"k": Reply("Rating: [[7]]", None, None), "k2": Reply("Rating: [[3]]", "m", "fp")}
    cache.close()


@pytest.mark.parametrize("reply, expected", [
    ("Same idea. [[no]]", False), ("[[yes]]", True), ("[[ YES ]]", True), ("[[No]] ... [[no]]", False),
    ("[[yes]] or [[no]]", None), ("yes", None), ("[yes]", None), ("", None), ("[[maybe]]", None),
])
def test_an_equivalence_verdict_is_parsed_strictly(reply, expected):
    from evalkit_metrics.noveltybench import parse_different

    assert parse_different(reply) == expected


def test_a_judge_check_without_a_judge_section_is_refused_naming_the_metric(tmp_path, monkeypatch):
    from evalkit.plan import checked_inputs

    monkeypatch.setenv(API_KEY_ENV, "sk-test-key-0123456789")
    assert refused(tmp_path, metrics=["distinct_1", "utility_k[check=judge,quality=distinct_1]"],
                   drop_judge=True) == (
        "c.yaml: metrics[1]: utility_k[check=judge,quality=distinct_1[tok=words],p=0.8] needs a judge: section (the "
        "judging model's base_url and id; see docs/judge.md)")
    config = judged_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", tmp_path / "runs",
                           metrics=["distinct_k", "utility_k[quality=distinct_1]"])
    del config["judge"]
    metrics = checked_inputs(config_from_dict(config, source="c.yaml", base_dir=tmp_path))[2]
    assert [m.judge for m in metrics] == [None, None]  # other checks need no judge


def test_a_judged_partition_in_a_sweep_records_the_judge_its_requests_and_the_judging_phase(llama_server, tmp_path):
    with ScriptedJudge(animal_judge) as server:
        config = judged_config(llama_server.base_url, server.base_url, tmp_path / "runs",
                               judge={"id": "judge", "api_key_env": None, "extra_body": {}},
                               metrics=["distinct_k[check=judge]"], samples_per_prompt=3)
        ui = Recording()
        run = evalkit.run_sweep(config_from_dict(config), progress=ui, cache=True)
        sent = len(server.posts)
        again = evalkit.run_sweep(config_from_dict(config), progress=Recording(), cache=True)
        assert len(server.posts) == sent  # the judge cache: a rerun asks nothing
    mid = "distinct_k[check=judge,judge=judge]"
    samples = run.samples
    expected = {}
    for (sid, pid), g in samples.sort_values("sample_index").groupby(["setting_id", "prompt_id"]):
        firsts = []  # the partition by hand: a sample's class is the first whose first sample ends as it does
        for t in g["text"]:
            if last_word(t) not in firsts:
                firsts.append(last_word(t))
        expected[sid] = len(firsts)
    scores = run.scores[run.scores["metric"] == mid].set_index("setting_id")["value"].to_dict()
    assert scores == expected and 2 * 2 <= sent <= 2 * 3  # k-1 to k(k-1)/2 pairs per group
    judge = run.manifest.judge
    assert judge["id"] == "judge" and judge["requests"] == {"asked": sent, "sent": sent, "retried": 0,
                                                            "from_cache": 0, "repeated": 0}
    assert judge["replies_by"] == {"model": {"judge-v1": sent}, "system_fingerprint": {"fp_scripted": sent}}
    assert again.manifest.judge["requests"] == {"asked": sent, "sent": 0, "retried": 0, "from_cache": sent,
                                                "repeated": 0}
    info = run.manifest.metric_info[mid]["judge"]
    assert info["asks"] == "equivalence" and info["prompts_version"] == "1" and len(info["prompt_sha256"]) == 64
    phases = [p["name"] for p in ui.phases]
    assert phases.index("generating") < phases.index("judging") < phases.index("scoring")
    judging_phase = ui.phases[phases.index("judging")]
    assert judging_phase["total"] == 2 * 3 and judging_phase["final_total"] == judging_phase["advanced"] == sent


def test_the_judge_check_against_llama_cpp_with_a_grammar(llama_server, tmp_path):
    grammar = 'root ::= [a-zA-Z ,.]{0,20} "[[" ("yes" | "no") "]]"'
    with FaultProxy(llama_server.port) as proxy:
        config = judged_config(llama_server.base_url, proxy.base_url, tmp_path / "runs",
                               judge={"extra_body": {"grammar": grammar}}, samples_per_prompt=3,
                               metrics=["distinct_k[check=judge]"])
        run = sweep(config)
        bodies = judge_posts(proxy)
        sweep(config)
        assert judge_posts(proxy) == bodies  # the rerun: nothing sent
    assert 2 * 2 <= len(bodies) <= 2 * 3
    for body in bodies:
        assert body["grammar"] == grammar and body["temperature"] == 0.0 and body["seed"] == 0
        assert "meaningfully different" in body["messages"][0]["content"]
        assert body["messages"][1]["content"].startswith("[Request]\nOne tip for learning to cook:")
    scores = run.scores[run.scores["metric"] == "distinct_k[check=judge,judge=smollm2]"]
    assert len(scores) == 2 and scores["value"].between(1, 3).all()  # every reply held a verdict
    judge = run.manifest.judge
    assert judge["requests"]["sent"] == len(bodies) and sum(judge["replies_by"]["model"].values()) == len(bodies)
    assert judge["sent_with_every_request"]["grammar"] == grammar


def test_plan_counts_the_equivalence_pairs_as_an_upper_bound(llama_server, tmp_path, write_config):
    with FaultProxy(llama_server.port) as proxy:
        path = write_config(judged_config(proxy.base_url, proxy.base_url, tmp_path / "runs", samples_per_prompt=3,
                                          metrics=["judge_score[rubric=advice]", "distinct_k[check=judge]",
                                                   "utility_k[check=judge,quality=distinct_1]"]))
        result = CliRunner().invoke(app, ["run", str(path), "--plan"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("  ", 1) for line in result.stdout.splitlines() if "  " in line)
    # 2 groups of 3: 6 ratings; at most 3 pairs per group, asked once for both metrics
    assert lines["judge requests, at most"].strip() == (
        "12 (1 rubric: 6; equivalence of samples for distinct_k[check=judge,judge=smollm2], utility_k[check=judge,"
        "judge=smollm2,quality=distinct_1[tok=words],p=0.8]: 6, an upper bound (k(k-1)/2 = 3 pairs per group of 3; "
        "fewer as samples join a class); fewer where the judge cache holds a verdict), at most 2 in flight")
    assert lines["judge tokens, about"].strip().endswith(f" prompt + at most {12 * 12} completion")
    assert proxy.log == [] and not (tmp_path / "runs").exists()
