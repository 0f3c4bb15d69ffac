"""Complexity scorers: a heuristic one, and a learned one trained on ponder's own results.

Both answer one question about a request: how likely is extra compute (thinking,
search) to change a wrong direct answer into a right one? The heuristic reads the
features; the learned classifier (logistic regression over hashed word n-grams plus
the numeric features; scikit-learn) is trained from eval records, where the label
of an item is "a compute-heavy configuration was right where direct was wrong".
That label is 0 both for trivial requests (direct was right: thinking is wasted)
and for requests beyond the model's reach (nothing was right), so the classifier
learns where thinking does *not* pay at either end.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ponder.router.features import NUMERIC_NAMES, Features, extract

__all__ = [
    "Example",
    "HeuristicScorer",
    "LearnedClassifier",
    "Scorer",
    "infer_class",
    "training_examples",
]

FORMAT_VERSION = 1


class Scorer(Protocol):
    """Scores a request in [0, 1]: how likely extra compute pays off."""

    @property
    def name(self) -> str: ...

    def score(self, text: str, features: Features) -> float: ...


@dataclass(frozen=True)
class HeuristicScorer:
    """Complexity from the features alone: steps, verifiability, length, numbers."""

    name: str = "heuristic"

    def score(self, text: str, features: Features) -> float:
        f = features
        base = {"math": 0.25, "code": 0.3, "json": 0.1, "text": 0.0}[f.verifiability]
        steps = min(f.steps / 12.0, 1.0) * 0.45
        length = min(f.est_tokens / 400.0, 1.0) * 0.15
        numbers = min(f.numbers / 8.0, 1.0) * 0.1
        cost = 0.05 if f.error_cost == "high" else 0.0
        # One short operation ("1+9900") or a short lookup gains nothing from thinking.
        if f.words <= 12 and f.steps <= 2 and f.verifiability != "code":
            return round(min(base, 0.1) * 0.5, 4)
        return round(min(1.0, base + steps + length + numbers + cost), 4)


_AUTOCOMPLETE = re.compile(r"(?:\bdef |\bclass |\bfunction |[=(,{\[:])\s*$")
# Keyword sets over the lower-cased words (a case-insensitive alternation costs ~10x).
_WORDS = re.compile(r"[a-z_]+")
_SQL = frozenset(["sql", "query", "table", "dataframe", "pandas", "column", "columns", "aggregate"])
_SUMMARY = frozenset(
    ["summarize", "summarise", "summary", "summarization", "tldr", "tl;dr", "condense", "abstract"]
)
_PLAN = frozenset(["plan", "roadmap", "agent", "workflow", "milestone", "milestones", "multi"])
_PLAN_PHRASES = ("strategy for", "break it down", "break this down", "multi-step")
_EXTRACT = frozenset(["extract", "parse", "field", "fields", "entities", "structured"])
_QUESTION_START = ("what", "who", "when", "where", "which", "how many", "how much")


def infer_class(text: str, features: Features) -> str:
    """The task class (taxonomy name) a request most likely belongs to."""
    f = features
    if len(text) > 1500:
        text = text[:1000] + "\n" + text[-500:]  # bounded, as in features.extract
    stripped = text.rstrip()
    lowered = text.lower()
    words = set(_WORDS.findall(lowered))
    if f.verifiability == "code" and (
        "```" not in text and _AUTOCOMPLETE.search(stripped) and f.words < 80
    ):
        return "autocomplete"
    if words & _SQL or ("select" in words and "from" in words) or "data analysis" in lowered:
        return "data_analysis"
    if (
        words & _SUMMARY
        or "key points" in lowered
        or "tl;dr" in lowered
        or (f.est_tokens > 1500 and f.verifiability == "text")
    ):
        return "summarization"
    if f.verifiability == "code":
        return "codegen"
    if words & _EXTRACT and (f.verifiability == "json" or "json" in words):
        return "extraction"
    if words & _PLAN or any(p in lowered for p in _PLAN_PHRASES):
        return "planning"
    if f.verifiability == "math":
        return "math" if f.steps > 2 or f.words > 12 else "lookup"
    if f.verifiability == "json":
        return "extraction"
    question = stripped.endswith("?") or lowered.lstrip().startswith(_QUESTION_START)
    if f.words <= 20 and f.steps <= 2 and question:
        return "lookup"
    return "chat"


# --------------------------------------------------------------------------- learned


@dataclass(frozen=True)
class Example:
    text: str
    features: Features
    label: int  # 1: extra compute paid off


def _is_direct(record: Mapping[str, Any], direct: str) -> bool:
    if record.get("strategy") != direct:
        return False
    config = record.get("config") or {}
    params = config.get("params") or {}
    return not params.get("thinking_budget")


def training_examples(
    records: Iterable[Mapping[str, Any]],
    *,
    prompts: Mapping[str, str] | None = None,
    direct: str = "direct",
) -> list[Example]:
    """One example per item that has a direct record and at least one other record.

    The prompt comes from the record's ``prompt`` field or from ``prompts`` (item id ->
    text, e.g. from the eval dataset). Items without a prompt are skipped.
    """
    by_item: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    texts: dict[str, str] = dict(prompts or {})
    for r in records:
        by_item[str(r["item_id"])].append(r)
        if r.get("prompt"):
            texts[str(r["item_id"])] = str(r["prompt"])
    out = []
    for item in sorted(by_item):
        rows = by_item[item]
        base = [r for r in rows if _is_direct(r, direct)]
        heavy = [r for r in rows if not _is_direct(r, direct)]
        if not base or not heavy or item not in texts:
            continue
        direct_right = any(bool(r["correct"]) for r in base)
        heavy_right = any(bool(r["correct"]) for r in heavy)
        text = texts[item]
        out.append(Example(text, extract(text), int(heavy_right and not direct_right)))
    return out


class LearnedClassifier:
    """P(extra compute pays off | text, features): logistic regression, saved with joblib."""

    name = "learned"

    def __init__(self, model: Any, meta: dict[str, Any]) -> None:
        self.model = model
        self.meta = meta

    @staticmethod
    def _vectorizer() -> Any:
        from sklearn.feature_extraction.text import HashingVectorizer

        # Murmur hashing: stable across processes (unlike Python's salted hash()).
        return HashingVectorizer(
            n_features=1 << 12, ngram_range=(1, 2), alternate_sign=False, norm="l2"
        )

    @classmethod
    def _matrix(cls, texts: Sequence[str], features: Sequence[Features]) -> Any:
        import numpy as np
        from scipy.sparse import csr_matrix, hstack

        words = cls._vectorizer().transform(texts)
        numeric = csr_matrix(np.array([f.numeric() for f in features], dtype=float))
        return hstack([words, numeric]).tocsr()

    @classmethod
    def fit(cls, examples: Sequence[Example], *, c: float = 1.0) -> LearnedClassifier:
        """Train on ``examples``; deterministic (lbfgs, fixed random_state)."""
        from sklearn.linear_model import LogisticRegression

        labels = [e.label for e in examples]
        if len(set(labels)) < 2:
            raise ValueError(
                f"need examples of both outcomes to learn from; got {len(examples)} examples, "
                f"all labelled {labels[0] if labels else 'nothing'} (run more items or "
                "configurations through `ponder eval`)"
            )
        model = LogisticRegression(
            C=c, class_weight="balanced", max_iter=2000, random_state=0, solver="lbfgs"
        )
        model.fit(cls._matrix([e.text for e in examples], [e.features for e in examples]), labels)
        meta = {
            "format": FORMAT_VERSION,
            "examples": len(examples),
            "positives": sum(labels),
            "numeric_features": list(NUMERIC_NAMES),
            "label": "a compute-heavy configuration was right where direct was wrong",
        }
        return cls(model, meta)

    def score(self, text: str, features: Features) -> float:
        proba = self.model.predict_proba(self._matrix([text], [features]))[0][1]
        return round(float(proba), 6)

    def save(self, path: str | Path) -> Path:
        import joblib

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump({"meta": self.meta, "model": self.model}, target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> LearnedClassifier:
        """Load a model written by :meth:`save` (a pickle: load only files you trained)."""
        try:
            import joblib
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "the learned router needs scikit-learn and joblib: pip install 'ponder[router]'"
            ) from exc
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(
                f"no router model at {p}; train one with "
                "`ponder route train --from runs/<run>/results.jsonl --out router.joblib`"
            )
        data = joblib.load(p)
        if not isinstance(data, dict) or data.get("meta", {}).get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{p} is not a ponder router model (format {FORMAT_VERSION}); retrain it"
            )
        return cls(data["model"], data["meta"])
