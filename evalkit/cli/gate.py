"""The regression gate of ``evalkit run --baseline`` and ``evalkit compare``: checked before a run,
then compare, print or write the result, write JUnit XML; the exit code of the gate."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from evalkit.cli.base import _check_output, _print_table, err, out, echoed
from evalkit.errors import EvalkitError, shown

RUN_ALPHA = 0.05  # the significance level of ``evalkit run --baseline``'s gate


def _compare(a, b, rules, metrics, format_, output, junit, alpha, homogeneity: bool = False) -> int:
    """Compare, print or write the result, write JUnit XML; the exit code of the gate."""
    output, junit = (p.expanduser() if p is not None else None for p in (output, junit))
    from evalkit.compare import format as compare_format
    from evalkit.compare import compare_runs, gate
    from evalkit.rundir.files import write_atomic

    narrowed = metrics or [r.metric for r in rules] or None  # a gate tests only what it gates
    comparison = compare_runs(a, b, metrics=narrowed, alpha=alpha, metrics_from="--metric" if metrics else "--fail-on")
    violations = gate(comparison, rules)
    if homogeneity:
        from evalkit.compare.homogeneity import runs_homogeneity

        comparison.homogeneity, comparison.homogeneity_embedder = runs_homogeneity(a, b)
    if format_ == "html":
        if a.path is None or b.path is None or not (a.path / "manifest.json").is_file():
            raise EvalkitError("--format html needs both run directories (the report is drawn from them)")
        from evalkit.report import write_report

        target = output or Path("reports") / f"{a.label}_vs_{b.label}.html"
        out.print(f"report: [bold]{echoed(write_report([a.path, b.path], target))}[/]", highlight=False)
    elif format_ == "text":
        if output is not None:
            plain = Console(record=True, file=io.StringIO(), width=200)
            plain.print(compare_format.text_table(comparison))
            if comparison.homogeneity is not None:
                plain.print(compare_format.homogeneity_table(comparison))
            write_atomic(output, plain.export_text().encode("utf-8"))
        else:
            _print_table(compare_format.text_table(comparison))
            if comparison.homogeneity is not None:
                _print_table(compare_format.homogeneity_table(comparison))
    else:
        text = (compare_format.as_json if format_ == "json" else compare_format.as_markdown)(comparison, violations)
        if output is not None:
            write_atomic(output, text.encode("utf-8"))
        else:
            out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
    if format_ != "json" or output is not None:
        for line in compare_format.headline(comparison, violations):
            (err if line.startswith(("REGRESSION", "  ")) else out).print(escape(line), highlight=False,
                                                                          soft_wrap=True)
    if junit is not None:
        write_atomic(junit, compare_format.junit(comparison, rules, violations))
    return 1 if violations else 0


def _check_gate(config, baseline: str, rules, junit: Path | None) -> None:
    """Before the sweep: every --fail-on rule names a metric the sweep scores, the baseline can be found,
    and the JUnit file can be written; a mistake here is found in a second, not after the run."""
    from evalkit.compare import load_side, matches
    from evalkit.compare.stats import holm_floors, pooled_rule, unreachable_rule
    from evalkit.index import TABLES, RunIndex, index_path
    from evalkit.kinds import kind_of
    from evalkit.prompts import load_prompts
    from evalkit.rundir.files import check_database
    from evalkit.rundir.protocol import build_protocol, differences
    from evalkit.scoring.registry import default_registry

    created = default_registry().create_all(config.metrics, source=config.source)
    ids = [m.id for m in created]
    for rule in rules:
        hit = [m for m in created if matches(rule.metric, m.id)]
        if not hit:
            raise EvalkitError(f"--fail-on: {shown(rule.metric)} matches no metric this sweep scores "
                               f"({', '.join(ids)})")
        if all(m.pooled for m in hit):
            raise pooled_rule(rule, [m.id for m in hit])
    prompts = load_prompts(config)
    where, base = index_path(config.index, config.output_dir), None
    if baseline == "latest":
        check_database(where, field="index", tables=TABLES)
        if where.is_file():
            with RunIndex(where) as db:
                latest = db.latest(config.name)
            base = load_side(latest, where, what="--baseline") if latest else None
    else:
        base = load_side(baseline, where, what="--baseline")
    if base is not None:  # what the run's protocol will be, as far as the config tells it
        planned = build_protocol(kind_of(config).name, config.model_dump(mode="json"),
                                 {p.id: p.display for p in prompts})
        problems = differences({k: v for k, v in base.protocol.items() if k in planned}, planned)
        if problems:
            raise EvalkitError(f"--baseline: this sweep would not be comparable with {base.label}: "
                               f"{'; '.join(problems)}")
    if rules:
        # the gate's tests: every setting both runs have x every metric a rule matches (without a baseline yet: a
        # lower bound, 1), each with at most every prompt: the bound _check_reachable applies after the sweep
        gated = {m.id for m in created if not m.pooled and any(matches(r.metric, m.id) for r in rules)}
        tests = 1 if base is None else (len({s.id for s in config.settings()} & set(base.scores["setting_id"]))
                                        * len(gated & set(base.scores["metric"])))
        bound = float(holm_floors([len(prompts)] * tests).min()) if tests else 0.0
        if bound >= RUN_ALPHA:
            raise unreachable_rule(rules[0], len(prompts), bound, tests, RUN_ALPHA)
    if junit is not None:
        _check_output(junit.expanduser(), "--junit", [base.path] if base is not None and base.path else [], where)


def _gate_on_baseline(result, baseline: str, rules, junit) -> int:
    from evalkit.compare import RunData, load_side
    from evalkit.index import RunIndex, index_path

    where = index_path(result.config.get("index"), result.config.get("output_dir", "runs"))
    if baseline == "latest":
        with RunIndex(where) as db:
            baseline = db.latest(result.manifest.name, exclude=result.manifest.run_id)
        if baseline is None:
            why = (f"no earlier complete run named {result.manifest.name} in {where}: nothing to compare; this run "
                   "is the baseline of the next")
            out.print(echoed(why), highlight=False, soft_wrap=True)
            if junit is not None:
                from evalkit.compare.format import junit_without_baseline
                from evalkit.rundir.files import write_atomic

                write_atomic(junit.expanduser(), junit_without_baseline(result.manifest.name, rules, why))
            return 0
    base = load_side(baseline, where, what="--baseline")
    return _compare(base, RunData.from_run(result), rules, None, "text", None, junit, RUN_ALPHA)
