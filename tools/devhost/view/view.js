// Local view: polls devhost's /metrics (Prometheus text) and draws TTFT, TPOT, tokens and
// errors. Vanilla JS and SVG: no network beyond devhost, no libraries.
"use strict";

const POLL_MS = Number(new URLSearchParams(location.search).get("interval") || 2) * 1000;
const KEEP = 150; // points per chart (5 minutes at 2 s)
const M = {
  ttft: "gen_ai_server_time_to_first_token_seconds",
  tpot: "gen_ai_server_time_per_output_token_seconds",
  dur: "gen_ai_server_request_duration_seconds",
  tokens: "gen_ai_client_token_usage",
  probeTtft: "infer_probe_time_to_first_token_seconds",
  probeUp: "infer_probe_availability",
  circuit: "infer_circuit_state",
};
const CIRCUIT = ["closed", "half open", "open"];

// ------------------------------------------------------------------ Prometheus text
function parseLabels(text) {
  const labels = {};
  const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  let m;
  while ((m = re.exec(text)) !== null) labels[m[1]] = m[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
  return labels;
}

function parseProm(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const brace = line.indexOf("{");
    const space = line.lastIndexOf(" ");
    let name, labels = {};
    if (brace >= 0 && brace < space) {
      name = line.slice(0, brace);
      labels = parseLabels(line.slice(brace + 1, line.lastIndexOf("}")));
    } else {
      name = line.slice(0, line.indexOf(" "));
    }
    const value = Number(line.slice(space + 1));
    if (!Number.isNaN(value)) samples.push({ name, labels, value });
  }
  return samples;
}

function matches(labels, filter) {
  return (!filter.model || labels.gen_ai_request_model === filter.model) &&
         (!filter.backend || labels.infer_backend === filter.backend);
}

// A histogram summed over every series that passes `pick`: {buckets: [[le, cum]], sum, count}.
function histogram(samples, base, pick) {
  const byLe = new Map();
  let sum = 0, count = 0;
  for (const s of samples) {
    if (!pick(s.labels)) continue;
    if (s.name === base + "_bucket") {
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      byLe.set(le, (byLe.get(le) || 0) + s.value);
    } else if (s.name === base + "_sum") sum += s.value;
    else if (s.name === base + "_count") count += s.value;
  }
  const buckets = [...byLe.entries()].sort((a, b) => a[0] - b[0]);
  return { buckets, sum, count };
}

function minus(a, b) {
  if (!b) return a;
  const prev = new Map(b.buckets);
  return {
    buckets: a.buckets.map(([le, c]) => [le, Math.max(0, c - (prev.get(le) || 0))]),
    sum: a.sum - b.sum,
    count: a.count - b.count,
  };
}

// Prometheus' histogram_quantile: linear interpolation inside the bucket holding the rank.
function quantile(q, h) {
  if (!h || h.count <= 0 || !h.buckets.length) return null;
  const total = h.buckets[h.buckets.length - 1][1];
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0, prevCum = 0;
  for (const [le, cum] of h.buckets) {
    if (cum >= rank) {
      if (le === Infinity) return prevLe;
      if (cum === prevCum) return le;
      return prevLe + (le - prevLe) * ((rank - prevCum) / (cum - prevCum));
    }
    prevLe = le; prevCum = cum;
  }
  return prevLe;
}

function total(samples, name, pick) {
  let v = 0;
  for (const s of samples) if (s.name === name && pick(s.labels)) v += s.value;
  return v;
}

// ------------------------------------------------------------------ formatting
function fmtSeconds(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 2 : 1) + " ms";
  return v.toFixed(2) + " s";
}
function fmtCount(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return String(Math.round(v));
}
function setTile(id, value, text) {
  const el = document.getElementById(id);
  el.dataset.value = value === null ? "" : String(value);
  el.textContent = text;
}

// ------------------------------------------------------------------ charts (SVG)
const COLORS = ["var(--c1)", "var(--c2)", "var(--c3)", "var(--c4)"];
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawChart(id, points, series, format) {
  const svg = document.getElementById(id);
  const W = 600, H = 200, L = 56, R = 8, T = 10, B = 22;
  svg.replaceChildren();
  const values = points.flatMap((p) => series.map((s) => p[s.key])).filter((v) => v !== null && Number.isFinite(v));
  const max = Math.max(1e-9, ...values) * 1.1;
  const t0 = points.length ? points[0].t : 0;
  const t1 = points.length ? points[points.length - 1].t : 1;
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    svg.append(el("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    svg.append(el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
  }
  svg.append(el("text", { x: L, y: H - 4 }, points.length ? new Date(t0).toLocaleTimeString() : ""));
  svg.append(el("text", { x: W - R, y: H - 4, "text-anchor": "end" }, points.length ? new Date(t1).toLocaleTimeString() : ""));
  series.forEach((s, i) => {
    // An interval without observations has no value: the line joins its neighbours, and
    // every measured interval gets a dot.
    let d = "";
    const color = COLORS[i % COLORS.length];
    for (const p of points) {
      const v = p[s.key];
      if (v === null || !Number.isFinite(v)) continue;
      d += (d ? "L" : "M") + x(p.t).toFixed(1) + "," + y(v).toFixed(1);
      svg.append(el("circle", { cx: x(p.t).toFixed(1), cy: y(v).toFixed(1), r: 2, fill: color }));
    }
    if (d) svg.append(el("path", { class: "line", d, stroke: color, "data-series": s.key }));
    svg.append(el("rect", { x: L + 8 + i * 110, y: T + 2, width: 10, height: 10, fill: COLORS[i % COLORS.length] }));
    svg.append(el("text", { x: L + 22 + i * 110, y: T + 11 }, s.label));
  });
  svg.dataset.points = String(points.filter((p) => series.some((s) => p[s.key] !== null && Number.isFinite(p[s.key]))).length);
}

// ------------------------------------------------------------------ the view
const state = { prev: null, prevT: 0, points: [], filter: { model: "", backend: "" }, options: { model: new Set(), backend: new Set() } };

function refreshOptions(samples) {
  for (const [key, label] of [["model", "gen_ai_request_model"], ["backend", "infer_backend"]]) {
    const select = document.getElementById("f-" + key);
    for (const s of samples) {
      const v = s.labels[label];
      if (v && !state.options[key].has(v)) {
        state.options[key].add(v);
        select.append(new Option(v, v));
      }
    }
  }
}

function snapshot(samples, filter) {
  const pick = (l) => matches(l, filter);
  const errPick = (l) => pick(l) && !!l.error_type;
  return {
    ttft: histogram(samples, M.ttft, pick),
    tpot: histogram(samples, M.tpot, pick),
    dur: histogram(samples, M.dur, pick),
    tokIn: total(samples, M.tokens + "_sum", (l) => pick(l) && l.gen_ai_token_type === "input"),
    tokOut: total(samples, M.tokens + "_sum", (l) => pick(l) && l.gen_ai_token_type === "output"),
    requests: total(samples, M.dur + "_count", pick),
    errors: total(samples, M.dur + "_count", errPick),
  };
}

function render(samples, now) {
  refreshOptions(samples);
  const cur = snapshot(samples, state.filter);
  setTile("ttft-p50", quantile(0.5, cur.ttft), fmtSeconds(quantile(0.5, cur.ttft)));
  setTile("ttft-p95", quantile(0.95, cur.ttft), fmtSeconds(quantile(0.95, cur.ttft)));
  setTile("tpot-p50", quantile(0.5, cur.tpot), fmtSeconds(quantile(0.5, cur.tpot)));
  setTile("tpot-p95", quantile(0.95, cur.tpot), fmtSeconds(quantile(0.95, cur.tpot)));
  setTile("dur-p95", quantile(0.95, cur.dur), fmtSeconds(quantile(0.95, cur.dur)));
  setTile("requests", cur.requests, fmtCount(cur.requests));
  setTile("errors", cur.errors, fmtCount(cur.errors) + (cur.requests ? ` (${((100 * cur.errors) / cur.requests).toFixed(1)}%)` : ""));
  setTile("tokens", cur.tokIn + cur.tokOut, `${fmtCount(cur.tokIn)} / ${fmtCount(cur.tokOut)}`);
  document.getElementById("tokens").dataset.output = String(cur.tokOut);

  if (state.prev) {
    const dt = Math.max(0.001, (now - state.prevT) / 1000);
    const dTtft = minus(cur.ttft, state.prev.ttft);
    const dTpot = minus(cur.tpot, state.prev.tpot);
    state.points.push({
      t: now,
      ttft50: quantile(0.5, dTtft), ttft95: quantile(0.95, dTtft),
      tpot50: quantile(0.5, dTpot), tpot95: quantile(0.95, dTpot),
      tokIn: (cur.tokIn - state.prev.tokIn) / dt, tokOut: (cur.tokOut - state.prev.tokOut) / dt,
      rps: (cur.requests - state.prev.requests) / dt, eps: (cur.errors - state.prev.errors) / dt,
    });
    if (state.points.length > KEEP) state.points.shift();
  }
  state.prev = cur;
  state.prevT = now;
  const num = (v) => (v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(2));
  drawChart("c-ttft", state.points, [{ key: "ttft50", label: "p50" }, { key: "ttft95", label: "p95" }], fmtSeconds);
  drawChart("c-tpot", state.points, [{ key: "tpot50", label: "p50" }, { key: "tpot95", label: "p95" }], fmtSeconds);
  drawChart("c-tokens", state.points, [{ key: "tokIn", label: "input" }, { key: "tokOut", label: "output" }], num);
  drawChart("c-errors", state.points, [{ key: "rps", label: "requests" }, { key: "eps", label: "errors" }], num);
  renderBackends(samples);
  renderCounters(samples);
}

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function renderBackends(samples) {
  const names = new Set();
  for (const s of samples) if (s.labels.infer_backend) names.add(s.labels.infer_backend);
  const rows = [];
  for (const b of [...names].sort()) {
    const pick = (l) => l.infer_backend === b;
    const requests = total(samples, M.dur + "_count", pick);
    const errors = total(samples, M.dur + "_count", (l) => pick(l) && !!l.error_type);
    const ttft = quantile(0.5, histogram(samples, M.ttft, pick));
    const up = samples.find((s) => s.name === M.probeUp && s.labels.infer_backend === b);
    const probeTtft = quantile(0.5, histogram(samples, M.probeTtft, pick));
    const circuit = samples.find((s) => s.name === M.circuit && s.labels.infer_backend === b);
    const state_ = circuit ? CIRCUIT[circuit.value] || String(circuit.value) : "closed";
    rows.push(`<tr data-backend="${esc(b)}"><td>${esc(b)}</td><td>${fmtCount(requests)}</td><td>${fmtCount(errors)}</td>` +
      `<td>${fmtSeconds(ttft)}</td>` +
      `<td class="${up ? (up.value ? "up" : "down") : ""}">${up ? (up.value ? "up" : "down") : "–"}</td>` +
      `<td>${fmtSeconds(probeTtft)}</td><td class="${state_ === "open" ? "open" : ""}">${state_}</td></tr>`);
  }
  document.querySelector("#t-backends tbody").innerHTML = rows.join("") || '<tr><td colspan="7" class="dim">no backend called yet</td></tr>';
}

function renderCounters(samples) {
  const sums = new Map();
  for (const s of samples) {
    if (s.name.startsWith("infer_") && s.name.endsWith("_total")) sums.set(s.name, (sums.get(s.name) || 0) + s.value);
  }
  const rows = [...sums.entries()].sort().map(([k, v]) => `<tr><td>${esc(k.replace(/^infer_|_total$/g, ""))}</td><td>${fmtCount(v)}</td></tr>`);
  document.querySelector("#t-counters tbody").innerHTML = rows.join("") || '<tr><td class="dim">none yet (retries, failovers, throttles, cache…)</td></tr>';
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const r = await fetch("/metrics", { cache: "no-store" });
    if (!r.ok) throw new Error(r.status === 404 ? "telemetry is off (INFER_METRICS_PROMETHEUS=0)" : "HTTP " + r.status);
    const samples = parseProm(await r.text());
    render(samples, Date.now());
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.dataset.ok = "1";
  } catch (err) {
    status.textContent = "cannot read /metrics: " + err.message;
    status.dataset.ok = "0";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

for (const key of ["model", "backend"]) {
  document.getElementById("f-" + key).addEventListener("change", (e) => {
    state.filter[key] = e.target.value;
    state.prev = null;
    state.points = [];
  });
}
document.getElementById("interval").textContent = String(POLL_MS / 1000);
poll();
