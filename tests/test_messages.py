"""Messages a user can act on: no internal class names, no Python type names, no echo of a huge input,
help texts whole, tables whole in a log, counts in words."""

import re

import pytest
import yaml
from typer.testing import CliRunner

from evalkit.cli import app
from evalkit.numbers import count

from conftest import base_config, write_jsonl


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_section_that_is_not_a_mapping_says_so_in_words(tmp_path, tiny_model, write_config):
    line = one_line(CliRunner().invoke(app, ["run", str(write_config({**base_config(tiny_model, tmp_path),
                                                                      "grid": 5}))]))
    assert line.endswith("grid: should be a mapping of keys (key: value, one per line or in {...}), got 5")
    assert "instance of" not in line and "GridConfig" not in line


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty: a sweep config is a YAML mapping with at least name and prompts"),
    ("- a\n- b\n", "expected a mapping of keys at the top level (name: ..., prompts: ...), got a list"),
    ("just words\n", "expected a mapping of keys at the top level (name: ..., prompts: ...), got a string"),
])
def test_a_config_that_is_not_a_mapping(text, message, write_config):
    line = one_line(CliRunner().invoke(app, ["run", str(write_config(text))]))
    assert line.endswith(message) and "NoneType" not in line


def test_a_byte_order_mark_is_not_an_error(tmp_path, tiny_model, write_config):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "Say hi."}\n')
    config = write_config(base_config(tiny_model, tmp_path / "runs", prompts={"file": str(prompts)}))
    result = CliRunner().invoke(app, ["run", "--plan", str(config)])
    assert result.exit_code == 0, result.output
    assert re.search(r"^prompts\s+1$", result.stdout, re.M)


@pytest.mark.parametrize("metrics", ["self_bleu[n=4", "distinct_n[n=2]],self_bleu", "self_bleu]"])
def test_unbalanced_brackets_are_named(metrics, tmp_path):
    data = write_jsonl(tmp_path / "g.jsonl", [{"prompt_id": "a", "text": "one two"}])
    line = one_line(CliRunner().invoke(app, ["score", str(data), "--metrics", metrics, "-o", str(tmp_path / "o")]))
    assert line == f"error: --metrics: unbalanced brackets in {metrics!r}: expected NAME[KEY=VALUE,...],NAME,..."


def test_a_huge_value_is_echoed_cut_short(tmp_path, tiny_model, write_config):
    """A YAML alias bomb under a metric parameter (9^8 strings) is refused in a short line, quickly."""
    config = yaml.safe_dump(base_config(tiny_model, tmp_path, metrics=["distinct_1"]))
    text = config.replace("- distinct_1", "- {name: distinct_n, n: " + _nested() + "}")
    line = one_line(CliRunner().invoke(app, ["run", "--plan", str(write_config(text))]))
    assert len(line) < 300 and line.endswith("...") and "metrics[0].n: Input should be a valid integer" in line


def _nested() -> str:
    """The bomb as one flow value: anchors defined inside it, each level nine aliases of the one before."""
    value = "&a0 [" + ", ".join(["lol"] * 9) + "]"
    for i in range(1, 8):
        value = f"&a{i} [{value}, " + ", ".join([f"*a{i - 1}"] * 8) + "]"
    return value


def test_help_texts_are_whole():
    for command, text in [("runs", "Run index file (default: $EVALKIT_INDEX, else runs/index.sqlite)."),
                          ("report", "(default: RUN_DIR/report.html for one run, reports/BASE_vs_NEW.html for")]:
        result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0 and text in result.output, result.output
        assert "<bool>" not in result.output and "--no-debug" not in result.output


def test_no_help_text_shows_a_python_type():
    """typer writes a variadic argument's type as its annotation (<list[Path]>): no command's help shows one."""
    import typer

    commands = typer.main.get_command(app).commands
    assert "report" in commands
    for name in commands:
        result = CliRunner().invoke(app, [name, "--help"], terminal_width=200)
        assert result.exit_code == 0, (name, result.output)
        assert "<list[" not in result.output and "Path]" not in result.output, (name, result.output)
    usage = CliRunner().invoke(app, ["report", "--help"], terminal_width=200).output
    assert "RUN_DIR" in usage.splitlines()[0] and "one run directory (RUN_DIR), or of several" in usage


def test_tables_are_not_cut_in_a_log(tmp_path):
    """Piped output (CI logs) keeps every cell whole, however long."""
    from evalkit.index import RunIndex

    long_name = "a-sweep-with-a-rather-long-name-that-a-team-might-well-use-" + "x" * 60
    with RunIndex(tmp_path / "index.sqlite") as db:
        db.db.execute("INSERT INTO runs (run_id, name, path, kind, status, started_at, protocol, metric_info, "
                      "recorded_at) VALUES (?, ?, ?, 'text', 'complete', '2026-01-01T00:00:00Z', '{}', '{}', "
                      "'2026-01-01T00:00:00Z')", (f"20260101T000000Z-{long_name}", long_name, str(tmp_path)))
    result = CliRunner().invoke(app, ["runs", "--index", str(tmp_path / "index.sqlite")])
    assert result.exit_code == 0, result.output
    assert f"20260101T000000Z-{long_name}" in result.stdout and "…" not in result.stdout


def test_counts_in_words():
    assert [count(1, "prompts"), count(2, "prompts"), count(0, "settings"), count(1, "images")] == [
        "1 prompt", "2 prompts", "0 settings", "1 image"]


def test_an_error_in_a_progress_phase_leaves_no_line_off_a_terminal():
    """In a log or a pipe (CI) the error's own line is all that follows: no empty line left by the progress bar."""
    import io

    from rich.console import Console

    from evalkit.progress import RichProgress

    written = io.StringIO()
    progress = RichProgress(Console(file=written))  # a file: not a terminal
    with pytest.raises(ValueError):
        with progress.phase("loading"):
            raise ValueError("no server")
    assert written.getvalue() == ""
    with progress.phase("loading"):
        pass
    assert written.getvalue().split() == ["loading", "0:00:00", "done"]  # a phase that ends keeps its last line
