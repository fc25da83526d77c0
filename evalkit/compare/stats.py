"""Compare two runs setting by setting, paired by prompt, and gate on regressions.

For each setting and metric both runs have, the per-prompt differences (new - base) over the
prompts both scored give:

- the change of the mean, with a seeded percentile bootstrap CI;
- a two-sided p-value from a paired sign-flip permutation test (exact when 2^n sign patterns
  are no more than ``permutations``, else that many random ones), Holm-adjusted over every
  (setting, metric) pair compared, so that the chance of any false flag in a comparison stays
  at most ``alpha``;
- ``significant``: adjusted p < alpha.

Runs whose prompts, length limit, samples per prompt, stop strings or chat settings differ
are not comparable (see :mod:`evalkit.rundir.protocol`); settings or metric definitions only one run
has are listed, not compared. A pooled metric (one value per setting over its prompts: MAUVE, Zipf's
coefficient) has no per-prompt pairs: its change is shown without a test (p is NaN, outside the Holm
family), and a gate rule that only such metrics match is refused. Metrics measured against references
(MAUVE, FID) are compared only when both runs used the same references.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from evalkit.config.schema import split_metric
from evalkit.errors import EvalkitError, shown
from evalkit.inputs import check_path_text
from evalkit.rundir.protocol import cross_engine, differences, protocol
from evalkit.scoring import bootstrap_ci
from evalkit.scoring.aggregate import POOLED
from evalkit.seeds import derive_seed
from evalkit.rundir.reader import Run
from evalkit.rundir.reader import load_run

DELTA_COLUMNS = ["setting_id", "metric", "base", "new", "delta", "ci_low", "ci_high", "p", "p_adjusted",
                 "n_prompts", "significant"]


@dataclass
class RunData:
    """What a comparison needs of a run, from its directory or from the run index."""

    label: str
    name: str
    scores: pd.DataFrame  # setting_id, prompt_id, metric, value
    protocol: dict
    metric_info: dict[str, dict]
    path: Path | None = None
    started_at: str = ""

    @classmethod
    def from_run(cls, run: Run) -> RunData:
        m = run.manifest
        return cls(m.run_id, m.name, run.scores, protocol(run), dict(m.metric_info), run.path, m.started_at)

    def info(self, metric: str) -> dict:
        return self.metric_info.get(metric, {"kind": "descriptive", "direction": 1})


def load_side(ref: str | Path, index_file: Path | None = None, *, what: str = "run") -> RunData:
    """A run directory, or a run id looked up in the run index."""
    check_path_text(ref, what)
    path = Path(ref)
    if (path / "manifest.json").is_file():
        run = load_run(path)
        if run.manifest.status != "complete":
            raise EvalkitError(f"{what}: {path} is {run.manifest.status}, not complete")
        return RunData.from_run(run)
    if index_file is None or path.exists() or len(path.parts) > 1:  # a path, not a run id
        raise EvalkitError(f"{what}: {ref} is not a run directory")
    from evalkit.index import NoSuchRun, RunIndex

    if not Path(index_file).is_file():
        raise EvalkitError(f"{what}: {ref} is not a run directory, and there is no run index at {index_file} to "
                           "look it up as a run id")
    with RunIndex(index_file, create=False) as index:
        try:
            row = index.get(str(ref))
        except NoSuchRun as e:
            raise EvalkitError(f"{what}: {ref} is not a run directory, nor a run id: {e}") from None
        if row["status"] != "complete":
            raise EvalkitError(f"{what}: run {ref} is {row['status']}, not complete")
        return RunData(row["run_id"], row["name"], index.scores(row["run_id"]), row["protocol"],
                       row["metric_info"], Path(row["path"]), row["started_at"])


def check_pattern(pattern: str, field: str) -> None:
    """A metric named on the command line is written as in a config: balanced brackets, each parameter once."""
    try:
        split_metric(pattern)
    except ValueError as e:
        raise EvalkitError(f"{field}: {e}") from None


def matches(pattern: str, metric_id: str) -> bool:
    """``self_bleu[n=4]`` matches ``self_bleu[n=4,smooth=method1,tok=words]``: same name, and every
    parameter the pattern gives has that value."""
    name, _, params = pattern.partition("[")
    base, _, own = metric_id.partition("[")
    if name.strip() != base:
        return False
    wanted = {p.strip() for p in params.rstrip("]").split(",") if p.strip()}
    return wanted <= {p for p in own.rstrip("]").split(",") if p}


def sign_flip_pvalues(diffs: list[np.ndarray], *, permutations: int, seed: int) -> np.ndarray:
    """Two-sided paired permutation p-value of the mean of each array of differences."""
    out = np.full(len(diffs), np.nan)
    by_n: dict[int, list[int]] = {}
    for i, d in enumerate(diffs):
        by_n.setdefault(len(d), []).append(i)
    for n, rows in by_n.items():
        if n == 0:
            continue
        d = np.vstack([diffs[i] for i in rows])
        exact = 2 ** n <= permutations
        if exact:
            signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        else:
            signs = np.random.default_rng(derive_seed(seed, "sign-flip", n)).choice([-1, 1], size=(permutations, n))
        observed = np.abs(d.mean(axis=1))[:, None]
        flipped = np.abs(d @ signs.T.astype(float)) / n
        hits = (flipped >= observed * (1 - 1e-12) - 1e-15).sum(axis=1)
        out[rows] = hits / len(signs) if exact else (hits + 1) / (len(signs) + 1)
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


@dataclass
class Comparison:
    base: RunData
    new: RunData
    table: pd.DataFrame  # DELTA_COLUMNS, one row per (setting, metric) compared
    not_compared: list[str] = field(default_factory=list)  # settings / metric definitions only one run has
    protocol_differences: list[str] = field(default_factory=list)  # empty unless compared with strict=False
    alpha: float = 0.05
    pooled: list[str] = field(default_factory=list)  # metrics with one value per setting: changes shown, not tested
    cross_engine: str | None = None  # the note when the runs were sampled by different engines
    # mean embedding similarity between the runs' samples per setting (evalkit.compare.homogeneity), where asked
    homogeneity: pd.DataFrame | None = None
    homogeneity_embedder: str | None = None
    permutations: int = 10_000  # of the sign-flip test: exact up to this many sign patterns


def smallest_p(n: int, permutations: int = 10_000) -> float:
    """The smallest p-value the sign-flip test can give ``n`` paired differences: 2 / 2^n when exact (the observed
    signs and their mirror image), else 1 / (permutations + 1)."""
    if n < 1:
        return 1.0
    return min(1.0, 2 / 2 ** n) if 2 ** n <= permutations else 1 / (permutations + 1)


def holm_floors(prompt_counts, permutations: int = 10_000) -> np.ndarray:
    """Each test's smallest possible p-value after Holm's adjustment over all of them: every p at the smallest its
    prompts allow (Holm's adjusted values never fall when a p-value rises, so no outcome gets under these)."""
    return holm(np.array([smallest_p(int(n), permutations) for n in prompt_counts], dtype=float))


def prompts_needed(tests: int, alpha: float, permutations: int = 10_000) -> int | None:
    """The fewest prompts whose sign-flip test can fall under ``alpha`` after Holm's adjustment over ``tests``
    comparisons (tests x the smallest p < alpha); None when no number of prompts can (the random test's smallest p,
    1 / (permutations + 1), is a floor)."""
    n = 1
    while 2 ** n <= permutations:
        if tests * smallest_p(n, permutations) < alpha:
            return n
        n += 1
    return n if tests * smallest_p(n, permutations) < alpha else None


def unreachable_rule(rule: Rule, prompts: int, bound: float, tests: int, alpha: float,
                     permutations: int = 10_000) -> EvalkitError:
    """The refusal of a gate rule that no change could break: with ``prompts`` prompts its best p-value after Holm's
    adjustment over ``tests`` tests is ``bound``, not under ``alpha``."""
    needed = prompts_needed(tests, alpha, permutations)
    instead = (f"gate on runs of at least {needed} prompts, or on fewer metrics or settings" if needed is not None
               else "gate on fewer metrics or settings")
    return EvalkitError(
        f"--fail-on: {shown(rule.metric)} could never fail: with {prompts} prompt{'s' if prompts != 1 else ''} in "
        f"common the paired sign-flip test's smallest p-value is {smallest_p(prompts, permutations):.3g}, "
        f"{bound:.3g} at best after Holm's adjustment over {tests} test{'s' if tests != 1 else ''}, not under alpha "
        f"{alpha:g}; {instead}")


def compare_runs(base: RunData, new: RunData, *, metrics: list[str] | None = None, alpha: float = 0.05,
                 level: float = 0.95, resamples: int = 2000, permutations: int = 10_000, seed: int = 0,
                 strict: bool = True, metrics_from: str = "--metric") -> Comparison:
    """Compare ``new`` with ``base``; ``metrics`` are patterns (see :func:`matches`) that narrow it
    (``metrics_from``: the option they were given with, for the message when one matches nothing)."""
    problems = differences(base.protocol, new.protocol)
    if problems and strict:
        raise EvalkitError(f"{new.label} is not comparable with {base.label}: {'; '.join(problems)}")
    not_compared = _unshared(base, new)
    keys = ["setting_id", "prompt_id", "metric"]
    both = base.scores[keys + ["value"]].merge(new.scores[keys + ["value"]], on=keys, suffixes=("_base", "_new"))
    if base.protocol.get("references") != new.protocol.get("references"):
        against = sorted({m for m in both["metric"] if base.info(m).get("against_references")
                          or new.info(m).get("against_references")})
        if against:
            both = both[~both["metric"].isin(against)]
            not_compared.append(f"metrics against references, which differ between the runs: {', '.join(against)}")
    pooled = sorted(set(both.loc[both["prompt_id"] == POOLED, "metric"]))
    if metrics:  # patterns are checked against the metrics both runs have, not against the settings they share
        shared = [m for m in dict.fromkeys(new.scores["metric"]) if m in set(base.scores["metric"])]
        for pattern in metrics:
            check_pattern(pattern, metrics_from)
            if not any(matches(pattern, m) for m in shared):
                known = ", ".join(shared) or "none"
                raise EvalkitError(f"{metrics_from}: {shown(pattern)} matches no metric both runs have ({known})")
        both = both[both["metric"].map(lambda m: any(matches(p, m) for p in metrics)).astype(bool)]
    both = both[np.isfinite(both["value_base"]) & np.isfinite(both["value_new"])]
    rows, diffs = [], []
    for (sid, metric), df in both.groupby(["setting_id", "metric"], sort=False):
        diff = (df["value_new"] - df["value_base"]).to_numpy(dtype=float)
        low, high = bootstrap_ci(diff, level=level, resamples=resamples, seed=derive_seed(seed, "delta", sid, metric))
        rows.append({"setting_id": sid, "metric": metric, "base": float(df["value_base"].mean()),
                     "new": float(df["value_new"].mean()), "delta": float(diff.mean()), "ci_low": low,
                     "ci_high": high, "n_prompts": len(diff)})
        diffs.append(diff)
    table = pd.DataFrame(rows, columns=[c for c in DELTA_COLUMNS if c not in ("p", "p_adjusted", "significant")])
    table["p"] = sign_flip_pvalues(diffs, permutations=permutations, seed=seed)
    table.loc[table["metric"].isin(pooled), "p"] = np.nan  # one value per setting: nothing to pair
    table.loc[table["metric"].isin(pooled), "n_prompts"] = 0  # not paired by prompt
    table["p_adjusted"] = holm(table["p"].to_numpy())
    table["significant"] = table["p_adjusted"] < alpha
    return Comparison(base, new, table[DELTA_COLUMNS], not_compared, problems, alpha, pooled,
                      cross_engine(base.protocol, new.protocol), permutations=permutations)


def _unshared(base: RunData, new: RunData) -> list[str]:
    out = []
    for what, a, b in (("settings", base.scores["setting_id"], new.scores["setting_id"]),
                       ("metrics", base.scores["metric"], new.scores["metric"])):
        a, b = list(dict.fromkeys(a)), list(dict.fromkeys(b))
        only_a, only_b = [x for x in a if x not in b], [x for x in b if x not in a]
        if only_a:
            out.append(f"{what} only in {base.label}: {', '.join(only_a)}")
        if only_b:
            out.append(f"{what} only in {new.label}: {', '.join(only_b)}")
    return out


# ---------------------------------------------------------------------------------------- the gate

RULE = re.compile(r"^(?P<metric>[A-Za-z_][\w]*(\[[^\]]*\])?):(?P<tol>[+-](\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?)$")


@dataclass(frozen=True)
class Rule:
    """``self_bleu[n=4]:+0.02``: a rise of more than 0.02 is a regression; ``distinct_2:-0.03``: a fall
    of more than 0.03 is. A change counts only where it is also significant."""

    metric: str
    tolerance: float  # signed: the bad direction and how far it may go
    rise_is_bad: bool  # from the sign as written ("-0" is a fall)

    @classmethod
    def parse(cls, text: str) -> Rule:
        m = RULE.match(text.strip())
        if not m:
            raise EvalkitError(f"--fail-on: {shown(text)} is not METRIC:+TOLERANCE or METRIC:-TOLERANCE "
                               f"(for example 'self_bleu[n=4]:+0.02')")
        check_pattern(m["metric"], "--fail-on")
        tolerance = float(m["tol"])
        if not np.isfinite(tolerance):
            raise EvalkitError(f"--fail-on: the tolerance of {shown(text.strip()[:80])} is not a finite number")
        return cls(m["metric"], tolerance, m["tol"].startswith("+"))

    def __str__(self) -> str:
        return f"{self.metric}:{'+' if self.rise_is_bad else '-'}{abs(self.tolerance):g}"

    def violated_by(self, row) -> bool:
        beyond = row.delta > self.tolerance if self.rise_is_bad else row.delta < self.tolerance
        return bool(row.significant) and beyond


def pooled_rule(rule: Rule, pooled: list[str]) -> EvalkitError:
    """The refusal of a rule that matches only pooled metrics (one value per setting: no paired test)."""
    return EvalkitError(f"--fail-on: {shown(rule.metric)} matches only pooled metrics (one value per setting over its "
                        f"prompts: {', '.join(pooled)}), which have no paired test to gate on")


def gate(comparison: Comparison, rules: list[Rule]) -> list[tuple[Rule, object]]:
    """(rule, row) for each significant change beyond its tolerance in the bad direction."""
    metrics = list(dict.fromkeys(comparison.table["metric"]))
    if rules and not metrics:
        raise EvalkitError("--fail-on: nothing to gate: the runs share no setting and prompt with a defined value ("
                           f"{'; '.join(comparison.not_compared)[:200] or 'no values in common'})")
    out = []
    for rule in rules:
        hit = [m for m in metrics if matches(rule.metric, m)]
        if not hit:
            raise EvalkitError(f"--fail-on: {shown(rule.metric)} matches no metric compared ({', '.join(metrics)})")
        if all(m in comparison.pooled for m in hit):
            raise pooled_rule(rule, hit)
        rows = comparison.table[comparison.table["metric"].isin(hit)]
        _check_reachable(comparison, rule, rows)
        out.extend((rule, r) for r in rows.itertuples() if rule.violated_by(r))
    return out


def _check_reachable(comparison: Comparison, rule: Rule, rows: pd.DataFrame) -> None:
    """Refuse a rule that no change could break: no row of it could get under alpha after Holm's adjustment over
    every test of the comparison (:func:`holm_floors`): a gate that would pass whatever happened."""
    tested = comparison.table[comparison.table["p"].notna()]
    bounds = pd.Series(holm_floors(tested["n_prompts"], comparison.permutations), index=tested.index)
    bounds = bounds.reindex(rows.index).dropna()
    if bounds.empty or bool((bounds < comparison.alpha).any()):
        return
    best = bounds.idxmin()
    raise unreachable_rule(rule, int(tested.loc[best, "n_prompts"]), float(bounds[best]), len(tested),
                           comparison.alpha, comparison.permutations)
