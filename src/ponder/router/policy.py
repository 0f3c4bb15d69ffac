"""Routing policy: task class -> strategy, thinking budget, tier, latency class, max spend.

The policy is declared in ``ponder.toml`` (``[router]``, see
:class:`ponder.config.RouterSettings`). Each task class sits in a bucket for extended
thinking: ``use`` (always), ``maybe`` (when the complexity score reaches the router's
threshold) or ``avoid`` (never). The default budget is 0: a class opts in.

Where a class's policy comes from, first match wins: the caller's key override, the
caller's team override, ``[router.classes.<class>]``, the built-in preset of that name
(when the request *named* the preset, or ``infer_presets = true``), the shipped default
policy (``policy = "default"``, the default: fitted on the routing benchmark, see
:mod:`ponder.router.calibrate`; its two-tier form when a tier named ``strong`` is served),
an explicitly declared ``[router.default]``, the shipped policy's catch-all, and last the
built-in ``[router.default]`` (direct).

Every plan also carries the verifier the request implies (``ponder.verifier``,
``response_format``, the class policy's ``verifier``, or one inferred from the prompt; see
:mod:`ponder.router.verification`).

A request names a preset with ``ponder.preset`` in the body or an ``x-ponder-preset``
header; otherwise the class is inferred from the text. Interactive requests never run
search: a search strategy planned for them is replaced by the class's cheap answer, or,
when the class sets ``continue_async = true``, by a direct answer while the full plan
(``RoutePlan.deferred``) runs as an async job. A request declares its latency class with
``ponder.latency`` or an ``x-ponder-latency`` header (``interactive`` / ``async``); that
wins over the class policy, which wins over the inferred one (streamed = interactive).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ponder.config import RouteClassSettings, RouterSettings
from ponder.router.classifier import HeuristicScorer, LearnedClassifier, Scorer, infer_class
from ponder.router.features import Features, NoveltyTracker, extract

__all__ = [
    "LATENCY_CLASSES",
    "PRESETS",
    "SEARCH_STRATEGIES",
    "PolicyError",
    "RoutePlan",
    "Router",
    "request_text",
    "select_threshold",
    "validate_settings",
]

LATENCY_CLASSES = ("interactive", "async")

# A direct plan whose answer has a cheap check (schema, pattern) becomes check-and-retry.
RETRY_CHECKS = frozenset({"json_schema", "regex"})
RETRY_SAMPLES = 2
RETRY_PLAN: dict[str, Any] = {
    "signal": "verified",
    "threshold": 1.0,
    "rungs": ["direct", "search"],
    "search_n": RETRY_SAMPLES,
    "search_temperature": 0.7,
}

# Strategies that explore (several samples, trees): never on an interactive path.
SEARCH_STRATEGIES = frozenset(
    {"self_consistency", "best_of_n", "beam_search", "dvts", "tree_of_thoughts", "mcts",
     "adaptive_consistency", "self_refine", "program_aided"}
)  # fmt: skip

# The use-case table teams start from (latency tolerance -> strategy -> thinking budget).
PRESETS: dict[str, RouteClassSettings] = {
    # <= 2 s to first token: direct (light CoT on retry); no thinking.
    "chat": RouteClassSettings(bucket="avoid", strategy="direct", latency="interactive"),
    # <= 500 ms: direct on the smallest tier.
    "autocomplete": RouteClassSettings(
        bucket="avoid", strategy="direct", latency="interactive", max_spend=128
    ),
    # 3-10 s: extended thinking (4,000-8,000 tokens); a unit-test verifier where the
    # strategy takes one.
    "codegen": RouteClassSettings(
        bucket="use", strategy="cot", thinking_budget=4000, latency="async", max_spend=8000
    ),
    # 5-15 s: chain of thought (2,000-5,000), execution-based verification downstream.
    "data_analysis": RouteClassSettings(
        bucket="use", strategy="cot", thinking_budget=2000, latency="async", max_spend=5000
    ),
    # 10-30 s: direct; scale the model, not the thinking (0-1,000).
    "summarization": RouteClassSettings(bucket="avoid", strategy="direct", latency="async"),
    # Minutes: full search, 8,000-20,000+ tokens.
    "planning": RouteClassSettings(
        bucket="use",
        strategy="self_consistency",
        params={"n": 4},
        thinking_budget=2000,
        latency="async",
        max_spend=20000,
    ),
    # No latency limit: best-of-N with an outcome verifier.
    "extraction": RouteClassSettings(
        bucket="maybe", strategy="best_of_n", params={"n": 4}, latency="async"
    ),
    # Not in the table, but common: multi-step math thinks when the score says so;
    # one-step lookups ("1+9900") never do.
    "math": RouteClassSettings(bucket="maybe", strategy="cot", thinking_budget=1024),
    "lookup": RouteClassSettings(bucket="avoid", strategy="direct", latency="interactive"),
}


class PolicyError(ValueError):
    """The ``[router]`` policy is invalid (the message lists every problem and its path),
    or a request named what the policy does not know (``param`` says which field)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class _Caller(Protocol):
    @property
    def key_id(self) -> str | None: ...

    @property
    def team(self) -> str | None: ...


@dataclass
class RoutePlan:
    """What the router decided for one request, and why."""

    task_class: str
    strategy: str
    params: dict[str, Any]
    thinking_budget: int
    tier: str | None
    latency: str
    max_spend: int | None
    bucket: str
    score: float
    scorer: str
    source: str  # where the class policy came from
    preset: str | None
    features: Features
    reasons: list[str] = field(default_factory=list)
    elapsed_us: float = 0.0
    # The class policy asks for the full plan to continue asynchronously when an
    # interactive request cannot wait for it; ``deferred`` is that full plan
    # (strategy, params, thinking_budget) when the router answered fast instead.
    continue_async: bool = False
    deferred: dict[str, Any] | None = None
    # The verifier this request implies (a ponder.verifiers.spec.VerifierSpec), if any.
    verifier: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "task_class": self.task_class,
            "strategy": self.strategy,
            "params": self.params,
            "thinking_budget": self.thinking_budget,
            "tier": self.tier,
            "latency": self.latency,
            "max_spend": self.max_spend,
            "bucket": self.bucket,
            "score": self.score,
            "scorer": self.scorer,
            "source": self.source,
            "preset": self.preset,
            "features": self.features.as_dict(),
            "reasons": self.reasons,
            "continue_async": self.continue_async,
            "deferred": self.deferred,
            "verifier": self.verifier.as_dict() if self.verifier is not None else None,
        }


def _class_problems(
    where: str,
    policy: RouteClassSettings,
    strategies: Mapping[str, type] | None,
    tiers: Sequence[str] | None,
) -> list[str]:
    problems = []
    if strategies is not None and policy.strategy not in strategies:
        problems.append(
            f"{where}.strategy: unknown strategy {policy.strategy!r}; "
            f"choose one of: {', '.join(sorted(strategies))}"
        )
    elif strategies is not None and policy.thinking_budget:
        import dataclasses

        cls = strategies[policy.strategy]
        if dataclasses.is_dataclass(cls) and "thinking_budget" not in {
            f.name for f in dataclasses.fields(cls)
        }:
            problems.append(
                f"{where}.thinking_budget: strategy {policy.strategy!r} takes no thinking "
                "budget; set it to 0 or use a strategy that thinks (cot, self_consistency, ...)"
            )
    if tiers is not None and policy.tier is not None and policy.tier not in tiers:
        problems.append(
            f"{where}.tier: no tier named {policy.tier!r}; "
            f"configured tiers: {', '.join(tiers) or 'none ([tiers.<name>] in ponder.toml)'}"
        )
    if (
        policy.latency == "interactive"
        and policy.strategy in SEARCH_STRATEGIES
        and not policy.continue_async
    ):
        problems.append(
            f"{where}: an interactive class cannot use the search strategy {policy.strategy!r} "
            "(it would block the first token); use direct or cot, set latency = 'async', "
            "or set continue_async = true (answer directly, then run the search as a job)"
        )
    if policy.bucket == "avoid" and policy.thinking_budget:
        problems.append(
            f"{where}: bucket 'avoid' means no extended thinking, but thinking_budget is "
            f"{policy.thinking_budget}; set bucket to 'use' or 'maybe', or the budget to 0"
        )
    if policy.max_spend is not None and policy.thinking_budget > policy.max_spend:
        problems.append(
            f"{where}: thinking_budget {policy.thinking_budget} exceeds max_spend "
            f"{policy.max_spend}; raise max_spend or lower the budget"
        )
    return problems


def validate_settings(
    settings: RouterSettings,
    *,
    strategies: Mapping[str, type] | None = None,
    tiers: Sequence[str] | None = None,
) -> None:
    """Raise :class:`PolicyError` listing every problem of the policy (with its toml path)."""
    problems = _class_problems("router.default", settings.default, strategies, tiers)
    for name, policy in settings.classes.items():
        problems += _class_problems(f"router.classes.{name}", policy, strategies, tiers)
    known = set(settings.classes) | set(PRESETS)
    for kind, table in (("keys", settings.keys), ("teams", settings.teams)):
        for who, classes in table.items():
            for name, policy in classes.items():
                where = f"router.{kind}.{who}.{name}"
                if name not in known:
                    problems.append(
                        f"{where}: unknown task class {name!r}; known classes: "
                        f"{', '.join(sorted(known))}"
                    )
                problems += _class_problems(where, policy, strategies, tiers)
    if problems:
        raise PolicyError("invalid [router] policy:\n  - " + "\n  - ".join(problems))


def request_text(messages: Sequence[Any]) -> str:
    """The text the router reads: the last user message."""
    for m in reversed(messages):
        role = getattr(m, "role", None) if not isinstance(m, dict) else m.get("role")
        content = getattr(m, "content", None) if not isinstance(m, dict) else m.get("content")
        if role == "user" and content:
            return str(content)
    return ""


class Router:
    """Plans requests from the ``[router]`` policy and a complexity scorer."""

    def __init__(
        self,
        settings: RouterSettings | None = None,
        *,
        classifier: Scorer | None = None,
        strategies: Mapping[str, type] | None = None,
        tiers: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings or RouterSettings()
        validate_settings(self.settings, strategies=strategies, tiers=tiers)
        if classifier is None:
            path = self.settings.classifier
            classifier = HeuristicScorer() if path == "heuristic" else LearnedClassifier.load(path)
        self.scorer: Scorer = classifier
        self.novelty = NoveltyTracker(window=self.settings.novelty_window)
        self.tiers = list(tiers or ())
        self.policy_form = ""
        self.shipped: dict[str, RouteClassSettings] = {}
        self.shipped_why: dict[str, str] = {}
        # A policy promoted by `ponder route retrain`, re-read when its file changes.
        retrain_dir = self.settings.retrain.dir
        self.live_policy = (
            Path(retrain_dir).expanduser() / "policy.json" if retrain_dir is not None else None
        )
        self._live_signature: tuple[int, int, int] | None = None
        self._live_checked = 0.0
        self._live_lock = threading.Lock()
        if self.settings.policy == "default":
            self._load_policy(self._read_live())

    def _read_live(self) -> dict[str, Any] | None:
        """The promoted policy file's content (None: serve the shipped one); notes its
        signature so a later change is seen."""
        if self.live_policy is None:
            return None
        try:
            st = self.live_policy.stat()
            self._live_signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            data: dict[str, Any] = json.loads(self.live_policy.read_text())
        except FileNotFoundError:
            self._live_signature = None
            return None
        return data

    def _load_policy(self, data: dict[str, Any] | None) -> None:
        from ponder.router.calibrate import policy_evidence, policy_form

        form, classes = policy_form(self.tiers, data)
        shipped = {c: RouteClassSettings.model_validate(v) for c, v in classes.items()}
        why = policy_evidence(self.tiers, data)
        if data is not None:
            form = f"{form}, promoted {data.get('promoted_at', '')}".rstrip(" ")
        # Each attribute is swapped whole: a concurrent plan sees the old or the new one.
        self.shipped, self.shipped_why, self.policy_form = shipped, why, form

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the promoted policy if its file changed (at most every
        ``reload_seconds``); True when the serving policy changed."""
        if self.live_policy is None or self.settings.policy != "default":
            return False
        now = time.monotonic()
        if not force and now - self._live_checked < self.settings.retrain.reload_seconds:
            return False
        with self._live_lock:
            self._live_checked = now
            try:
                st = self.live_policy.stat()
                signature: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
            except FileNotFoundError:
                signature = None
            if signature == self._live_signature:
                return False
            try:
                self._load_policy(self._read_live())
            except (ValueError, KeyError, OSError):
                # A broken file keeps the policy that serves now; retried on next change.
                return False
            return True

    @classmethod
    def from_settings(cls, settings: RouterSettings, tiers: Sequence[str] = ()) -> Router | None:
        """The router ``[router]`` declares, validated against the strategies and tiers."""
        if not settings.enabled:
            return None
        from ponder.strategies import available_strategies

        return cls(settings, strategies=available_strategies(), tiers=list(tiers) or None)

    def _policy(
        self, task_class: str, preset: str | None, caller: _Caller | None
    ) -> tuple[RouteClassSettings, str]:
        s = self.settings
        if caller is not None:
            if caller.key_id and task_class in s.keys.get(caller.key_id, {}):
                return s.keys[caller.key_id][task_class], f"router.keys.{caller.key_id}"
            if caller.team and task_class in s.teams.get(caller.team, {}):
                return s.teams[caller.team][task_class], f"router.teams.{caller.team}"
        if task_class in s.classes:
            return s.classes[task_class], f"router.classes.{task_class}"
        if task_class in PRESETS and (preset is not None or s.infer_presets):
            return PRESETS[task_class], f"preset {task_class}"
        if task_class in self.shipped:
            return self.shipped[task_class], f"default policy ({self.policy_form})"
        if "default" not in s.model_fields_set and "__default__" in self.shipped:
            return self.shipped["__default__"], f"default policy ({self.policy_form}, catch-all)"
        return s.default, "router.default"

    def plan_text(
        self,
        text: str,
        *,
        caller: _Caller | None = None,
        preset: str | None = None,
        task: str | None = None,
        stream: bool = False,
        error_cost: str | None = None,
        latency: str | None = None,
        remember: bool = False,
        verifier: Any = None,
        response_format: Any = None,
    ) -> RoutePlan:
        """Plan for a bare prompt (``route explain``, benchmarks).

        ``latency`` is the request's declared latency class (``interactive``/``async``);
        ``verifier`` the request's ``ponder.verifier`` and ``response_format`` its OpenAI
        response format, from which the plan's verifier is resolved.
        """
        t0 = time.perf_counter()
        self.refresh()
        if preset is not None and preset not in PRESETS and preset not in self.settings.classes:
            raise PolicyError(
                f"unknown preset {preset!r}; choose one of: "
                f"{', '.join(sorted(set(PRESETS) | set(self.settings.classes)))}",
                param="ponder.preset",
            )
        if latency is not None and latency not in LATENCY_CLASSES:
            raise PolicyError(
                f"unknown latency class {latency!r} (ponder.latency or x-ponder-latency); "
                f"use one of: {', '.join(LATENCY_CLASSES)}",
                param="ponder.latency",
            )
        features = extract(
            text,
            task=task,
            stream=stream,
            error_cost=error_cost,  # type: ignore[arg-type]
            latency=latency,  # type: ignore[arg-type]
            novelty=self.novelty if remember else None,
        )
        reasons: list[str] = []
        if preset is not None:
            task_class = preset
            reasons.append(f"the request named preset {preset!r}")
        else:
            task_class = infer_class(text, features)
            reasons.append(
                f"inferred class {task_class!r} (verifiability {features.verifiability}, "
                f"~{features.steps} steps, {features.words} words)"
            )
        policy, source = self._policy(task_class, preset, caller)
        reasons.append(f"policy from {source}: bucket {policy.bucket!r}")
        if source.startswith("default policy"):
            key = task_class if task_class in self.shipped else "__default__"
            reasons.append(self.shipped_why.get(key, ""))
        score = self.scorer.score(text, features)
        think = policy.bucket == "use" or (
            policy.bucket == "maybe" and score >= self.settings.threshold
        )
        if policy.bucket == "maybe":
            reasons.append(
                f"{self.scorer.name} score {score:.3f} "
                f"{'>=' if think else '<'} threshold {self.settings.threshold:.3f}"
            )
        if features.error_cost == "high" and policy.bucket == "maybe" and not think:
            think = True
            reasons.append(f"high error cost ({', '.join(features.error_domains) or 'declared'})")
        # Declared by the request > the class policy > inferred (streamed = interactive).
        if latency is not None:
            reasons.append(f"the request declared latency {latency!r}")
        latency = latency or policy.latency or features.latency
        if think:
            strategy, params, budget = policy.strategy, dict(policy.params), policy.thinking_budget
        else:
            strategy, params, budget = "direct", {}, 0
            if policy.bucket != "avoid" or policy.strategy != "direct":
                reasons.append("no extended thinking: direct answer")
        deferred: dict[str, Any] | None = None
        if latency == "interactive" and strategy in SEARCH_STRATEGIES:
            if policy.continue_async:
                deferred = {"strategy": strategy, "params": params, "thinking_budget": budget}
                reasons.append(
                    f"interactive: answering directly now; the full {strategy} plan "
                    "continues as an async job (continue_async)"
                )
                strategy, params, budget = "direct", {}, 0
            else:
                strategy, params = ("cot" if budget else "direct"), {}
                reasons.append(f"interactive: search would block, answering with {strategy}")
        from ponder.router.verification import infer_verifier

        spec = infer_verifier(
            text,
            task_class,
            requested=verifier,
            response_format=response_format,
            class_verifier=policy.verifier,
        )
        if spec is not None:
            reasons.append(f"verifier {spec.type} ({spec.source}): {spec.reason}")
            if spec.type in RETRY_CHECKS and strategy == "direct" and not budget:
                # Cheap inline verification: check the greedy answer, and only when it
                # fails sample RETRY_SAMPLES more and keep one that passes.
                strategy, params = "cascade", dict(RETRY_PLAN)
                reasons.append(
                    f"{spec.type} check on the answer; {RETRY_SAMPLES} more samples if it fails"
                )
        return RoutePlan(
            task_class=task_class,
            strategy=strategy,
            params=params,
            thinking_budget=budget,
            tier=policy.tier,
            latency=latency,
            max_spend=policy.max_spend,
            bucket=policy.bucket,
            score=score,
            scorer=self.scorer.name,
            source=source,
            preset=preset,
            features=features,
            reasons=reasons,
            elapsed_us=round((time.perf_counter() - t0) * 1e6, 1),
            continue_async=policy.continue_async,
            deferred=deferred,
            verifier=spec,
        )

    def plan(
        self,
        request: Any,
        caller: _Caller | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RoutePlan:
        """Plan a chat request (anything with ``messages``, ``stream`` and ``ponder.preset``)."""
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        opts = getattr(request, "ponder", None)
        preset = getattr(opts, "preset", None) or lowered.get("x-ponder-preset") or None
        latency = getattr(opts, "latency", None) or lowered.get("x-ponder-latency") or None
        fmt = getattr(request, "response_format", None)
        if fmt is not None and hasattr(fmt, "model_dump"):
            fmt = fmt.model_dump(by_alias=True, exclude_none=True)
        return self.plan_text(
            request_text(getattr(request, "messages", [])),
            caller=caller,
            preset=preset,
            stream=bool(getattr(request, "stream", False)),
            latency=latency,
            remember=True,
            verifier=getattr(opts, "verifier", None),
            response_format=fmt,
        )


def select_threshold(confidences: Sequence[float], target_share: float) -> float:
    """The confidence threshold below which ``target_share`` of requests escalate.

    Like RouteLLM's calibration to a strong-model share: the ``target_share`` quantile
    of the observed first-rung confidences (escalate when confidence < threshold).
    """
    if not 0.0 <= target_share <= 1.0:
        raise ValueError(f"target_share must be in [0, 1], got {target_share}")
    if not confidences:
        raise ValueError("need at least one observed confidence to calibrate a threshold")
    ordered = sorted(confidences)
    k = round(target_share * len(ordered))
    if k <= 0:
        return 0.0
    if k >= len(ordered):
        return min(1.0, ordered[-1] + 1e-9)
    # Halfway between the k-th and (k+1)-th smallest: exactly k values lie below it
    # (ties can make the realised share differ; they are reported, not hidden).
    lo, hi = ordered[k - 1], ordered[k]
    return (lo + hi) / 2 if hi > lo else hi
