"""Run a grid of strategies x budgets x models over a dataset, resumably.

Every finished (configuration, item) pair is appended to a JSONL file and
flushed at once; a rerun skips what is there, so an interrupted run resumes
where it stopped and repeats no finished item.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ponder.api import Ponder
from ponder.backends.base import Backend
from ponder.errors import PonderError
from ponder.eval.datasets import Item
from ponder.verifiers.base import Verifier

__all__ = ["SCALING_PARAM", "EvalConfig", "ResultStore", "expand_grid", "run_eval", "scale_of"]


@dataclass(frozen=True)
class EvalConfig:
    """One cell of the grid."""

    model: str
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    budget: int | None = None
    max_tokens: int = 512

    @property
    def key(self) -> str:
        params = json.dumps(self.params, sort_keys=True, separators=(",", ":"))
        return f"{self.model}|{self.strategy}|{params}|budget={self.budget}|max={self.max_tokens}"


# Strategies that scale with the grid's N, and the parameter N sets for each.
SCALING_PARAM = {
    "self_consistency": "n",
    "best_of_n": "n",
    "program_aided": "n",
    "adaptive_consistency": "max_samples",
    "self_refine": "rounds",
}


def scale_of(strategy: str, params: dict[str, Any]) -> int:
    """The N of a configuration (1 for strategies that do not scale with N)."""
    key = SCALING_PARAM.get(strategy)
    return int(params.get(key, 1)) if key else 1


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def expand_grid(
    strategies: Sequence[str],
    ns: Sequence[int] = (1,),
    budgets: Sequence[int | None] = (None,),
    models: Sequence[str] = ("embedded",),
    max_tokens: int = 512,
) -> list[EvalConfig]:
    """``strategies`` entries look like ``best_of_n`` or ``best_of_n:temperature=0.8``.

    Sampling strategies get one configuration per N; N = 1 of a sampling strategy
    is kept (it is the single-sample baseline of that strategy's settings).
    """
    configs = []
    for model in models:
        for spec in strategies:
            name, _, rest = spec.partition(":")
            base: dict[str, Any] = {}
            for pair in filter(None, rest.split(",")):
                k, _, v = pair.partition("=")
                base[k.strip()] = _parse_value(v.strip())
            knob = SCALING_PARAM.get(name)
            sample_counts = ns if knob is not None and knob not in base else (None,)
            for n in sample_counts:
                params = dict(base) if n is None or knob is None else {**base, knob: n}
                for budget in budgets:
                    configs.append(EvalConfig(model, name, params, budget, max_tokens))
    return configs


class ResultStore:
    """Append-only JSONL of records; a torn last line (killed process) is ignored."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path) as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that item reruns
        return out

    def done(self) -> set[tuple[str, str]]:
        return {(r["config_key"], r["item_id"]) for r in self.load()}

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def item_seed(item_id: str) -> int:
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big")


async def _grade(item: Item, text: str) -> bool:
    # Graders may run code in a subprocess: keep them off the event loop.
    return await asyncio.to_thread(item.grade, text)


async def run_one(
    item: Item, config: EvalConfig, backend: Backend, verifier: Verifier | None
) -> dict[str, Any]:
    started = time.monotonic()
    outcome = await Ponder(backend).asolve(
        item.problem(),
        config.strategy,
        budget=config.budget,
        max_tokens=config.max_tokens,
        verifier=verifier,
        # A fixed seed per item: reruns are reproducible, and a sample pool can
        # serve N = 1, 2, 4 from the N = 8 call (sample i depends on (seed, i) only).
        seed=item_seed(item.id),
        **config.params,
    )
    correct = await _grade(item, outcome.answer)
    # Verdicts of every complete candidate give unbiased pass@k over the samples.
    sample_verdicts = None
    if len(outcome.candidates) > 1:
        sample_verdicts = [await _grade(item, c.text) for c in outcome.candidates]
    return _record(
        item,
        config,
        correct=correct,
        answer=outcome.answer[-2000:],
        usage=outcome.usage.model_dump(include={"input", "cached_input", "reasoning", "output"}),
        latency_s=round(time.monotonic() - started, 4),
        truncated=outcome.truncated,
        calls=outcome.calls,
        sample_verdicts=sample_verdicts,
    )


def _record(item: Item, config: EvalConfig, **result: Any) -> dict[str, Any]:
    """One results.jsonl row: which item and configuration, then what happened."""
    return {
        "config_key": config.key,
        "config": asdict(config),
        "model": config.model,
        "strategy": config.strategy,
        "item_id": item.id,
        "dataset": item.dataset,
        "difficulty": item.difficulty,
        **result,
    }


def _error_record(item: Item, config: EvalConfig, exc: PonderError) -> dict[str, Any]:
    return _record(
        item,
        config,
        correct=False,
        answer="",
        usage={"input": 0, "cached_input": 0, "reasoning": 0, "output": 0},
        latency_s=0.0,
        truncated=False,
        calls=0,
        sample_verdicts=None,
        error=f"{type(exc).__name__}: {exc.message}",
    )


async def run_eval(
    items: Sequence[Item],
    configs: Sequence[EvalConfig],
    backends: dict[str, Backend],
    store: ResultStore,
    *,
    concurrency: int = 4,
    selection_verifier: Callable[[Item], Verifier | None] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every (config, item) not yet in ``store``; returns the new records."""
    missing = [m for m in {c.model for c in configs} if m not in backends]
    if missing:
        raise ValueError(f"no backend for model(s) {missing}; have {sorted(backends)}")
    done = store.done()
    todo = [(c, it) for c in configs for it in items if (c.key, it.id) not in done]
    gate = asyncio.Semaphore(max(concurrency, 1))
    new: list[dict[str, Any]] = []

    async def work(config: EvalConfig, item: Item) -> None:
        async with gate:
            verifier = selection_verifier(item) if selection_verifier else None
            try:
                record = await run_one(item, config, backends[config.model], verifier)
            except PonderError as exc:
                # The configuration failed on this item (e.g. prompt too long): a wrong answer, recorded.
                record = _error_record(item, config, exc)
            store.append(record)
            new.append(record)
            if on_result:
                on_result(record)

    # A TaskGroup cancels the rest when one item fails: nothing keeps writing after we return.
    try:
        async with asyncio.TaskGroup() as group:
            for c, it in todo:
                group.create_task(work(c, it))
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None
    return new
