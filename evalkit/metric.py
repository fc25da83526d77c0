"""The metric plugin contract under its former name: plugins written as ``from evalkit.metric import Metric``
keep loading. New code imports :mod:`evalkit.scoring.metric`."""

from evalkit.scoring.metric import NEEDS, Group, Metric, NoParams, Score

__all__ = ["NEEDS", "Group", "Metric", "NoParams", "Score"]
