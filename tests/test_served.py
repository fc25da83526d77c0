"""Served models (backend openai) against a real llama.cpp server on 127.0.0.1, started and stopped by
the tests, with a fault-injecting proxy in front of it where a test needs faults (see served_helpers)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import evalkit
from evalkit.cli import app
from evalkit.config import config_from_dict
from evalkit.errors import EvalkitError
from evalkit.generation.served.probe import PROBE_SEEDS, PROBE_TEXT

from conftest import served_config
from served_helpers import FaultProxy, LlamaServer, free_port

SEED_MODULUS = 2**31


def sweep(config: dict, cache: bool = False, resume: Path | None = None) -> evalkit.Run:
    if resume is not None:
        return evalkit.run_sweep(None, resume=resume, progress=False, cache=cache)
    return evalkit.run_sweep(config_from_dict(config), progress=False, cache=cache)


def texts(run) -> dict[tuple[str, str, int], str]:
    return {(r.prompt_id, r.setting_id, int(r.sample_index)): r.text for r in run.samples.itertuples()}


def is_sample(body: dict | None, max_tokens: int = 12) -> bool:
    """A request for a sample (the capability check's use seeds 1 to PROBE_SEEDS, samples derived ones)."""
    return bool(body) and body.get("max_tokens") == max_tokens and body["seed"] > PROBE_SEEDS


def sample_posts(proxy: FaultProxy, max_tokens: int) -> list[dict]:
    """The bodies of the requests that made samples."""
    return [body for _, _, path, body, _ in proxy.posts() if is_sample(body, max_tokens)]


@pytest.fixture(scope="module")
def reference(llama_server, tmp_path_factory):
    """The small sweep run straight against the server: what every faulty path must still give."""
    return sweep(served_config(llama_server.base_url, tmp_path_factory.mktemp("reference")))


def test_every_knob_and_a_seed_per_sample_are_sent_and_recorded(llama_server, tmp_path):
    config = served_config("", tmp_path / "runs", grid={"temperature": [0.8], "top_k": [0, 20], "min_p": [0.0, 0.1]},
                           metrics=["distinct_1", "nll", "perplexity", {"name": "token_entropy", "top": 5}],
                           stop=["\n\n\n"])
    with FaultProxy(llama_server.port) as proxy:
        config["model"]["base_url"] = proxy.base_url
        run = sweep(config)
    samples = run.samples
    assert len(samples) == 2 * 4 * 2 and (samples["text"].str.len() > 0).sum() >= 14
    bodies = sample_posts(proxy, 12)
    assert len(bodies) == len(samples)
    # one request per sample, each with the sample's own derived seed: never one seed for every repeat
    assert sorted(b["seed"] for b in bodies) == sorted(int(s) % SEED_MODULUS for s in samples["seed"])
    assert len({b["seed"] for b in bodies}) == len(bodies)
    # the capability check's first request is made like the sweep's: its longest prompt, length and stop strings
    first = proxy.posts()[0][3]
    assert first["prompt"] == "Once upon a time, in a lighthouse," and first["max_tokens"] == 12
    assert first["stop"] == ["\n\n\n"] and all(b["stop"] == ["\n\n\n"] for b in bodies)
    for b in bodies:
        assert b["n"] == 1 and b["temperature"] == 0.8 and b["top_p"] == 1.0 and b["logprobs"] == 5
        assert b["top_k"] in (0, 20) and b["min_p"] in (0.0, 0.1)  # 0 switches llama.cpp's default top_k 40 off
        assert b["repeat_penalty"] == 1.0  # llama.cpp's default is 1.1
    # a sample is exactly the server's answer to its request
    row = samples.iloc[5]
    body = next(b for b in bodies if b["seed"] == int(row["seed"]) % SEED_MODULUS)
    direct = llama_server.complete(body)["choices"][0]
    assert direct["text"] == row["text"]
    assert list(row["logprob_model"]) == pytest.approx(direct["logprobs"]["token_logprobs"])
    assert len(row["entropy_model_top"]) == int(row["num_new_tokens"]) == len(row["logprob_model"])
    tops = [sorted(t.values(), reverse=True)[:5] for t in direct["logprobs"]["top_logprobs"]]
    assert list(row["entropy_model_top"]) == pytest.approx([-sum(math.exp(v) * v for v in t) for t in tops])
    assert list(row["token_ids"]) == [] and list(row["entropy_model"]) == []  # never made up
    m = run.manifest
    assert m.model["backend"] == "openai" and m.model["server"]["reported_model"] == "smollm2"
    assert m.model["server"]["sent_with_every_request"]["top_k"] == 0
    assert m.model["server"]["honoured"] == ["temperature", "top_k", "min_p"]
    assert m.model["server"]["seed_reproducible"] is True
    generation = {s.id: s.generation for s in m.settings}
    assert generation["t0.8-p1-k20-m0.1"]["top_k"] == 20 and generation["t0.8-p1"]["min_p"] == 0.0
    # the manifest holds exactly what a setting's requests carry, but for the prompt and the seed
    by_knobs = {(b["top_k"], b["min_p"]): b for b in bodies}
    for sid, (k, p) in {"t0.8-p1": (0, 0.0), "t0.8-p1-k20": (20, 0.0), "t0.8-p1-m0.1": (0, 0.1),
                        "t0.8-p1-k20-m0.1": (20, 0.1)}.items():
        sent = {key: v for key, v in by_knobs[(k, p)].items() if key not in ("model", "prompt", "seed")}
        assert {key: v for key, v in generation[sid].items() if key not in ("engine", "endpoint", "seed")} == sent
    ids = set(run.scores["metric"])
    assert {"nll[dist=model]", "token_entropy[dist=model,top=5]"} <= ids


def test_same_seed_same_samples_whatever_else_the_grid_holds(llama_server, reference, tmp_path):
    again = sweep(served_config(llama_server.base_url, tmp_path / "again"))
    assert texts(again) == texts(reference)
    wider = sweep(served_config(llama_server.base_url, tmp_path / "wider", grid={"temperature": [0.5, 0.8, 1.2]}))
    shared = {k: v for k, v in texts(wider).items() if k[1] != "t0.5-p1"}
    assert shared == texts(reference)
    other_seed = sweep(served_config(llama_server.base_url, tmp_path / "seed", seed=4))
    assert texts(other_seed) != texts(reference)


def test_first_token_frequencies_match_the_servers_own_logprobs(llama_server, tmp_path):
    from scipy.stats import chisquare

    prompt = "The colour of the sky is"
    config = served_config(llama_server.base_url, tmp_path / "runs", prompts=[{"id": "sky", "prompt": prompt}],
                           grid={"temperature": [1.0], "top_k": [4]}, samples_per_prompt=240, max_new_tokens=1,
                           metrics=["distinct_1"])
    run = sweep(config)
    top = llama_server.complete({"model": "smollm2", "prompt": prompt, "max_tokens": 1, "logprobs": 4,
                                 "temperature": 0.0})["choices"][0]["logprobs"]["top_logprobs"][0]
    tokens = sorted(top, key=top.get, reverse=True)[:4]
    weights = [math.exp(top[t]) for t in tokens]
    counts = run.samples["text"].value_counts()
    assert set(counts.index) <= set(tokens)  # top_k=4: nothing outside the 4 most likely tokens
    observed = [int(counts.get(t, 0)) for t in tokens]
    expected = [len(run.samples) * w / sum(weights) for w in weights]
    assert chisquare(observed, expected).pvalue > 1e-3, (observed, expected)


def test_chat_api_sends_messages_and_the_server_applies_its_template(llama_server, tmp_path):
    config = served_config("", tmp_path / "runs", model={"api": "chat"},
                           prompts={"items": [{"id": "q", "messages": [{"role": "user", "content": "Name a colour."}]}],
                                    "system_prompt": "Answer in one word."}, metrics=["distinct_1", "nll"])
    with FaultProxy(llama_server.port) as proxy:
        config["model"]["base_url"] = proxy.base_url
        run = sweep(config)
    bodies = sample_posts(proxy, 12)
    assert bodies and all(b["messages"][0] == {"role": "system", "content": "Answer in one word."} for b in bodies)
    assert all(b["logprobs"] is True and b["top_logprobs"] == 1 for b in bodies)
    assert all(p.endswith("/v1/chat/completions") for _, _, p, _, _ in proxy.posts())
    assert (run.samples["text"].str.len() > 0).all()
    assert all(len(lp) == n for lp, n in zip(run.samples["logprob_model"], run.samples["num_new_tokens"]))


def test_sample_cache_is_keyed_by_the_endpoint(llama_server, reference, tmp_path):
    first = sweep(served_config(llama_server.base_url, tmp_path / "a"), cache=True)
    second = sweep(served_config(llama_server.base_url, tmp_path / "b"), cache=True)
    assert second.manifest.samples_reused["from_cache"] == len(second.samples) == 8
    assert texts(second) == texts(first) == texts(reference)
    with FaultProxy(llama_server.port) as proxy:  # the same server at another address: another endpoint
        third = sweep(served_config(proxy.base_url, tmp_path / "c"), cache=True)
    assert third.manifest.samples_reused["generated"] == 8 and len(sample_posts(proxy, 12)) == 8
    assert texts(third) == texts(reference)


def test_a_server_that_names_no_weights_is_cached_with_a_note(llama_server, tmp_path, write_config, monkeypatch):
    # llama.cpp gives no system_fingerprint and no root: the cache cannot see a change of weights, and says so
    # when it hands out samples
    monkeypatch.setenv("EVALKIT_SAMPLE_CACHE", str(tmp_path / "cache.sqlite"))  # empty: other tests fill the shared one
    path = write_config(served_config(llama_server.base_url, tmp_path / "a"))
    first = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert first.exit_code == 0 and "note:" not in first.stderr, first.output
    result = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert result.exit_code == 0, result.output
    assert (f"note: 8 samples from the sample cache: {llama_server.base_url} gives no fingerprint or weights for "
            "'smollm2'") in result.stderr
    with FaultProxy(llama_server.port, lambda n, m, p, body: ("fingerprint", "fp-7")) as proxy:
        result = CliRunner().invoke(app, ["run", str(write_config(served_config(proxy.base_url, tmp_path / "b"))),
                                          "-q"])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.stderr
    assert evalkit.load_run(next((tmp_path / "b").glob("*/manifest.json")).parent).manifest.model.server[
        "system_fingerprint"] == "fp-7"


def test_a_server_killed_mid_run_leaves_a_run_that_resumes_to_the_same_samples(llama_server, reference, tmp_path):
    own = LlamaServer(tmp_path, llama_server.api_key).start()
    try:
        def kill_on_the_fifth_sample(n, method, path, body):
            if is_sample(body) and sum(1 for e in proxy.posts() if is_sample(e[3])) == 4:
                own.kill()
            return None

        with FaultProxy(own.port, kill_on_the_fifth_sample) as proxy:
            config = served_config(proxy.base_url, tmp_path / "runs", model={"concurrency": 1, "max_retries": 1})
            with pytest.raises(EvalkitError, match=r"prompt '\w+', setting t[\d.]+-p1, sample \d: .*502"):
                sweep(config)
            run_dir = next((tmp_path / "runs").glob("2*"))
            failed = evalkit.load_run(run_dir)
            assert failed.manifest.status == "failed"
            own.start()  # the server comes back
            resumed = sweep({}, resume=run_dir)
        assert resumed.manifest.status == "complete"
        assert resumed.manifest.samples_reused["from_parts"] == 4
        assert resumed.manifest.samples_reused["generated"] == 4
        assert texts(resumed) == texts(reference)
    finally:
        own.stop()


def scripted(rule):
    """A proxy script from ``rule(n, k)``: n counts every request, k the requests for samples (0 for others)."""
    count = [0]

    def script(n, method, path, body):
        if is_sample(body):
            count[0] += 1
            return rule(n, count[0])
        return rule(n, 0)

    return script


RECOVERABLE = {
    "429 with Retry-After": lambda n, k: ("status", 429, {"Retry-After": "1"}) if k in (3, 4) else None,
    "5xx burst": lambda n, k: ("status", 503 if k % 2 else 500, {}) if k in (3, 4, 5) else None,
    "dropped connection": lambda n, k: "disconnect" if k in (3, 7) else None,
    "reply not JSON": lambda n, k: "garbage" if k == 4 else None,
    "reply cut short": lambda n, k: "truncated" if k == 5 else None,
    "a 500 during the capability check": lambda n, k: ("status", 500, {}) if n == 2 else None,
}


@pytest.mark.parametrize("fault", list(RECOVERABLE))
def test_transient_faults_are_retried_and_change_no_sample(llama_server, reference, tmp_path, fault):
    with FaultProxy(llama_server.port, scripted(RECOVERABLE[fault])) as proxy:
        run = sweep(served_config(proxy.base_url, tmp_path / "runs"))
    assert texts(run) == texts(reference)
    assert any(action is not None for *_, action in proxy.log)
    assert run.manifest.model["server"]["sent_with_every_request"] == reference.manifest.model["server"][
        "sent_with_every_request"]  # a blip is not taken for a refused knob
    if fault == "429 with Retry-After":  # the retry of a 429'd request waited the second the server asked for
        refused = [(n, body["seed"]) for n, _, _, body, action in proxy.log if action]
        assert len(refused) == 2
        for n, seed in refused:
            retry = next(m for m, _, _, body, _ in proxy.log[n:] if body and body["seed"] == seed)
            assert proxy.times[retry] - proxy.times[n] >= 0.95


def test_a_long_retry_after_is_capped_at_the_timeout_and_shown_on_the_progress_line(llama_server, reference,
                                                                                  tmp_path):
    """A server asking for 100000 s: the retry waits timeout_s at most, and the progress line says so."""
    from contextlib import contextmanager

    from evalkit.progress import Phase, Silent

    statuses: list[str] = []

    class Recorded(Phase):
        def update(self, *, completed=None, status=None):
            if status is not None:
                statuses.append(status)

    class Recording(Silent):
        @contextmanager
        def phase(self, description, total=None):
            yield Recorded()

    rule = scripted(lambda n, k: ("status", 429, {"Retry-After": "100000"}) if k == 3 else None)
    with FaultProxy(llama_server.port, rule) as proxy:
        run = evalkit.run_sweep(config_from_dict(served_config(proxy.base_url, tmp_path / "runs",
                                                               model={"timeout_s": 20})), progress=Recording())
    assert texts(run) == texts(reference)
    waits = [s for s in statuses if "Retry-After" in s]
    assert len(waits) == 1, statuses
    assert "Retry-After 100000 s capped at model.timeout_s 20 s" in waits[0], waits[0]
    assert int(waits[0].split("waiting ")[1].split(" s")[0]) <= 22, waits[0]  # 20 s and at most 10% jitter


FATAL = {
    "always 503": (lambda n, k: ("status", 503, {}) if k else None, {},
                   r"503 Service Unavailable: injected 503 \(after 2 retries\)"),
    "never JSON": (lambda n, k: "garbage" if k else None, {}, r"is not JSON \(30 bytes: '<html>502 proxy"),
    "huge reply": (lambda n, k: "huge" if k else None, {}, r"is larger than \d+ MiB"),
    "logprobs vanish after the check": (lambda n, k: "no-logprobs" if k else None, {},
                                        r"the reply from http://127\.0\.0\.1:\d+/v1/completions has no logprobs "
                                        r"\(asked for 1, .*\(after 2 retries\)"),
    "timeout": (lambda n, k: ("slow", 45) if k else None, {"timeout_s": 15, "max_retries": 1},  # 15 s: a loaded
                r"no reply from http://127\.0\.0\.1:\d+/v1/completions within 15 s \(model\.timeout_s\) "  # machine
                r"\(after 1 retry\)"),
}


@pytest.mark.parametrize("fault", list(FATAL))
def test_lasting_faults_stop_with_one_line(llama_server, tmp_path, fault, write_config):
    rule, model, message = FATAL[fault]
    with FaultProxy(llama_server.port, scripted(rule)) as proxy:
        path = write_config(served_config(proxy.base_url, tmp_path / "runs", model=model))
        result = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert result.exit_code == 130, result.output  # as an interrupted run: what it made is kept, it resumes
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert lines[0].startswith("error: prompt '") and "setting t" in lines[0], lines[0]  # a sample's request
    run_dir = next((tmp_path / "runs").glob("2*"))
    assert lines[0].endswith(f"; resume with: evalkit run --resume {run_dir}"), lines[0]
    run = evalkit.load_run(run_dir)
    assert run.manifest.status == "failed"  # kept, resumable
    assert "resume with" in run.manifest.error
    assert __import__("re").search(message, lines[0]), lines[0]
    assert llama_server.api_key not in result.output


def test_a_reply_over_the_cap_leaves_no_task_pending(llama_server, tmp_path, caplog):
    """Replies cut off at the size cap, four in flight: every reader is closed, none left for asyncio to destroy
    ("Task was destroyed but it is pending!")."""
    import gc
    import logging

    caplog.set_level(logging.ERROR, logger="asyncio")
    for _ in range(2):
        with FaultProxy(llama_server.port, scripted(lambda n, k: "huge" if k else None)) as proxy:
            with pytest.raises(EvalkitError, match=r"is larger than \d+ MiB"):
                sweep(served_config(proxy.base_url, tmp_path / "runs"))
    gc.collect()
    assert not [r for r in caplog.records if "destroyed" in r.getMessage()], caplog.text


def _start_failure(tmp_path, write_config, config: dict, env: dict | None = None, monkeypatch=None) -> str:
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    path = write_config(config)
    result = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing half-written
    return lines[0]


def test_start_failures_are_one_line_and_leave_nothing(llama_server, tmp_path, write_config, monkeypatch):
    runs = tmp_path / "runs"
    closed = f"http://127.0.0.1:{free_port()}/v1"
    line = _start_failure(tmp_path, write_config, served_config(closed, runs))
    assert line.endswith(f"model.base_url: cannot reach {closed}/models: connection refused or host unreachable "
                         "(is the server running?)"), line
    line = _start_failure(tmp_path, write_config, served_config(llama_server.base_url, runs, model={"id": "gpt-9"}))
    assert line.endswith(f"model.id: 'gpt-9' is not served by {llama_server.base_url} (served: 'smollm2')"), line
    line = _start_failure(tmp_path, write_config, served_config(llama_server.base_url, runs),
                          env={"EVALKIT_TEST_API_KEY": "sk-wrong"}, monkeypatch=monkeypatch)
    assert "model.api_key_env:" in line and "refused the request (401" in line and "sk-wrong" not in line, line
    monkeypatch.delenv("EVALKIT_TEST_API_KEY")
    line = _start_failure(tmp_path, write_config, served_config(llama_server.base_url, runs))
    assert line.endswith("model.api_key_env: the environment variable EVALKIT_TEST_API_KEY is not set (it should "
                         "hold the API key)"), line
    monkeypatch.setenv("EVALKIT_TEST_API_KEY", llama_server.api_key)
    root = llama_server.base_url.removesuffix("/v1")
    line = _start_failure(tmp_path, write_config, served_config(root, runs))
    assert f"model.base_url: {root}/models does not exist (404)" in line, line


def test_a_knob_the_server_ignores_or_rejects_is_refused_before_any_sample(llama_server, tmp_path, write_config):
    grid = {"temperature": [1.0], "min_p": [0.0, 0.1], "top_k": [0, 40]}
    for action, expected in ((("drop", "min_p"), "ignores min_p: 6 requests with min_p=0.999 gave"),
                             (("reject", "top_k"), "rejects top_k=1")):
        with FaultProxy(llama_server.port, lambda n, m, p, body, a=action: a if body else None) as proxy:
            line = _start_failure(tmp_path, write_config, served_config(proxy.base_url, tmp_path / "runs", grid=grid))
        assert f"model: {proxy.base_url} {expected}" in line and "the grid sets" in line, line
        assert not sample_posts(proxy, 12)  # not one sample was asked for


def test_a_server_of_empty_completions_is_refused_for_that(llama_server, tmp_path, write_config):
    for metrics in (["distinct_1", "nll"], ["distinct_1"]):  # with logprobs needed, and without
        with FaultProxy(llama_server.port, lambda n, m, p, body: "empty" if body else None) as proxy:
            line = _start_failure(tmp_path, write_config, served_config(proxy.base_url, tmp_path / "runs",
                                                                        metrics=metrics))
        assert __import__("re").search(f"model: {proxy.base_url} returns (an )?empty completion", line), line
        assert "logprobs, which" not in line and "does not sample" not in line, line


# ---------------------------------------------------------------------- the knobs of each kind of server

def posing_as(owner: str, then=None):
    """A proxy script: GET /models says the models are owned by ``owner`` (llama.cpp's server says "llamacpp",
    vLLM's "vllm"); every other request goes by ``then(n, method, path, body)``."""
    return lambda n, m, p, body: ("owned_by", owner) if m == "GET" else (then(n, m, p, body) if then else None)


def generation_of(run, bodies: list[dict]) -> dict[str, dict]:
    """Each setting's sample requests, by setting id, without prompt, model and seed (what the manifest holds)."""
    setting_of = {int(r.seed) % SEED_MODULUS: r.setting_id for r in run.samples.itertuples()}
    out: dict[str, dict] = {}
    for b in bodies:
        knobs = {k: v for k, v in b.items() if k not in ("model", "prompt", "seed")}
        assert out.setdefault(setting_of[b["seed"]], knobs) == knobs  # every request of a setting alike
    return out


PENALTY_GRID = {"settings": [
    {"temperature": 0.8}, {"temperature": 0.8, "repetition_penalty": 1.3},
    {"temperature": 0.8, "presence_penalty": 0.5}, {"temperature": 0.8, "frequency_penalty": 0.5, "order": "llama_cpp"},
    {"temperature": 0.0, "repetition_penalty": 1.3},
    {"temperature": 1.0, "mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.2}]}


def test_penalties_and_mirostat_go_to_llama_cpp_python_under_its_names(llama_server, tmp_path):
    config = served_config("", tmp_path / "runs", grid=PENALTY_GRID, samples_per_prompt=1)
    with FaultProxy(llama_server.port) as proxy:
        config["model"]["base_url"] = proxy.base_url
        run = sweep(config)
    server = run.manifest.model["server"]
    assert server["kind"] == "llama-cpp-python" and server["order"] == "llama_cpp"
    assert server["order_check"] == ("the llama_cpp order: min-p before the temperature (6 requests with "
                                     "temperature=10000, min_p=0.999 gave one text)")
    assert server["honoured"] == ["temperature", "mirostat", "mirostat_tau", "mirostat_eta", "repetition_penalty",
                                  "presence_penalty", "frequency_penalty"]
    assert "generated tokens" in server["auto_penalty_scope"]
    sent = generation_of(run, sample_posts(proxy, 12))
    assert len(sent) == 6
    own = {"t0.8-p1-rp1.3": {"repeat_penalty": 1.3}, "t0.8-p1-pp0.5": {"presence_penalty": 0.5},
           "t0.8-p1-ollama_cpp-fp0.5": {"frequency_penalty": 0.5},
           "t0-p1-rp1.3": {"repeat_penalty": 1.3, "temperature": 0.0},
           "t1-p1-mi2-mtau3-meta0.2": {"mirostat_mode": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.2,
                                       "temperature": 1.0}}
    for sid, fields in own.items():  # each under llama-cpp-python's name, beside the others at their neutral values
        assert {k: sent[sid][k] for k in fields} == fields, sid
        assert {k: v for k, v in sent[sid].items() if k not in fields} == {
            k: v for k, v in sent["t0.8-p1"].items() if k not in fields}, sid
    assert "repetition_penalty" not in own and sent["t0.8-p1"]["repeat_penalty"] == 1.0  # llama.cpp's default: 1.1
    for s in run.manifest.settings:  # the manifest holds exactly what the requests carry
        assert {k: v for k, v in s.generation.items() if k not in ("engine", "endpoint", "seed")} == sent[s.id]
    # the check showed each knob applied: a penalty moves the greedy text of a repetitive prompt
    probes = [body for *_, body, _ in proxy.posts()  # the greedy probes (not the reproducibility check's request)
              if body.get("prompt") == PROBE_TEXT and body["temperature"] != 2.0]
    assert {(b.get("repeat_penalty"), b.get("presence_penalty"), b.get("frequency_penalty")) for b in probes} >= {
        (2.0, 0.0, 0.0), (1.0, 2.0, 0.0), (1.0, 0.0, 2.0), (1.0, 0.0, 0.0)}
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 16 for b in probes)


def test_what_llama_cpp_python_has_no_field_for_is_refused_before_any_request(llama_server, tmp_path, write_config):
    refused = {
        "typical_p": ({"typical_p": 0.5}, "typical_p (llama-cpp-python's server has no request field for it; "
                                          "llama.cpp's server takes typical_p), which setting t0.8-p1-ty0.5 sets"),
        "top_n_sigma": ({"top_n_sigma": 1.0}, "top_n_sigma (llama-cpp-python's server has no request field"),
        "xtc": ({"xtc_probability": 0.5}, "xtc_probability (llama-cpp-python's server has no request field"),
        "dry": ({"dry_multiplier": 0.8}, "dry_multiplier (llama-cpp-python's server has no request field"),
        "min_tokens": ({"min_tokens": 4}, "min_tokens (llama-cpp-python's server has no request field for it; a "
                                          "vLLM server takes min_tokens)"),
        "a window": ({"repetition_penalty": 1.2, "penalty_scope": 32},
                     "penalty_scope 32 (llama-cpp-python's server counts its penalties over the last "
                     "--last_n_tokens_size generated tokens (64 unless the server was started with another), which no "
                     "request field changes: leave penalty_scope auto)"),
        "vLLM's order": ({"order": "vllm"}, "order 'vllm' (llama-cpp-python's server applies the llama_cpp order), "
                                            "which setting t0.8-p1-ovllm sets"),
    }
    for name, (knobs, message) in refused.items():
        with FaultProxy(llama_server.port) as proxy:
            grid = {"settings": [{"temperature": 0.8}, {"temperature": 0.8, **knobs}]}
            line = _start_failure(tmp_path, write_config, served_config(proxy.base_url, tmp_path / "runs", grid=grid))
        assert f"sweep.yaml: grid: {proxy.base_url} does not honour " in line, (name, line)
        assert message in line, (name, line)
        assert proxy.posts() == [], name  # refused from its /models entry: not one request


def test_a_knob_the_server_drops_is_refused(llama_server, tmp_path, write_config):
    """The check sees a knob that does not reach the server (as a server that does not know the field would)."""
    for grid, dropped, expected in (
            ({"temperature": [0.8], "repetition_penalty": [1.0, 1.3]}, "repeat_penalty",
             "ignores repetition_penalty: with repeat_penalty=2 the greedy text of a repetitive prompt is the one it "
             "gives without it, and the grid sets repetition_penalty"),
            ({"temperature": [0.8], "frequency_penalty": [0.0, 0.5]}, "frequency_penalty",
             "ignores frequency_penalty: with frequency_penalty=2 the greedy text"),
            ({"settings": [{"mirostat": 2, "mirostat_tau": 3.0}]}, "mirostat_mode",
             "ignores mirostat: 6 requests with mirostat_mode=2, mirostat_tau=0.5, mirostat_eta=0.001 gave"),
            ({"settings": [{"mirostat": 1, "mirostat_tau": 3.0, "mirostat_eta": 0.5}]}, "mirostat_eta",
             "ignores mirostat_eta: 6 requests with mirostat_mode=1, mirostat_tau=0.5, mirostat_eta=1 gave one text "
             "(it lets more than one token through)")):
        with FaultProxy(llama_server.port, lambda n, m, p, body, f=dropped: ("drop", f) if body else None) as proxy:
            line = _start_failure(tmp_path, write_config, served_config(proxy.base_url, tmp_path / "runs", grid=grid))
        assert f"model: {proxy.base_url} {expected}" in line, line
        assert not sample_posts(proxy, 12)


def test_mirostat_with_a_temperature_is_refused_where_the_server_drops_the_temperature(llama_server, tmp_path,
                                                                                        write_config):
    # llama-cpp-python's chain with mirostat has no temperature stage; llama.cpp's applies it before mirostat
    grid = {"settings": [{"temperature": 1.0, "mirostat": 2}, {"temperature": 0.7, "mirostat": 2}]}
    with FaultProxy(llama_server.port) as proxy:
        line = _start_failure(tmp_path, write_config, served_config(proxy.base_url, tmp_path / "runs", grid=grid))
    assert (f"model: {proxy.base_url} ignores temperature with mirostat: 6 requests with mirostat_mode=2, "
            "mirostat_tau=0.5, mirostat_eta=1, temperature=0.01 gave") in line, line
    assert not sample_posts(proxy, 12)


def test_a_llama_cpp_server_gets_llama_cpps_names_and_the_check_sees_what_it_ignores(llama_server, tmp_path,
                                                                                     write_config):
    """Behind a proxy whose /models says llama.cpp's server, llama-cpp-python is sent llama.cpp's fields: it takes
    the penalty (the same name), and the check finds that it ignores the samplers it has no field for."""
    config = served_config("", tmp_path / "ok", grid={"temperature": [0.8], "repetition_penalty": [1.0, 1.3]})
    with FaultProxy(llama_server.port, posing_as("llamacpp")) as proxy:
        config["model"]["base_url"] = proxy.base_url
        run = sweep(config)
    server = run.manifest.model["server"]
    assert server["kind"] == "llama.cpp" and server["order"] == "llama_cpp"
    assert server["honoured"] == ["temperature", "repetition_penalty"]
    sent = generation_of(run, sample_posts(proxy, 12))
    assert sent["t0.8-p1-rp1.3"]["repeat_penalty"] == 1.3 and sent["t0.8-p1-rp1.3"]["repeat_last_n"] == 64
    assert "repeat_last_n" not in sent["t0.8-p1"]  # no penalty, no window
    posts = [body for *_, body, _ in proxy.posts()]
    assert all(b["cache_prompt"] is False for b in posts)  # llama.cpp's server: no reuse of the last prompt's cache
    assert sent["t0.8-p1"]["cache_prompt"] is False  # and the manifest says so
    # the reproducibility check sends seed 1 again right after a request on another prompt (a prefix cache changed)
    hot = [i for i, b in enumerate(posts) if b["temperature"] == 2.0 and b["max_tokens"] == 8 and "min_p" in b
           and b["min_p"] == 0.0 and b.get("top_k") in (0, -1)]
    again = max(i for i in hot if posts[i]["seed"] == 1 and posts[i]["prompt"] != PROBE_TEXT)
    assert posts[again - 1]["prompt"] == PROBE_TEXT and isinstance(server["seed_reproducible"], bool)
    ignored = {  # what llama-cpp-python drops without a word
        "typical_p": ({"typical_p": 0.5}, "ignores typical_p: 6 requests with typical_p=0.001 gave",
                      {"typical_p": 0.001}),
        "top_n_sigma": ({"top_n_sigma": 1.0}, "ignores top_n_sigma: 6 requests with top_n_sigma=0.001 gave",
                        {"top_n_sigma": 0.001}),
        "xtc": ({"xtc_probability": 0.5, "xtc_threshold": 0.2},
                "ignores xtc_probability: 6 requests with top_k=2, xtc_probability=1, xtc_threshold=0.001 gave",
                {"top_k": 2, "xtc_probability": 1.0, "xtc_threshold": 0.001}),
        "dry": ({"dry_multiplier": 0.8, "dry_sequence_breakers": ["\n"]},
                "ignores dry_multiplier: with dry_multiplier=1 the greedy text of a repetitive prompt is the one it "
                "gives without it", {"dry_multiplier": 1.0, "dry_base": 1.75, "dry_allowed_length": 2,
                                     "dry_penalty_last_n": -1, "dry_sequence_breakers": ["\n", ":", '"', "*"]}),
        "a window": ({"repetition_penalty": 1.2, "penalty_scope": 16},
                     "ignores penalty_scope: with repeat_penalty=2, repeat_last_n=1 the greedy text of a repetitive "
                     "prompt is the one it gives with repeat_penalty=2", {"repeat_penalty": 2.0, "repeat_last_n": 1}),
    }
    for name, (knobs, message, probe_fields) in ignored.items():
        grid = {"settings": [{"temperature": 0.8, **knobs}]}
        with FaultProxy(llama_server.port, posing_as("llamacpp")) as proxy:
            line = _start_failure(tmp_path, write_config, served_config(proxy.base_url, tmp_path / "runs", grid=grid))
        assert f"model: {proxy.base_url} {message}" in line, (name, line)
        bodies = [body for *_, body, _ in proxy.posts()]
        assert any(all(b.get(k) == v for k, v in probe_fields.items()) for b in bodies), name  # sent, by its name
        assert not sample_posts(proxy, 12)


def test_a_server_whose_order_is_not_its_kinds_is_taken_for_an_unknown_one(llama_server, tmp_path, write_config):
    """A /models entry that says vLLM, in front of llama.cpp's sampler (min-p before the temperature, where vLLM
    applies it after): not vLLM's order, so no order is named for it, and what only vLLM takes is refused."""
    config = served_config("", tmp_path / "ok")
    with FaultProxy(llama_server.port, posing_as("vllm")) as proxy:
        config["model"]["base_url"] = proxy.base_url
        run = sweep(config)
    server = run.manifest.model["server"]
    assert server["kind"] == "other" and server["order"] is None
    assert server["order_check"] == ("not the vllm order a vLLM server applies: min-p before the temperature (6 "
                                     "requests with temperature=10000, min_p=0.999 gave one text); taken for a "
                                     "server of unknown kind")
    note = ("(its /models entry says a vLLM server, but it applies min-p before the temperature (6 requests with "
            "temperature=10000, min_p=0.999 gave one text))")
    for knobs, message in (({"order": "vllm"}, "order 'vllm' (an OpenAI-compatible server of unknown kind applies "
                                               "its own order, which evalkit cannot name)"),
                           ({"min_tokens": 4}, "min_tokens (an OpenAI-compatible server of unknown kind has no "
                                               "request field for it; a vLLM server takes min_tokens)")):
        grid = {"settings": [{"temperature": 0.8, **knobs}]}
        with FaultProxy(llama_server.port, posing_as("vllm")) as proxy:
            line = _start_failure(tmp_path, write_config, served_config(proxy.base_url, tmp_path / "runs", grid=grid))
        assert f"grid: {proxy.base_url} does not honour {message}, which setting" in line and line.endswith(note), line
        assert not sample_posts(proxy, 12)


def test_penalties_are_checked_over_the_chat_api_too(llama_server, tmp_path):
    config = served_config("", tmp_path / "runs", model={"api": "chat"}, grid={"temperature": [0.8],
                                                                              "presence_penalty": [0.0, 0.5]},
                           prompts=[{"id": "q", "prompt": "Name a colour."}])
    with FaultProxy(llama_server.port) as proxy:
        config["model"]["base_url"] = proxy.base_url
        run = sweep(config)
    assert run.manifest.model["server"]["honoured"] == ["temperature", "presence_penalty"]
    probes = [body for *_, body, _ in proxy.posts() if body.get("messages") == [{"role": "user",
                                                                                 "content": PROBE_TEXT}]]
    assert {b["presence_penalty"] for b in probes} == {0.0, 2.0}
    assert all(p.endswith("/v1/chat/completions") for _, _, p, _, _ in proxy.posts())


def test_the_api_key_is_written_nowhere(llama_server, tmp_path, monkeypatch, write_config):
    key = llama_server.api_key
    runs = tmp_path / "runs"
    monkeypatch.setenv("EVALKIT_INDEX", str(tmp_path / "index.sqlite"))
    monkeypatch.setenv("EVALKIT_SAMPLE_CACHE", str(tmp_path / "samples.sqlite"))
    sweep(served_config(llama_server.base_url, runs, report=True), cache=True)
    with FaultProxy(llama_server.port, scripted(lambda n, k: ("status", 503, {}) if k else None)) as proxy:
        with pytest.raises(EvalkitError):
            sweep(served_config(proxy.base_url, runs, model={"max_retries": 0}))
    with FaultProxy(llama_server.port, lambda n, m, p, body: "leak-key") as proxy:  # every reply quotes the key
        # the judge too: the same key, its replies (the judge's reasons, stored and reported) quoting it
        judge = {"base_url": proxy.base_url, "id": "smollm2", "api": "completions",
                 "api_key_env": "EVALKIT_TEST_API_KEY", "max_tokens": 8,
                 "extra_body": {"grammar": 'root ::= [a-z ]{0,8} "[[" [1-9] "]]"'}}
        leaky = sweep(served_config(proxy.base_url, tmp_path / "leaky", report=True, judge=judge,
                                    metrics=["distinct_1", {"name": "token_entropy", "top": 1},
                                             "judge_score[rubric=advice]"]))
    judged = leaky.sample_scores[leaky.sample_scores["metric"].str.startswith("judge_score")]
    assert len(judged) == 8 and judged["reason"].str.endswith(" Bearer ***").all()
    assert leaky.manifest.model.server["reported_model"].endswith("Bearer ***")
    assert leaky.samples["text"].str.endswith(" Bearer ***").all()
    summary = leaky.summary
    entropy = summary[summary["metric"] == "token_entropy[dist=model,top=1]"]["mean"]
    assert len(entropy) == 2 and (entropy > 0).all()  # top=1: -p log p of the most likely token, not NaN
    with FaultProxy(llama_server.port, lambda n, m, p, body: "echo-key") as proxy:  # a reply that quotes the key
        path = write_config(served_config(proxy.base_url, tmp_path / "refused"))
        result = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert result.exit_code == 2 and "invalid credentials: Bearer ***" in result.stderr, result.output
    assert key not in result.output
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "llama-server" not in p.name]
    assert {"report.html", "index.sqlite", "samples.sqlite", "judge.sqlite", "config.yaml", "manifest.json"} <= {
        p.name for p in files}
    for path in files:
        assert key.encode() not in path.read_bytes(), path
    assert "EVALKIT_TEST_API_KEY" in (next(runs.glob("*/config.yaml"))).read_text()  # the variable's name only


def test_plan_counts_requests_and_tokens_and_sends_nothing(llama_server, tmp_path, write_config):
    with FaultProxy(llama_server.port) as proxy:
        path = write_config(served_config(proxy.base_url, tmp_path / "runs"))
        result = CliRunner().invoke(app, ["run", str(path), "--plan"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("  ", 1) for line in result.stdout.splitlines())
    assert lines["samples"].strip() == "8"
    assert lines["requests"].strip().startswith("8 (one per sample), at most 4 in flight")
    assert int(lines["completion tokens, at most"]) >= 8 * 12
    assert proxy.log == [] and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------- without a server

def test_served_configs_are_checked_before_anything_is_sent(tmp_path):
    from evalkit.errors import ConfigError

    def refused(model: dict, **extra) -> str:
        config = served_config("http://127.0.0.1:9/v1", tmp_path, model=model, **extra)
        with pytest.raises(ConfigError) as e:
            c = config_from_dict(config, source="c.yaml")
            from evalkit.kinds import kind_of
            from evalkit.scoring.registry import default_registry

            kind_of(c).check_metrics(default_registry().create_all(c.metrics), c.source)
        return str(e.value)

    assert refused({"base_url": "http://user:hunter2@example.com/v1"}) == (
        "c.yaml: model.base_url: base_url must not hold credentials (user:password@): name an environment variable "
        "in api_key_env instead, got 'http://***@example.com/v1'")
    assert "sk-live" not in refused({"api_key_env": "sk-live-123"})
    assert refused({"gguf_file": "x.gguf"}).startswith("c.yaml: model.gguf_file: a served model")
    assert refused({"id": "default"}).startswith("c.yaml: model.id: an openai model names the served model")
    assert refused({}, batch_size=16).startswith("c.yaml: batch_size: a served model's server batches requests itself")
    assert refused({}, metrics=["token_entropy"]) == (
        "c.yaml: metrics[0]: token_entropy[dist=model] needs token_stats, which a served-model sweep does not make "
        "(a server returns top-N logprobs: token_entropy with top: 20 is their lower bound, nll and perplexity "
        "take dist: model)")
    assert "needs token_ids" in refused({}, metrics=[{"name": "distinct_n", "n": 2, "tok": "model"}])
    assert "needs token_stats" in refused({}, metrics=[{"name": "nll", "dist": "sampling"}])


def test_replies_of_either_logprob_form_and_their_finish_reasons():
    from evalkit.generation.served.protocol import parse_choice

    legacy = {"choices": [{"text": " blue sky", "finish_reason": "stop", "logprobs": {
        "tokens": [" blue", " sky"], "token_logprobs": [-0.5, -1.0],
        "top_logprobs": [{" blue": -0.5, " red": -1.5}, {" sky": -1.0}]}}]}
    listed = {"choices": [{"text": " blue sky", "finish_reason": "length", "logprobs": {"content": [
        {"token": " blue", "logprob": -0.5, "top_logprobs": [{"token": " blue", "logprob": -0.5},
                                                             {"token": " red", "logprob": -1.5}]},
        {"token": " sky", "logprob": -1.0, "top_logprobs": [{"token": " sky", "logprob": -1.0}]}]}}]}
    for reply in (legacy, listed):
        choice = parse_choice(reply, "completions", "u")
        assert choice.text == " blue sky" and choice.logprobs == ([-0.5, -1.0], [[-0.5, -1.5], [-1.0]])
    no_tops = {"choices": [{"text": "a", "logprobs": {"token_logprobs": [-0.1, -0.2]}}]}
    assert parse_choice(no_tops, "completions", "u").logprobs == ([-0.1, -0.2], [[], []])
    for broken in ({}, {"choices": []}, {"choices": [{"message": {}}]}, {"choices": [{"text": 3}]},
                   {"choices": [{"text": "a", "logprobs": {"content": [{"token": "a"}]}}]}):
        with pytest.raises(EvalkitError, match="is not a completion") as e:
            parse_choice(broken, "completions", "u")
        assert e.value.retryable


def test_truncated_entropy_is_a_lower_bound_over_the_top_n():
    from evalkit.generation.served import truncated_entropy

    logits = [2.0, 1.0, 0.5, -1.0, -3.0]
    z = math.log(sum(math.exp(v) for v in logits))
    lp = [v - z for v in logits]
    full = -sum(math.exp(v) * v for v in lp)
    assert truncated_entropy(lp, 5) == pytest.approx(full)
    assert truncated_entropy(list(reversed(lp)) + [-math.inf], 2) == pytest.approx(
        -sum(math.exp(v) * v for v in lp[:2]))
    assert truncated_entropy(lp, 2) < truncated_entropy(lp, 3) < full
    assert math.isnan(truncated_entropy([], 5))  # no top logprobs for the token: no value, not 0


def test_retry_after_in_seconds_or_as_a_date():
    import email.utils
    import time

    from evalkit.generation.served.client import Endpoint, ServerError, _retry_after

    assert _retry_after("2") == 2.0 and _retry_after("0.5") == 0.5 and _retry_after(None) is None
    assert _retry_after("soon") is None and _retry_after("99999") == 99999.0 and _retry_after("nan") is None
    asked = ServerError("429", 429, retryable=True)
    asked.retry_after = _retry_after("100000")
    assert Endpoint("http://127.0.0.1:9/v1", None, 7.0, 1, 0.1).retry_wait(asked) == 7.0  # capped at timeout_s
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < _retry_after(when) <= 31


def test_two_tops_in_one_run_are_refused(tmp_path):
    from evalkit.errors import ConfigError
    from evalkit.pipeline import logprobs_wanted
    from evalkit.scoring.registry import default_registry

    config = config_from_dict(served_config("http://127.0.0.1:9/v1", tmp_path, metrics=[
        {"name": "token_entropy", "top": 5}, {"name": "token_entropy", "top": 20}]))
    with pytest.raises(ConfigError, match="metrics ask for top=5 and top=20"):
        logprobs_wanted(default_registry().create_all(config.metrics))
    only_nll = config_from_dict(served_config("http://127.0.0.1:9/v1", tmp_path, metrics=["distinct_1", "nll"]))
    assert logprobs_wanted(default_registry().create_all(only_nll.metrics)) == 1
    plain = config_from_dict(served_config("http://127.0.0.1:9/v1", tmp_path, metrics=["distinct_1"]))
    assert logprobs_wanted(default_registry().create_all(plain.metrics)) == 0


def test_a_sweep_from_inside_a_running_event_loop(llama_server, reference, tmp_path):
    """As from a notebook, whose event loop runs in the caller's thread."""
    import asyncio

    async def from_a_notebook():
        return sweep(served_config(llama_server.base_url, tmp_path / "runs"))

    assert texts(asyncio.run(from_a_notebook())) == texts(reference)


def test_plan_counts_every_ray_workers_check_and_requests_in_flight(tmp_path, write_config):
    """With Ray each worker checks the server and keeps its own requests in flight: the plan counts them all."""
    config = served_config("http://127.0.0.1:9/v1", tmp_path / "runs", executor={"kind": "ray", "workers": 3})
    one = dict(line.split("  ", 1) for line in CliRunner().invoke(
        app, ["run", str(write_config(served_config("http://127.0.0.1:9/v1", tmp_path / "runs"))), "--plan"]
    ).stdout.splitlines())
    result = CliRunner().invoke(app, ["run", str(write_config(config)), "--plan"])
    assert result.exit_code == 0, result.output
    three = dict(line.split("  ", 1) for line in result.stdout.splitlines())
    assert three["requests"].strip() == "8 (one per sample), at most 12 in flight (3 workers, each its own)"
    check_one, check_three = (int(d["capability check"].split()[2]) for d in (one, three))
    assert check_three == 3 * check_one
    sample_tokens = 8 * 12
    assert int(three["completion tokens, at most"]) - sample_tokens == 3 * (
        int(one["completion tokens, at most"]) - sample_tokens)


def test_a_placeholder_key_is_masked_nowhere_and_any_longer_key_everywhere():
    """A key under 8 characters is a placeholder (vLLM's users set EMPTY): not a secret, masked nowhere (masking it
    would change the model's words); from 8 characters on it is masked in all a server says, generated text too."""
    from evalkit.generation.served.client import SECRET_LENGTH, Endpoint

    assert SECRET_LENGTH == 8
    for placeholder in ("EMPTY", "dummy", "x" * (SECRET_LENGTH - 1)):
        endpoint = Endpoint("http://127.0.0.1:9/v1", placeholder, 10, 0, 0.1)
        assert endpoint.scrub(f"The list is {placeholder}.") == f"The list is {placeholder}."
        assert endpoint.scrub({"owned_by": placeholder}) == {"owned_by": placeholder}
    for secret in ("k" * SECRET_LENGTH, "sk-short-key", "sk-" + "x" * 40):
        endpoint = Endpoint("http://127.0.0.1:9/v1", secret, 10, 0, 0.1)
        assert endpoint.scrub(f"a {secret} b") == "a *** b"
        assert endpoint.scrub({"owned_by": [secret]}) == {"owned_by": ["***"]}


def test_a_short_key_that_the_server_echoes_is_stored_nowhere(llama_server, tmp_path, monkeypatch):
    """A 12-character key, quoted by the server in its listing, its fingerprint and every generated text."""
    key = "sk-short-key"
    monkeypatch.setenv("EVALKIT_TEST_API_KEY", key)
    monkeypatch.setenv("EVALKIT_INDEX", str(tmp_path / "index.sqlite"))
    with FaultProxy(llama_server.port, lambda n, m, p, body: "leak-key", upstream_key=llama_server.api_key) as proxy:
        run = sweep(served_config(proxy.base_url, tmp_path / "runs", report=True))
    assert run.samples["text"].str.endswith(" Bearer ***").all()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"report.html", "samples.parquet", "manifest.json"} <= {p.name for p in files}
    for path in files:
        assert key.encode() not in path.read_bytes(), path


def test_each_kind_of_server_is_told_by_its_listing_and_sent_its_own_names():
    from evalkit.generation.served.protocol import KINDS, kind_of
    from evalkit.settings import Setting

    assert [kind_of({"owned_by": o}).name for o in ("llamacpp", "me", "vllm", "openai", None)] == [
        "llama.cpp", "llama-cpp-python", "vllm", "other", "other"]
    plain = {"temperature": 0.8, "top_p": 1.0}
    sent = {  # (kind, setting) -> the request fields, or the start of the reason it is refused
        ("llama.cpp", (("repetition_penalty", 1.2),)): {**plain, "repeat_penalty": 1.2, "repeat_last_n": 64},
        ("llama.cpp", (("repetition_penalty", 1.2), ("penalty_scope", 32))): {**plain, "repeat_penalty": 1.2,
                                                                               "repeat_last_n": 32},
        ("llama.cpp", (("presence_penalty", 0.5), ("penalty_scope", "prompt+output"))): {
            **plain, "presence_penalty": 0.5, "repeat_last_n": -1},
        ("llama.cpp", (("presence_penalty", 0.5), ("penalty_scope", "output"))): "penalty_scope 'output' (llama.cpp",
        ("llama.cpp", (("xtc_probability", 0.5),)): {**plain, "xtc_probability": 0.5, "xtc_threshold": 0.1},
        ("llama.cpp", (("dry_multiplier", 0.8),)): {**plain, "dry_multiplier": 0.8, "dry_base": 1.75,
                                                     "dry_allowed_length": 2, "dry_penalty_last_n": -1,
                                                     "dry_sequence_breakers": ["\n", ":", '"', "*"]},
        ("llama.cpp", (("typical_p", 0.9), ("top_n_sigma", 1.5))): {**plain, "typical_p": 0.9, "top_n_sigma": 1.5},
        ("llama.cpp", (("mirostat", 1),)): {**plain, "mirostat": 1, "mirostat_tau": 5.0, "mirostat_eta": 0.1},
        ("llama.cpp", (("min_tokens", 3),)): "min_tokens (llama.cpp's server has no request field",
        ("llama-cpp-python", (("mirostat", 2),)): {**plain, "mirostat_mode": 2, "mirostat_tau": 5.0,
                                                    "mirostat_eta": 0.1},
        ("llama-cpp-python", (("repetition_penalty", 1.2),)): {**plain, "repeat_penalty": 1.2},
        ("vllm", (("repetition_penalty", 1.2), ("min_tokens", 3))): {**plain, "repetition_penalty": 1.2,
                                                                      "min_tokens": 3},
        ("vllm", (("frequency_penalty", 0.5), ("penalty_scope", "output"))): {**plain, "frequency_penalty": 0.5},
        ("vllm", (("repetition_penalty", 1.2), ("penalty_scope", "output"))): (
            "penalty_scope 'output' for repetition_penalty (a vLLM server counts it over prompt+output"),
        ("vllm", (("order", "llama_cpp"),)): "order 'llama_cpp' (a vLLM server applies the vllm order)",
        ("other", (("top_k", 5), ("repetition_penalty", 1.2))): {**plain, "top_k": 5, "repetition_penalty": 1.2},
        ("other", (("order", "vllm"),)): "order 'vllm' (an OpenAI-compatible server of unknown kind applies its own",
    }
    for (kind, knobs), expected in sent.items():
        setting = Setting(temperature=0.8, **dict(knobs))
        refused = KINDS[kind].refusal(setting)
        if isinstance(expected, str):
            assert refused is not None and refused[1].startswith(expected), (kind, knobs, refused)
            with pytest.raises(ValueError):
                KINDS[kind].request(setting)
        else:
            assert refused is None and KINDS[kind].request(setting) == expected, (kind, knobs)
