"""Comparing runs: paired statistics per setting and metric, the gate (:mod:`evalkit.compare.stats`),
and the output formats (:mod:`evalkit.compare.format`)."""

from evalkit.compare.stats import (Comparison, Rule, RunData, compare_runs, gate, holm, load_side, matches,
                                   sign_flip_pvalues)

__all__ = ["Comparison", "Rule", "RunData", "compare_runs", "gate", "holm", "load_side", "matches",
           "sign_flip_pvalues"]
