// Charts as SVG, drawn here: a line chart over time, and estimates with their intervals.
// They scale with their container (viewBox), so they fit a phone as well as a desktop.

const NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

function ticks(low, high, count = 4) {
  if (!(high > low)) return [low];
  const raw = (high - low) / count;
  const step = 10 ** Math.floor(Math.log10(raw));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => s >= raw) || raw;
  const out = [];
  for (let t = Math.ceil(low / nice) * nice; t <= high + 1e-12; t += nice) out.push(+t.toPrecision(12));
  return out;
}

function legend(names) {
  return names.map((name, i) => {
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = COLOURS[i % COLOURS.length];
    const item = document.createElement("span");
    item.className = "legend-item";
    item.append(swatch, name);
    return item;
  });
}

// A chart's frame: a figure with its caption.
function framed(title) {
  const figure = document.createElement("figure");
  figure.className = "chart";
  if (title) {
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    figure.append(caption);
  }
  return figure;
}

// series: [{name, points: [[x, y], ...]}], x in seconds since the epoch.
export function lineChart(series, { yFormat = (y) => String(y), title = "" } = {}) {
  const width = 640, height = 220, left = 56, right = 12, top = 12, bottom = 28;
  const all = series.flatMap((s) => s.points);
  const figure = framed(title);
  if (!all.length) {
    const empty = document.createElement("p");
    empty.className = "muted";
    empty.textContent = "no data in this window yet";
    figure.append(empty);
    return figure;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) { x0 -= 60; x1 += 60; }
  const y1 = Math.max(...ys, 0) * 1.1 || 1;
  const x = (v) => left + ((v - x0) / (x1 - x0)) * (width - left - right);
  const y = (v) => top + (1 - v / y1) * (height - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  for (const t of ticks(0, y1)) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(t), y2: y(t), class: "grid" }));
    chart.append(svg("text", { x: left - 6, y: y(t) + 4, "text-anchor": "end", class: "tick" }, yFormat(t)));
  }
  const clock = x1 - x0 < 600 ? 19 : 16; // seconds on a short span, else hours and minutes
  for (const t of ticks(x0, x1, 5)) {
    const label = new Date(t * 1000).toISOString().slice(11, clock);
    chart.append(svg("text", { x: x(t), y: height - 8, "text-anchor": "middle", class: "tick" }, label));
  }
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    chart.append(svg("path", { d, fill: "none", stroke: colour, "stroke-width": 2, class: "series" }));
    for (const p of s.points) {
      chart.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: colour },
        svg("title", {}, `${s.name}: ${yFormat(p[1])} at ${new Date(p[0] * 1000).toISOString().slice(11, 19)}`)));
    }
  });
  const keys = document.createElement("div");
  keys.className = "legend";
  keys.append(...legend(series.map((s) => s.name)));
  figure.append(chart, keys);
  return figure;
}

// rows: [{label, value, low, high}]: a dot at the value, a line across its interval; a
// dashed line at `reference` (zero for differences).
export function intervalPlot(rows, { format = (v) => String(v), reference = null, title = "" } = {}) {
  const usable = rows.filter((r) => r.value !== null && r.value !== undefined);
  const row = 28, left = 160, right = 16, top = 8, width = 960;
  const height = top + row * Math.max(usable.length, 1) + 24;
  const figure = framed(title);
  const bounds = usable.flatMap((r) => [r.value, r.low, r.high]).filter((v) => v !== null && v !== undefined);
  if (reference !== null) bounds.push(reference);
  if (!bounds.length) return figure;
  let lo = Math.min(...bounds), hi = Math.max(...bounds);
  if (lo === hi) { lo -= 1e-3; hi += 1e-3; }
  const pad = (hi - lo) * 0.08;
  lo -= pad; hi += pad;
  const x = (v) => left + ((v - lo) / (hi - lo)) * (width - left - right);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  for (const t of ticks(lo, hi, 4)) {
    chart.append(svg("line", { x1: x(t), x2: x(t), y1: top, y2: height - 20, class: "grid" }));
    chart.append(svg("text", { x: x(t), y: height - 6, "text-anchor": "middle", class: "tick" }, format(t)));
  }
  if (reference !== null) {
    chart.append(svg("line", { x1: x(reference), x2: x(reference), y1: top, y2: height - 20, class: "reference" }));
  }
  usable.forEach((r, i) => {
    const cy = top + row * i + row / 2;
    const colour = COLOURS[i % COLOURS.length];
    chart.append(svg("text", { x: left - 8, y: cy + 4, "text-anchor": "end", class: "label" }, r.label));
    if (r.low !== null && r.high !== null && r.low !== undefined && r.high !== undefined) {
      chart.append(svg("line", { x1: x(r.low), x2: x(r.high), y1: cy, y2: cy, stroke: colour, "stroke-width": 3, class: "interval" }));
    }
    chart.append(svg("circle", { cx: x(r.value), cy, r: 5, fill: colour },
      svg("title", {}, `${r.label}: ${format(r.value)} [${format(r.low)}, ${format(r.high)}]`)));
  });
  figure.append(chart);
  return figure;
}

// A horizontal bar for a value in [0, max], inside a table cell.
export function bar(value, max) {
  const width = 80, share = max > 0 ? Math.max(0, Math.min(1, value / max)) : 0;
  return svg("svg", { viewBox: `0 0 ${width} 10`, width, height: 10, class: "bar" },
    svg("rect", { x: 0, y: 0, width: (share * width).toFixed(1), height: 10 }));
}
