"""Shadow evaluation: which requests also run a counterfactual plan, and which plan.

The gateway asks :meth:`ShadowSampler.pick` after a verifiable request was answered;
a plan name back means "run this plan on the same request in the background". With
several plans (``plan = ["strong", "search"]``) each sampled request runs one, picked
uniformly. The run is charged to its own quota subject (team ``[router.shadow]
subject``, never the caller's); its ledger row carries ``shadow_of`` = the original
request id and ``shadow_plan`` = the plan it ran. ``ponder route retrain`` reads both
rows as the same request under two plans, and ``ponder stats`` estimates from the
pairs what routing saved against each plan (:mod:`ponder.router.savings`). At most
one shadow runs at a time, and only while no interactive request is in flight
(:meth:`ShadowSampler.slot`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ponder.config import ShadowSettings
from ponder.router.calibrate import CANDIDATE_PLANS, STRONG_TIER, needs_strong
from ponder.router.retrain import plan_name

__all__ = ["ShadowSampler", "shadow_sampler"]


class ShadowSampler:
    """Samples requests for shadow runs (``[router.shadow]``) and tracks the one running."""

    def __init__(
        self,
        settings: ShadowSettings,
        *,
        tiers: Sequence[str] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.tiers = list(tiers)
        # dict: 'auto' may resolve to a plan also listed by name.
        self.plans = tuple(dict.fromkeys(self._resolve(plan) for plan in settings.plans))
        self.rng = rng or random.Random()
        self.running = False
        self.interactive = 0  # requests in flight other than shadows
        self.started = 0
        self.skipped_busy = 0

    def _resolve(self, plan: str) -> str:
        if plan == "auto":
            plan = "strong" if STRONG_TIER in self.tiers else "search"
        if plan not in CANDIDATE_PLANS:
            raise ValueError(
                f"router.shadow.plan: unknown plan {plan!r}; use 'auto' or one of: "
                f"{', '.join(CANDIDATE_PLANS)}"
            )
        if needs_strong(CANDIDATE_PLANS[plan]) and STRONG_TIER not in self.tiers:
            raise ValueError(
                f"router.shadow.plan {plan!r} needs a tier named {STRONG_TIER!r}; "
                "serve one ([tiers.strong]) or choose a single-tier plan"
            )
        return plan

    @property
    def plan(self) -> str:
        """The counterfactual plan (the first one, when ``plan`` lists several)."""
        return self.plans[0]

    @property
    def enabled(self) -> bool:
        return self.settings.rate > 0 or any(r > 0 for r in self.settings.classes.values())

    def rate(self, task_class: str) -> float:
        return self.settings.classes.get(task_class, self.settings.rate)

    def pick(self, plan: Any) -> str | None:
        """The counterfactual plan for a served gateway plan, or None (not sampled)."""
        if plan.verifier is None or plan.route is None:
            return None  # no verdict to learn from
        served = plan_name(plan.strategy, plan.tier, plan.params)
        if all(p == served for p in self.plans):
            return None  # it already ran the counterfactual
        rate = self.rate(plan.task_class)
        if rate <= 0 or self.rng.random() >= rate:
            return None
        # Uniform over all plans, then dropped when it is the served one (never redrawn
        # among the others): each plan's sample stays uniform over the requests that did
        # not already run it, which ponder.router.savings relies on.
        picked = self.plans[0] if len(self.plans) == 1 else self.rng.choice(self.plans)
        return None if picked == served else picked

    def slot(self) -> bool:
        """Take the single shadow slot if it is free and no interactive request waits."""
        if self.running or self.interactive > 0:
            self.skipped_busy += 1
            return False
        self.running = True
        self.started += 1
        return True

    def release(self) -> None:
        self.running = False

    def overrides(self, plan: str) -> dict[str, Any]:
        """The ``ponder`` options that make a request run candidate plan ``plan``."""
        spec = CANDIDATE_PLANS[plan]
        out: dict[str, Any] = {"strategy": spec["strategy"], "params": dict(spec.get("params", {}))}
        if spec.get("thinking_budget"):
            out["thinking_budget"] = spec["thinking_budget"]
        if spec.get("tier"):
            out["tier"] = spec["tier"]
        return out


def shadow_sampler(router: Any, tiers: Sequence[str]) -> ShadowSampler | None:
    """The sampler ``router``'s ``[router.shadow]`` asks for, or None when it is off."""
    if router is None:
        return None
    sampler = ShadowSampler(router.settings.shadow, tiers=tiers)
    return sampler if sampler.enabled else None
