"""pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): the chance that at
least one of k samples drawn without replacement from a group's n samples passes the prompt's tests.

Unbiased estimator: 1 - C(n-c, k) / C(n, k) with c the samples that pass, computed as the product
1 - prod_{i=n-c+1..n} (1 - k/i) (the paper's numerically stable form); 1 when n - c < k; undefined
when k > n.

A sample's code is the first fenced code block of its text (```` ``` ```` or ```` ```python ````), else the
whole text; in completion mode (no chat template: the sample continues the prompt's code) the whole text, since
a fence there (in a docstring or a comment) is code, not Markdown. What runs is the prompt's ``code_prefix`` and
the code, as the candidate's module, then the prompt's ``tests`` and ``check(entry_point)`` when the tests define a
function ``check`` (HumanEval's convention), in another process that the candidate's code cannot reach (see
:mod:`evalkit.sandbox`); a sample passes when its tests run to their end within ``timeout`` seconds. A sample
whose program is seen tampering with the harness fails, with the reason in its per-sample row
(``sample_scores.parquet``).
"""

from __future__ import annotations

import ast
import functools
import re

from pydantic import BaseModel, ConfigDict, Field

from evalkit.checks import Checks, check_function
from evalkit.sandbox import Limits, Outcome, Program, Sandbox
from evalkit.scoring.metric import Group, Metric, Score

_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c pass (requires 1 <= k <= n, 0 <= c <= n)."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def extract_code(text: str) -> str:
    """The first fenced code block of ``text`` (an unclosed fence runs to the end), else the whole text."""
    m = _FENCE.search(text)
    return m.group(1) if m else text


@functools.lru_cache(maxsize=1024)
def _defines_check(tests: str) -> bool:
    """Whether the tests define HumanEval's check (parsed once per tests, not once per sample)."""
    try:
        return check_function(ast.parse(tests)) is not None
    except SyntaxError:
        return False


def program(text: str, checks: Checks) -> Program:
    """What tests one sample: its code after the prompt's prefix, then the tests (and HumanEval's check call)."""
    call = f"\n\ncheck({checks.entry_point})\n" if _defines_check(checks.tests or "") else "\n"
    code = text if checks.completion else extract_code(text)  # completion mode: fences in it are code
    return Program(code=code, tests=f"{checks.tests}{call}", prefix=checks.code_prefix,
                   entry_point=checks.entry_point or "")


class PassAtKParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    k: int = Field(1, ge=1, le=10_000)
    timeout: float = Field(3.0, gt=0, le=600)  # wall-clock seconds per sample's program


class PassAtK(Metric):
    name = "pass_at_k"
    kind = "quality"
    definition = ("chance that at least one of k samples of a group passes the prompt's tests: "
                  "1 - C(n-c, k)/C(n, k), c of n samples passing (sandboxed, 1 GiB, timeout in the id)")
    reference = "Chen et al. 2021, Evaluating Large Language Models Trained on Code (the unbiased estimator)"
    Params = PassAtKParams
    needs = frozenset({"texts", "tests"})

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params)
        self.sandbox = Sandbox(Limits(timeout=self.params.timeout))
        self._outcomes: dict[tuple[str, str], tuple[Outcome, ...]] = {}

    @property
    def base_name(self) -> str:
        return f"pass_at_{self.params.k}"

    def signature(self) -> dict[str, object]:
        return {"timeout": f"{self.params.timeout:g}"}

    def prepare(self) -> None:
        self.sandbox.check()

    def prepare_groups(self, groups: list[Group]) -> None:
        """Run every group's programs together (the sandbox runs them in parallel and each distinct one once)."""
        self._outcomes = self._run([g for g in groups if g.checks is not None and g.checks.tests is not None])

    def _run(self, groups: list[Group]) -> dict[tuple[str, str], tuple[Outcome, ...]]:
        """Each sample's outcome, by (prompt, setting)."""
        outcomes = iter(self.sandbox.run_many([program(t, g.checks) for g in groups for t in g.texts]))
        return {(g.prompt_id, g.setting.id): tuple(next(outcomes) for _ in g.texts) for g in groups}

    def compute(self, group: Group) -> Score:
        if group.checks is None or group.checks.tests is None:
            return Score.undefined(f"prompt {group.prompt_id!r} has no tests")
        key = (group.prompt_id, group.setting.id)
        outcomes = self._outcomes[key] if key in self._outcomes else self._run([group])[key]
        passed = tuple(float(o.passed) for o in outcomes)
        reasons = tuple(o.reason for o in outcomes)  # a tampering sample's (None for any other)
        reasons = reasons if any(reasons) else None
        n, k = len(passed), self.params.k
        if k > n:
            return Score(float("nan"), f"pass@{k} needs at least {k} samples per prompt and setting, got {n}",
                         passed, reasons)
        return Score(pass_at_k(n, int(sum(passed)), k), per_sample=passed, per_sample_reasons=reasons)
