// Small DOM helpers that reuse nodes, so a page left open for hours keeps a flat
// node count and heap: values are written into existing elements, and table rows
// are recycled from a bounded pool instead of being rebuilt.

const byTestId = new Map();

export function $(testid) {
  let node = byTestId.get(testid);
  if (!node) {
    node = document.querySelector(`[data-testid="${testid}"]`);
    if (!node) throw new Error(`dashboard: no element with data-testid=${testid}`);
    byTestId.set(testid, node);
  }
  return node;
}

export function isNum(v) {
  return typeof v === "number" && Number.isFinite(v);
}

// Writes text only when it changed (avoids needless layout) and keeps the raw
// value in data-value so tests can compare it with the JSON exactly.
export function setText(testid, text, raw) {
  const node = $(testid);
  if (node.textContent !== text) node.textContent = text;
  const value = raw === undefined || raw === null ? "" : String(raw);
  if (node.dataset.value !== value) node.dataset.value = value;
  return node;
}

export function fmtNum(v, digits = 0) {
  if (!isNum(v)) return "–";
  return v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function fmtPct(fraction, digits = 1) {
  return isNum(fraction) ? (fraction * 100).toFixed(digits) + " %" : "–";
}

export function fmtDuration(seconds) {
  if (!isNum(seconds)) return "–";
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const hms = `${String(h).padStart(2, "0")}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}`;
  return d > 0 ? `${d}d ${hms}` : hms;
}

// Accepts unix seconds (number) or an ISO string.
export function fmtTime(ts) {
  let date;
  if (isNum(ts)) date = new Date(ts * 1000);
  else if (typeof ts === "string" && ts) date = new Date(ts);
  else return "–";
  if (Number.isNaN(date.getTime())) return String(ts);
  return date.toLocaleTimeString("en-GB", { hour12: false });
}

// Makes tbody hold exactly rows.length rows (at most `max`), reusing existing
// <tr>/<td> nodes. rows: arrays of cell strings, or {cells, cls} objects.
export function syncRows(tbody, rows, { max = 50, empty = "none", columns = 1 } = {}) {
  const shown = rows.length > max ? rows.slice(0, max) : rows;
  if (shown.length === 0) {
    fillRow(tbody, 0, { cells: [empty], cls: "empty", span: columns });
    trim(tbody, 1);
    return;
  }
  for (let i = 0; i < shown.length; i++) {
    const row = Array.isArray(shown[i]) ? { cells: shown[i] } : shown[i];
    fillRow(tbody, i, row);
  }
  trim(tbody, shown.length);
}

function fillRow(tbody, index, { cells, cls = "", span = 0, key = "" }) {
  let tr = tbody.rows[index];
  if (!tr) tr = tbody.insertRow();
  if (tr.className !== cls) tr.className = cls;
  if (tr.dataset.key !== key) tr.dataset.key = key;
  while (tr.cells.length > cells.length) tr.deleteCell(-1);
  for (let c = 0; c < cells.length; c++) {
    const td = tr.cells[c] || tr.insertCell();
    const cell = cells[c];
    const text = typeof cell === "object" && cell !== null ? cell.text : String(cell);
    const tdCls = typeof cell === "object" && cell !== null ? cell.cls || "" : "";
    // {href}: the text as a link (http(s) only: the URL comes from an agent's heartbeat).
    const href = typeof cell === "object" && cell !== null && /^https?:\/\//.test(cell.href || "") ? cell.href : "";
    if (href) {
      let a = td.firstElementChild;
      if (!a || a.tagName !== "A") {
        td.textContent = "";
        a = td.appendChild(document.createElement("a"));
        a.target = "_blank";
        a.rel = "noopener noreferrer";
      }
      if (a.getAttribute("href") !== href) a.setAttribute("href", href);
      if (a.textContent !== text) a.textContent = text;
    } else if (td.firstElementChild || td.textContent !== text) {
      td.textContent = text;
    }
    if (td.className !== tdCls) td.className = tdCls;
    // A fraction drawn as a bar behind the text (CSSOM write: allowed by the CSP).
    const bar = typeof cell === "object" && cell !== null && isNum(cell.bar) ? (cell.bar * 100).toFixed(1) + "%" : "";
    if (td.style.getPropertyValue("--bar") !== bar) td.style.setProperty("--bar", bar);
    if (span && td.colSpan !== span) td.colSpan = span;
    else if (!span && td.colSpan !== 1) td.colSpan = 1;
  }
}

function trim(tbody, keep) {
  while (tbody.rows.length > keep) tbody.deleteRow(-1);
}
