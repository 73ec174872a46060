// Small SVG charts, no dependency: class probabilities as bars, scores over time as lines,
// one value per item as bars (drift per feature, permutation importance), and a two-series
// histogram (a feature's training vs live shares).
// Every label is set as text content (never as markup): class, column and version names
// come from uploaded data.

const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text = null) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  if (text !== null) node.textContent = text;
  return node;
}

function titled(node, text) {
  node.appendChild(el("title", {}, text));
  return node;
}

/** Horizontal bars, one per class, the predicted one highlighted. */
export function barChart(container, probabilities, predicted) {
  const entries = Object.entries(probabilities);
  const width = 520;
  const rowHeight = 28;
  const labelWidth = Math.min(170, 16 + 7.2 * Math.max(4, ...entries.map(([name]) => name.length)));
  const valueWidth = 56;
  const barWidth = width - labelWidth - valueWidth;
  const height = rowHeight * entries.length + 4;
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": "class probabilities: " + entries.map(([n, p]) => `${n} ${(p * 100).toFixed(1)} %`).join(", "),
  });
  entries.forEach(([name, p], i) => {
    const y = 2 + i * rowHeight;
    const value = Math.max(0, Math.min(1, Number(p) || 0));
    const group = el("g", { class: "bar-row", "data-class": name });
    group.appendChild(el("text", { x: labelWidth - 8, y: y + rowHeight / 2 + 4, "text-anchor": "end" }, name));
    group.appendChild(el("rect", { class: "bar-bg", x: labelWidth, y: y + 4, width: barWidth, height: rowHeight - 8, rx: 3 }));
    const bar = el("rect", {
      class: name === String(predicted) ? "bar top" : "bar",
      x: labelWidth,
      y: y + 4,
      width: Math.max(value * barWidth, value > 0 ? 1.5 : 0),
      height: rowHeight - 8,
      rx: 3,
      "data-class": name,
      "data-probability": value,
    });
    group.appendChild(titled(bar, `${name}: ${p}`));
    group.appendChild(el("text", { x: width - 4, y: y + rowHeight / 2 + 4, "text-anchor": "end" }, `${(value * 100).toFixed(1)} %`));
    svg.appendChild(group);
  });
  container.replaceChildren(svg);
}

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10) * power;
}

function decimalsFor(step) {
  return Math.max(0, Math.min(6, -Math.floor(Math.log10(step))));
}

function timeLabel(ms, spanMs) {
  const date = new Date(ms);
  if (spanMs > 2 * 86400e3) return date.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  const options = { hour: "2-digit", minute: "2-digit" };
  if (spanMs < 15 * 60e3) options.second = "2-digit";
  return date.toLocaleTimeString(undefined, options);
}

/**
 * Scores over time. ``points``: [{t (ms), cv, holdout, label, current}], oldest first.
 * The CV score is the solid line; the holdout score, when known, the dashed one; ``live`` (the
 * live quality from feedback, when it is comparable to the scoring) the dotted one.
 */
export function lineChart(container, points, { yLabel = "score", liveLabel = null } = {}) {
  const width = 560;
  const height = 230;
  const m = { left: 52, right: 16, top: 14, bottom: 42 };
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${yLabel} of ${points.length} versions over time` });
  if (points.length === 0) {
    svg.appendChild(el("text", { class: "empty", x: width / 2, y: height / 2, "text-anchor": "middle" }, "no versions stored yet"));
    container.replaceChildren(svg);
    return;
  }
  const values = points.flatMap((p) => [p.cv, p.holdout, p.live]).filter((v) => Number.isFinite(v));
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  const unitInterval = lo >= 0 && hi <= 1;
  const span = hi - lo || Math.abs(hi) * 0.1 || 0.1;
  lo -= span * 0.2;
  hi += span * 0.2;
  if (unitInterval) {
    lo = Math.max(0, lo);
    hi = Math.min(1, hi);
  }
  const times = points.map((p) => p.t);
  const t0 = Math.min(...times);
  const t1 = Math.max(...times);
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const x = (t) => (t1 === t0 ? m.left + plotW / 2 : m.left + ((t - t0) / (t1 - t0)) * plotW);
  const y = (v) => m.top + (1 - (v - lo) / (hi - lo || 1)) * plotH;

  // Axes and grid.
  const axis = el("g", { class: "axis" });
  const grid = el("g", { class: "grid" });
  const step = niceStep(hi - lo, 4);
  const digits = decimalsFor(step);
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    grid.appendChild(el("line", { x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }));
    axis.appendChild(el("text", { x: m.left - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(digits)));
  }
  const ticks = t1 === t0 ? [t0] : [0, 1 / 3, 2 / 3, 1].map((f) => t0 + f * (t1 - t0));
  ticks.forEach((t, i) => {
    // The first and last labels keep inside the plot's width.
    const anchor = ticks.length === 1 ? "middle" : i === 0 ? "start" : i === ticks.length - 1 ? "end" : "middle";
    axis.appendChild(el("line", { x1: x(t), x2: x(t), y1: height - m.bottom, y2: height - m.bottom + 4 }));
    axis.appendChild(el("text", { x: x(t), y: height - m.bottom + 16, "text-anchor": anchor }, timeLabel(t, t1 - t0)));
  });
  axis.appendChild(el("line", { x1: m.left, x2: width - m.right, y1: height - m.bottom, y2: height - m.bottom }));
  svg.appendChild(grid);
  svg.appendChild(axis);

  // One polyline and its points per series.
  const series = [
    { key: "cv", name: "CV score", cls: "cv" },
    { key: "holdout", name: "holdout score", cls: "holdout" },
    { key: "live", name: liveLabel || "live", cls: "live" },
  ];
  for (const s of series) {
    const pts = points.filter((p) => Number.isFinite(p[s.key]));
    if (pts.length === 0) continue;
    if (pts.length > 1) {
      svg.appendChild(el("polyline", { class: `line ${s.cls}`, points: pts.map((p) => `${x(p.t)},${y(p[s.key])}`).join(" ") }));
    }
    for (const p of pts) {
      // The served version is marked on the CV line.
      const marked = p.current && s.key === "cv";
      const dot = el("circle", {
        class: `point ${s.cls}${marked ? " current" : ""}`,
        cx: x(p.t),
        cy: y(p[s.key]),
        r: marked ? 6 : 4,
        "data-version": p.label,
      });
      svg.appendChild(titled(dot, `${p.label}\n${s.name}: ${p[s.key]}${p.current ? "\n(serving)" : ""}`));
    }
  }

  // Legend, under the axis.
  const legend = el("g", { class: "legend", transform: `translate(${m.left}, ${height - 10})` });
  legend.appendChild(el("line", { class: "line cv", x1: 0, x2: 18, y1: -4, y2: -4 }));
  legend.appendChild(el("text", { x: 24, y: 0 }, `CV ${yLabel}`));
  legend.appendChild(el("line", { class: "line holdout", x1: 130, x2: 148, y1: -4, y2: -4 }));
  legend.appendChild(el("text", { x: 154, y: 0 }, `holdout ${yLabel}`));
  legend.appendChild(el("circle", { class: "legend-dot", cx: 290, cy: -4, r: 4.5 }));
  legend.appendChild(el("text", { x: 300, y: 0 }, "serving"));
  if (points.some((p) => Number.isFinite(p.live))) {
    legend.appendChild(el("line", { class: "line live", x1: 360, x2: 378, y1: -4, y2: -4 }));
    legend.appendChild(el("text", { x: 384, y: 0 }, liveLabel || "live"));
  }
  svg.appendChild(legend);
  container.replaceChildren(svg);
}

/**
 * One horizontal bar per item: [{label, value, spread?, cls?, data?: {name: value}, title?}].
 * ``max`` fixes the scale (else the largest value); ``format`` writes the value at the bar's end;
 * ``onPick(item)`` makes each row clickable (and focusable, Enter picks it too).
 */
export function valueBars(container, items, { max = null, format = (v) => String(v), onPick = null, empty = "nothing to show" } = {}) {
  const width = 520;
  const rowHeight = 24;
  const labelWidth = Math.min(190, 16 + 7.2 * Math.max(4, ...items.map((item) => String(item.label).length)));
  const valueWidth = 70;
  const barWidth = width - labelWidth - valueWidth;
  const height = Math.max(rowHeight, rowHeight * items.length) + 4;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": items.map((i) => `${i.label} ${Number.isFinite(i.value) ? format(i.value) : "–"}`).join(", ") || empty });
  if (items.length === 0) {
    svg.appendChild(el("text", { class: "empty", x: width / 2, y: rowHeight / 2 + 6, "text-anchor": "middle" }, empty));
    container.replaceChildren(svg);
    return;
  }
  const top = max ?? Math.max(...items.map((i) => (Number.isFinite(i.value) ? i.value + (i.spread || 0) : 0)), 1e-12);
  const scale = (v) => Math.max(0, Math.min(1, v / (top || 1))) * barWidth;
  items.forEach((item, i) => {
    const y = 2 + i * rowHeight;
    const group = el("g", { class: `bar-row${onPick ? " pickable" : ""}` });
    for (const [name, value] of Object.entries(item.data || {})) group.setAttribute(`data-${name}`, String(value));
    group.appendChild(el("text", { x: labelWidth - 8, y: y + rowHeight / 2 + 4, "text-anchor": "end" }, String(item.label)));
    group.appendChild(el("rect", { class: "bar-bg", x: labelWidth, y: y + 4, width: barWidth, height: rowHeight - 8, rx: 3 }));
    const finite = Number.isFinite(item.value);
    const bar = el("rect", {
      class: `bar ${item.cls || ""}`.trim(),
      x: labelWidth,
      y: y + 4,
      width: finite ? Math.max(scale(item.value), item.value > 0 ? 1.5 : 0) : 0,
      height: rowHeight - 8,
      rx: 3,
    });
    for (const [name, value] of Object.entries(item.data || {})) bar.setAttribute(`data-${name}`, String(value));
    group.appendChild(titled(bar, item.title || `${item.label}: ${finite ? format(item.value) : "–"}`));
    if (finite && item.spread > 0) {
      const x0 = labelWidth + scale(Math.max(0, item.value - item.spread));
      const x1 = labelWidth + scale(item.value + item.spread);
      group.appendChild(el("line", { class: "spread", x1: x0, x2: x1, y1: y + rowHeight / 2, y2: y + rowHeight / 2 }));
    }
    group.appendChild(el("text", { x: width - 4, y: y + rowHeight / 2 + 4, "text-anchor": "end" }, finite ? format(item.value) : "–"));
    if (onPick) {
      group.setAttribute("tabindex", "0");
      group.setAttribute("role", "button");
      group.addEventListener("click", () => onPick(item));
      group.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") onPick(item); });
    }
    svg.appendChild(group);
  });
  container.replaceChildren(svg);
}

/** Two bars per bin: the training rows' share (``reference``) and the live rows' (``live``, may be null). */
export function histogramChart(container, bins, reference, live) {
  const width = 520;
  const height = 210;
  const m = { left: 40, right: 8, top: 10, bottom: 58 };
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const values = [...reference, ...(live || [])].filter((v) => Number.isFinite(v));
  const top = Math.max(0.05, ...values);
  const y = (v) => m.top + (1 - v / top) * plotH;
  const slot = plotW / Math.max(1, bins.length);
  const barW = Math.max(2, Math.min(28, slot / 2 - 2));
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `training vs live shares over ${bins.length} bins` });
  const axis = el("g", { class: "axis" });
  for (const f of [0, 0.5, 1]) {
    axis.appendChild(el("line", { class: "gridline", x1: m.left, x2: width - m.right, y1: y(top * f), y2: y(top * f) }));
    axis.appendChild(el("text", { x: m.left - 4, y: y(top * f) + 4, "text-anchor": "end" }, `${Math.round(top * f * 100)} %`));
  }
  svg.appendChild(axis);
  bins.forEach((label, i) => {
    const cx = m.left + slot * i + slot / 2;
    const series = [["reference", reference[i]], ["live", live ? live[i] : null]];
    series.forEach(([cls, v], j) => {
      if (!Number.isFinite(v)) return;
      const bar = el("rect", {
        class: `hist ${cls}`, x: cx - barW + j * barW, y: y(v), width: barW - 1, height: Math.max(0, m.top + plotH - y(v)),
        "data-bin": label, "data-share": v,
      });
      svg.appendChild(titled(bar, `${label}: ${cls === "reference" ? "training" : "live"} ${(v * 100).toFixed(1)} %`));
    });
    const text = el("text", { x: cx, y: height - m.bottom + 14, "text-anchor": "end", transform: `rotate(-35 ${cx} ${height - m.bottom + 14})` }, String(label));
    svg.appendChild(text);
  });
  const legend = el("g", { class: "legend", transform: `translate(${m.left}, ${height - 6})` });
  legend.appendChild(el("rect", { class: "hist-key reference", x: 0, y: -10, width: 12, height: 10 }));
  legend.appendChild(el("text", { x: 16, y: 0 }, "training rows"));
  legend.appendChild(el("rect", { class: "hist-key live", x: 120, y: -10, width: 12, height: 10 }));
  legend.appendChild(el("text", { x: 136, y: 0 }, live ? "live rows" : "live rows (none yet)"));
  svg.appendChild(legend);
  container.replaceChildren(svg);
}
