"""Does the small model's own prompt state tell when extra compute pays? (issue 19)

On the routing pool of ``benchmarks/routing.py`` (its ``replay`` stage writes the
records this reads; it needs no model), every item's direct request, exactly as the
direct strategy sends it, is probed on the embedded 0.5B with
:meth:`~ponder.backends.llama_cpp.LlamaCppBackend.prompt_state`: the final hidden state
of the prompt's last token, which the prefill of a direct answer computes anyway. The
states are cached in ``<dir>/prompt_states.npz`` (resumable).

Fitted on the train split, judged on the test split (the same hash split as routing.py):

1. **AUC of "extra compute pays"** (a heavier rung right where direct was wrong): the
   shipped learned classifier's text features (hashed word n-grams + numeric features),
   the prompt state alone, and both, with a paired bootstrap 95% interval of the gain.
2. **Accuracy at equal cost**: a utility router that picks, per request, the candidate
   plan maximising P(correct | features, plan) - lambda * cost(plan, class), one logistic
   model per plan, with lambda the smallest on a grid whose *train* cost does not exceed
   the shipped default policy's train cost. Text features against text + state, next to
   the default policy (which maps each class to one plan).

    .venv/bin/python benchmarks/routing.py replay        # the records (no model)
    .venv/bin/python benchmarks/router_signal.py         # states (0.5B on CPU), then fits

JSON lines (one per variant), then a summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import routing  # noqa: E402  # the pool's items, split and requests

from ponder.router.classifier import LearnedClassifier, training_examples  # noqa: E402
from ponder.router.features import extract  # noqa: E402


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def prompt_states(items: list[Any], args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Each item's prompt state, from the cache file or the embedded engine."""
    from ponder.backends.llama_cpp import LlamaCppBackend

    path = Path(args.dir) / "prompt_states.npz"
    states: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as cached:
            ids = [str(x) for x in cached["ids"]]
            states = dict(zip(ids, cached["states"], strict=True))
    todo = [it for it in items if it.id not in states]
    if todo:
        engine = LlamaCppBackend(routing.MODEL, n_ctx=4096, max_sequences=4)
        started = time.monotonic()
        try:
            for k, it in enumerate(todo, 1):
                req = routing.rung_requests(it, args)["direct"]
                states[it.id] = (await engine.prompt_state(req)).vector.astype(np.float32)
                if k % 100 == 0 or k == len(todo):
                    save_states(path, states)
                    print(f"# {k}/{len(todo)} states, {time.monotonic() - started:.0f} s",
                          file=sys.stderr, flush=True)  # fmt: skip
        finally:
            engine.close()
    return states


def save_states(path: Path, states: dict[str, np.ndarray]) -> None:
    ids = sorted(states)
    np.savez_compressed(path, ids=np.array(ids), states=np.stack([states[i] for i in ids]))


class StateFeatures:
    """Standardised prompt states, projected on the train split's top principal axes."""

    def __init__(self, train: np.ndarray, dims: int) -> None:
        self.mean = train.mean(axis=0)
        self.scale = train.std(axis=0) + 1e-6
        z = (train - self.mean) / self.scale
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        self.axes = vt[:dims].T

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = ((x - self.mean) / self.scale) @ self.axes
        return p / np.sqrt(self.axes.shape[1])


def text_matrix(texts: list[str]) -> Any:
    return LearnedClassifier._matrix(texts, [extract(t) for t in texts])


def design(texts: list[str], states: np.ndarray | None, proj: StateFeatures | None,
           use_text: bool) -> Any:  # fmt: skip
    from scipy.sparse import csr_matrix, hstack

    parts = []
    if use_text:
        parts.append(text_matrix(texts))
    if states is not None and proj is not None:
        parts.append(csr_matrix(proj(states)))
    return hstack(parts).tocsr()


def logistic(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=c, class_weight="balanced", max_iter=4000, random_state=0, solver="lbfgs"
    )


def fit_logistic(x: Any, y: list[int], c: float) -> Any:
    return logistic(c).fit(x, y)


def choose_c(x: Any, y: list[int], grid: tuple[float, ...]) -> tuple[float, float]:
    """The regularisation with the best 5-fold cross-validated AUC on train, and that AUC."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    scores = {
        c: cross_val_score(logistic(c), x, y, cv=folds, scoring="roc_auc").mean() for c in grid
    }
    best = max(grid, key=lambda c: (round(scores[c], 6), -c))
    return best, float(scores[best])


def paired_auc_gain(y: np.ndarray, a: np.ndarray, b: np.ndarray, reps: int) -> dict[str, float]:
    """AUC(b) - AUC(a) on the same items, with a seeded bootstrap 95% interval."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    gains = []
    for _ in range(reps):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx])) < 2:
            continue
        gains.append(roc_auc_score(y[idx], b[idx]) - roc_auc_score(y[idx], a[idx]))
    lo, hi = np.percentile(gains, [2.5, 97.5])
    return {"gain": round(float(roc_auc_score(y, b) - roc_auc_score(y, a)), 4),
            "ci95": [round(float(lo), 4), round(float(hi), 4)]}  # fmt: skip


def default_plans(records: list[dict[str, Any]]) -> dict[str, str]:
    """The shipped default policy's plan per item (two-tier form), by the item's class."""
    from ponder.router.calibrate import load_default_policy

    form = load_default_policy()["forms"]["two_tier"]
    by_item = {r["item_id"]: r["task_class"] for r in records}
    fallback = (form.get("default") or {}).get("plan", "direct")
    return {i: (form["classes"].get(c) or {}).get("plan", fallback) for i, c in by_item.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="runs/routing")
    ap.add_argument("--dims", default="8,16,32,64", help="state projections tried (CV on train)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    args, rest = ap.parse_known_args()
    # The pool's own options (levels, counts, budgets), as routing.py parses them.
    rargs = routing.parse_args(["replay", "--dir", args.dir, *rest])

    out = Path(args.dir)
    results = load_jsonl(out / "results.jsonl")
    calib = load_jsonl(out / "calibration.jsonl")
    items = {it.id: it for it in routing.workload(rargs)}
    covered = sorted({r["item_id"] for r in results} & set(items))
    states = asyncio.run(prompt_states([items[i] for i in covered], rargs))

    examples = {e.text: e for e in training_examples(results)}
    prompt_of = {r["item_id"]: r["prompt"] for r in results}
    rows = [(i, examples[prompt_of[i]].label) for i in covered if prompt_of[i] in examples]
    train = [(i, y) for i, y in rows if not routing.is_test(items[i])]
    test = [(i, y) for i, y in rows if routing.is_test(items[i])]

    def texts(split: list[tuple[str, int]]) -> list[str]:
        return [prompt_of[i] for i, _ in split]

    def st(split: list[tuple[str, int]]) -> np.ndarray:
        return np.stack([states[i] for i, _ in split])

    y_train = [y for _, y in train]
    y_test = np.array([y for _, y in test])
    grid = (0.03, 0.1, 0.3, 1.0, 3.0)
    scores: dict[str, np.ndarray] = {}
    chosen: dict[str, Any] = {}
    from sklearn.metrics import roc_auc_score

    for variant, use_text, use_state in (
        ("text", True, False), ("state", False, True), ("text+state", True, True),
    ):  # fmt: skip
        best: tuple[float, Any, Any, float, Any] | None = None
        for dims in [int(d) for d in args.dims.split(",")] if use_state else [0]:
            proj = StateFeatures(st(train), dims) if use_state else None
            x_tr = design(texts(train), st(train) if use_state else None, proj, use_text)
            c, cv = choose_c(x_tr, y_train, grid)
            if best is None or cv > best[0]:
                best = (cv, proj, c, dims, x_tr)
        assert best is not None
        cv, proj, c, dims, x_tr = best
        x_te = design(texts(test), st(test) if use_state else None, proj, use_text)
        model = fit_logistic(x_tr, y_train, c)
        scores[variant] = model.predict_proba(x_te)[:, 1]
        chosen[variant] = {"C": c, "state_dims": dims, "cv_auc_train": round(float(cv), 4)}
        line = {"variant": variant, "target": "extra compute pays", "split": "test",
                "items": len(test), "positives": int(y_test.sum()),
                "auc": round(float(roc_auc_score(y_test, scores[variant])), 4), **chosen[variant]}  # fmt: skip
        print(json.dumps(line), flush=True)

    gain = paired_auc_gain(y_test, scores["text"], scores["text+state"], args.bootstrap)
    policy = utility_routers(calib, prompt_of, states, items, args)
    summary = {
        "summary": True, "model": routing.MODEL, "state": "last prompt token, final layer",
        "n_embd": int(next(iter(states.values())).shape[0]),
        "train_items": len(train), "test_items": len(test),
        "auc_text": round(float(roc_auc_score(y_test, scores["text"])), 4),
        "auc_state": round(float(roc_auc_score(y_test, scores["state"])), 4),
        "auc_text_state": round(float(roc_auc_score(y_test, scores["text+state"])), 4),
        "auc_gain_text_state_over_text": gain["gain"], "auc_gain_ci95": gain["ci95"],
        **policy,
    }  # fmt: skip
    print(json.dumps(summary), flush=True)


def utility_routers(
    calib: list[dict[str, Any]],
    prompt_of: dict[str, str],
    states: dict[str, np.ndarray],
    items: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Per-request plan choice by P(correct) - lambda * cost, text vs text + state."""
    outcome: dict[tuple[str, str], dict[str, Any]] = {(r["item_id"], r["plan"]): r for r in calib}
    plans = sorted({r["plan"] for r in calib})
    ids = sorted({r["item_id"] for r in calib} & set(states) & set(prompt_of))
    train = [i for i in ids if not routing.is_test(items[i])]
    test = [i for i in ids if routing.is_test(items[i])]
    klass = {r["item_id"]: r["task_class"] for r in calib}
    # The expected cost of a plan for a class: its mean on train (what a router knows).
    spent: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (i, p), r in outcome.items():
        if i in train:
            spent[(klass[i], p)].append(r["cost_usd"])
    expected = {k: float(np.mean(v)) for k, v in spent.items()}
    default = default_plans(calib)

    def realised(split: list[str], pick: dict[str, str]) -> tuple[float, float]:
        got = [outcome[(i, pick[i])] for i in split]
        return (sum(r["correct"] for r in got) / len(got), sum(r["cost_usd"] for r in got))

    out: dict[str, Any] = {}
    d_acc_tr, d_cost_tr = realised(train, default)
    d_acc_te, d_cost_te = realised(test, default)
    out["default_test_accuracy"], out["default_test_cost_usd"] = round(d_acc_te, 4), d_cost_te
    proj = StateFeatures(np.stack([states[i] for i in train]), 16)
    for variant, use_state in (("text", False), ("text+state", True)):
        p_correct: dict[str, dict[str, float]] = {i: {} for i in ids}
        for plan in plans:
            have = [i for i in ids if (i, plan) in outcome]
            tr = [i for i in have if i in train]
            ys = [int(outcome[(i, plan)]["correct"]) for i in tr]
            if len(set(ys)) < 2:  # always right or always wrong on train
                for i in have:
                    p_correct[i][plan] = float(ys[0]) if ys else 0.0
                continue
            st = np.stack([states[i] for i in have]) if use_state else None
            x = design([prompt_of[i] for i in have], st, proj if use_state else None, True)
            rows_tr = [k for k, i in enumerate(have) if i in train]
            model = fit_logistic(x[rows_tr], ys, 1.0)
            for i, p in zip(have, model.predict_proba(x)[:, 1], strict=True):
                p_correct[i][plan] = float(p)

        def pick(
            split: list[str], lam: float, probs: dict[str, dict[str, float]] = p_correct
        ) -> dict[str, str]:
            def utility(i: str, option: str) -> float:
                return probs[i][option] - lam * expected.get((klass[i], option), 0.0)

            return {i: max(probs[i], key=lambda option, i=i: utility(i, option)) for i in split}

        grid = [0.0, *np.geomspace(10.0, 1e7, 120)]
        lam = next((g for g in grid if realised(train, pick(train, g))[1] <= d_cost_tr), grid[-1])
        acc_te, cost_te = realised(test, pick(test, lam))
        line = {"variant": f"utility router ({variant})", "split": "test", "lambda": lam,
                "accuracy": round(acc_te, 4), "cost_usd": cost_te,
                "cost_vs_default": round(cost_te / d_cost_te, 3) if d_cost_te else None,
                "default_accuracy": round(d_acc_te, 4), "train_cost_cap_usd": d_cost_tr}  # fmt: skip
        print(json.dumps(line), flush=True)
        key = variant.replace("+", "_")
        out[f"utility_{key}_test_accuracy"] = round(acc_te, 4)
        out[f"utility_{key}_cost_vs_default"] = line["cost_vs_default"]
    return out


if __name__ == "__main__":
    main()
