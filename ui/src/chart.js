// A small SVG line chart (training loss, rewards per epoch): the geometry is pure and tested; the page
// only puts the returned markup in the DOM.

const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

/** "Nice" tick values covering [lo, hi]: 1, 2 or 5 times a power of ten apart. */
export function ticks(lo, hi, count = 4) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi === lo) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/**
 * Polyline points for each series in a width x height box (pad px inside), sharing one scale.
 * @param {{name: string, points: [number, number][]}[]} series
 */
export function layout(series, { width = 640, height = 240, pad = 36, bars = false } = {}) {
  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (all.length === 0) return { lines: [], x: { lo: 0, hi: 1 }, y: { lo: 0, hi: 1 }, sx: () => pad, sy: () => height - pad };
  let [xlo, xhi] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [ylo, yhi] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (bars) {
    // bars stand on zero, each category a whole step wide
    [xlo, xhi] = [xlo - 0.5, xhi + 0.5];
    [ylo, yhi] = [Math.min(0, ylo), Math.max(0, yhi) * 1.1 || 1];
  }
  if (xhi === xlo) xhi = xlo + 1;
  if (yhi === ylo) [ylo, yhi] = [ylo - 0.5, yhi + 0.5];
  const sx = (x) => pad + ((x - xlo) / (xhi - xlo)) * (width - 2 * pad);
  const sy = (y) => height - pad - ((y - ylo) / (yhi - ylo)) * (height - 2 * pad);
  const lines = series.map((s) => ({
    name: s.name,
    d: s.points
      .filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y))
      .map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`)
      .join(""),
  }));
  return { lines, x: { lo: xlo, hi: xhi }, y: { lo: ylo, hi: yhi }, sx, sy };
}

/** The whole chart as SVG markup, with a title and axis labels for screen readers. */
export function lineChart(series, { title, xLabel, yLabel, width = 640, height = 240, bars = false } = {}) {
  const pad = 64;
  const L = layout(series, { width, height, pad, bars });
  const colors = ["var(--c1)", "var(--c2)", "var(--c3)"];
  const yt = ticks(L.y.lo, L.y.hi)
    .map((v) => `<g><line x1="${pad}" x2="${width - pad}" y1="${L.sy(v)}" y2="${L.sy(v)}" class="grid"/>` +
      `<text x="${pad - 4}" y="${L.sy(v) + 4}" text-anchor="end">${esc(+v.toPrecision(4))}</text></g>`)
    .join("");
  const xt = ticks(L.x.lo, L.x.hi, 5)
    .filter((v) => !bars || Number.isInteger(v))
    .map((v) => `<text x="${L.sx(v)}" y="${height - pad + 16}" text-anchor="middle">${esc(+v.toPrecision(4))}</text>`)
    .join("");
  const marks = bars
    ? series.flatMap((s, si) => s.points.map(([x, y]) => {
        const w = Math.min(40, Math.max(4, (width - 2 * pad) / Math.max(1, s.points.length) / 2));
        const y0 = L.sy(Math.max(L.y.lo, 0));
        return `<rect x="${L.sx(x) - w / 2}" y="${Math.min(L.sy(y), y0)}" width="${w}" height="${Math.abs(y0 - L.sy(y))}" fill="${colors[si % 3]}"><title>${esc(s.name)} ${esc(x)}: ${esc(y)}</title></rect>`;
      })).join("")
    : L.lines.map((l, i) => `<path d="${l.d}" fill="none" stroke="${colors[i % 3]}" stroke-width="2"/>`).join("");
  const legend = series
    .map((s, i) => `<tspan fill="${colors[i % 3]}">■</tspan> ${esc(s.name)}  `)
    .join("");
  return `<svg viewBox="0 0 ${width} ${height}" role="img" aria-label="${esc(title)}" class="chart">` +
    `<title>${esc(title)}</title>${yt}${xt}${marks}` +
    `<text x="${width / 2}" y="${height - 4}" text-anchor="middle" class="axis">${esc(xLabel)}</text>` +
    `<text x="12" y="${height / 2}" transform="rotate(-90 12 ${height / 2})" text-anchor="middle" class="axis">${esc(yLabel)}</text>` +
    `<text x="${pad}" y="14" class="legend">${legend}</text></svg>`;
}
