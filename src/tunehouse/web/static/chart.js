// A small SVG line chart. Series are downsampled to a few points per pixel column (min and max of
// each bucket, so spikes survive), which keeps a 10,000-step job as fast as a 10-step one.

const SVG = "http://www.w3.org/2000/svg";
const W = 640, H = 260, PAD = { l: 48, r: 12, t: 10, b: 26 };

export function downsample(points, buckets) {
  if (points.length <= buckets * 2) return points;
  const out = [];
  const size = points.length / buckets;
  for (let b = 0; b < buckets; b++) {
    const start = Math.floor(b * size), end = Math.min(points.length, Math.floor((b + 1) * size));
    let lo = start, hi = start;
    for (let i = start; i < end; i++) {
      if (points[i][1] < points[lo][1]) lo = i;
      if (points[i][1] > points[hi][1]) hi = i;
    }
    if (lo === hi) out.push(points[lo]);
    else if (lo < hi) out.push(points[lo], points[hi]);
    else out.push(points[hi], points[lo]);
  }
  return out;
}

function niceTicks(min, max, count) {
  if (min === max) { min -= 1; max += 1; }
  const raw = (max - min) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(+v.toFixed(10));
  return ticks;
}

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(v) {
  const a = Math.abs(v);
  return a >= 1000 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toFixed(3);
}

// series: [{name, color, points: [[step, value], ...], dots?: bool}]
export function lineChart(container, series, { title = "", buckets = 300 } = {}) {
  container.replaceChildren();
  const shown = series.filter(s => s.points.length);
  if (!shown.length) {
    container.append(Object.assign(document.createElement("div"), { className: "empty", textContent: `No ${title} yet` }));
    return 0;
  }
  const all = shown.flatMap(s => s.points);
  let [x0, x1] = [Infinity, -Infinity], [y0, y1] = [Infinity, -Infinity];
  for (const [x, y] of all) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  const yt = niceTicks(y0, y1, 4); y0 = Math.min(y0, yt[0]); y1 = Math.max(y1, yt[yt.length - 1]);
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const sx = x => PAD.l + (x - x0) / (x1 - x0) * (W - PAD.l - PAD.r);
  const sy = y => H - PAD.b - (y - y0) / (y1 - y0) * (H - PAD.t - PAD.b);

  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  for (const t of yt) {
    svg.append(el("line", { class: "axis", x1: PAD.l, x2: W - PAD.r, y1: sy(t), y2: sy(t) }));
    svg.append(el("text", { class: "tick", x: PAD.l - 6, y: sy(t) + 4, "text-anchor": "end" }, fmt(t)));
  }
  for (const t of niceTicks(x0, x1, 5).filter(t => t >= x0 && t <= x1 && Number.isInteger(t))) {
    svg.append(el("text", { class: "tick", x: sx(t), y: H - 8, "text-anchor": "middle" }, String(t)));
  }
  let drawn = 0;
  for (const s of shown) {
    const pts = downsample(s.points, buckets);
    drawn += pts.length;
    const attr = pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    svg.append(el("polyline", { class: "series", "data-series": s.name, points: attr, stroke: s.color }));
    if (s.dots && pts.length <= 200) {
      for (const [x, y] of pts) svg.append(el("circle", { cx: sx(x), cy: sy(y), r: 2.5, fill: s.color }));
    }
  }
  svg.setAttribute("data-points", String(drawn));
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const s of shown) {
    const last = s.points[s.points.length - 1];
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${s.color}"></i>`;
    item.append(`${s.name} ${fmt(last[1])} @ ${last[0]}`);
    legend.append(item);
  }
  container.append(svg, legend);
  return drawn;
}
