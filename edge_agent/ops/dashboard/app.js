// Edge agent live dashboard: one EventSource on api/events, one status snapshot per
// message, rendered into nodes created once at start-up.

import { LineChart } from "./chart.js";
import { $, fmtDuration, fmtNum, fmtPct, fmtTime, isNum, setText, syncRows } from "./dom.js";

const STALE_AFTER_MS = 3500;
const RECONNECT_MAX_MS = 10000;
const MAX_ALERT_ROWS = 15;
const MAX_DEVICE_ROWS = 20;
const MAX_REASON_ROWS = 12;
const MAX_HISTORY_ROWS = 12;

const charts = {
  throughput: new LineChart($("chart-throughput"), {
    series: [{ color: "#4e79a7" }, { color: "#f28e2b" }], minMax: 10,
  }),
  latency: new LineChart($("chart-latency"), {
    series: [{ color: "#59a14f" }, { color: "#edc948" }, { color: "#e15759" }], minMax: 10,
  }),
  routing: new LineChart($("chart-routing"), {
    series: [{ color: "#76b7b2" }, { color: "#59a14f" }], fixedMax: 100,
  }),
  queue: new LineChart($("chart-queue"), { series: [{ color: "#b07aa1" }], minMax: 10 }),
  node: new LineChart($("chart-node"), {
    series: [{ color: "#4e79a7" }, { color: "#f28e2b" }, { color: "#e15759" }], minMax: 100,
  }),
};

let events = 0;
let lastEventAt = 0;
let renderPending = false;

function pct(fraction) {
  return isNum(fraction) ? fraction * 100 : null;
}

function renderHeader(s) {
  setText("agent-id", s.agent_id ?? "–", s.agent_id);
  setText("site", s.site ?? "–", s.site);
  setText("policy", s.policy ?? "–", s.policy);
  setText("slo-ms", fmtNum(s.slo_ms, 0), s.slo_ms);
  setText("uptime", fmtDuration(s.uptime_s), s.uptime_s);
  const broker = $("broker-state");
  const up = s.broker_connected === true;
  broker.dataset.state = up ? "up" : "down";
  broker.textContent = up ? "broker connected" : "broker down";
}

function renderTiles(s) {
  const rates = s.rates ?? {};
  const lat = s.latency_ms ?? {};
  setText("readings-per-s", fmtNum(rates.readings_per_s, 1), rates.readings_per_s);
  setText("inferences-per-s", fmtNum(rates.inferences_per_s, 1), rates.inferences_per_s);
  setText("p50", fmtNum(lat.p50, 1), lat.p50);
  setText("p95", fmtNum(lat.p95, 1), lat.p95);
  setText("p99", fmtNum(lat.p99, 1), lat.p99);
  setText("slo-attainment", fmtPct(s.slo_attainment, 2), s.slo_attainment);
  setText("offload-share", fmtPct(s.offload_share, 1), s.offload_share);
  setText("queue-depth", fmtNum(s.queue_depth, 0), s.queue_depth);
  const dl = s.deadletter ?? {};
  setText("deadletter-total", fmtNum(dl.total, 0), dl.total);
  const model = s.model ?? {};
  setText("model-name", model.name ?? "–", model.name);
  setText("model-version", model.version == null ? "–" : String(model.version), model.version);
  setText("model-backend", model.backend ?? "", model.backend);
  const node = s.node ?? {};
  setText("cpu-percent", fmtNum(node.cpu_percent, 1), node.cpu_percent);
  setText("mem-percent", fmtNum(node.mem_percent, 1), node.mem_percent);
  setText("rss-mb", fmtNum(node.rss_mb, 0), node.rss_mb);
  setText("gpu-percent", isNum(node.gpu_percent) ? fmtNum(node.gpu_percent, 0) + " %" : "n/a", node.gpu_percent);
  setText("temperature", isNum(node.temperature_c) ? fmtNum(node.temperature_c, 1) + " °C" : "n/a", node.temperature_c);
  const totals = s.totals ?? {};
  for (const key of ["readings", "inferences", "results", "offloaded", "fallbacks", "deadletter"]) {
    setText("total-" + key, fmtNum(totals[key], 0), totals[key]);
  }
}

function renderRoutes(s) {
  const routes = s.routes ?? {};
  const names = ["local", "remote", "hedge", "shed"];
  let sum = 0;
  for (const r of names) sum += isNum(routes[r]) ? routes[r] : 0;
  const bar = $("route-bar");
  names.forEach((r, i) => {
    const n = isNum(routes[r]) ? routes[r] : 0;
    setText("route-" + r, fmtNum(routes[r], 0), routes[r]);
    // CSSOM writes are allowed by the page's CSP (inline style attributes are not).
    bar.children[i].style.width = sum > 0 ? ((100 * n) / sum).toFixed(2) + "%" : "0";
  });
  const reasons = Object.entries(s.reasons ?? {}).filter(([, n]) => isNum(n));
  reasons.sort((a, b) => b[1] - a[1]);
  const total = reasons.reduce((acc, [, n]) => acc + n, 0);
  syncRows($("reasons"), reasons.map(([reason, n]) => ({
    key: reason, cells: [reason, fmtNum(n, 0), total > 0 ? fmtPct(n / total, 1) : "–"],
  })), { max: MAX_REASON_ROWS, empty: "no routing decisions yet", columns: 3 });
}

function renderAlerts(s) {
  const alerts = Array.isArray(s.alerts) ? s.alerts : [];
  const newest = alerts.slice().sort((a, b) => (b.ts ?? 0) - (a.ts ?? 0));
  syncRows($("alerts"), newest.map((a) => ({
    cells: [fmtTime(a.ts), `${a.site ?? "?"}/${a.device ?? "?"}`, a.stream ?? "",
      { text: (a.kind ?? "") + (a.state === "resolved" ? " · resolved" : ""), cls: "kind-" + (a.kind ?? "") + (a.state ? " state-" + a.state : "") }, a.detail == null ? "" : typeof a.detail === "string" ? a.detail : JSON.stringify(a.detail)],
  })), { max: MAX_ALERT_ROWS, empty: "no alerts", columns: 5 });

  const perDevice = new Map();
  for (const a of newest) {
    const key = `${a.site ?? "?"}/${a.device ?? "?"}`;
    const entry = perDevice.get(key);
    if (entry) entry.count++;
    else perDevice.set(key, { count: 1, kind: a.kind ?? "", ts: a.ts });
  }
  syncRows($("alerts-by-device"), [...perDevice].map(([device, e]) => ({
    key: device, cells: [device, String(e.count), { text: e.kind, cls: "kind-" + e.kind }, fmtTime(e.ts)],
  })), { max: MAX_DEVICE_ROWS, empty: "no alerts", columns: 4 });
}

function updateText(u) {
  if (!u || !u.state) return "–";
  if (u.state === "idle") return "idle";
  const target = u.version != null ? ` ${u.model ?? ""} v${u.version}` : "";
  const rollout = u.rollout_id ? ` (${u.rollout_id})` : "";
  return `${u.state}${target}${rollout}${u.reason ? ": " + u.reason : ""}`;
}

function renderModels(s) {
  // One row per served model (an agent may serve several, each on its own topics).
  const models = Array.isArray(s.models) ? s.models : [];
  syncRows($("models"), models.map((m) => ({
    key: m.name,
    cells: [
      m.name,
      m.version == null ? "–" : `v${m.version}`,
      m.topics ?? "(default)",
      fmtNum(m.rates?.inferences_per_s ?? 0, 1),
      fmtNum(m.latency_ms?.p99 ?? 0, 1),
      fmtPct(m.slo_attainment),
      fmtPct(m.offload_share),
      fmtNum(m.queue_depth ?? 0, 0),
    ],
  })), { max: 50, empty: "no model yet: the gateway assigns one", columns: 8 });
}

function renderLists(s) {
  renderModels(s);
  setText("update-state", updateText(s.update), s.update?.state);
  const history = Array.isArray(s.model_history) ? s.model_history.slice().reverse() : [];
  syncRows($("model-history"), history.map((h) => [fmtTime(h.at), String(h.version ?? "–"), h.event ?? ""]),
    { max: MAX_HISTORY_ROWS, empty: "no model events", columns: 3 });
  const byReason = Object.entries(s.deadletter?.by_reason ?? {}).sort((a, b) => b[1] - a[1]);
  syncRows($("deadletter-reasons"), byReason.map(([reason, n]) => ({ key: reason, cells: [reason, fmtNum(n, 0)] })),
    { max: MAX_REASON_ROWS, empty: "no dead letters", columns: 2 });
}

// Charts keep 10 minutes (chart.js defaults): the agent's own memory
// (edge_agent/ops/history.py) fills them on connect, so a page opened after a burst shows it.
let lastChartT = -Infinity; // agent wall time of the newest charted sample

function pushPoint(t, v) {
  charts.throughput.push(t, [v.readings_per_s, v.inferences_per_s]);
  charts.latency.push(t, [v.p50_ms, v.p95_ms, v.p99_ms]);
  charts.routing.push(t, [pct(v.offload_share), pct(v.slo_attainment)]);
  charts.queue.push(t, [v.queue_depth]);
  charts.node.push(t, [v.cpu_percent, v.gpu_percent, v.temperature_c]);
}

function scheduleRender() {
  if (!renderPending) {
    renderPending = true;
    // One chart render per frame at most; hidden tabs skip frames and cost nothing.
    requestAnimationFrame(() => {
      renderPending = false;
      for (const chart of Object.values(charts)) chart.render();
    });
  }
}

// history: {t: [...], readings_per_s: [...], ...} column-wise, oldest first. Samples the
// page already charted (a reconnect resends the whole ring) are skipped.
function loadHistory(h) {
  if (!h || !Array.isArray(h.t)) return;
  const names = Object.keys(h).filter((k) => k !== "t" && Array.isArray(h[k]));
  let loaded = 0;
  for (let i = 0; i < h.t.length; i++) {
    const t = h.t[i];
    if (!isNum(t) || t <= lastChartT) continue;
    const v = {};
    for (const name of names) v[name] = h[name][i];
    pushPoint(t, v);
    lastChartT = t;
    loaded++;
  }
  const slo = h.slo_ms && h.slo_ms.length ? h.slo_ms[h.slo_ms.length - 1] : null;
  if (isNum(slo)) charts.latency.setReference(slo);
  document.body.dataset.historyPoints = String(loaded);
  scheduleRender();
}

function pushCharts(s) {
  // The agent stamps each sample with its wall time; without one (an older agent) the
  // browser's clock is the best there is.
  const stamped = isNum(s.ts);
  const t = stamped ? s.ts : Date.now() / 1000;
  if (stamped && t <= lastChartT) return; // already charted from the history
  if (stamped) lastChartT = t;
  const rates = s.rates ?? {};
  const lat = s.latency_ms ?? {};
  const node = s.node ?? {};
  pushPoint(t, {
    readings_per_s: rates.readings_per_s, inferences_per_s: rates.inferences_per_s,
    p50_ms: lat.p50, p95_ms: lat.p95, p99_ms: lat.p99,
    offload_share: s.offload_share, slo_attainment: s.slo_attainment, queue_depth: s.queue_depth,
    cpu_percent: node.cpu_percent, gpu_percent: node.gpu_percent, temperature_c: node.temperature_c,
  });
  charts.latency.setReference(s.slo_ms);
  scheduleRender();
}

export function applyStatus(s, { chart = true } = {}) {
  if (!s || typeof s !== "object") return;
  if (s.history) loadHistory(s.history);
  renderHeader(s);
  renderTiles(s);
  renderRoutes(s);
  renderAlerts(s);
  renderLists(s);
  if (chart) pushCharts(s);
  events++;
  lastEventAt = Date.now();
  document.body.dataset.events = String(events);
  setConnection("live", "live");
}

function setConnection(state, text) {
  const badge = $("connection");
  if (badge.dataset.state !== state) badge.dataset.state = state;
  if (badge.textContent !== text) badge.textContent = text;
}

let source = null;
let retryMs = 1000;

function onMessage(ev) {
  let status;
  try {
    status = JSON.parse(ev.data);
  } catch (err) {
    console.warn("dashboard: bad event payload", err);
    return;
  }
  retryMs = 1000;
  applyStatus(status);
}

function connect() {
  if (source) {
    source.onmessage = null;
    source.onerror = null;
    source.close();
  }
  source = new EventSource("api/events");
  source.onmessage = onMessage;
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (e.g. a non-SSE answer): retry ourselves with backoff.
      setConnection("down", "disconnected");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, RECONNECT_MAX_MS);
    } else {
      setConnection("connecting", "reconnecting…");
    }
  };
}

setInterval(() => {
  if (lastEventAt && Date.now() - lastEventAt > STALE_AFTER_MS && $("connection").dataset.state === "live") {
    setConnection("stale", "stale");
  }
}, 1000);

fetch("api/status", { cache: "no-store" })
  .then((r) => (r.ok ? r.json() : null))
  .then((s) => {
    // Tiles only: the charts follow the agent's clock, from the event stream.
    if (s && events === 0) applyStatus(s, { chart: false });
  })
  .catch(() => setConnection("down", "agent unreachable"));
connect();
