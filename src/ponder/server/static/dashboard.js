// The ponder dashboard: polls the admin JSON API and draws it with Chart.js.
// Every value read from the server is written with textContent (never as HTML):
// user names, sessions and class names come from callers.
"use strict";

const KEY_STORE = "ponder-admin-key";
const RANGE_STORE = "ponder-dashboard-range";
const REFRESH_MS = 5000;
const API = "/v1/admin/dashboard";
const COLORS = ["#3559c7", "#e07b39", "#2e9e6a", "#c2417a", "#7d5bd0", "#c9a227", "#3aa6b9",
  "#8c564b", "#6b7385", "#d62728"];

const charts = {};
let timer = null;
let lastSummary = null;

// ---- formatting

const int = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US"));

// Micro-dollars are integers: format them exactly, without floating point.
function usd(micro) {
  if (micro === null || micro === undefined) return "–";
  const sign = micro < 0 ? "-" : "";
  const abs = Math.abs(micro);
  const dollars = Math.floor(abs / 1e6);
  const rest = String(abs % 1e6).padStart(6, "0");
  return `${sign}$${dollars.toLocaleString("en-US")}.${rest}`;
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(0)} ms`;
}

function clock(epoch, withDate) {
  const d = new Date(epoch * 1000);
  const t = d.toLocaleTimeString("en-GB", { hour12: false });
  return withDate ? `${d.toLocaleDateString("en-CA")} ${t}` : t;
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function row(cells, attrs) {
  const tr = el("tr", null, attrs);
  for (const c of cells) {
    if (c instanceof Node) {
      const td = el("td");
      td.appendChild(c);
      tr.appendChild(td);
    } else if (Array.isArray(c)) {
      tr.appendChild(el("td", c[0], c[1]));
    } else {
      tr.appendChild(el("td", c));
    }
  }
  return tr;
}

function setText(id, text, value) {
  const node = document.getElementById(id);
  node.textContent = text;
  if (value !== undefined) node.dataset.value = value === null ? "" : String(value);
}

// ---- API

class AuthError extends Error {}

async function api(path, key) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${key}` }, cache: "no-store" });
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  const message = (body && body.error && body.error.message) || `${r.status} ${r.statusText}`;
  if (r.status === 401 || r.status === 403) throw new AuthError(message);
  if (!r.ok) throw new Error(message);
  return body;
}

function rangeQuery() {
  const v = document.getElementById("range").value;
  return v === "all" ? "" : `?window_s=${encodeURIComponent(v)}`;
}

async function refresh() {
  const status = document.getElementById("status");
  const key = sessionStorage.getItem(KEY_STORE);
  if (!key) return;
  try {
    const q = rangeQuery();
    const [summary, series, feed, quotas, evals, routing] = await Promise.all([
      api(`${API}/summary${q}`, key), api(`${API}/series${q}`, key),
      api(`${API}/requests?limit=50`, key), api(`${API}/quotas`, key), api(`${API}/eval`, key),
      api(`${API}/routing${q}`, key),
    ]);
    // A late answer for a key the user has since replaced changes nothing.
    if (sessionStorage.getItem(KEY_STORE) !== key) return;
    lastSummary = summary;
    drawTotals(summary.totals);
    drawStrategies(summary.by.strategy, summary.totals.requests);
    drawGroups();
    drawSeries(series);
    drawFeed(feed.data);
    drawQuotas(quotas);
    drawEval(evals);
    drawRouting(routing);
    status.dataset.state = "ok";
    status.dataset.updated = String(summary.generated_at);
    status.textContent = `updated ${clock(summary.generated_at)}`;
  } catch (err) {
    if (sessionStorage.getItem(KEY_STORE) !== key) return;
    if (err instanceof AuthError) {
      signOut(err.message);
      return;
    }
    status.dataset.state = "error";
    status.textContent = `refresh failed: ${err.message}`;
  }
}

// ---- sections

function drawTotals(t) {
  setText("total-requests", int(t.requests), t.requests);
  setText("total-ok", int(t.ok), t.ok);
  setText("total-errors", int(t.errors), t.errors);
  setText("total-tokens", int(t.total_tokens), t.total_tokens);
  setText("total-input-tokens", int(t.input_tokens), t.input_tokens);
  setText("total-cached-input-tokens", int(t.cached_input_tokens), t.cached_input_tokens);
  setText("total-reasoning-tokens", int(t.reasoning_tokens), t.reasoning_tokens);
  setText("total-output-tokens", int(t.output_tokens), t.output_tokens);
  setText("total-cost", usd(t.cost_micro), t.cost_micro);
  setText("latency-p50", ms(t.latency_p50_ms), t.latency_p50_ms);
  setText("latency-p95", ms(t.latency_p95_ms), t.latency_p95_ms);
  setText("ttft-p50", ms(t.ttft_p50_ms), t.ttft_p50_ms);
  setText("ttft-p95", ms(t.ttft_p95_ms), t.ttft_p95_ms);
  // Shadow runs ([router.shadow]) are real spend but not served traffic: shown apart.
  const shadow = t.shadow || { requests: 0, cost_micro: 0 };
  document.getElementById("shadow-spend").hidden = !shadow.requests;
  setText("shadow-requests", int(shadow.requests), shadow.requests);
  setText("shadow-cost", usd(shadow.cost_micro), shadow.cost_micro);
}

function chart(id, config) {
  if (charts[id]) {
    const c = charts[id];
    c.data = config.data;
    if (config.options) c.options = config.options;
    c.update("none");
    return c;
  }
  config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false },
    config.options || {});
  charts[id] = new Chart(document.getElementById(id), config);
  return charts[id];
}

function drawStrategies(groups, total) {
  const body = document.querySelector("#strategy-table tbody");
  body.replaceChildren();
  for (const g of groups) {
    const share = total ? `${((100 * g.requests) / total).toFixed(1)}%` : "–";
    body.appendChild(row([
      g.name,
      [int(g.requests), { "data-testid": `strategy-requests-${g.name}`, "data-value": g.requests }],
      share, int(g.total_tokens),
      [usd(g.cost_micro), { "data-value": g.cost_micro }],
    ], { "data-strategy": g.name }));
  }
  chart("chart-strategy", {
    type: "doughnut",
    data: {
      labels: groups.map((g) => g.name),
      datasets: [{ data: groups.map((g) => g.requests), backgroundColor: COLORS }],
    },
    options: { plugins: { legend: { position: "bottom", labels: { boxWidth: 10 } } } },
  });
}

function drawGroups() {
  if (!lastSummary) return;
  const by = document.getElementById("group-by").value;
  const groups = lastSummary.by[by] || [];
  const body = document.querySelector("#group-table tbody");
  body.replaceChildren();
  for (const g of groups) {
    body.appendChild(row([
      g.name, int(g.requests), int(g.input_tokens + g.cached_input_tokens),
      int(g.reasoning_tokens), int(g.output_tokens),
      [usd(g.cost_micro), { "data-value": g.cost_micro }],
    ], { "data-group": g.name }));
  }
  const bar = (label, color, values) => ({
    label, data: values, backgroundColor: color, stack: "t", yAxisID: "y", order: 1,
  });
  chart("chart-groups", {
    type: "bar",
    data: {
      labels: groups.map((g) => g.name),
      datasets: [
        bar("input", "#9fb3e8", groups.map((g) => g.input_tokens + g.cached_input_tokens)),
        bar("reasoning", "#e07b39", groups.map((g) => g.reasoning_tokens)),
        bar("output", "#3559c7", groups.map((g) => g.output_tokens)),
        { type: "line", label: "cost (USD)", data: groups.map((g) => g.cost_usd), yAxisID: "cost",
          borderColor: "#fff", backgroundColor: "#2e9e6a", showLine: false, pointRadius: 6,
          borderWidth: 2, order: 0 },
      ],
    },
    options: {
      scales: {
        x: { stacked: true },
        y: { stacked: true, beginAtZero: true, title: { display: true, text: "tokens" } },
        cost: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false },
          title: { display: true, text: "USD" } },
      },
      plugins: { legend: { labels: { boxWidth: 10 } } },
    },
  });
}

// Tick spacing for a time axis: a round unit giving at most ~7 ticks.
const TICK_STEPS = [10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400];

function tickLabel(epoch, step) {
  const d = new Date(epoch * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (step < 60) return `${hm}:${pad(d.getSeconds())}`;
  if (step < 86400) return hm;
  return d.toLocaleDateString("en-CA");
}

function drawSeries(series) {
  const buckets = series.buckets;
  const min = buckets.length ? buckets[0].start : series.since;
  const max = buckets.length ? buckets[buckets.length - 1].start + series.bucket_s : series.until;
  const step = TICK_STEPS.find((s) => (max - min) / s <= 7) || TICK_STEPS[TICK_STEPS.length - 1];
  const xs = buckets.map((b) => b.start + series.bucket_s / 2);
  const xScale = {
    type: "linear", min, max,
    afterBuildTicks: (axis) => {
      const ticks = [];
      for (let v = Math.ceil(min / step) * step; v <= max; v += step) ticks.push({ value: v });
      axis.ticks = ticks;
    },
    ticks: { callback: (v) => tickLabel(v, step), maxRotation: 0 },
  };
  const line = (label, key, color, dash) => ({
    label, data: series.buckets.map((b, i) => ({ x: xs[i], y: b[key] })), borderColor: color,
    backgroundColor: color, borderDash: dash || [], spanGaps: true, pointRadius: 2, borderWidth: 1.5,
  });
  const tooltipTitle = { callbacks: { title: (items) => clock(items[0].parsed.x - series.bucket_s / 2, true) } };
  chart("chart-latency", {
    type: "line",
    data: { datasets: [
      line("latency p50", "latency_p50_ms", "#3559c7"),
      line("latency p95", "latency_p95_ms", "#3559c7", [6, 4]),
      line("TTFT p50", "ttft_p50_ms", "#e07b39"),
      line("TTFT p95", "ttft_p95_ms", "#e07b39", [6, 4]),
    ] },
    options: { scales: { x: xScale, y: { beginAtZero: true, title: { display: true, text: "ms" } } },
      plugins: { tooltip: tooltipTitle, legend: { labels: { boxWidth: 10 } } } },
  });
  // Bars need a category axis to get their bucket's full width; one label per tick step.
  const starts = buckets.map((b) => b.start);
  chart("chart-volume", {
    type: "bar",
    data: {
      labels: starts,
      datasets: [
        { type: "bar", label: "requests", yAxisID: "req", backgroundColor: "#9fb3e8", order: 1,
          data: buckets.map((b) => b.requests), barPercentage: 1, categoryPercentage: 0.9 },
        { type: "line", label: "reasoning tokens", yAxisID: "tok", borderColor: "#e07b39",
          backgroundColor: "#e07b39", data: buckets.map((b) => b.reasoning_tokens), pointRadius: 0,
          borderWidth: 1.5, order: 0 },
        { type: "line", label: "output tokens", yAxisID: "tok", borderColor: "#3559c7",
          backgroundColor: "#3559c7", data: buckets.map((b) => b.output_tokens), pointRadius: 0,
          borderWidth: 1.5, order: 0 },
      ],
    },
    options: {
      scales: {
        x: { grid: { display: false }, ticks: { autoSkip: false, maxRotation: 0,
          callback: (value, index) => (starts[index] % step === 0 ? tickLabel(starts[index], step) : null) } },
        req: { position: "left", beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: "requests" } },
        tok: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "tokens" } },
      },
      plugins: {
        tooltip: { callbacks: { title: (items) => clock(starts[items[0].dataIndex], true) } },
        legend: { labels: { boxWidth: 10 } },
      },
    },
  });
}

// Estimates are USD floats; the page writes money as exact micro-dollars.
const money = (v) => (v === null || v === undefined ? "–" : usd(Math.round(v * 1e6)));
const pct = (v) => `${(100 * v).toFixed(1)}%`;
const pts = (v) => `${v >= 0 ? "+" : "−"}${Math.abs(100 * v).toFixed(1)} pts`;

function interval(iv, fmt) {
  if (!iv) return null;
  return `${fmt(iv.value)} (${fmt(iv.low)} to ${fmt(iv.high)})`;
}

function drawRouting(data) {
  const body = document.querySelector("#savings-table tbody");
  body.replaceChildren();
  let shadowed = false;
  for (const c of data.classes) {
    const head = [
      c.task_class, int(c.requests), pct(c.success_rate),
      c.cost_per_correct_usd === null ? "–" : money(c.cost_per_correct_usd),
      [pct(c.escalation_share), { "data-value": c.escalation_share }],
    ];
    const lines = c.savings.length ? c.savings : [null];
    lines.forEach((s, i) => {
      const first = i === 0 ? head : head.map(() => "");
      if (!s) {
        body.appendChild(row([...first, "–", "0", money(c.cost_usd), "–", "–", "–"],
          { "data-testid": "savings-row", "data-class": c.task_class }));
        return;
      }
      if (s.pairs > 0) shadowed = true;
      const spend = s.note ? [[s.note, { colspan: "2", class: "dim" }]] : [
        [interval(s.counterfactual_usd, money), { "data-value": s.counterfactual_usd.value }],
        [`${money(s.savings_usd.value)} · ${s.savings_share ? interval(s.savings_share, pct) : "–"}`,
          { "data-value": s.savings_usd.value, "data-testid": `saved-${c.task_class}-${s.plan}` }],
      ];
      const quality = s.quality_diff
        ? [`${interval(s.quality_diff, pts)} · ${s.graded_pairs} graded`, { "data-value": s.quality_diff.value }]
        : [s.quality_note, { class: "dim" }];
      body.appendChild(row([...first, s.plan, int(s.pairs), money(s.actual_usd), ...spend, quality],
        { "data-testid": "savings-row", "data-class": c.task_class, "data-plan": s.plan }));
    });
  }
  // Across classes: the classes with an estimate summed (stratified bootstrap interval);
  // the spend of classes without one is named beside it, never scaled.
  for (const t of data.total || []) {
    if (!t.counterfactual_usd) continue;
    const across = `across ${t.classes.length} ${t.classes.length === 1 ? "class" : "classes"}`;
    body.appendChild(row([
      [across, { class: "total", title: t.classes.join(", ") }], int(t.requests), "–", "–", "–", t.plan, int(t.pairs), money(t.actual_usd),
      [interval(t.counterfactual_usd, money), { "data-value": t.counterfactual_usd.value }],
      [`${money(t.savings_usd.value)} · ${t.savings_share ? interval(t.savings_share, pct) : "–"}`,
        { "data-value": t.savings_usd.value, "data-testid": `saved-total-${t.plan}` }],
      [t.uncovered_usd > 0 ? `${money(t.uncovered_usd)} served in classes without an estimate` : "",
        { class: "dim" }],
    ], { "data-testid": "savings-total", "data-plan": t.plan }));
  }
  document.getElementById("savings-empty").hidden = shadowed;

  const width = data.bucket_s;
  const points = data.classes.flatMap((c) => c.escalation.buckets.map((b) => b.start));
  const min = points.length ? Math.min(...points) : 0;
  const max = points.length ? Math.max(...points) + width : 1;
  const step = TICK_STEPS.find((s) => (max - min) / s <= 7) || TICK_STEPS[TICK_STEPS.length - 1];
  const canvas = document.getElementById("chart-escalation");
  canvas.dataset.bucketS = String(width);
  canvas.dataset.series = String(data.classes.filter((c) => c.escalation.buckets.length).length);
  chart("chart-escalation", {
    type: "line",
    data: { datasets: data.classes.map((c, i) => ({
      label: c.task_class, borderColor: COLORS[i % COLORS.length], backgroundColor: COLORS[i % COLORS.length],
      data: c.escalation.buckets.map((b) => ({ x: b.start + width / 2, y: 100 * b.share, b })),
      pointRadius: 3, borderWidth: 1.5, spanGaps: false,
    })) },
    options: {
      scales: {
        x: { type: "linear", min, max, ticks: { callback: (v) => tickLabel(v, step), maxRotation: 0 },
          afterBuildTicks: (axis) => {
            const ticks = [];
            for (let v = Math.ceil(min / step) * step; v <= max; v += step) ticks.push({ value: v });
            axis.ticks = ticks;
          } },
        y: { min: 0, max: 100, title: { display: true, text: "escalated (%)" } },
      },
      plugins: {
        legend: { labels: { boxWidth: 10 } },
        tooltip: { callbacks: {
          title: (items) => clock(items[0].raw.b.start, true),
          label: (ctx) => `${ctx.dataset.label}: ${ctx.raw.b.escalated} of ${ctx.raw.b.requests} ` +
            `(${ctx.raw.y.toFixed(1)}%)`,
        } },
      },
    },
  });
}

function drawFeed(rows) {
  const body = document.querySelector("#feed tbody");
  body.replaceChildren();
  for (const r of rows) {
    // A team-only caller (e.g. the shadow runs' ponder-shadow) is named by its team.
    const caller = r.user ? `${r.user}${r.team ? ` (${r.team})` : ""}` : r.team || "anonymous";
    const budget = [r.budget !== null && r.budget !== undefined ? `${r.budget} tok` : null,
      r.thinking_budget ? `think ${r.thinking_budget}` : null].filter(Boolean).join(" · ") || "–";
    const status = r.status === "ok" ? "ok" : `${r.status} ${r.http_status}`;
    body.appendChild(row([
      [clock(r.at), { title: new Date(r.at * 1000).toISOString() }], caller, r.task_class, r.strategy,
      r.tier || "–", budget, int(r.reasoning_tokens), int(r.output_tokens),
      [usd(r.cost_micro), { "data-value": r.cost_micro }], ms(r.latency_ms),
      [status, { class: r.status === "ok" ? "" : "status-error" }],
    ], { "data-request-id": r.id, ...(r.shadow_of ? { "data-shadow-of": r.shadow_of, class: "shadow" } : {}) }));
  }
}

function drawQuotas(data) {
  const body = document.querySelector("#quota-table tbody");
  body.replaceChildren();
  document.getElementById("quota-empty").hidden = data.quotas.length > 0;
  for (const q of data.quotas) {
    const who = q.limit_subject === "*" && q.subject === "*" ? `every ${q.scope}` : `${q.scope} ${q.subject}`;
    const metric = `${q.metric.replaceAll("_", " ")} / ${q.window}`;
    const amount = (v) => (q.metric === "cost" ? usd(v) : int(v));
    let usage;
    if (q.used === null) {
      usage = el("span", "per-request cap", { class: "dim" });
    } else {
      usage = el("div", null, { class: "usage" });
      const bar = el("div", null, { class: "bar" });
      const fill = el("div");
      fill.style.width = `${Math.min(100, 100 * q.fraction).toFixed(1)}%`;
      bar.appendChild(fill);
      usage.appendChild(bar);
      usage.appendChild(el("span", q.state, { class: "state" }));
    }
    const used = q.used === null ? amount(q.limit)
      : `${amount(q.used)} / ${amount(q.limit)}${q.reserved ? ` (+${amount(q.reserved)} held)` : ""}`;
    body.appendChild(row([who, metric, used, usage], {
      "data-testid": "quota-row", "data-state": q.state, "data-subject": q.subject, "data-metric": q.metric,
    }));
  }
  const list = document.getElementById("alerts");
  list.replaceChildren();
  document.getElementById("alerts-empty").hidden = data.alerts.length > 0;
  for (const a of data.alerts) {
    const li = el("li", null, { "data-testid": "alert", "data-kind": a.kind });
    li.appendChild(el("span", clock(a.at), { class: "when" }));
    li.appendChild(el("span", a.kind.replaceAll("_", " "), { class: "kind" }));
    li.appendChild(el("span", a.message));
    list.appendChild(li);
  }
}

function drawEval(data) {
  const message = document.getElementById("eval-message");
  const source = document.getElementById("eval-source");
  const body = document.querySelector("#frontier-table tbody");
  body.replaceChildren();
  if (!data.curves) {
    message.hidden = false;
    message.textContent = data.message;
    source.textContent = "";
    chart("chart-eval", { type: "scatter", data: { datasets: [] } });
    return;
  }
  message.hidden = true;
  source.textContent = `${data.source} · ${data.records} results · ${clock(data.modified_at, true)}`;
  const label = (p) => `${p.strategy}${p.n > 1 ? ` n=${p.n}` : ""}${p.budget ? ` b=${p.budget}` : ""}`;
  const point = (p) => ({ x: Math.max(p.tokens, 1), y: 100 * p.accuracy, p });
  const datasets = data.curves.map((c, i) => ({
    label: c.name, data: c.points.map(point), showLine: true, borderColor: COLORS[i % COLORS.length],
    backgroundColor: COLORS[i % COLORS.length], pointRadius: 4,
  }));
  datasets.push({ label: "Pareto frontier", data: data.frontier.map(point), showLine: true,
    borderColor: "#1d2330", borderDash: [6, 4], pointRadius: 0, borderWidth: 1.5, backgroundColor: "#1d2330" });
  chart("chart-eval", {
    type: "scatter",
    data: { datasets },
    options: {
      scales: {
        x: { type: "logarithmic", title: { display: true, text: "tokens per item (log)" } },
        y: { min: 0, max: 100, title: { display: true, text: "accuracy (%)" } },
      },
      plugins: {
        legend: { labels: { boxWidth: 10 } },
        tooltip: { callbacks: { label: (ctx) => {
          const p = ctx.raw.p;
          return `${label(p)} [${p.model}]: ${(100 * p.accuracy).toFixed(1)}% ` +
            `(95% CI ${(100 * p.ci_low).toFixed(0)}-${(100 * p.ci_high).toFixed(0)}), ${int(p.tokens)} tokens, ${p.items} items`;
        } } },
      },
    },
  });
  for (const p of data.frontier) {
    body.appendChild(row([`${label(p)} [${p.model}]`, `${(100 * p.accuracy).toFixed(1)}%`, int(p.tokens)],
      { "data-testid": "frontier-row" }));
  }
}

// ---- key handling

function signIn(key) {
  sessionStorage.setItem(KEY_STORE, key);
  document.getElementById("login").hidden = true;
  document.getElementById("board").hidden = false;
  document.getElementById("sign-out").hidden = false;
  document.getElementById("status").textContent = "loading…";
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

function signOut(reason) {
  clearInterval(timer);
  sessionStorage.removeItem(KEY_STORE);
  document.getElementById("board").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = reason || "";
  const status = document.getElementById("status");
  status.dataset.state = reason ? "error" : "idle";
  status.textContent = "not connected";
}

document.addEventListener("DOMContentLoaded", () => {
  const range = document.getElementById("range");
  const saved = sessionStorage.getItem(RANGE_STORE);
  if (saved && [...range.options].some((o) => o.value === saved)) range.value = saved;
  range.addEventListener("change", () => {
    sessionStorage.setItem(RANGE_STORE, range.value);
    refresh();
  });
  document.getElementById("group-by").addEventListener("change", drawGroups);
  document.getElementById("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = document.getElementById("admin-key").value.trim();
    document.getElementById("admin-key").value = "";
    if (key) signIn(key);
  });
  document.getElementById("sign-out").addEventListener("click", () => signOut(""));
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) signIn(key);
});
