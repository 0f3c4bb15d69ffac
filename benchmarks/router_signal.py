"""Does the small model's own prompt state tell when extra compute pays? (issue 19)

On the routing pool of ``benchmarks/routing.py`` (its ``replay`` stage writes the
records this reads; it needs no model), every item's direct request, exactly as the
direct strategy sends it, is probed on the embedded 0.5B with
:meth:`~ponder.backends.llama_cpp.LlamaCppBackend.prompt_state`: the last prompt token's
final hidden state and its middle blocks' outputs (``--layers``; the engine's
``probe_layers``), from the prefill a direct answer computes anyway. The states are
cached in ``<dir>/prompt_states.npz`` (resumable).

1. **AUC of "extra compute pays"** (a heavier rung right where direct was wrong): text
   features (the learned router's hashed word n-grams + numeric features), the state,
   and both (stacked out-of-fold scores). Every choice (text C; state layer, whitened
   principal axes, C) is made by 5-fold CV on training rows only. A second state view
   averages the scores of every probed middle layer's model instead of choosing one. Judged on the fixed
   test split of routing.py, with a paired bootstrap 95% interval of the gain, and by
   nested cross-fitting over all items (outer 5-fold, inner 5-fold, ``--repeats`` seeds).
2. **Accuracy at equal cost**: a utility router that picks, per request, the candidate
   plan maximising P(correct | features, plan) - lambda * cost(plan, class), one logistic
   model per plan, with lambda the smallest on a grid whose *train* cost does not exceed
   the shipped default policy's train cost. Text features against text + the chosen
   state, next to the default policy (which maps each class to one plan).
   A second policy gates the default by the "pays" score (direct below a low
   threshold, the plan most often right where the default failed above a high one),
   thresholds chosen on out-of-fold train scores under the same cost cap.
3. ``--tap-overhead``: decode wall time of an engine with the layer tap installed (idle)
   against one without, on the same requests, interleaved.

    .venv/bin/python benchmarks/routing.py replay               # the records (no model)
    .venv/bin/python benchmarks/router_signal.py                # states (0.5B on CPU), fits
    .venv/bin/python benchmarks/router_signal.py --tap-overhead

JSON lines (one per variant), then a summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import routing  # noqa: E402  # the pool's items, split and requests

from ponder.router.classifier import LearnedClassifier, training_examples  # noqa: E402
from ponder.router.features import extract  # noqa: E402


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def prompt_states(
    items: list[Any], args: argparse.Namespace, layers: tuple[int, ...]
) -> dict[str, dict[str, np.ndarray]]:
    """Each item's prompt states (``final`` and ``layer<i>``), cached or from the engine."""
    from ponder.backends.llama_cpp import LlamaCppBackend

    path = Path(args.dir) / "prompt_states.npz"
    keys = ["final", *[f"layer{i}" for i in layers]]
    states: dict[str, dict[str, np.ndarray]] = {}
    if path.exists():
        with np.load(path) as cached:
            if all(k in cached for k in keys):  # else probe again with the layers asked for
                ids = [str(x) for x in cached["ids"]]
                states = {i: {k: cached[k][n] for k in keys} for n, i in enumerate(ids)}
    todo = [it for it in items if it.id not in states]
    if todo:
        engine = LlamaCppBackend(routing.MODEL, n_ctx=4096, max_sequences=4, probe_layers=layers)
        started = time.monotonic()
        try:
            for k, it in enumerate(todo, 1):
                got = await engine.prompt_state(routing.rung_requests(it, args)["direct"])
                states[it.id] = {"final": got.vector.astype(np.float32)} | {
                    f"layer{i}": got.layers[i].astype(np.float32) for i in layers
                }
                if k % 100 == 0 or k == len(todo):
                    save_states(path, states, keys)
                    print(f"# {k}/{len(todo)} states, {time.monotonic() - started:.0f} s",
                          file=sys.stderr, flush=True)  # fmt: skip
        finally:
            engine.close()
    return states


def save_states(path: Path, states: dict[str, dict[str, np.ndarray]], keys: list[str]) -> None:
    ids = sorted(states)
    arrays = {k: np.stack([states[i][k] for i in ids]) for k in keys}
    np.savez_compressed(path, ids=np.array(ids), **arrays)


class StateFeatures:
    """Standardised prompt states on the train rows' top principal axes, whitened.

    Whitening gives every kept axis unit variance on train, so one regularisation
    strength means the same for any layer and any number of axes.
    """

    def __init__(self, train: np.ndarray, dims: int) -> None:
        self.mean = train.mean(axis=0)
        self.scale = train.std(axis=0) + 1e-6
        z = (train - self.mean) / self.scale
        _, sv, vt = np.linalg.svd(z, full_matrices=False)
        self.axes = vt[:dims].T / (sv[:dims] / np.sqrt(len(train)) + 1e-9)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.axes


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


@dataclass(frozen=True)
class Choice:
    """What a train split chose by inner cross-validation: text C, state view, stacker."""

    text_c: float
    state: tuple[str, int, float]  # (state key, principal axes, C)
    stacker: Any  # logistic on (text score, state score), fitted on out-of-fold scores
    cv_auc: dict[str, float]
    # Every probed layer's state model (same axes and C), their scores averaged: no
    # single layer is chosen, so a fold's choice cannot swing between layers.
    keys: tuple[str, ...] = ()
    layers_mean: tuple[int, float] = (8, 0.3)
    layers_stacker: Any = None


class Signals:
    """Every row's text features and prompt-state views, and the fits over them."""

    TEXT_C = (0.3, 1.0, 3.0)
    DIMS = (8, 16, 32)
    STATE_C = (0.03, 0.3)

    def __init__(self, texts: list[str], views: dict[str, np.ndarray], y: np.ndarray) -> None:
        self.text = text_matrix(texts).tocsr()
        self.views = views
        self.y = y

    def text_scores(self, tr: np.ndarray, te: np.ndarray, c: float) -> np.ndarray:
        model = fit_logistic(self.text[tr], list(self.y[tr]), c)
        return np.asarray(model.decision_function(self.text[te]))

    def state_scores(
        self, tr: np.ndarray, te: np.ndarray, cfg: tuple[str, int, float]
    ) -> np.ndarray:
        key, dims, c = cfg
        proj = StateFeatures(self.views[key][tr], dims)
        model = fit_logistic(proj(self.views[key][tr]), list(self.y[tr]), c)
        return np.asarray(model.decision_function(proj(self.views[key][te])))

    def select(self, tr: np.ndarray, keys: list[str], seed: int = 0) -> Choice:
        """Pick text C and a state view by 5-fold AUC on ``tr`` alone; fit the stacker."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedKFold

        y = self.y[tr]
        configs = [(k, d, c) for k in keys for d in self.DIMS for c in self.STATE_C]
        oof_text = {c: np.zeros(len(tr)) for c in self.TEXT_C}
        oof_state = {cfg: np.zeros(len(tr)) for cfg in configs}
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
        for a, b in folds.split(np.zeros(len(tr)), y):
            for c in self.TEXT_C:
                oof_text[c][b] = self.text_scores(tr[a], tr[b], c)
            for cfg in configs:
                oof_state[cfg][b] = self.state_scores(tr[a], tr[b], cfg)
        text_auc = {c: roc_auc_score(y, v) for c, v in oof_text.items()}
        state_auc = {cfg: roc_auc_score(y, v) for cfg, v in oof_state.items()}
        text_c = max(self.TEXT_C, key=lambda c: (round(text_auc[c], 6), -c))
        state = max(configs, key=lambda cfg: (round(state_auc[cfg], 6), -cfg[1], -cfg[2]))
        both = np.c_[oof_text[text_c], oof_state[state]]
        stacker = LogisticRegression().fit(both, y)
        stacked = roc_auc_score(y, stacker.decision_function(both))
        # The layers' mean: its out-of-fold scores are the mean of each layer's.
        oof_mean = {(d, c): np.mean([oof_state[(k, d, c)] for k in keys], axis=0)
                    for d in self.DIMS for c in self.STATE_C}  # fmt: skip
        mean_auc = {cfg: roc_auc_score(y, v) for cfg, v in oof_mean.items()}
        layers_mean = max(oof_mean, key=lambda cfg: (round(mean_auc[cfg], 6), -cfg[0], -cfg[1]))
        layers_stacker = LogisticRegression().fit(np.c_[oof_text[text_c], oof_mean[layers_mean]], y)
        return Choice(text_c, state, stacker, {"text": round(float(text_auc[text_c]), 4),
                      "state": round(float(state_auc[state]), 4), "stacked": round(float(stacked), 4),
                      "layers_mean": round(float(mean_auc[layers_mean]), 4)},
                      tuple(keys), layers_mean, layers_stacker)  # fmt: skip

    def predict(self, tr: np.ndarray, te: np.ndarray, choice: Choice) -> dict[str, np.ndarray]:
        text = self.text_scores(tr, te, choice.text_c)
        state = self.state_scores(tr, te, choice.state)
        dims, c = choice.layers_mean
        layers = np.mean([self.state_scores(tr, te, (k, dims, c)) for k in choice.keys], axis=0)
        return {"text": text, "state": state,
                "text+state": choice.stacker.decision_function(np.c_[text, state]),
                "text+layers": choice.layers_stacker.decision_function(np.c_[text, layers])}  # fmt: skip


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
    ap.add_argument("--layers", default="5,8,11,14,17,20",
                    help="middle layers probed (0-based blocks of the 24); one is chosen by CV")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the nested 5-fold estimate")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--tap-overhead", action="store_true",
                    help="only time decoding with and without the layer tap")  # fmt: skip
    args, rest = ap.parse_known_args()
    layers = tuple(int(x) for x in args.layers.split(","))
    if args.tap_overhead:
        print(json.dumps(asyncio.run(tap_overhead(layers))), flush=True)
        return
    # The pool's own options (levels, counts, budgets), as routing.py parses them.
    rargs = routing.parse_args(["replay", "--dir", args.dir, *rest])

    out = Path(args.dir)
    results = load_jsonl(out / "results.jsonl")
    calib = load_jsonl(out / "calibration.jsonl")
    items = {it.id: it for it in routing.workload(rargs)}
    covered = sorted({r["item_id"] for r in results} & set(items))
    states = asyncio.run(prompt_states([items[i] for i in covered], rargs, layers))

    examples = {e.text: e for e in training_examples(results)}
    prompt_of = {r["item_id"]: r["prompt"] for r in results}
    ids = [i for i in covered if prompt_of[i] in examples]
    y = np.array([examples[prompt_of[i]].label for i in ids])
    views = {k: np.stack([states[i][k] for i in ids]) for k in states[ids[0]]}
    signals = Signals([prompt_of[i] for i in ids], views, y)
    middle = [f"layer{i}" for i in layers]
    from sklearn.metrics import roc_auc_score

    def auc(v: np.ndarray, rows: np.ndarray) -> float:
        return round(float(roc_auc_score(y[rows], v)), 4)

    # 1. The fixed split of routing.py: choose on train, judge once on test.
    tr = np.array([k for k, i in enumerate(ids) if not routing.is_test(items[i])])
    te = np.array([k for k, i in enumerate(ids) if routing.is_test(items[i])])
    split: dict[str, Any] = {}
    for name, keys in (("final layer", ["final"]), ("middle layers", middle)):
        choice = signals.select(tr, keys)
        got = signals.predict(tr, te, choice)
        split[name] = (choice, got)
        for variant in ("state", "text+state", "text+layers")[: 3 if len(keys) > 1 else 2]:
            print(json.dumps({"variant": f"{variant} ({name})", "split": "test", "items": len(te),
                              "auc": auc(got[variant], te), "state": list(choice.state),
                              "text_C": choice.text_c, "cv_auc_train": choice.cv_auc}), flush=True)  # fmt: skip
    text_test = split["final layer"][1]["text"]
    print(json.dumps({"variant": "text", "split": "test", "items": len(te),
                      "auc": auc(text_test, te)}), flush=True)  # fmt: skip
    gains = {name: paired_auc_gain(y[te], text_test, got["text+state"], args.bootstrap)
             for name, (_, got) in split.items()}  # fmt: skip
    mean_gain = paired_auc_gain(
        y[te], text_test, split["middle layers"][1]["text+layers"], args.bootstrap
    )

    # 2. Nested cross-fitting over every item: each outer fold chooses on its own train
    # part (inner 5-fold), so nothing is chosen on the rows it is judged on.
    nested = nested_estimate(signals, middle, args)

    best = split["middle layers"][0]
    policy = utility_routers(calib, prompt_of, states, items, best.state[:2])
    policy |= gated_routers(calib, signals, ids, tr, te, best)
    summary = {
        "summary": True, "model": routing.MODEL, "n_embd": int(views["final"].shape[1]),
        "layers_probed": list(layers), "train_items": len(tr), "test_items": len(te),
        "auc_text": auc(text_test, te),
        "auc_text_state_final": auc(split["final layer"][1]["text+state"], te),
        "auc_text_state_middle": auc(split["middle layers"][1]["text+state"], te),
        "middle_state_chosen": list(best.state),
        "auc_gain_final_over_text": gains["final layer"]["gain"],
        "auc_gain_final_ci95": gains["final layer"]["ci95"],
        "auc_gain_middle_over_text": gains["middle layers"]["gain"],
        "auc_gain_middle_ci95": gains["middle layers"]["ci95"],
        "auc_text_layers_mean": auc(split["middle layers"][1]["text+layers"], te),
        "middle_layers_mean_chosen": list(best.layers_mean),
        "auc_gain_layers_mean_over_text": mean_gain["gain"],
        "auc_gain_layers_mean_ci95": mean_gain["ci95"],
        **nested, **policy,
    }  # fmt: skip
    print(json.dumps(summary), flush=True)


def nested_estimate(signals: Signals, keys: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """AUCs of text, middle-layer state and both, nested 5-fold over all rows, repeated."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    y = signals.y
    per_repeat: dict[str, list[float]] = defaultdict(list)
    first: dict[str, np.ndarray] = {}
    for rep in range(args.repeats):
        pooled = {v: np.zeros(len(y)) for v in ("text", "state", "text+state", "text+layers")}
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=100 + rep)
        chosen = []
        for tr, te in folds.split(np.zeros(len(y)), y):
            choice = signals.select(tr, keys, seed=rep)
            chosen.append(choice.state[0])
            for v, scores in signals.predict(tr, te, choice).items():
                pooled[v][te] = scores
        for v, scores in pooled.items():
            per_repeat[v].append(float(roc_auc_score(y, scores)))
        first = first or pooled
        print(json.dumps({"variant": "nested 5-fold", "repeat": rep, "items": len(y),
                          "layers_chosen": chosen,
                          **{f"auc_{v.replace('+', '_')}": round(a[-1], 4) for v, a in per_repeat.items()}}),
              flush=True)  # fmt: skip
    gain = paired_auc_gain(y, first["text"], first["text+state"], args.bootstrap)
    diffs = np.subtract(per_repeat["text+state"], per_repeat["text"])
    mean_diffs = np.subtract(per_repeat["text+layers"], per_repeat["text"])
    return {
        "nested_items": len(y), "nested_repeats": args.repeats,
        **{f"nested_auc_{v.replace('+', '_')}": round(float(np.mean(a)), 4)
           for v, a in per_repeat.items()},
        "nested_gain_over_text": round(float(diffs.mean()), 4),
        "nested_gain_range": [round(float(diffs.min()), 4), round(float(diffs.max()), 4)],
        "nested_gain_ci95_repeat0": gain["ci95"],
        "nested_gain_layers_mean_over_text": round(float(mean_diffs.mean()), 4),
        "nested_gain_layers_mean_range": [round(float(mean_diffs.min()), 4),
                                          round(float(mean_diffs.max()), 4)],
    }  # fmt: skip


async def tap_overhead(layers: tuple[int, ...]) -> dict[str, Any]:
    """Decode wall time with the layer tap installed (idle) against none, interleaved."""
    from ponder.backends.llama_cpp import LlamaCppBackend
    from ponder.types import GenRequest, Message

    engines = {
        "plain": LlamaCppBackend(routing.MODEL, n_ctx=2048, max_sequences=4, prefix_cache=False),
        "tapped": LlamaCppBackend(
            routing.MODEL, n_ctx=2048, max_sequences=4, prefix_cache=False, probe_layers=layers
        ),  # fmt: skip
    }
    wall = dict.fromkeys(engines, 0.0)
    tokens = dict.fromkeys(engines, 0)
    try:
        for rep in range(6):
            req = GenRequest(messages=[Message(role="user", content=f"Count from {rep} upwards.")],
                             n=4, max_tokens=64, temperature=0.0, ignore_eos=True)  # fmt: skip
            order = list(engines) if rep % 2 == 0 else list(engines)[::-1]
            for name in order:
                started = time.perf_counter()
                gens = await engines[name].generate(req)
                wall[name] += time.perf_counter() - started
                tokens[name] += sum(g.usage.output for g in gens)
    finally:
        for engine in engines.values():
            engine.close()
    return {"summary": True, "stage": "tap overhead", "layers": list(layers),
            "generated_tokens": tokens, "wall_s": {k: round(v, 2) for k, v in wall.items()},
            "tapped_over_plain_wall": round(wall["tapped"] / wall["plain"], 3)}  # fmt: skip


def gated_routers(
    calib: list[dict[str, Any]],
    signals: Signals,
    ids: list[str],
    tr: np.ndarray,
    te: np.ndarray,
    choice: Choice,
) -> dict[str, Any]:
    """The default policy, moved per request by the "extra compute pays" score.

    Per class: below a low threshold the request runs ``direct``; above a high one, the
    plan most often right on the train requests the default got wrong (ties: cheaper);
    between, the default plan. The
    thresholds (quantiles of the train scores) maximise train accuracy at no more than
    the default's train cost, on out-of-fold train scores, so nothing is tuned on the
    scores a model gives the rows it was fitted on. Text score against the stacked one.
    """
    from sklearn.model_selection import StratifiedKFold

    outcome = {(r["item_id"], r["plan"]): r for r in calib}
    klass = {r["item_id"]: r["task_class"] for r in calib}
    default = default_plans(calib)
    train_ids = [ids[k] for k in tr]
    by_class: dict[str, list[str]] = defaultdict(list)
    for i in ids:
        by_class[klass[i]].append(i)
    heavy: dict[str, str] = {}
    for c, members in by_class.items():
        plans = {p for (i, p) in outcome if i == members[0]}
        usable = [p for p in sorted(plans) if all((i, p) in outcome for i in members)]
        fitted = [i for i in members if i in set(train_ids)] or members
        # The escalation target: the plan most often right where the default was wrong
        # (on train; ties: cheaper), so "above the high threshold" buys something.
        missed = [i for i in fitted if not outcome[(i, default[i])]["correct"]] or fitted

        def merit(p: str, missed: list[str] = missed) -> tuple[float, float]:
            rows = [outcome[(i, p)] for i in missed]
            return (np.mean([r["correct"] for r in rows]), -np.mean([r["cost_usd"] for r in rows]))

        heavy[c] = max(usable, key=merit)

    def plan_for(i: str, score: float, lo: float, hi: float) -> str:
        if score < lo:
            return "direct"
        return heavy[klass[i]] if score >= hi else default[i]

    def realised(split: list[str], scores: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
        got = [outcome[(i, plan_for(i, s, lo, hi))] for i, s in zip(split, scores, strict=True)]
        return sum(r["correct"] for r in got) / len(got), sum(r["cost_usd"] for r in got)

    # Out-of-fold scores on train, from the configuration the AUC stage chose.
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    oof = {v: np.zeros(len(tr)) for v in ("text", "text+state")}
    for a, b in folds.split(np.zeros(len(tr)), signals.y[tr]):
        got = signals.predict(tr[a], tr[b], choice)
        for v in oof:
            oof[v][b] = got[v]
    test_scores = signals.predict(tr, te, choice)
    test_ids = [ids[k] for k in te]
    _, cap = realised(train_ids, np.zeros(len(tr)), -np.inf, np.inf)  # the default itself
    d_acc, d_cost = realised(test_ids, np.zeros(len(te)), -np.inf, np.inf)
    out: dict[str, Any] = {}
    for variant in ("text", "text+state"):
        cuts = [-np.inf, *np.quantile(oof[variant], np.linspace(0.05, 0.95, 19)), np.inf]
        best: tuple[float, float, float, float] | None = None
        for lo in cuts:
            for hi in cuts:
                if hi < lo:
                    continue
                acc, cost = realised(train_ids, oof[variant], lo, hi)
                if cost <= cap and (best is None or (acc, -cost) > (best[0], -best[1])):
                    best = (acc, cost, lo, hi)
        assert best is not None  # lo = -inf, hi = inf is the default itself
        _, _, lo, hi = best
        # Thresholds are train quantiles of OOF scores; the test model is fitted on all of
        # train, so its scores sit on a comparable scale.
        acc, cost = realised(test_ids, test_scores[variant], lo, hi)
        line = {"variant": f"gated router ({variant})", "split": "test",
                "accuracy": round(acc, 4), "cost_vs_default": round(cost / d_cost, 3),
                "default_accuracy": round(d_acc, 4), "train_accuracy": round(best[0], 4),
                "heavy_plan_by_class": heavy}  # fmt: skip
        print(json.dumps(line), flush=True)
        key = variant.replace("+", "_")
        out[f"gated_{key}_test_accuracy"] = round(acc, 4)
        out[f"gated_{key}_cost_vs_default"] = line["cost_vs_default"]
    return out


def utility_routers(
    calib: list[dict[str, Any]],
    prompt_of: dict[str, str],
    states: dict[str, dict[str, np.ndarray]],
    items: dict[str, Any],
    view: tuple[str, int],
) -> dict[str, Any]:
    """Per-request plan choice by P(correct) - lambda * cost, text vs text + state.

    ``view`` is the state (key, principal axes) the AUC stage chose on train.
    """
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
    view_key, dims = view
    proj = StateFeatures(np.stack([states[i][view_key] for i in train]), dims)
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
            st = np.stack([states[i][view_key] for i in have]) if use_state else None
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
