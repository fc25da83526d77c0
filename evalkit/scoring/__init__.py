"""Scoring: the metric plugin contract, the registry, metrics applied to groups, and aggregation."""

from evalkit.scoring.aggregate import aggregate, bootstrap_ci
from evalkit.scoring.groups import groups_of, score_groups, score_samples

__all__ = ["aggregate", "bootstrap_ci", "groups_of", "score_groups", "score_samples"]
