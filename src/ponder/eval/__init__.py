"""The evaluation harness: accuracy against compute, on real benchmarks."""

from ponder.eval.datasets import Item, load_dataset
from ponder.eval.metrics import pass_at_k, summarize, wilson_interval
from ponder.eval.runner import EvalConfig, ResultStore, expand_grid, run_eval

__all__ = [
    "EvalConfig",
    "Item",
    "ResultStore",
    "expand_grid",
    "load_dataset",
    "pass_at_k",
    "run_eval",
    "summarize",
    "wilson_interval",
]
