"""The HTML report: one offline file, escaped text, the right numbers in its tables and data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from evalkit.cli import app
from evalkit.compare import RunData, compare_runs
from evalkit.report import render_report, write_report
from evalkit.report.charts import pareto_front
from evalkit.report.svg import inline_svg

from report_helpers import HOSTILE, REPORT_METRICS, hostile_run, tiny_run


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    return tiny_run(tiny_model, tmp_path_factory.mktemp("report") / "runs")


def embedded_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="evalkit-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def assert_offline(html: str) -> None:
    """Nothing in the file names another host or loads anything from outside it."""
    assert "://" not in html
    assert not re.search(r"<(link|iframe|object|embed)\b", html, re.I)
    assert not re.search(r"@import|url\((?!#)", html)
    for attr in re.findall(r'\b(?:src|href|action)\s*=\s*"([^"]*)"', html):
        assert attr.startswith(("#", "data:image/")), attr[:40]


def test_run_writes_an_offline_report_with_every_section(run):
    html = (run.path / "report.html").read_text(encoding="utf-8")
    assert_offline(html)
    for section in ("runs", "summary", "tradeoff", "metrics", "entropy", "samples"):
        assert f'<section id="{section}">' in html
    for metric in run.manifest.metrics:  # a chart pair per metric, each named in full
        assert f"<code>{metric}</code>" in html
    n_settings = len(run.manifest.settings)
    table = html.split('<table class="sortable summary">')[1].split("</table>")[0]
    assert table.count("<tr>") == n_settings + 1
    assert html.count('<figure class="chart heatmap">') == len(REPORT_METRICS)
    assert html.count('<figure class="chart entropy">') == 1


def test_summary_cells_show_the_summary_csv(run):
    html = (run.path / "report.html").read_text(encoding="utf-8")
    summary = run.summary
    for r in summary[summary["metric"] == run.manifest.metrics[0]].itertuples():
        row = re.search(rf'<td class="setting">{re.escape(r.setting_id)}</td>(.*?)</tr>', html, re.S).group(1)
        first = re.findall(r'data-v="([^"]*)"', row)[4]  # after temperature, top_p, top_k, min_p
        assert float(first) == pytest.approx(r.mean, rel=1e-12)


def test_embedded_samples_and_scores_are_the_runs_own(run):
    data = embedded_data((run.path / "report.html").read_text(encoding="utf-8"))["runs"][0]
    samples = run.samples
    assert data["settings"] == [s.id for s in run.manifest.settings]
    assert data["metrics"] == run.manifest.metrics
    for r in samples.itertuples():
        p = [pid for pid, _ in data["prompts"]].index(r.prompt_id)
        s = data["settings"].index(r.setting_id)
        text, tokens, finish = data["samples"][p][s][r.sample_index]
        assert (text, tokens, finish) == (r.text, r.num_new_tokens, r.finish_reason)
    for r in run.scores.itertuples():
        p = [pid for pid, _ in data["prompts"]].index(r.prompt_id)
        value = data["scores"][p][data["settings"].index(r.setting_id)][data["metrics"].index(r.metric)]
        assert value is None if np.isnan(r.value) else value == pytest.approx(r.value, rel=1e-12)


def test_hostile_text_is_escaped_and_carried_verbatim(tmp_path):
    run = hostile_run(tmp_path)
    html = render_report([run.path])
    assert_offline(html)
    body = html.split('<script type="application/json"')[0]
    for text in HOSTILE:
        assert text not in body  # the samples are only in the JSON, and set with textContent
    assert "<script>window" not in html and "<img" not in html and "</textarea>" not in html
    assert html.count("</script>") == 2  # the data block and the page's own script
    data = embedded_data(html)["runs"][0]
    shown = {t for per_prompt in data["samples"] for per_setting in per_prompt for t, _, _ in per_setting}
    assert shown == set(run.samples["text"])
    assert data["prompts"][0][1] == "<i>prompt</i> 0 </script>"


@pytest.mark.slow
def test_a_url_in_the_config_is_shown_without_being_a_link(tiny_model, tmp_path):
    run = tiny_run(tiny_model, tmp_path / "runs", name="url", stop=["https://example.com"])
    html = (run.path / "report.html").read_text(encoding="utf-8")
    assert_offline(html)
    assert "https:&#47;&#47;example.com" in html


@pytest.mark.parametrize("x, y, dx, dy, front", [
    ([1, 2, 3], [3, 2, 1], 1, 1, [0, 1, 2]),  # a strict trade-off: all on the front
    ([1, 2, 3], [1, 2, 3], 1, 1, [2]),  # one point beats the others on both
    ([1, 2, 3], [1, 2, 3], 1, -1, [0, 1, 2]),  # lower y is better: a trade-off again
    ([1, 2, 2], [1, 1, 1], 1, 1, [1, 2]),  # ties: neither of two equal points dominates the other
    ([0.5, 0.6, 0.55, 0.7], [10, 12, 30, 11], 1, -1, [0, 3]),  # (0.7, 11) beats (0.6, 12) and (0.55, 30)
])
def test_pareto_front(x, y, dx, dy, front):
    assert pareto_front(np.array(x, float), np.array(y, float), dx, dy).tolist() == front


def test_inline_svg_prefixes_ids_and_drops_namespaces():
    svg = ('<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/x.dtd">\n'
           '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="0 0 1 1">'
           '<metadata><rdf:RDF xmlns:cc="http://creativecommons.org/ns#"/></metadata>'
           '<defs><path id="m1" d="M0 0"/><clipPath id="c1"><rect/></clipPath></defs>'
           '<g id="cell" clip-path="url(#c1)"><use xlink:href="#m1"/></g><a href="#elsewhere"/></svg>')
    out = inline_svg(svg, "f0", {"cell": "t0.7: 0.5 <1>"})
    assert "://" not in out and "xmlns" not in out and "<metadata" not in out and "<?xml" not in out
    assert 'id="f0-m1"' in out and 'href="#f0-m1"' in out and "url(#f0-c1)" in out
    assert 'href="#elsewhere"' in out  # not an id of this figure
    assert '<g id="f0-cell" clip-path="url(#f0-c1)"><title>t0.7: 0.5 &lt;1&gt;</title>' in out


@pytest.mark.slow
def test_multi_run_report_shows_the_changes(tiny_model, tmp_path):
    first = tiny_run(tiny_model, tmp_path / "a")
    second = tiny_run(tiny_model, tmp_path / "b", seed=2)
    out = write_report([first.path, second.path], tmp_path / "both.html")
    html = out.read_text(encoding="utf-8")
    assert_offline(html)
    assert '<section id="changes">' in html
    assert html.count('<figure class="chart heatmap">') == 2 * len(REPORT_METRICS)
    deltas = compare_runs(RunData.from_run(first), RunData.from_run(second)).table
    changes = html.split('<table class="sortable deltas">')[1].split("</table>")[0]
    for r in deltas[deltas["metric"] == first.manifest.metrics[0]].itertuples():
        row = re.search(rf'<td class="setting">{re.escape(r.setting_id)}</td>(.*?)</tr>', changes, re.S).group(1)
        assert float(re.findall(r'data-v="([^"]*)"', row)[0]) == pytest.approx(r.delta, rel=1e-12)
    data = embedded_data(html)
    assert [r["label"] for r in data["runs"]] == [first.path.name, second.path.name]


@pytest.mark.slow
def test_report_command(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = CliRunner()
    result = cli.invoke(app, ["report", str(run.path), "-o", "out/r.html"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "r.html").read_text(encoding="utf-8").startswith("<!doctype html>")
    result = cli.invoke(app, ["report", str(run.path), str(run.path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / f"{run.path.name}_vs_{run.path.name}.html").is_file()


def test_infinite_values_are_shown_as_no_value(run, tmp_path):
    """A metric that overflowed (inf in scores.parquet, as an edited or older run may hold) is no value in the
    page's data (JSON has no inf), not a crash."""
    import shutil

    import pandas as pd

    copy = tmp_path / run.path.name
    shutil.copytree(run.path, copy)
    scores = pd.read_parquet(copy / "scores.parquet")
    scores.loc[scores.index[:3], "value"] = [float("inf"), float("-inf"), float("inf")]
    scores.to_parquet(copy / "scores.parquet", index=False)
    result = CliRunner().invoke(app, ["report", str(copy), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "Infinity" not in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_report_refuses_what_is_not_a_complete_run(run, tmp_path):
    cli = CliRunner()
    result = cli.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output
    assert len(result.output.strip().splitlines()) == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = json.loads((run.path / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    result = cli.invoke(app, ["report", str(broken), "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "run is failed, not complete" in result.output
    assert not (tmp_path / "x.html").exists()


@pytest.mark.slow
def test_undefined_metrics_and_small_multiples(tiny_model, tmp_path):
    """One sample per prompt (self-BLEU undefined everywhere), greedy rows, and top_k varying."""
    run = tiny_run(tiny_model, tmp_path / "runs", samples_per_prompt=1,
                   grid={"temperature": [0.0, 1.0], "top_p": [0.9, 1.0], "top_k": [0, 5]})
    html = (run.path / "report.html").read_text(encoding="utf-8")
    assert_offline(html)
    assert run.summary.loc[run.summary["metric"].str.startswith("self_bleu"), "mean"].isna().all()
    assert "Undefined in every setting" in html  # said in words, not drawn as a value
    assert "top_k=5" in html and "top_k=0" in html  # one panel per top_k
    assert '<article class="metric card wide"' in html


DEGENERATE = {  # temperatures, top_ps, top_ks, prompts, samples per prompt, empty texts
    "one setting": ([0.5], [1.0], [0], 3, 3, False),
    "one temperature, several top_p": ([0.7], [0.5, 0.9, 1.0], [0], 3, 3, False),
    "several temperatures, one top_p": ([0.3, 0.7, 1.0], [1.0], [0], 3, 3, False),
    "top_k facets": ([0.7, 1.0], [0.9, 1.0], [0, 40], 2, 2, False),
    "one prompt": ([0.5, 1.0], [0.9, 1.0], [0], 1, 3, False),
    "one sample per prompt": ([0.5, 1.0], [0.9, 1.0], [0], 3, 1, False),
    "one of everything": ([1.0], [1.0], [0], 1, 1, False),
    "every value undefined": ([0.5, 1.0], [0.9, 1.0], [0], 2, 2, True),
}


@pytest.mark.parametrize("shape", list(DEGENERATE))
def test_degenerate_grids_get_a_report(shape, tmp_path):
    """Every chart copes with one setting, one axis value, one prompt, one sample, and all-NaN metrics."""
    import itertools

    from evalkit.api import score_file
    from evalkit.report import write_report

    temps, top_ps, top_ks, prompts, samples, empty = DEGENERATE[shape]
    words = "the cat sat on a mat while dogs ran far away into the hills".split()
    rows = [{"prompt_id": f"p{p}", "temperature": t, "top_p": tp, "top_k": k, "sample_index": i,
             "text": "" if empty else " ".join(words[(p + i + j) % len(words)] for j in range(3 + i))}
            for p in range(prompts) for t, tp, k in itertools.product(temps, top_ps, top_ks) for i in range(samples)]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = score_file(path, ["distinct_2", "self_bleu", "ttr"], tmp_path / "run", progress=False)
    html = write_report([run.path], tmp_path / "report.html").read_text(encoding="utf-8")
    undefined = run.summary.groupby("metric")["mean"].apply(lambda m: m.isna().all())
    assert undefined["self_bleu[n=4,smooth=method1,tok=words]"] == (samples == 1 or empty)
    assert html.count("Undefined in every setting") == int(undefined.sum())
    assert html.count('<figure class="chart heatmap">') == int((~undefined).sum())
