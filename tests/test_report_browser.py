"""The report in a real browser: headless Chromium (Debian's package), network blocked.

Skipped where /usr/bin/chromium or Playwright is missing, unless EVALKIT_REQUIRE_BROWSER=1
(.ci/run sets it, after installing Chromium), where a missing browser fails instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from report_helpers import HOSTILE, hostile_run, tiny_run

CHROMIUM = os.environ.get("EVALKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def _need(what: str) -> None:
    if os.environ.get("EVALKIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required but {what} is missing")
    pytest.skip(f"{what} is missing (Debian: apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright")
    if not Path(CHROMIUM).exists():
        _need(CHROMIUM)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Page:
    """A page opened offline, recording console errors, page errors, dialogs and every request."""

    def __init__(self, browser, path: Path):
        self.context = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.errors, self.dialogs, self.requests = [], [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)

    def texts(self, column: int) -> list[str]:
        return self.page.eval_on_selector_all(f"#sb-cols .sample-col:nth-child({column}) .text",
                                              "els => els.map(e => e.textContent)")

    def close(self):
        self.context.close()


def expected(run, prompt_index: int, setting_id: str) -> list[str]:
    samples = run.samples
    prompt = list(dict.fromkeys(samples["prompt_id"]))[prompt_index]
    rows = samples[(samples["prompt_id"] == prompt) & (samples["setting_id"] == setting_id)]
    return list(rows.sort_values("sample_index")["text"])


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    return tiny_run(tiny_model, tmp_path_factory.mktemp("browser") / "runs")


def test_report_renders_offline_with_working_views(browser, run, tmp_path):
    view = Page(browser, run.path / "report.html")
    page = view.page
    try:
        assert view.errors == []
        assert view.requests == [view.url]  # the file itself, nothing else

        # every visible chart has drawn marks with a size; hidden trade-off pairs have marks too
        charts = page.eval_on_selector_all("figure.chart svg", """svgs => svgs.map(s => ({
            marks: s.querySelectorAll('path, rect, use').length,
            width: s.getBoundingClientRect().width,
            hidden: s.closest('figure').hidden }))""")
        n_metrics = len(run.manifest.metrics)
        assert len(charts) >= 2 * n_metrics + 2
        assert all(c["marks"] >= 5 for c in charts)
        assert all(c["width"] > 100 for c in charts if not c["hidden"])
        cells = page.eval_on_selector_all("figure.heatmap svg g[id] > title", "ts => ts.map(t => t.textContent)")
        assert len(cells) == n_metrics * len(run.manifest.settings)
        assert all("CI" in c for c in cells)

        # sample browser: the first prompt and setting, then another setting, then side by side
        settings = [s.id for s in run.manifest.settings]
        assert view.texts(1) == expected(run, 0, settings[0])
        other = next(i for i, s in enumerate(settings) if expected(run, 0, s) != expected(run, 0, settings[0]))
        page.select_option("#sb-a", str(other))
        assert view.texts(1) == expected(run, 0, settings[other])
        page.check("#sb-side")
        columns = page.eval_on_selector_all("#sb-cols .sample-col", "cs => cs.map(c => c.dataset.setting)")
        assert columns == [settings[other], settings[-1]]
        assert view.texts(2) == expected(run, 0, settings[-1])
        page.select_option("#sb-prompt", "1")
        assert view.texts(1) == expected(run, 1, settings[other])
        assert view.texts(2) == expected(run, 1, settings[-1])

        # sorting the summary table by a metric, both ways
        column = 5  # setting, temperature, top_p, top_k, min_p, then the first metric
        header = page.locator("table.summary th").nth(column)

        def values():
            return page.eval_on_selector_all(
                "table.summary tbody tr", f"rows => rows.map(r => r.cells[{column}].dataset.v)")

        header.click()
        up = [float(v) for v in values()]
        assert up == sorted(up)
        header.click()
        assert [float(v) for v in values()] == sorted(up, reverse=True)

        # trade-off: choosing the axes shows that pair's chart
        ys = page.eval_on_selector_all("#tradeoff-y option", "os => os.map(o => o.value)")
        xs = page.eval_on_selector_all("#tradeoff-x option", "os => os.map(o => o.value)")
        page.select_option("#tradeoff-x", xs[-1])
        page.select_option("#tradeoff-y", ys[-1])
        shown = page.eval_on_selector_all("figure.pair:not([hidden])", "fs => fs.map(f => [f.dataset.x, f.dataset.y])")
        assert shown == [[xs[-1], ys[-1]]]

        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
        assert view.errors == [] and view.dialogs == []
    finally:
        view.close()


def test_hostile_samples_show_literally_and_nothing_runs(browser, tmp_path):
    from evalkit.report import write_report

    run = hostile_run(tmp_path)
    view = Page(browser, write_report([run.path], tmp_path / "hostile.html"))
    page = view.page
    try:
        seen = set()
        settings = [s.id for s in run.manifest.settings]
        for p in range(2):
            page.select_option("#sb-prompt", str(p))
            assert page.text_content("#sb-prompt-text") == f"<i>prompt</i> {p} </script>"
            for s in range(len(settings)):
                page.select_option("#sb-a", str(s))
                shown = view.texts(1)
                assert shown == expected(run, p, settings[s])
                seen.update(shown)
        assert seen == set(HOSTILE) & set(run.samples["text"]) and len(seen) >= 6
        assert page.evaluate("window.__xss") is None
        # the texts are text: no element was made from them
        assert page.is_hidden("#sb-prompt-image") and page.is_hidden("#sb-references")  # a text run has no image
        assert page.eval_on_selector_all("#sb-cols .text *, #sb-prompt-text *, main img, "
                                         "main textarea",
                                         "els => els.length") == 0
        assert view.dialogs == [] and view.errors == []
        assert view.requests == [view.url]
    finally:
        view.close()


def test_history_page_renders_offline_with_the_regression_marked(browser, tmp_path):
    from test_index import nightly_runs

    from evalkit.history import load_history, write_history_html
    from evalkit.index import RunIndex
    from evalkit.rundir.reader import load_run

    paths = nightly_runs(tmp_path / "runs", drop_on=2)
    with RunIndex(tmp_path / "index.sqlite") as index:
        for p in paths:
            index.record(load_run(p))
        history = load_history(index, "nightly")
    view = Page(browser, write_history_html(history, tmp_path / "history.html"))
    page = view.page
    try:
        assert view.errors == [] and view.requests == [view.url]
        charts = page.eval_on_selector_all("figure.chart svg", """svgs => svgs.map(s => ({
            marks: s.querySelectorAll('path, use').length, width: s.getBoundingClientRect().width}))""")
        assert len(charts) == len(history.metrics) and all(c["marks"] > 20 and c["width"] > 300 for c in charts)
        marked = page.eval_on_selector_all("svg g[id] > title", "ts => ts.map(t => t.textContent)")
        assert [t for t in marked if t.endswith("REGRESSION")] == [
            t for t in marked if t.startswith(f"{paths[2].name} ") and "REGRESSION" in t]
        assert sum(t.endswith("REGRESSION") for t in marked) == 1
        page.screenshot(path=str(tmp_path / "history.png"), full_page=True)
        assert (tmp_path / "history.png").stat().st_size > 30_000
    finally:
        view.close()


def test_image_run_shows_image_grids(browser, tiny_sd, tmp_path, monkeypatch):
    import evalkit
    from evalkit.config import config_from_dict
    from tiny_diffusion import t2i_config

    pipeline, clip = tiny_sd
    run = evalkit.run_sweep(config_from_dict(t2i_config(pipeline, clip, tmp_path / "runs", report=True)),
                            progress=False)
    view = Page(browser, run.path / "report.html")
    page = view.page
    try:
        assert view.errors == [] and view.requests == [view.url]

        def shown(column=1):
            return page.eval_on_selector_all(f"#sb-cols .sample-col:nth-child({column}) img",
                                             "ims => ims.map(i => [i.naturalWidth, i.src.length, i.src.slice(-40)])")

        first = shown()
        assert len(first) == 3 and all(w == 32 and n > 500 for w, n, _ in first)  # thumbnails keep 32 px images
        page.select_option("#sb-a", "3")
        assert [s for _, _, s in shown()] != [s for _, _, s in first]
        page.check("#sb-side")
        assert len(shown(2)) == 3
        heatmaps = page.eval_on_selector_all("figure.heatmap svg", "ss => ss.map(s => s.getBoundingClientRect().width)")
        assert len(heatmaps) == 3 and min(heatmaps) > 100
        page.screenshot(path=str(tmp_path / "images.png"), full_page=True)
    finally:
        view.close()

    # beyond the report's size budget, the last image of each group is named instead of inlined
    from evalkit.report import thumbnails, write_report

    largest = max(len(thumbnails.thumbnail(run.path / p, 48)) for p in run.samples["image_path"])
    monkeypatch.setattr(thumbnails, "BUDGET", largest * 8 * 2)
    small = write_report([run.path], tmp_path / "small.html")
    view = Page(browser, small)
    try:
        assert view.errors == []
        assert view.page.eval_on_selector_all("#sb-cols img", "ims => ims.length") == 2
        named = view.page.eval_on_selector_all("#sb-cols .not-inline", "ds => ds.map(d => d.textContent)")
        assert len(named) == 1 and named[0].startswith("not in the report (size budget): images/")
    finally:
        view.close()


def test_caption_run_shows_each_prompt_image_and_its_references(browser, tiny_vlms, tmp_path):
    import evalkit
    from evalkit.config import config_from_dict
    from tiny_vlm import vlm_config, write_images

    images = write_images(tmp_path / "images")
    config = vlm_config(tiny_vlms["llava"], images, tmp_path / "runs", report=True)
    config["prompts"]["items"][1]["references"] = ["<b>two</b> cats", "</script><i>x</i>"]
    run = evalkit.run_sweep(config_from_dict(config), progress=False)
    view = Page(browser, run.path / "report.html")
    page = view.page
    try:
        assert view.errors == [] and view.requests == [view.url]
        seen = []
        for p, (width, height) in enumerate([(48, 32), (40, 40), (32, 48)]):  # the images' own sizes
            page.select_option("#sb-prompt", str(p))
            natural = page.eval_on_selector("#sb-prompt-image img", "i => [i.naturalWidth, i.naturalHeight, i.src]")
            assert natural[:2] == [width, height] and page.is_visible("#sb-prompt-image")
            seen.append(natural[2])
            refs = page.eval_on_selector_all("#sb-references li", "ls => ls.map(l => l.textContent)")
            assert refs == list(run.samples[run.samples["prompt_id"] == f"img{p}"]["references"].iloc[0])
            assert page.is_hidden("#sb-references") == (not refs)
            assert view.texts(1) == expected(run, p, run.manifest.settings[0].id)
        assert len(set(seen)) == 3
        page.select_option("#sb-prompt", "1")
        assert page.eval_on_selector_all("#sb-references li", "ls => ls.map(l => l.textContent)") == [
            "<b>two</b> cats", "</script><i>x</i>"]
        assert page.eval_on_selector_all("#sb-references li *", "els => els.length") == 0  # text, not markup
        page.screenshot(path=str(tmp_path / "captions.png"), full_page=True)
    finally:
        view.close()
