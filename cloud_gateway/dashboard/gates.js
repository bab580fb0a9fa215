// Rollout gates on the fleet page: how far each rollout's agents are, and the latest
// gate evaluation of the newest rollouts - the basis it was judged on (a concurrent
// control group, or each agent's own pre-update numbers), the control group's numbers,
// and every issued agent's verdict with the numbers it compared. Nodes are reused
// across polls like the rest of the page (see dom.js).

import { $, syncRows } from "./dom.js";

const MAX_BLOCKS = 5;
const HEADINGS = ["agent", "wave", "verdict", "gate", "reason"];

// The gate settings of the admin form; empty fields keep the gateway's defaults. A
// value that is no number is sent as typed, so the gateway's validation explains it.
export function gatesFromForm() {
  const gates = {};
  const number = (text) => (Number.isFinite(Number(text)) ? Number(text) : text);
  const ratio = $("rollout-p99-ratio").value.trim();
  if (["off", "none"].includes(ratio.toLowerCase())) gates.max_p99_ratio = null;
  else if (ratio) gates.max_p99_ratio = number(ratio);
  const samples = $("rollout-min-samples").value.trim();
  if (samples) gates.min_samples = number(samples);
  if ($("rollout-allow-idle").checked) gates.allow_idle_agents = true;
  return gates;
}

export function agentSummary(agents) {
  if (!Array.isArray(agents) || !agents.length) return { text: "–", done: null };
  const counts = new Map();
  for (const a of agents) counts.set(a.state, (counts.get(a.state) || 0) + 1);
  const done = agents.filter((a) => a.state === "updated").length;
  const text = [...counts].map(([state, n]) => `${state} ${n}`).join(" · ");
  return { text, done: done / agents.length };
}

function eventText(event) {
  const d = event.detail || {};
  if (event.kind === "wave-issued") return `wave ${d.wave} issued, converging`;
  if (event.kind === "wave-converged") return `wave ${d.wave} converged, baking until every agent has a verdict`;
  return event.kind;
}

export function verdictTally(gate) {
  const counts = new Map();
  for (const v of Object.values((gate && gate.verdicts) || {})) counts.set(v.state, (counts.get(v.state) || 0) + 1);
  return [...counts].sort().map(([state, n]) => `${state} ${n}`).join(" · ");
}

// The rollouts table's "gate / reason" cell of a running rollout.
export function runningText(detail) {
  const events = Array.isArray(detail.events) ? detail.events : [];
  const last = events.length ? eventText(events[events.length - 1]) : "";
  const tally = verdictTally(detail.gate);
  return [tally ? `verdicts: ${tally}` : "no verdict yet", last].filter(Boolean).join(" · ");
}

function child(parent, tag, testid, cls = "") {
  const node = document.createElement(tag);
  if (testid) node.dataset.testid = testid;
  if (cls) node.className = cls;
  parent.append(node);
  return node;
}

function block(container, id) {
  for (const node of container.children) if (node.dataset.rollout === id) return node;
  const node = document.createElement("div");
  node.className = "gate";
  node.dataset.testid = "rollout-gate";
  node.dataset.rollout = id;
  child(node, "h3", "gate-title");
  child(node, "p", "gate-basis", "basis");
  child(node, "p", "gate-control", "small");
  child(node, "p", "gate-failure", "failure");
  const table = child(node, "table", "", "list");
  const head = table.createTHead().insertRow();
  for (const h of HEADINGS) head.append(Object.assign(document.createElement("th"), { textContent: h }));
  table.createTBody().dataset.testid = "gate-verdicts";
  container.append(node);
  return node;
}

function put(node, testid, text, raw = text) {
  const el = node.querySelector(`[data-testid="${testid}"]`);
  if (el.textContent !== text) el.textContent = text;
  const value = raw === null || raw === undefined ? "" : String(raw);
  if (el.dataset.value !== value) el.dataset.value = value;
  el.hidden = !text;
}

function controlText(c) {
  if (!c) return "no control group: each agent against its own pre-update numbers";
  const names = c.agents.slice(0, 12).join(", ") + (c.agents.length > 12 ? ` … (+${c.agents.length - 12})` : "");
  return `control agents (${c.agents.length}): ${names}`;
}

export function renderGates(rollouts, details) {
  const container = $("gates");
  const shown = rollouts
    .map((r) => details.get(r.id) || r)
    .filter((d) => d.gate)
    .slice(0, MAX_BLOCKS);
  const keep = new Set(shown.map((d) => d.id));
  for (const node of [...container.children]) if (!keep.has(node.dataset.rollout)) node.remove();
  $("gates-empty").hidden = shown.length > 0;
  for (const d of shown) {
    const node = block(container, d.id);
    container.append(node); // newest first, in the rollouts table's order
    node.dataset.state = d.state;
    put(node, "gate-title", `${d.id} · ${d.model} v${d.version} · ${d.state} · wave ${d.current_wave} / ${d.wave_count}`);
    put(node, "gate-basis", `basis: ${d.gate.basis}`, d.gate.basis);
    put(node, "gate-control", controlText(d.gate.control), d.gate.control ? d.gate.control.agents.join(",") : "");
    put(node, "gate-failure", d.gate.failure ? `failure: ${d.gate.failure}` : "", d.gate.failure);
    const waves = new Map((d.agents || []).map((a) => [a.agent_id, a.wave]));
    const rows = Object.entries(d.gate.verdicts || {}).map(([agent, v]) => ({
      key: agent,
      cls: "verdict-" + v.state,
      cells: [agent, String(waves.get(agent) ?? "–"), { text: v.state, cls: "verdict-" + v.state }, v.gate || "–", v.reason],
    }));
    syncRows(node.querySelector('[data-testid="gate-verdicts"]'), rows, { max: 200, empty: "no agent issued yet", columns: 5 });
  }
}
