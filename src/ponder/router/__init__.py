"""The router: which requests get extended thinking, on which tier, under which budget."""

from __future__ import annotations

from ponder.router.classifier import HeuristicScorer, LearnedClassifier, infer_class
from ponder.router.features import Features, NoveltyTracker, extract
from ponder.router.policy import PRESETS, PolicyError, RoutePlan, Router, select_threshold

__all__ = [
    "PRESETS",
    "Features",
    "HeuristicScorer",
    "LearnedClassifier",
    "NoveltyTracker",
    "PolicyError",
    "RoutePlan",
    "Router",
    "extract",
    "infer_class",
    "select_threshold",
]
