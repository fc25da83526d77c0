"""A comparison written for people (text, markdown), for programs (json) and for CI (JUnit XML)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

from evalkit.compare.stats import Comparison, Rule
from evalkit.numbers import fmt


def _cell(r, info: dict) -> str:
    if math.isnan(r.p):  # a pooled metric: not tested
        return f"{r.delta:+.3g} (untested)"
    if not r.significant:
        mark = ""
    elif info.get("kind") == "descriptive":
        mark = " *"
    else:
        mark = " ↑" if r.delta * info.get("direction", 1) > 0 else " ↓"
    return f"{r.delta:+.3g}{mark}"


def _grid(c: Comparison) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Metrics (columns) and, per setting, the change of each metric."""
    metrics = list(dict.fromkeys(c.table["metric"]))
    by = {(r.setting_id, r.metric): r for r in c.table.itertuples()}
    rows = []
    for sid in dict.fromkeys(c.table["setting_id"]):
        rows.append((sid, [_cell(by[sid, m], c.base.info(m)) if (sid, m) in by else "" for m in metrics]))
    return metrics, rows


def headline(c: Comparison, violations: list) -> list[str]:
    n_sig = int(c.table["significant"].sum())
    untested = int(c.table["metric"].isin(c.pooled).sum())
    lines = [f"{c.new.label} against {c.base.label}: {len(c.table) - untested} setting x metric changes tested, "
             f"{n_sig} significant (paired permutation test, Holm-adjusted, alpha {c.alpha:g})"]
    if untested:
        lines.append(f"not tested: {untested} changes of pooled metrics (one value per setting, no per-prompt "
                     f"pairs): {', '.join(c.pooled)}")
    lines += [f"not compared: {p}" for p in c.not_compared]
    if c.cross_engine:
        lines.append(c.cross_engine)
    if violations:
        lines.append(f"REGRESSION: {len(violations)} change(s) beyond tolerance:")
        lines += [f"  {r.setting_id} {r.metric}: {fmt(r.base)} -> {fmt(r.new)} ({r.delta:+.4g}, "
                  f"CI [{r.ci_low:+.4g}, {r.ci_high:+.4g}], p_adj {r.p_adjusted:.2g}) breaks {rule}"
                  for rule, r in violations]
    return lines


def as_markdown(c: Comparison, violations: list) -> str:
    metrics, rows = _grid(c)
    out = [f"**{line}**" if i == 0 else f"- {line}" for i, line in enumerate(headline(c, violations))]
    out += ["", "| setting | " + " | ".join(f"`{m}`" for m in metrics) + " |",
            "| --- |" + " ---: |" * len(metrics)]
    out += [f"| `{sid}` | " + " | ".join(cells) + " |" for sid, cells in rows]
    out += ["", "Change of the mean (new - base); ↑ better or more diverse, ↓ worse or less diverse, * changed "
                "(descriptive), where significant."]
    if c.homogeneity is not None:
        out += ["", f"**Homogeneity** ({HOMOGENEITY}; embedder `{c.homogeneity_embedder}`)", "",
                "| setting | across the runs | within base | within new | prompts |",
                "| --- | ---: | ---: | ---: | ---: |"]
        out += [f"| `{r.setting_id}` | {fmt(r.across)} | {fmt(r.within_base)} | {fmt(r.within_new)} | {r.n_prompts} |"
                for r in c.homogeneity.itertuples()]
    return "\n".join(out) + "\n"


HOMOGENEITY = ("mean cosine similarity of sentence embeddings between the runs' samples of the same prompt, beside "
               "each run's own over distinct pairs; mean over prompts")


def homogeneity_table(c: Comparison):
    """A rich Table of the runs' homogeneity per setting."""
    from rich.table import Table

    table = Table(title=f"homogeneity (embedder {c.homogeneity_embedder})", caption=HOMOGENEITY)
    for column in ("setting", "across the runs", "within base", "within new", "prompts"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for r in c.homogeneity.itertuples():
        table.add_row(r.setting_id, fmt(r.across), fmt(r.within_base), fmt(r.within_new), str(r.n_prompts))
    return table


def as_json(c: Comparison, violations: list) -> str:
    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    return json.dumps({
        "base": c.base.label, "new": c.new.label, "alpha": c.alpha, "not_compared": c.not_compared,
        "cross_engine": c.cross_engine,
        "changes": [{k: clean(v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                    for row in c.table.to_dict("records")],
        "regressions": [{"rule": str(rule), "setting_id": r.setting_id, "metric": r.metric, "delta": r.delta}
                        for rule, r in violations],
        **({} if c.homogeneity is None else {
            "homogeneity": {"embedder": c.homogeneity_embedder, "settings": [
                {k: clean(v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                for row in c.homogeneity.to_dict("records")]}}),
    }, indent=2, ensure_ascii=False) + "\n"


def text_table(c: Comparison):
    """A rich Table: settings x metrics, each cell the change with an arrow where significant."""
    from rich.table import Table

    metrics, rows = _grid(c)
    table = Table(title="change of the mean (new - base)", caption="↑ better or more "
                  "diverse, ↓ worse or less diverse, * changed; only where significant")
    table.add_column("setting")
    for m in metrics:
        table.add_column(m.split("[")[0], justify="right")
    for sid, cells in rows:
        table.add_row(sid, *cells)
    return table


def junit_without_baseline(name: str, rules: list[Rule], why: str) -> bytes:
    """The gate's JUnit file where there was nothing to compare with (a nightly job's first night): one skipped
    test case per rule, so that a CI job finds the file and reads why nothing was gated."""
    cases = [str(rule) for rule in rules] or ["baseline"]
    suite = ET.Element("testsuite", name="evalkit.compare", tests=str(len(cases)), failures="0",
                       skipped=str(len(cases)))
    for case in cases:
        ET.SubElement(ET.SubElement(suite, "testcase", classname=name, name=case), "skipped", message=why)
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="utf-8", xml_declaration=True)


def junit(c: Comparison, rules: list[Rule], violations: list) -> bytes:
    """One test case per (rule, setting): a failure where the rule is broken."""
    from evalkit.compare.stats import matches

    bad = {(str(rule), r.setting_id, r.metric): r for rule, r in violations}
    suite = ET.Element("testsuite", name="evalkit.compare", tests="0", failures=str(len(violations)))
    if c.cross_engine:  # the CI's view of the gate says so too
        ET.SubElement(ET.SubElement(suite, "properties"), "property", name="cross_engine", value=c.cross_engine)
    count = 0
    for rule in rules:
        for r in c.table.itertuples():
            if not matches(rule.metric, r.metric) or r.metric in c.pooled:  # pooled: no test, so no test case
                continue
            count += 1
            case = ET.SubElement(suite, "testcase", classname=f"{c.new.name}.{r.setting_id}",
                                 name=f"{r.metric} {rule}")
            hit = bad.get((str(rule), r.setting_id, r.metric))
            if hit is not None:
                failure = ET.SubElement(case, "failure", message=f"{r.metric} changed by {r.delta:+.4g} "
                                        f"(rule {rule}, p_adj {r.p_adjusted:.2g})")
                failure.text = (f"{c.base.label}: {fmt(r.base)}; {c.new.label}: {fmt(r.new)}; "
                                f"CI [{r.ci_low:+.4g}, {r.ci_high:+.4g}] over {r.n_prompts} prompts")
    suite.set("tests", str(count))
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="utf-8", xml_declaration=True)
