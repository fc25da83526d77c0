"""``evalkit conformance --html``: one offline page in the report's style: the facts, every row, the seed and logprob
checks, and observed vs expected bars (inline SVG) for the worst rows. Every text is escaped (token texts are model
output)."""

from __future__ import annotations

import html
import math
from pathlib import Path

WORST = 6  # rows drawn as bars
BAR_W, ROW_H, LABEL_W = 260, 18, 170  # pixels


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _p(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def worst(cases: list, n: int = WORST) -> list:
    """Failures first, then the smallest Holm p, then the largest distance beyond chance."""
    def key(c):
        failed = c.verdict.startswith("fail")
        p = c.adjusted if not math.isnan(c.adjusted) else 1.0
        return (not failed, p, -(c.distance - c.chance))
    return sorted(cases, key=key)[:n]


def bars_svg(bars: list[tuple[str, float, float]]) -> str:
    """Two bars per category: the draws' share (filled) over the expected probability (outlined)."""
    top = max([max(o, e) for _, o, e in bars] + [1e-9])
    height = ROW_H * len(bars) + 22
    parts = [f'<svg width="{LABEL_W + BAR_W + 110}" height="{height}" role="img" '
             'aria-label="observed share vs expected probability per category">']
    for i, (label, observed, expected) in enumerate(bars):
        y = 4 + i * ROW_H
        shown = label if len(label) <= 24 else label[:23] + "…"
        parts.append(f'<g><title>{_e(label)}: observed {observed:.4f}, expected {expected:.4f}</title>'
                     f'<text x="{LABEL_W - 6}" y="{y + 12}" text-anchor="end" font-size="11" '
                     f'font-family="ui-monospace, monospace">{_e(shown)}</text>'
                     f'<rect x="{LABEL_W}" y="{y + 1}" width="{BAR_W * expected / top:.1f}" height="{ROW_H - 4}" '
                     'fill="none" stroke="#667085" stroke-width="1.2"/>'
                     f'<rect x="{LABEL_W}" y="{y + 4}" width="{BAR_W * observed / top:.1f}" height="{ROW_H - 10}" '
                     'fill="#2f5fd0"/>'
                     f'<text x="{LABEL_W + BAR_W + 6}" y="{y + 12}" font-size="11" fill="#667085">'
                     f'{observed:.3f} / {expected:.3f}</text></g>')
    y = 4 + len(bars) * ROW_H + 12
    parts.append(f'<text x="{LABEL_W}" y="{y}" font-size="11" fill="#667085">filled: the draws\' share; outlined: '
                 'the expected probability</text></svg>')
    return "".join(parts)


def _row(c) -> str:
    cls = "good" if c.verdict == "pass" else "bad" if c.verdict.startswith("fail") else "chg"
    return (f'<tr><td class="setting">{_e(c.setting)}</td><td>{_e(c.context)}</td><td>{_e(c.fit.test)}</td>'
            f'<td class="num">{_p(c.adjusted)}</td><td class="num">{c.distance:.3f}</td>'
            f'<td class="num">{c.chance:.3f}</td><td>{_e(c.control or "-")}</td>'
            f'<td class="num">{_p(c.control_adjusted)}</td><td><span class="verdict {cls}">{_e(c.verdict)}</span>'
            + (f"<small>{_e(c.note)}</small>" if c.note else "") + "</td></tr>")


def page(report) -> str:
    """The page of a :class:`evalkit.conformance.core.Report`."""
    css = (Path(__file__).parent.parent / "report" / "templates" / "report.css").read_text(encoding="utf-8")
    n = report.counts()
    facts = [("backend", report.backend), ("order auto means", report.order), ("expected", report.reference),
             ("draws per row", report.options.draws), ("alpha", f"{report.options.alpha:g} (Holm)"),
             ("seed", report.options.seed), ("seeds sent", report.seed_mapping),
             ("rows", f"{n['pass']} pass, {n['fail']} fail, {n['inconclusive']} inconclusive"),
             ("time", f"{report.seconds:.1f} s"), ("verdict", "FAILED" if report.failed else "passed")]
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>evalkit conformance: {_e(report.backend)}</title><style>{css}",
           ".verdict.good{color:var(--good-fg)}.verdict.bad{color:var(--bad-fg);font-weight:600}"
           ".verdict.chg{color:var(--chg-fg)}</style></head><body>",
           '<header class="top"><span class="brand">evalkit <span>conformance</span></span>',
           f"<h1>{_e(report.backend)}</h1></header><main>",
           '<section><div class="cards"><div class="card"><dl class="facts">',
           "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts), "</dl></div></div></section>",
           "<section><h2>Rows</h2><p class=\"help\">p: Holm-adjusted; distance: total variation of the draws from the "
           "expected distribution (by chance: a conforming backend's at these draws); control: the wrong chain the "
           "same draws must reject.</p><div class=\"scroll\"><table><thead><tr>",
           "".join(f"<th>{h}</th>" for h in ("setting", "context", "test", "p", "distance", "by chance", "control",
                                             "control p", "verdict")),
           "</tr></thead><tbody>", "".join(_row(c) for c in report.cases), "</tbody></table></div></section>"]
    checks = [(f"seeds, {s.name}", f"{s.equal}/{s.total} equal ({s.distinct} distinct)" + (f"; {s.note}" if s.note
                                                                                             else ""), s.passed)
              for s in report.seeds]
    checks += [(f"logprobs at {c.setting}, {c.context}", f"{c.why()} (from the raw model {c.distance_raw:.4f}, from "
                f"the processed distribution {c.distance_processed:.4f}, sum {c.total:.4f})", c.passed)
               for c in report.logprobs]
    if checks:
        out.append("<section><h2>Seeds and logprobs</h2><div class=\"scroll\"><table><tbody>")
        out += [f'<tr><td class="setting">{_e(name)}</td><td>{_e(what)}</td><td><span class="verdict '
                f'{"good" if ok else "bad"}">{"ok" if ok else "FAILED"}</span></td></tr>' for name, what, ok in checks]
        out.append("</tbody></table></div></section>")
    shown = [c for c in worst(report.cases) if c.bars]
    if shown:
        out.append("<section><h2>Observed vs expected, the worst rows</h2><div class=\"cards\">")
        for c in shown:
            out.append(f'<div class="card"><h3>{_e(c.setting)} <code>{_e(c.context)}</code></h3>'
                       f'<p class="muted">{_e(c.verdict)}; p {_p(c.adjusted)}, distance {c.distance:.3f} '
                       f'(by chance {c.chance:.3f})</p>{bars_svg(c.bars)}</div>')
        out.append("</div></section>")
    out.append("</main></body></html>\n")
    return "".join(out)
