"""Budgets and the metering wrapper around backends."""

from ponder.budget.metered import MeteredBackend

__all__ = ["MeteredBackend"]
