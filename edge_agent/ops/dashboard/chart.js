// Plain-SVG time-series chart with a fixed-capacity ring buffer.
//
// Why not a library: the page must ship with the package and load nothing from the
// network, and a few polylines are all it draws. Memory stays flat for hours: the
// ring buffer is allocated once, the SVG nodes are created once and only their
// attributes change on each render.

const SVG_NS = "http://www.w3.org/2000/svg";
const W = 600;
const H = 190;
const PAD = { left: 46, right: 8, top: 10, bottom: 20 };
const GRID_LINES = 4;

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// A "nice" upper bound (1, 2, 2.5, 5 x 10^n) so axis labels stay readable.
export function niceCeil(v) {
  if (!(v > 0)) return 1;
  const exp = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (v <= m * exp) return m * exp;
  }
  return 10 * exp;
}

export function formatAxis(v) {
  if (v === 0) return "0";
  if (Math.abs(v) >= 10000) return (v / 1000).toFixed(0) + "k";
  if (Math.abs(v) >= 1000) return (v / 1000).toFixed(1) + "k";
  if (Math.abs(v) >= 10) return v.toFixed(0);
  return v.toFixed(v < 1 ? 2 : 1);
}

export class LineChart {
  // series: [{label, color, dashed?}]; capacity: points kept; windowS: seconds shown;
  // minMax: the y axis never shrinks below this; fixedMax: the y axis is pinned.
  // 10 minutes at the agent's one sample per second, plus slack for a late tick.
  constructor(svg, { series, capacity = 660, windowS = 600, minMax = 1, fixedMax = null }) {
    this.svg = svg;
    this.series = series;
    this.capacity = capacity;
    this.windowS = windowS;
    this.minMax = minMax;
    this.fixedMax = fixedMax;
    this.t = new Float64Array(capacity);
    this.v = series.map(() => new Float64Array(capacity));
    this.head = 0;
    this.count = 0;
    this.reference = null; // a horizontal line, e.g. the SLO
    this.pushes = 0;
    this._build();
  }

  _build() {
    const svg = this.svg;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("role", "img");
    this.gridLines = [];
    this.gridLabels = [];
    for (let i = 0; i <= GRID_LINES; i++) {
      this.gridLines.push(el("line", { class: "grid", x1: PAD.left, x2: W - PAD.right }, svg));
      this.gridLabels.push(el("text", { class: "axis", x: PAD.left - 4, "text-anchor": "end" }, svg));
    }
    this.spanLabel = el("text", { class: "axis", x: PAD.left, y: H - 4 }, svg);
    const xr = el("text", { class: "axis", x: W - PAD.right, y: H - 4, "text-anchor": "end" }, svg);
    xr.textContent = "now";
    this.refLine = el("line", { class: "reference", x1: PAD.left, x2: W - PAD.right, visibility: "hidden" }, svg);
    this.paths = this.series.map((s, i) =>
      el("path", {
        class: "series" + (s.dashed ? " dashed" : ""),
        stroke: s.color,
        fill: "none",
        "data-series": String(i),
      }, svg),
    );
  }

  // values: one number (or null when unknown) per series; t: seconds.
  push(t, values) {
    this.t[this.head] = t;
    for (let i = 0; i < this.v.length; i++) {
      const x = values[i];
      this.v[i][this.head] = typeof x === "number" && Number.isFinite(x) ? x : NaN;
    }
    this.head = (this.head + 1) % this.capacity;
    if (this.count < this.capacity) this.count++;
    this.pushes++;
  }

  setReference(value) {
    this.reference = typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  _index(i) {
    return (this.head - this.count + i + this.capacity) % this.capacity;
  }

  render() {
    const n = this.count;
    this.svg.dataset.points = String(n);
    this.svg.dataset.pushes = String(this.pushes);
    if (n === 0) return;
    const tEnd = this.t[this._index(n - 1)];
    // Grow the visible span with the data (from 1 min up to windowS) so a fresh
    // page is not a flat line squeezed against the right edge.
    const span = Math.min(this.windowS, Math.max(60, tEnd - this.t[this._index(0)]));
    const tStart = tEnd - span;
    const spanText = span >= 120 ? `-${Math.round(span / 60)} min` : `-${Math.round(span)} s`;
    if (this.spanLabel.textContent !== spanText) this.spanLabel.textContent = spanText;
    let seriesMax = 0; // the data's own peak in view (tests read it from data-max)
    for (let s = 0; s < this.v.length; s++) {
      const vs = this.v[s];
      for (let i = 0; i < n; i++) {
        const k = this._index(i);
        if (this.t[k] >= tStart && vs[k] > seriesMax) seriesMax = vs[k];
      }
    }
    const max = Math.max(seriesMax, this.reference ?? 0);
    const yMax = this.fixedMax ?? (max <= this.minMax ? this.minMax : niceCeil(max * 1.05));
    const plotW = W - PAD.left - PAD.right;
    const plotH = H - PAD.top - PAD.bottom;
    const xOf = (t) => PAD.left + ((t - tStart) / span) * plotW;
    const yOf = (v) => PAD.top + plotH - (Math.min(v, yMax) / yMax) * plotH;

    for (let g = 0; g <= GRID_LINES; g++) {
      const value = (yMax * g) / GRID_LINES;
      const y = yOf(value).toFixed(1);
      this.gridLines[g].setAttribute("y1", y);
      this.gridLines[g].setAttribute("y2", y);
      this.gridLabels[g].setAttribute("y", String(Number(y) + 3));
      this.gridLabels[g].textContent = formatAxis(value);
    }
    if (this.reference !== null) {
      const y = yOf(this.reference).toFixed(1);
      this.refLine.setAttribute("y1", y);
      this.refLine.setAttribute("y2", y);
      this.refLine.setAttribute("visibility", "visible");
    } else {
      this.refLine.setAttribute("visibility", "hidden");
    }
    for (let s = 0; s < this.v.length; s++) {
      const vs = this.v[s];
      const parts = [];
      let pen = "M";
      for (let i = 0; i < n; i++) {
        const k = this._index(i);
        if (this.t[k] < tStart) continue;
        const v = vs[k];
        if (Number.isNaN(v)) {
          pen = "M"; // a gap: the next known point starts a new segment
          continue;
        }
        parts.push(pen + xOf(this.t[k]).toFixed(1) + " " + yOf(v).toFixed(1));
        pen = "L";
      }
      this.paths[s].setAttribute("d", parts.join(""));
    }
    this.svg.dataset.ymax = String(yMax);
    this.svg.dataset.max = String(seriesMax);
    this.svg.dataset.firstT = String(this.t[this._index(0)]);
    this.svg.dataset.lastT = String(tEnd);
  }
}
