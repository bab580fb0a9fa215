// Fleet dashboard: polls the gateway's REST API with the bearer token the operator
// typed in (kept in this tab's sessionStorage only) and offers the two admin actions.

import { $, fmtNum, fmtPct, fmtTime, isNum, setText, syncRows } from "./dom.js";
import { agentSummary, gatesFromForm, renderGates, runningText } from "./gates.js";

const API = {
  agents: "api/v1/fleet",
  rollouts: "api/v1/rollouts",
  rollout: (id) => `api/v1/rollouts/${encodeURIComponent(id)}`,
  models: "api/v1/models",
  versions: (name) => `api/v1/models/${encodeURIComponent(name)}/versions`,
  rollback: "api/v1/rollback",
  history: "api/v1/fleet-history",
};
// The 10-minute history changes slowly (heartbeats): fetched every 5th poll, not every one.
const HISTORY_EVERY = 5;
const POLL_MS = 2000;
const TOKEN_KEY = "edgecloud.gateway.token";
const ACTIVE = new Set(["running"]);
const MAX_AGENT_ROWS = 500;

let timer = null;
let polls = 0;
let modelVersions = new Map(); // model -> [versions]
let history = new Map(); // agent_id -> its last 10 minutes (api/v1/fleet-history)

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function call(method, url, body) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(url, {
    method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const detail = data && (data.message || data.error) ? data.message || data.error : text.slice(0, 200);
    throw new HttpError(resp.status, `${resp.status} ${resp.statusText}: ${detail}`);
  }
  return data;
}

function items(data, key) {
  if (Array.isArray(data)) return data;
  if (data && Array.isArray(data[key])) return data[key];
  if (data && Array.isArray(data.items)) return data.items;
  return [];
}

function banner(text, kind = "info") {
  const node = $("banner");
  node.hidden = !text;
  node.textContent = text || "";
  node.dataset.kind = kind;
}

function setAuth(state, text) {
  const badge = $("auth-state");
  badge.dataset.state = state;
  badge.textContent = text;
}

function modelsCell(models) {
  const entries = Object.entries(models || {});
  if (!entries.length) return "–";
  return entries.map(([name, m]) => `${name} v${m && m.version != null ? m.version : "?"}`).join(", ");
}

function healthCell(h) {
  if (!h || !Object.keys(h).length) return { text: "–" };
  const bad = h.ready === false || h.broker === false;
  const parts = [h.ready ? "ready" : "not ready", h.broker === false ? "broker down" : "broker ok"];
  if (h.cloud && h.cloud !== "none") parts.push(`cloud ${h.cloud}`);
  return { text: parts.join(" · "), cls: bad ? "offline" : "" };
}

// The configuration twin: desired vs reported live settings, and a refusal's reason.
function configCell(c) {
  if (!c) return "–";
  const want = c.desired;
  const rep = c.reported || {};
  if (c.status === "refused") return { text: `refused v${want.version}: ${c.reason || "no reason given"}`, cls: "offline" };
  if (!want) return c.status === "in-sync" || !c.reported ? "flags" : `flags pending (runs v${rep.version})`;
  const values = Object.entries(want.values || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "flags";
  if (c.status === "in-sync") return `v${want.version} ${values}`;
  if (c.status === "pending") return `v${want.version} pending (runs v${rep.version}): ${values}`;
  return `v${want.version} not reported: ${values}`;
}

const SPARK = "▁▂▃▄▅▆▇█";

// A fraction series as block characters (text: no DOM nodes, nothing for the CSP to allow).
function spark(points, key) {
  return points.map((p) => (isNum(p[key]) ? SPARK[Math.min(7, Math.floor(p[key] * 8))] : " ")).join("");
}

function versionsText(versions) {
  if (!Array.isArray(versions) || !versions.length) return "–";
  const byModel = new Map();
  for (const v of versions) {
    const list = byModel.get(v.model) || [];
    if (list[list.length - 1] !== v.version) list.push(v.version);
    byModel.set(v.model, list);
  }
  return [...byModel].map(([model, vs]) => `${model} ${vs.map((v) => "v" + v).join(" → ")}`).join(", ");
}

// The last 10 minutes of one agent: SLO attainment and offload share (with a sparkline
// of 10 s buckets) and the model versions it served.
function windowCells(h) {
  if (!h) return ["–", "–", "–"];
  const points = Array.isArray(h.spark) ? h.spark : [];
  const slo = { text: fmtPct(h.slo_attainment, 2), cls: "window" };
  const off = { text: fmtPct(h.offload_share, 1), cls: "window" };
  if (points.length) {
    slo.text += " " + spark(points, "slo_attainment");
    off.text += " " + spark(points, "offload_share");
  }
  return [slo, off, { text: versionsText(h.versions), cls: "window" }];
}

function renderAgents(agents) {
  let online = 0;
  let inferences = 0;
  const rows = agents.map((a) => {
    const m = a.metrics || {};
    if (a.online) online++;
    if (isNum(m.inferences)) inferences += m.inferences;
    const u = a.update || {};
    let update = "–";
    if (u.state === "idle") update = "idle";
    else if (u.state) update = `${u.state}${u.version ? " v" + u.version : ""}${u.reason ? ": " + u.reason : ""}`;
    const h = history.get(a.agent_id);
    // Linked only while the agent is online: an offline agent's page would not answer.
    const link = a.online && h && h.dashboard_url ? h.dashboard_url : "";
    return {
      key: a.agent_id,
      cells: [{ text: a.agent_id, href: link, cls: link ? "linked" : "" }, a.site || "–", { text: a.online ? "online" : "offline", cls: a.online ? "online" : "offline" },
        modelsCell(a.models), { text: update, cls: u.state === "failed" ? "offline" : "" }, healthCell(a.health),
        fmtNum(m.p50_ms, 1), fmtNum(m.p99_ms, 1), fmtPct(m.error_rate, 2), fmtPct(m.slo_attainment, 2),
        fmtPct(m.offload_share, 1), fmtNum(m.inferences, 0), fmtTime(a.last_seen), configCell(a.config),
        ...windowCells(h)],
    };
  });
  syncRows($("agents"), rows, { max: MAX_AGENT_ROWS, empty: "no agent has reported yet", columns: 17 });
  setText("agents-online", String(online), online);
  setText("agents-total", String(agents.length), agents.length);
  setText("fleet-inferences", fmtNum(inferences, 0), inferences);
}

function renderRollouts(rollouts, details) {
  const sorted = rollouts.slice().sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
  let active = 0;
  const rows = sorted.map((r) => {
    if (ACTIVE.has(r.state)) active++;
    const detail = details.get(r.id) || r;
    const summary = agentSummary(detail.agents);
    // current_wave is 1-based in the API (0: nothing issued yet).
    const wave = r.wave_count ? `${r.current_wave ?? 0} / ${r.wave_count}` : "–";
    let progress = summary.done;
    if (progress === null && r.wave_count) progress = (r.current_wave ?? 0) / r.wave_count;
    if (r.state === "succeeded") progress = 1;
    const gate = r.reason || (ACTIVE.has(r.state) ? runningText(detail) : "–");
    return {
      key: r.id,
      cls: r.state === "failed" || r.state === "rolled-back" || r.state === "rolled_back" ? "failed" : "",
      cells: [r.id, r.kind === "config" ? `config v${r.version}` : `${r.model} v${r.version}`, r.strategy || "–", { text: r.state, cls: "state-" + r.state },
        { text: wave, cls: "wave" }, { text: isNum(progress) ? fmtPct(progress, 0) : "–", cls: "bar", bar: progress },
        summary.text, { text: gate, cls: r.reason ? "offline" : "" }, fmtTime(r.created_at)],
    };
  });
  syncRows($("rollouts"), rows, { max: 20, empty: "no rollouts yet", columns: 9 });
  setText("rollouts-active", String(active), active);
  renderGates(sorted, details);
}

function fillSelect(select, values, keep = true) {
  const current = select.value;
  const wanted = values.map(String);
  const have = [...select.options].map((o) => o.value);
  if (have.join("\n") !== wanted.join("\n")) {
    select.replaceChildren(...wanted.map((v) => new Option(v, v)));
    if (keep && wanted.includes(current)) select.value = current;
  }
}

function renderModels(models, agents) {
  const serving = new Map();
  for (const a of agents) {
    for (const [name, m] of Object.entries(a.models || {})) {
      if (!m || m.version == null) continue;
      const key = `${name} v${m.version}`;
      serving.set(key, (serving.get(key) || 0) + 1);
    }
  }
  modelVersions = new Map(models.map((m) => [m.name, (m.versions || []).slice().sort((x, y) => y - x)]));
  syncRows($("models"), models.map((m) => {
    const fleet = [...serving].filter(([k]) => k.startsWith(m.name + " v")).map(([k, n]) => `${k.slice(m.name.length + 1)} on ${n}`);
    return { key: m.name, cells: [m.name, (m.versions || []).map((v) => "v" + v).join(", "), "v" + m.latest, fleet.join(", ") || "–"] };
  }), { max: 100, empty: "no models uploaded", columns: 4 });
  setText("models-count", String(models.length), models.length);
  const names = models.map((m) => m.name);
  fillSelect($("rollout-model"), names);
  fillSelect($("rollback-model"), names);
  fillSelect($("rollout-version"), modelVersions.get($("rollout-model").value) || []);
}

async function poll() {
  timer = null;
  if (document.hidden) {
    schedule(); // a background tab costs the gateway nothing; visibilitychange resumes
    return;
  }
  if (!token()) {
    banner("Enter a bearer token (viewer to look, admin to act) to see the fleet.");
    setAuth("none", "no token");
    return;
  }
  try {
    const [agentsData, rolloutsData, modelsData] = await Promise.all([
      call("GET", API.agents), call("GET", API.rollouts), call("GET", API.models),
    ]);
    const agents = items(agentsData, "agents");
    const rollouts = items(rolloutsData, "rollouts");
    const models = items(modelsData, "models");
    const details = new Map();
    // Per-agent progress is only in a rollout's detail: fetch it for the running ones.
    // The newest few: running ones, and a just-finished one keeps its final agent tally.
    await Promise.all(rollouts.slice(0, 5).filter((r) => !r.agents).map(async (r) => {
      details.set(r.id, await call("GET", API.rollout(r.id)));
    }));
    if (polls % HISTORY_EVERY === 0 || history.size === 0) {
      try {
        const rows = items(await call("GET", API.history), "agents");
        history = new Map(rows.map((h) => [h.agent_id, h]));
      } catch (err) {
        if (err.status === 401) throw err;
        history = new Map(); // an older gateway without the route: the rest still works
      }
    }
    renderAgents(agents);
    renderRollouts(rollouts, details);
    renderModels(models, agents);
    banner("");
    if ($("auth-state").dataset.state !== "admin") setAuth("ok", "token accepted");
    polls++;
    document.body.dataset.polls = String(polls);
    setText("refreshed", fmtTime(Date.now() / 1000));
  } catch (err) {
    if (err.status === 401) {
      setAuth("rejected", "token rejected");
      banner("The gateway rejected this token (401). Enter a valid token.", "error");
      return; // no point polling with a bad token
    }
    banner(`Cannot reach the gateway: ${err.message}`, "error");
  }
  schedule();
}

function schedule(delay = POLL_MS) {
  if (timer !== null) clearTimeout(timer);
  timer = setTimeout(poll, delay);
}

function showResult(ok, text) {
  const node = $("admin-message");
  node.hidden = false;
  node.dataset.status = ok ? "ok" : "error";
  node.textContent = text;
}

function explain(err) {
  if (err.status === 403) return `Forbidden (403): this token may only view; admin actions need an admin token. ${err.message}`;
  if (err.status === 401) return `Not signed in (401): enter a token first. ${err.message}`;
  return `Failed: ${err.message}`;
}

async function startRollout(ev) {
  ev.preventDefault();
  const waves = $("rollout-waves").value.split(",").map((w) => w.trim()).filter(Boolean);
  const sites = $("rollout-sites").value.split(",").map((s) => s.trim()).filter(Boolean);
  const body = {
    model: $("rollout-model").value,
    version: Number($("rollout-version").value),
    strategy: $("rollout-strategy").value,
    waves,
    bake_s: Number($("rollout-bake").value || 0),
    selector: { sites },
    gates: gatesFromForm(),
  };
  try {
    const r = await call("POST", API.rollouts, body);
    showResult(true, `Rollout ${r && r.id ? r.id : ""} started: ${body.model} v${body.version} (${body.strategy})`);
    setAuth("admin", "admin token");
    schedule(0);
  } catch (err) {
    showResult(false, explain(err));
  }
}

async function rollBack(ev) {
  ev.preventDefault();
  const model = $("rollback-model").value;
  try {
    const r = await call("POST", API.rollback, { model });
    const detail = r && (r.detail || r.id || r.state) ? `: ${r.detail || r.id || r.state}` : "";
    showResult(true, `Rollback of ${model} requested${detail}`);
    setAuth("admin", "admin token");
    schedule(0);
  } catch (err) {
    showResult(false, explain(err));
  }
}

$("auth-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("token-input").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  $("token-input").value = "";
  setAuth("pending", "checking…");
  schedule(0);
});
$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  // Forgetting the token also forgets what it showed.
  history = new Map();
  renderAgents([]);
  renderRollouts([], new Map());
  renderModels([], []);
  $("admin-message").hidden = true;
  schedule(0);
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) schedule(0);
});
$("rollout-model").addEventListener("change", () => {
  fillSelect($("rollout-version"), modelVersions.get($("rollout-model").value) || [], false);
});
$("rollout-form").addEventListener("submit", startRollout);
$("rollback-form").addEventListener("submit", rollBack);
setText("gateway-origin", location.host);
schedule(0);
