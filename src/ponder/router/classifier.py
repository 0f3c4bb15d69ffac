"""Complexity scorers: a heuristic one, and a learned one trained on ponder's own results.

Both answer one question about a request: how likely is extra compute (thinking,
search) to change a wrong direct answer into a right one? The heuristic reads the
features; the learned classifier (logistic regression over hashed word n-grams plus
the numeric features; scikit-learn) is trained from eval records, where the label
of an item is "a compute-heavy configuration was right where direct was wrong".
That label is 0 both for trivial requests (direct was right: thinking is wasted)
and for requests beyond the model's reach (nothing was right), so the classifier
learns where thinking does *not* pay at either end.

The gateway's ledger is the other source (:func:`train_from_ledger`). There every
request ran one configuration, so there are no pairs to compare: instead two models
are fit on the graded rows (``verdict`` from a verifier or ``POST /v1/feedback``),
``p_direct(x)`` = P(correct | features, answered directly) and ``p_compute(x)`` =
P(correct | features, answered with extra compute), and the score is their
difference, ``max(0, p_compute - p_direct)``: the chance that extra compute turns a
wrong direct answer into a right one, assuming whatever direct gets right extra
compute gets right too. It is low for trivial requests (both high) and for requests
beyond reach (both low), high in between. Without enough graded compute rows the
score falls back to ``1 - p_direct`` (can only tell "direct fails").
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ponder.router.features import NUMERIC_NAMES, Features, extract

__all__ = [
    "Example",
    "HeuristicScorer",
    "LearnedClassifier",
    "LedgerExample",
    "LedgerTraining",
    "NotEnoughData",
    "Scorer",
    "infer_class",
    "ledger_examples",
    "train_from_ledger",
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
        if self.meta.get("kind") == "ledger":
            return self._gain(text, features)
        proba = self.model.predict_proba(self._matrix([text], [features]))[0][1]
        return round(float(proba), 6)

    def _gain(self, text: str, features: Features) -> float:
        # Trained without prompt text: score the features alone, as in training.
        x = self._matrix([text if self.meta.get("uses_text") else ""], [features])
        p_direct = float(self.model["direct"].predict_proba(x)[0][1])
        compute = self.model.get("compute")
        if compute is None:
            return round(1.0 - p_direct, 6)
        return round(max(0.0, float(compute.predict_proba(x)[0][1]) - p_direct), 6)

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


# --------------------------------------------------------------------------- from the ledger


class NotEnoughData(ValueError):
    """Too few graded ledger rows to train from; the message says what is missing."""


@dataclass(frozen=True)
class LedgerExample:
    """One graded gateway request: its features, how much compute it got, whether it was right."""

    id: str
    text: str
    features: Features
    compute: bool  # extra compute (thinking, search, a cascade) rather than a direct answer
    correct: bool


def _features(data: Mapping[str, Any]) -> Features | None:
    try:
        values = dict(data)
        values["error_domains"] = tuple(values.get("error_domains") or ())
        return Features(**values)
    except TypeError:
        return None  # written by another version of the features


def ledger_examples(rows: Iterable[Any]) -> tuple[list[LedgerExample], dict[str, int]]:
    """Graded, answered requests with router features, and counts of the rows left out.

    A row counts as *direct* when it ran ``direct`` (or ``cot`` with no thinking
    budget); anything else (a thinking budget, several samples, search, a cascade) is
    *compute*. The text is the prompt only where the gateway recorded it
    (``router.record_prompts``); otherwise it is empty and only the features are used.
    """
    out: list[LedgerExample] = []
    skipped = {"ungraded": 0, "not_answered": 0, "no_features": 0}
    for row in rows:
        if row.status != "ok":
            skipped["not_answered"] += 1
            continue
        if row.verdict not in ("correct", "incorrect"):
            skipped["ungraded"] += 1
            continue
        data = row.features or {}
        feats = _features(data.get("features") or {}) if data else None
        if feats is None:
            skipped["no_features"] += 1
            continue
        plan = row.plan or {}
        direct = row.strategy in ("direct", "cot") and not plan.get("thinking_budget")
        out.append(
            LedgerExample(
                id=str(row.id),
                text=str(data.get("text") or ""),
                features=feats,
                compute=not direct,
                correct=row.verdict == "correct",
            )
        )
    return out, skipped


@dataclass
class LedgerTraining:
    """What :func:`train_from_ledger` trained, and how it scored on rows it did not see."""

    classifier: LearnedClassifier
    direct_rows: int
    compute_rows: int
    heldout: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _heldout(example: LedgerExample, share: float) -> bool:
    # A stable split by request id: retraining on a grown ledger keeps old rows' side.
    return zlib.crc32(example.id.encode()) % 1000 < share * 1000


def _fit_correct(examples: Sequence[LedgerExample], uses_text: bool, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Scaled to unit variance: the numeric features span very different ranges (length
    # is ~0.001 for a short question), and one regularization strength must suit all.
    model = make_pipeline(
        StandardScaler(with_mean=False),
        LogisticRegression(
            C=c, class_weight="balanced", max_iter=2000, random_state=0, solver="lbfgs"
        ),
    )
    texts = [e.text if uses_text else "" for e in examples]
    model.fit(
        LearnedClassifier._matrix(texts, [e.features for e in examples]),
        [int(e.correct) for e in examples],
    )
    return model


def _evaluate(model: Any, examples: Sequence[LedgerExample], uses_text: bool) -> dict[str, Any]:
    """Accuracy and ROC AUC of P(correct) on ``examples`` (AUC needs both outcomes)."""
    from sklearn.metrics import roc_auc_score

    if not examples:
        return {"rows": 0}
    texts = [e.text if uses_text else "" for e in examples]
    proba = model.predict_proba(LearnedClassifier._matrix(texts, [e.features for e in examples]))
    p = [float(row[1]) for row in proba]
    truth = [int(e.correct) for e in examples]
    result: dict[str, Any] = {
        "rows": len(examples),
        "accuracy": round(
            sum((q >= 0.5) == bool(t) for q, t in zip(p, truth, strict=True)) / len(p), 4
        ),
        "auc": round(float(roc_auc_score(truth, p)), 4) if len(set(truth)) == 2 else None,
    }
    return result


def _usable(examples: Sequence[LedgerExample], minimum: int) -> bool:
    return len(examples) >= minimum and len({e.correct for e in examples}) == 2


def train_from_ledger(
    rows: Iterable[Any],
    *,
    min_rows: int = 20,
    holdout: float = 0.2,
    c: float = 1.0,
) -> LedgerTraining:
    """Train the learned router from graded gateway requests (see the module docstring).

    Needs at least ``min_rows`` graded direct rows with both verdicts; the compute model
    needs ``min_rows // 2`` graded compute rows with both verdicts, else the score is
    ``1 - p_direct``. ``holdout`` of the rows (by id) is scored by a model trained on the
    rest; the returned classifier is then trained on every row. Raises
    :class:`NotEnoughData` with what is missing.
    """
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be a share in (0, 1), got {holdout}")
    examples, skipped = ledger_examples(rows)
    direct = [e for e in examples if not e.compute]
    compute = [e for e in examples if e.compute]
    if not _usable(direct, min_rows):
        verdicts = {e.correct for e in direct}
        missing = (
            f"only {len(direct)} graded direct answers (need {min_rows})"
            if len(direct) < min_rows
            else f"all {len(direct)} graded direct answers are "
            f"{'correct' if verdicts == {True} else 'incorrect'} (need both outcomes)"
        )
        raise NotEnoughData(
            f"cannot train the router from this ledger: {missing}. Rows left out: "
            f"{skipped['ungraded']} without a verdict, {skipped['no_features']} without "
            f"router features (the router was off, or they predate them), "
            f"{skipped['not_answered']} that did not answer. Grade answers with "
            "POST /v1/feedback (or run strategies with a verifier), then retrain"
        )
    uses_text = any(e.text for e in examples)
    notes: list[str] = []
    with_compute = _usable(compute, max(min_rows // 2, 2))
    if not with_compute:
        notes.append(
            f"only {len(compute)} graded answers with extra compute (or one outcome only): "
            "the score is 1 - P(direct is correct), which cannot tell requests beyond the "
            "model's reach from those that need thinking"
        )
    if not uses_text:
        notes.append("no prompt text in the ledger (router.record_prompts is off): features only")

    def split(group: Sequence[LedgerExample]) -> tuple[list[LedgerExample], list[LedgerExample]]:
        train = [e for e in group if not _heldout(e, holdout)]
        test = [e for e in group if _heldout(e, holdout)]
        return train, test

    heldout: dict[str, dict[str, Any]] = {}
    for name, group, needed in (("direct", direct, True), ("compute", compute, with_compute)):
        if not needed:
            continue
        train, test = split(group)
        if _usable(train, 2) and test:
            heldout[name] = _evaluate(_fit_correct(train, uses_text, c), test, uses_text)
        else:
            heldout[name] = {"rows": len(test), "note": "too few rows to hold some out"}
    models = {
        "direct": _fit_correct(direct, uses_text, c),
        "compute": _fit_correct(compute, uses_text, c) if with_compute else None,
    }
    meta = {
        "format": FORMAT_VERSION,
        "kind": "ledger",
        "examples": len(examples),
        "direct_rows": len(direct),
        "compute_rows": len(compute),
        "uses_text": uses_text,
        "numeric_features": list(NUMERIC_NAMES),
        "label": (
            "P(correct with extra compute) - P(correct direct)"
            if with_compute
            else "1 - P(correct direct)"
        ),
        "heldout": heldout,
    }
    return LedgerTraining(
        classifier=LearnedClassifier(models, meta),
        direct_rows=len(direct),
        compute_rows=len(compute),
        heldout=heldout,
        notes=notes,
    )
