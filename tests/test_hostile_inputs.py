"""Hostile and odd inputs found by an adversarial pass: each is one line and exit 2 (never a crash, a hang, a
secret shown, or a run directory half-written), found before any model loads."""

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
import yaml
from typer.testing import CliRunner

from evalkit.cli import app

from conftest import base_config, write_jsonl


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, (result.exit_code,
                                                                                             result.output)
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


def run_config(tmp_path, text: str, *args: str) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    line = one_line(CliRunner().invoke(app, ["run", str(path), *args]))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("2*")), "a run directory was made"
    return line


def config_text(tiny_model, tmp_path, **changes) -> str:
    return yaml.safe_dump({**base_config(tiny_model, tmp_path / "runs"), **changes}, allow_unicode=True)


def test_a_number_of_thousands_of_digits(tiny_model, tmp_path):
    text = config_text(tiny_model, tmp_path).replace("seed: 1", "seed: " + "9" * 5000)
    assert run_config(tmp_path, text).endswith("invalid YAML: a number of more than 4300 digits")


def test_yaml_nested_too_deeply(tiny_model, tmp_path):
    text = config_text(tiny_model, tmp_path) + "x: " + "[" * 20000 + "]" * 20000 + "\n"
    assert run_config(tmp_path, text).endswith("invalid YAML: nested too deeply")


def test_a_key_that_is_not_a_name(tiny_model, tmp_path):
    text = config_text(tiny_model, tmp_path) + "? [a, b]\n: 1\n"
    assert "a key must be a name, got a list" in run_config(tmp_path, text)


def test_an_alias_bomb_under_batch_size_is_cut_short(tiny_model, tmp_path):
    value = "&a0 [" + ", ".join(["x"] * 10) + "]"
    for i in range(1, 9):  # 10^9 strings, each level ten aliases of the one before
        value = f"&a{i} [{value}, " + ", ".join([f"*a{i - 1}"] * 9) + "]"
    text = config_text(tiny_model, tmp_path, batch_size=1).replace("batch_size: 1", f"batch_size: {value}")
    line = run_config(tmp_path, text)
    assert "batch_size" in line and "..." in line


def test_a_config_from_a_pipe_is_read(tiny_model, tmp_path):
    """`evalkit run <(make-config)`: a pipe is read like a file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    text = config_text(tiny_model, tmp_path)

    def write():
        with open(fifo, "w", encoding="utf-8") as f:
            f.write(text)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    result = CliRunner().invoke(app, ["run", "--plan", str(fifo)])
    writer.join(timeout=30)
    assert result.exit_code == 0 and "samples" in result.stdout, result.output


@pytest.mark.parametrize("where", ["index", "sample cache"])
def test_a_fifo_is_refused_not_waited_on(where, tiny_model, tmp_path, monkeypatch):
    """SQLite would wait on a FIFO beyond Ctrl-C's reach."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    changes = {"index": {"index": str(fifo)}}.get(where, {})
    if where == "sample cache":
        monkeypatch.setenv("EVALKIT_SAMPLE_CACHE", str(fifo))
    line = run_config(tmp_path, config_text(tiny_model, tmp_path, **changes))
    assert "FIFO" in line and "not a regular file" in line


def test_a_device_is_not_a_config():
    assert one_line(CliRunner().invoke(app, ["run", "/dev/zero"])) == (
        "error: /dev/zero: config file is a device or other special file, not a regular file")


def test_a_lone_surrogate_in_a_prompt(tiny_model, tmp_path):
    text = config_text(tiny_model, tmp_path).replace("Write a short story.", "Write \\ud800 a story.")
    text = text.replace("prompt: Write \\ud800 a story.", 'prompt: "Write \\ud800 a story."')
    line = run_config(tmp_path, text, "--plan")
    assert line.endswith("prompts.items[0].prompt: not valid Unicode text (a lone surrogate, as from an escape such "
                         "as \\ud800), got 'Write \\ud800 a story.'")


def test_a_file_that_is_not_gguf(tiny_model, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.gguf").write_text("not a model")
    line = run_config(tmp_path, config_text(tiny_model, tmp_path, model={"id": str(folder),
                                                                         "gguf_file": "model.gguf"}))
    assert line.endswith(f"model.gguf_file: {folder / 'model.gguf'} is not a GGUF file (it does not start with the "
                         "bytes 'GGUF')")


def test_a_config_name_that_is_not_utf8(tiny_model, tmp_path):
    path = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(config_text(tiny_model, tmp_path))
    line = one_line(CliRunner().invoke(app, ["run", path]))
    assert "is not valid UTF-8: rename it" in line


class ModelsServer:
    """GET /models on 127.0.0.1 answering with the model ids given (as a misconfigured server might)."""

    def __init__(self, ids: list[str]):
        body = json.dumps({"data": [{"id": i} for i in ids]}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_a_key_a_server_lists_as_a_model_is_masked(tiny_model, tmp_path, monkeypatch):
    secret = "sk-evalkit-test-SECRET-12345"
    monkeypatch.setenv("EVALKIT_TEST_KEY", secret)
    with ModelsServer([secret, "other", "x" * 100_000]) as url:
        line = run_config(tmp_path, config_text(tiny_model, tmp_path, model={
            "backend": "openai", "base_url": url, "id": "m", "api_key_env": "EVALKIT_TEST_KEY"}))
    assert secret not in line and "'***'" in line and "'other'" in line and len(line) < 400


@pytest.mark.parametrize("url", ["http://u:sk-SUPER#SECRET-12345@127.0.0.1:9/v1",
                                 "http://u:sk-SUPER?SECRET-12345@127.0.0.1:9/v1",
                                 "http://u:sk-SUPER/SECRET-12345@127.0.0.1:9/v1"])
def test_credentials_in_base_url_never_shown(url, tiny_model, tmp_path):
    line = run_config(tmp_path, config_text(tiny_model, tmp_path, model={"backend": "openai", "base_url": url,
                                                                         "id": "m"}))
    assert "SECRET" not in line and "sk-SUPER" not in line and "must not hold credentials" in line


def test_an_unwritable_place(tmp_path):
    data = write_jsonl(tmp_path / "g.jsonl", [{"prompt_id": "a", "text": "one two"}])
    line = one_line(CliRunner().invoke(app, ["score", str(data), "-o", "/proc/evalkit-test/out"]))
    assert line.startswith("error: -o: /proc") and "is not writable" in line


def test_index_on_dev_null_is_refused_up_front(tiny_model, tmp_path):
    line = run_config(tmp_path, config_text(tiny_model, tmp_path, index="/dev/null"))
    assert line.endswith("index: /dev/null is not a regular file (a FIFO or a device), not a database file")


def test_a_baseline_of_another_kind_is_refused_before_the_sweep(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "g.jsonl", [{"prompt_id": "a", "text": "one two"}])
    assert CliRunner().invoke(app, ["score", str(data), "-o", str(tmp_path / "scored")]).exit_code == 0
    line = run_config(tmp_path, config_text(tiny_model, tmp_path), "--baseline", str(tmp_path / "scored"))
    assert line.startswith("error: --baseline: this sweep would not be comparable with") and "kind differs" in line


def test_runs_lists_scored_and_model_runs_together(tmp_path, monkeypatch):
    from evalkit.index import RunIndex

    monkeypatch.setenv("EVALKIT_INDEX", str(tmp_path / "index.sqlite"))
    data = write_jsonl(tmp_path / "g.jsonl", [{"prompt_id": "a", "text": "one two"}])
    assert CliRunner().invoke(app, ["score", str(data), "-o", str(tmp_path / "scored")]).exit_code == 0
    with RunIndex(tmp_path / "index.sqlite") as db:
        db.db.execute("INSERT INTO runs (run_id, name, path, kind, status, model_id, model_hash, started_at, seed, "
                      "n_samples, protocol, metric_info, recorded_at) VALUES ('r2', 'x', '/r2', 'text', 'complete', "
                      "'m', 'abcdef0123456789', '2026-01-02T00:00:00Z', 1, 5, '{}', '{}', '2026-01-02T00:00:00Z')")
    result = CliRunner().invoke(app, ["runs"])
    assert result.exit_code == 0, result.output
    assert "abcdef012345" in result.stdout and "scored" in result.stdout


@pytest.mark.parametrize("change, message", [
    ({"samples_per_prompt": True}, "samples_per_prompt: a number is needed, not true/false, got true"),
    ({"grid": {"top_k": [True]}}, "grid.top_k: a number is needed, not true/false, got [true]"),
    ({"metrics": [{"name": "distinct_n", "n": True}]}, "metrics[0].n: a number is needed, not true/false, got true"),
    ({"name": "2024-01-01"}, None),
])
def test_true_false_is_not_a_number(change, message, tiny_model, tmp_path):
    text = config_text(tiny_model, tmp_path, **change)
    if message is None:  # a date as a name: said as the user wrote it
        text = text.replace("name: '2024-01-01'", "name: 2024-01-01")
        message = "name: Input should be a valid string, got 2024-01-01"
    assert run_config(tmp_path, text, "--plan").endswith(message)


@pytest.mark.parametrize("args, message", [
    (["run", "--bogus"], "error: No such option: --bogus (evalkit run --help)"),
    (["compare", "a", "b", "--alpha", "0"], "error: Invalid value for '--alpha': Input should be greater than or "
                                            "equal to 0.000001 (evalkit compare --help)"),
    (["nope"], "error: No such command 'nope'. (evalkit --help)"),
])
def test_usage_errors_are_one_line(args, message, tmp_path):
    done = subprocess.run([sys.executable, "-m", "evalkit", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == message, done.stderr


def test_an_infinite_tolerance_is_refused(tmp_path):
    line = one_line(CliRunner().invoke(app, ["compare", "a", "b", "--fail-on", "distinct_1:+1e999"]))
    assert line == "error: --fail-on: the tolerance of 'distinct_1:+1e999' is not a finite number"


def test_home_in_an_output_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "g.jsonl", [{"prompt_id": "a", "text": "one two"}])
    result = CliRunner().invoke(app, ["score", str(data), "-o", "~/scored"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "scored" / "manifest.json").is_file() and not (tmp_path / "~").exists()


# ---------------------------------------------------------------------------- a second pass


@pytest.fixture
def scored_run(tmp_path):
    data = write_jsonl(tmp_path / "g.jsonl", [{"prompt_id": p, "temperature": t, "text": f"{p} text {t} more words"}
                                              for p in ("a", "b") for t in (0.5, 1.0)])
    assert CliRunner().invoke(app, ["score", str(data), "-o", str(tmp_path / "scored")]).exit_code == 0
    return tmp_path / "scored"


def test_an_output_that_is_a_fifo_stays_one(scored_run, tmp_path):
    fifo = tmp_path / "out.html"
    os.mkfifo(fifo)
    line = one_line(CliRunner().invoke(app, ["report", str(scored_run), "-o", str(fifo)]))
    assert line == f"error: -o: {fifo} is not a regular file (a device or a FIFO); give a file name"
    assert fifo.is_fifo()


@pytest.mark.parametrize("command", ["report", "compare-o", "compare-junit", "history"])
def test_an_output_never_overwrites_an_input(command, scored_run, tmp_path):
    samples = scored_run / "samples.parquet"
    before = samples.read_bytes()
    index = tmp_path / "index.sqlite"
    args = {"report": ["report", str(scored_run), "-o", str(samples)],
            "compare-o": ["compare", str(scored_run), str(scored_run), "-o", str(samples)],
            "compare-junit": ["compare", str(scored_run), str(scored_run), "--junit", str(scored_run / "config.yaml")],
            "history": ["history", "--name", "g", "--index", str(index), "-o", str(index)]}[command]
    line = one_line(CliRunner().invoke(app, args))
    assert ("inside the run directory" in line) or ("is the run index this command reads" in line), line
    assert samples.read_bytes() == before


@pytest.mark.slow
def test_explicit_settings_count_toward_the_limit(tiny_model, tmp_path):
    settings = [{"temperature": round(0.001 * i, 3)} for i in range(1, 100_002)]
    line = run_config(tmp_path, config_text(tiny_model, tmp_path, grid={"settings": settings}), "--plan")
    assert "grid.settings" in line and "100000" in line


@pytest.mark.parametrize("field", ["output_dir", "index"])
def test_a_dangling_link_is_refused_up_front(field, tiny_model, tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere" / "x")
    target = str(tmp_path / "link") if field == "output_dir" else str(tmp_path / "link")
    line = run_config(tmp_path, config_text(tiny_model, tmp_path, **{field: target}))
    assert "is a symbolic link to nothing (dangling, or a loop)" in line


def test_a_name_too_long_for_the_file_system(tiny_model, tmp_path):
    line = run_config(tmp_path, config_text(tiny_model, tmp_path, output_dir=str(tmp_path / ("b" * 300))))
    assert "is too long (at most 255 bytes a name, 4096 in all)" in line


def test_a_gguf_file_without_tensors(tiny_model, tmp_path):
    import struct

    key, value = b"general.architecture", b"llama"
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
                                    + struct.pack("<I", 8) + struct.pack("<Q", len(value)) + value)
    line = run_config(tmp_path, config_text(tiny_model, tmp_path, model={"id": str(folder), "gguf_file": "m.gguf"}))
    assert line.endswith("is a GGUF file with no tensors: not a model")


def test_a_lone_surrogate_in_the_system_prompt_and_stop(tiny_model, tmp_path):
    text = config_text(tiny_model, tmp_path, stop=["END"]).replace("- END", '- "\\udc80"')
    assert "stop: not valid Unicode text" in run_config(tmp_path, text, "--plan")


def test_an_api_key_a_header_cannot_carry(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_TEST_KEY", "sk-ÄSECRET\nmore")
    line = run_config(tmp_path, config_text(tiny_model, tmp_path, model={
        "backend": "openai", "base_url": "http://127.0.0.1:9/v1", "id": "m", "api_key_env": "EVALKIT_TEST_KEY"}))
    assert "holds characters an HTTP header cannot carry" in line and "SECRET" not in line


@pytest.mark.parametrize("choice", [
    {"text": "hi", "finish_reason": {"weird": 1}},
    {"text": "a \ud800", "finish_reason": "stop"},
    {"text": "hi", "finish_reason": "stop", "logprobs": {"token_logprobs": [float("nan")]}},
    {"text": "hi", "finish_reason": "stop", "logprobs": {"token_logprobs": [5.0]}},
    {"text": "hi", "finish_reason": "stop", "logprobs": {"content": [{"token": "h", "logprob": float("-inf")}]}},
])
def test_a_garbled_reply_is_not_a_completion(choice):
    from evalkit.generation.served.client import ServerError
    from evalkit.generation.served.protocol import parse_choice

    with pytest.raises(ServerError, match="is not a completion") as info:
        parse_choice({"choices": [choice]}, "completions", "http://127.0.0.1:9/v1")
    assert info.value.retryable


def test_an_index_of_another_schema(tiny_model, tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "other.sqlite") as db:
        db.execute("CREATE TABLE runs (x)")
    line = run_config(tmp_path, config_text(tiny_model, tmp_path, index=str(tmp_path / "other.sqlite")))
    assert "has a table 'runs' without the columns" in line


def test_score_checks_its_index_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_INDEX", str(tmp_path))
    data = write_jsonl(tmp_path / "g.jsonl", [{"prompt_id": "a", "text": "one two"}])
    line = one_line(CliRunner().invoke(app, ["score", str(data), "-o", str(tmp_path / "out")]))
    assert "is a directory, not a database file" in line and not (tmp_path / "out").exists()


def test_compare_of_runs_with_no_setting_in_common(tmp_path):
    for name, t in (("one", 0.5), ("two", 1.0)):
        data = write_jsonl(tmp_path / f"{name}.jsonl", [{"prompt_id": "a", "temperature": t, "text": "x y z"}])
        assert CliRunner().invoke(app, ["score", str(data), "-o", str(tmp_path / name)]).exit_code == 0
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "one"), str(tmp_path / "two"), "--metric",
                                      "distinct_1"])
    assert result.exit_code == 0, result.output
    gate = one_line(CliRunner().invoke(app, ["compare", str(tmp_path / "one"), str(tmp_path / "two"), "--fail-on",
                                             "distinct_1:-0.1"]))
    assert gate.startswith("error: --fail-on: nothing to gate: the runs share no setting")


def test_control_characters_in_a_path_are_shown_escaped(tmp_path):
    line = one_line(CliRunner().invoke(app, ["run", str(tmp_path / "missing\nfile\x1b[2J.yaml")]))
    assert "\x1b" not in line and "missing\\nfile\\x1b[2J.yaml: config file not found" in line


def test_control_characters_in_paths_are_escaped_on_success_too(tmp_path):
    data = write_jsonl(tmp_path / "in\x1b[2J.jsonl", [{"prompt_id": "a", "text": "one two"}])
    scored = tmp_path / "out\x1b[2J"
    result = CliRunner().invoke(app, ["score", str(data), "-q", "-o", str(scored)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout
    assert "in\\x1b[2J.jsonl\n" in result.stdout and "run directory: " + str(tmp_path / "out\\x1b[2J") in result.stdout
    result = CliRunner().invoke(app, ["report", str(scored)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "out\\x1b[2J/report.html" in result.stdout
    for args in (["runs"], ["runs", "--name", "x\x1b[7m"], ["history", "--name", "in-2J", "-o",
                                                             str(tmp_path / "h.html")]):
        result = CliRunner().invoke(app, [*args, "--index", str(tmp_path / "index.sqlite")])
        assert result.exit_code == 0 and "\x1b" not in result.stdout, result.output  # the run id is its folder's
    assert "out\\x1b[2J" in CliRunner().invoke(app, ["runs", "--index", str(tmp_path / "index.sqlite")]).stdout


def test_a_long_value_is_cut_in_every_option():
    for args in (["compare", "a", "b", "--fail-on", "x" * 50_000], ["run", "--preset", "y" * 50_000]):
        assert len(one_line(CliRunner().invoke(app, args))) < 300


def test_a_signal_while_the_report_is_written_says_the_run_is_complete(tiny_model, tmp_path, monkeypatch):
    import evalkit
    from evalkit import pipeline
    from evalkit.config import config_from_dict

    def stopped(run_dir, ui):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_report", stopped)
    config = config_from_dict(base_config(tiny_model, tmp_path / "runs", report=True, samples_per_prompt=1))
    with pytest.raises(KeyboardInterrupt) as info:
        evalkit.run_sweep(config, progress=False)
    (run_dir,) = (tmp_path / "runs").glob("2*")
    assert str(info.value) == (f"interrupted while writing the report; the run is complete ({run_dir}); write its "
                               f"report with: evalkit report {run_dir}")
    assert evalkit.load_run(run_dir).manifest.status == "complete"


def test_a_file_system_without_flock_runs_unlocked(tmp_path, monkeypatch):
    """NFS mounted nolock, Lustre, some FUSE: flock fails with ENOSYS; the run goes on as before locks existed."""
    import errno
    import fcntl

    from evalkit.rundir.lock import RunLock

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = RunLock(tmp_path).acquire()
    assert lock.unsupported and lock.fd is None
    lock.release()


def test_a_prompt_text_given_on_its_first_line_only(tmp_path):
    data = write_jsonl(tmp_path / "g.jsonl", [{"prompt_id": "a", "prompt": "Write a poem.", "text": "one two"},
                                              {"prompt_id": "a", "text": "three four"},
                                              {"prompt_id": "b", "text": "five six"}])
    result = CliRunner().invoke(app, ["score", str(data), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    import evalkit

    samples = evalkit.load_run(tmp_path / "out").samples
    assert list(samples["prompt"]) == ["Write a poem.", "Write a poem.", "b"]
    (tmp_path / "g2.jsonl").write_text('{"prompt_id": "a", "prompt": "x", "text": "t"}\n'
                                       '{"prompt_id": "a", "prompt": "y", "text": "u"}\n')
    line = one_line(CliRunner().invoke(app, ["score", str(tmp_path / "g2.jsonl"), "-o", str(tmp_path / "o2")]))
    assert line.endswith("line 2: prompt 'a' has another prompt text than on the first line that gives one")


@pytest.mark.parametrize("args, changes, message", [
    (["--baseline", "latest", "--fail-on", "distinct_1:-nan"], {}, "--fail-on: 'distinct_1:-nan' is not METRIC:"),
    (["--baseline", "latest", "--fail-on", "self_bleu:-0.1"], {}, "'self_bleu' matches no metric this sweep scores"),
    (["--fail-on", "distinct_1:-0.1"], {}, "--fail-on and --junit need --baseline"),
    (["--baseline", "latest", "--junit", "."], {}, "--junit: . is a directory; give a file name"),
    (["--baseline", "latest", "--fail-on", "distinct_1:-0.1"], {}, "'distinct_1' could never fail: with 3 prompts"),
    ([], {"index": "."}, "index: . is a directory, not a database file"),
    ([], {"output_dir": "sweep.yaml"}, "output_dir: sweep.yaml exists and is not a directory"),
])
def test_plan_refuses_what_the_run_refuses_before_it_loads(args, changes, message, tiny_model, tmp_path,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {**base_config(tiny_model, tmp_path / "runs"), "metrics": ["distinct_1"], **changes}
    for plan in (["--plan"], []):  # the same line with --plan as without
        line = run_config(tmp_path, yaml.safe_dump(config), *plan, *args)
        assert line.startswith("error: ") and message in line, line


def test_a_gate_that_could_never_fail_is_refused(tmp_path):
    """With 3 prompts the sign-flip test's smallest p is 0.25: a gate on it would pass whatever happened."""
    def scored(name: str, prompts: int, text) -> str:
        data = write_jsonl(tmp_path / f"{name}.jsonl", [
            {"prompt_id": f"p{p}", "temperature": t, "text": text(p, i)} for p in range(prompts) for t in (0.5, 1.0)
            for i in range(3)])
        assert CliRunner().invoke(app, ["score", str(data), "-q", "--metrics", "distinct_2", "-o",
                                        str(tmp_path / name)]).exit_code == 0
        return str(tmp_path / name)

    def varied(p, i):
        return f"prompt {p} sample {i} says {' '.join(str(p * 7 + i * 3 + k) for k in range(6))}"

    def same(p, i):
        return "same same same same same same"

    few = [scored("few_base", 3, varied), scored("few_new", 3, same)]
    junit = tmp_path / "gate.xml"
    line = one_line(CliRunner().invoke(app, ["compare", *few, "--fail-on", "distinct_2:-0.03", "--junit",
                                             str(junit)]))
    assert line == ("error: --fail-on: 'distinct_2' could never fail: with 3 prompts in common the paired sign-flip "
                    "test's smallest p-value is 0.25, 0.5 at best after Holm's adjustment over 2 tests, not under "
                    "alpha 0.05; gate on runs of at least 7 prompts, or on fewer metrics or settings")
    assert not junit.exists()
    # at alpha 1e-4 no number of prompts would do (the random test's floor, 1/10,001, times 2 tests): said, at once
    line = one_line(CliRunner().invoke(app, ["compare", *few, "--alpha", "1e-4", "--fail-on", "distinct_2:-0.03"]))
    assert line.endswith("not under alpha 0.0001; gate on fewer metrics or settings")
    enough = [scored("base", 7, varied), scored("new", 7, same)]  # 2 x 2/2^7 < 0.05: the same drop fails the gate
    result = CliRunner().invoke(app, ["compare", *enough, "--fail-on", "distinct_2:-0.03", "--junit", str(junit)])
    assert result.exit_code == 1 and "REGRESSION: 2 change(s)" in result.output, result.output
    assert 'failures="2"' in junit.read_text()


def test_a_gate_whose_rows_have_fewer_prompts_than_others_can_still_fail(tmp_path):
    """Holm steps down: a row of 6 prompts (p at best 1/32) ranked after a row of 10 (1/512) is significant at
    2 tests, though 2 x 1/32 is not under 0.05: the gate is not refused, and it fails."""
    def scored(name: str, new: bool) -> str:
        rows = []
        for p in range(10):
            for i in range(3):
                if p >= 6:  # one word: distinct_2 undefined here, distinct_1 still falls
                    text = "same" if new else f"w{p}x{i}"
                else:
                    text = "same same same same same same" if new else " ".join(f"w{p}{i}{k}" for k in range(6))
                rows.append({"prompt_id": f"p{p}", "temperature": 0.7, "text": text})
        data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        assert CliRunner().invoke(app, ["score", str(data), "-q", "--metrics", "distinct_1,distinct_2", "-o",
                                        str(tmp_path / name)]).exit_code == 0
        return str(tmp_path / name)

    runs = [scored("base", False), scored("new", True)]
    result = CliRunner().invoke(app, ["compare", *runs, "--fail-on", "distinct_1:-0.1", "--fail-on",
                                      "distinct_2:-0.1"])
    assert result.exit_code == 1 and "REGRESSION: 2 change(s)" in result.output, result.output


def test_plan_with_no_cache_does_not_check_the_cache(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_SAMPLE_CACHE", str(tmp_path))  # a directory: no cache can be there
    path = tmp_path / "sweep.yaml"
    path.write_text(config_text(tiny_model, tmp_path), encoding="utf-8")
    line = one_line(CliRunner().invoke(app, ["run", str(path), "--plan"]))
    assert line.startswith("error: sample cache: ") and "is a directory" in line, line
    result = CliRunner().invoke(app, ["run", str(path), "--plan", "--no-cache"])  # as the run would: no cache
    assert result.exit_code == 0 and "samples" in result.output, result.output
