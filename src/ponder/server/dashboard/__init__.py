"""The admin dashboard: a static page at ``/dashboard`` and the JSON it reads.

The page (``static/dashboard.html`` + Chart.js, vendored: nothing is fetched from
a CDN) holds no data; it asks for an admin key and polls these endpoints, all
behind the ``admin`` scope like the rest of the admin API:

- ``GET /v1/admin/dashboard/summary``   totals, p50/p95 latency and TTFT, and
  requests, tokens and cost by strategy, class, tier and caller;
- ``GET /v1/admin/dashboard/series``    the same over time, in buckets;
- ``GET /v1/admin/dashboard/requests``  the latest requests (the live feed);
- ``GET /v1/admin/dashboard/quotas``    every quota counter of the current window
  with its state, and the gateway's recent alerts;
- ``GET /v1/admin/dashboard/routing``   per class: success, cost per correct answer,
  escalation share over time (``bucket_s``) and what routing saved against each
  shadowed counterfactual plan, with 95% intervals (:mod:`ponder.router.savings`;
  recomputed at most every ``ROUTING_TTL_S``);
- ``GET /v1/admin/dashboard/eval``      scaling curves and Pareto frontier of the
  latest eval run under ``server.eval_results_dir``.

``summary``, ``series`` and ``routing`` take ``window_s`` (the last N seconds; all time when
absent). The aggregates are :class:`ponder.ledger.queries.LedgerQueries`; this
package holds the routes (``routes``) and the eval results (``evals``).
"""

from ponder.server.dashboard.evals import latest_eval
from ponder.server.dashboard.routes import STATIC_DIR, dashboard_router, parse_window

__all__ = [
    "STATIC_DIR",
    "dashboard_router",
    "latest_eval",
    "parse_window",
]
