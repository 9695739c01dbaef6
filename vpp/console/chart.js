// Line and band charts on <canvas>, for the County VPP console (console.js): no library.
// A chart is drawn whole from its data at its canvas's size (console.js redraws on a
// resize); times are POSIX ms, put on the axis by the caller's `timeLabel` and `tzOffset`
// (the site's local time); values are multiplied by `scale` for the y axis (W -> MW).
"use strict";

const NOW_COLOR = "#9ca3af";

function niceStep(span, count) {
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
}

const TIME_STEPS = [10, 15, 30, 60, 120, 180, 360, 720].map((m) => m * 60e3);

// Draws lines ({t, v, color, width, dash, step, dots, label}) and bands ({t, lo, hi, color,
// label}) over [x0, x1] [ms], with a "now" line. Returns how many points of each line and
// band fell inside the window.
function chart(canvas, {x0, x1, lines = [], bands = [], scale = 1e-6, yMin, yMax, now, digits = 0,
  timeLabel = (t) => new Date(t).toISOString().slice(11, 16), tzOffset = () => 0}) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = {l: 44, r: 10, t: 14, b: 22};
  const inside = (t, v) => t >= x0 && t <= x1 && v != null && Number.isFinite(v);

  let lo = Infinity;
  let hi = -Infinity;
  const count = (t, vs) => t.reduce((n, ti, i) => {
    if (!inside(ti, vs[i])) return n;
    lo = Math.min(lo, vs[i] * scale);
    hi = Math.max(hi, vs[i] * scale);
    return n + 1;
  }, 0);
  const lineCounts = lines.map((s) => count(s.t, s.v));
  const bandCounts = bands.map((b) => Math.min(count(b.t, b.lo), count(b.t, b.hi)));
  if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
  lo = Math.min(lo, yMin ?? 0);
  hi = Math.max(hi, yMax ?? 0, lo + 1); // at least one unit high (all zeros: 0 to 1 MW)
  const ystep = niceStep(hi - lo || 1, Math.max(2, Math.floor((h - pad.t - pad.b) / 36)));
  lo = Math.floor(lo / ystep) * ystep;
  hi = Math.ceil(hi / ystep) * ystep;
  if (hi === lo) hi = lo + ystep;
  const dg = Math.max(digits, Math.ceil(-Math.log10(ystep) - 1e-9)); // 0.2 steps: one decimal

  const pw = w - pad.l - pad.r;
  const ph = h - pad.t - pad.b;
  const X = (t) => pad.l + ((t - x0) / (x1 - x0)) * pw;
  const Y = (v) => pad.t + (1 - (v * scale - lo) / (hi - lo)) * ph;

  // grid and axes
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#4b5563";
  ctx.strokeStyle = "#e5e7eb";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let v = lo; v <= hi + ystep / 1e6; v += ystep) {
    const y = Math.round(pad.t + (1 - (v - lo) / (hi - lo)) * ph) + 0.5;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
    ctx.fillText(v.toFixed(dg), pad.l - 5, y);
  }
  const tstep = TIME_STEPS.find((s) => (pw * s) / (x1 - x0) >= 70) ?? TIME_STEPS.at(-1);
  const off = tzOffset(x0); // ticks on local round hours
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let t = Math.ceil((x0 + off) / tstep) * tstep - off; t <= x1; t += tstep) {
    const x = Math.round(X(t)) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, pad.t); ctx.lineTo(x, pad.t + ph); ctx.stroke();
    if (x + 16 < w) ctx.fillText(timeLabel(t), x, pad.t + ph + 5); // no label cut by the edge
  }

  ctx.save();
  ctx.beginPath(); ctx.rect(pad.l, pad.t, pw, ph); ctx.clip();
  for (const b of bands) { // each run of known values is one filled polygon
    ctx.fillStyle = b.color;
    let run = [];
    const flush = () => {
      if (run.length > 1) {
        ctx.beginPath();
        run.forEach((i, k) => (k ? ctx.lineTo : ctx.moveTo).call(ctx, X(b.t[i]), Y(b.hi[i])));
        [...run].reverse().forEach((i) => ctx.lineTo(X(b.t[i]), Y(b.lo[i])));
        ctx.closePath(); ctx.fill();
      }
      run = [];
    };
    b.t.forEach((t, i) => (b.lo[i] != null && b.hi[i] != null ? run.push(i) : flush()));
    flush();
  }
  for (const s of lines) {
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = s.width ?? 1.5;
    ctx.setLineDash(s.dash ?? []);
    ctx.beginPath();
    let pen = false;
    s.t.forEach((t, i) => {
      const v = s.v[i];
      if (v == null || !Number.isFinite(v)) { pen = false; return; }
      if (!pen) ctx.moveTo(X(t), Y(v));
      else if (s.step) { ctx.lineTo(X(t), Y(s.v[i - 1])); ctx.lineTo(X(t), Y(v)); } else ctx.lineTo(X(t), Y(v));
      if (s.step && (i + 1 === s.t.length || s.v[i + 1] == null)) ctx.lineTo(X(t + s.step), Y(v));
      pen = true;
    });
    ctx.stroke();
    if (s.dots) {
      s.t.forEach((t, i) => {
        if (s.v[i] == null) return;
        ctx.beginPath(); ctx.arc(X(t), Y(s.v[i]), 2.2, 0, 2 * Math.PI); ctx.fill();
      });
    }
  }
  ctx.setLineDash([]);
  if (now != null && now >= x0 && now <= x1) {
    ctx.strokeStyle = NOW_COLOR;
    ctx.setLineDash([3, 3]);
    ctx.beginPath(); ctx.moveTo(X(now), pad.t); ctx.lineTo(X(now), pad.t + ph); ctx.stroke();
  }
  ctx.restore();
  if (now != null && now >= x0 && now <= x1) { // its label above the plot, clear of the data
    ctx.fillStyle = "#6b7280";
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    ctx.fillText("now", X(now), pad.t - 1);
  }
  canvas.hover = {x0, x1, pad, pw, lines, bands, scale, digits: dg, timeLabel};
  return {lines: lineCounts, bands: bandCounts};
}

function nearest(t, ts) { // the index in ts (ascending) closest to t
  let best = -1;
  ts.forEach((x, i) => { if (best < 0 || Math.abs(x - t) < Math.abs(ts[best] - t)) best = i; });
  return best;
}

// the values under the pointer, in the page's #tooltip
document.addEventListener("mousemove", (ev) => {
  const tip = document.getElementById("tooltip");
  const c = ev.target;
  const hv = c instanceof HTMLCanvasElement ? c.hover : null;
  const r = hv && c.getBoundingClientRect();
  const fx = hv ? (ev.clientX - r.left - hv.pad.l) / hv.pw : -1;
  if (!hv || fx < 0 || fx > 1) { tip.hidden = true; return; }
  const t = hv.x0 + fx * (hv.x1 - hv.x0);
  const row = (tag, text) => Object.assign(document.createElement(tag), {textContent: text});
  const rows = [row("b", hv.timeLabel(t))];
  for (const s of [...hv.lines, ...hv.bands]) {
    const i = s.label ? nearest(t, s.t) : -1;
    if (i < 0 || Math.abs(s.t[i] - t) > 20 * 60e3) continue;
    const v = s.v ? s.v[i] : [s.lo[i], s.hi[i]];
    const show = (x) => (x == null ? "–" : (x * hv.scale).toFixed(hv.digits + 1));
    rows.push(row("div", `${s.label}: ${Array.isArray(v) ? v.map(show).join(" – ") : show(v)}`));
  }
  tip.replaceChildren(...rows);
  tip.hidden = false;
  tip.style.left = `${Math.min(ev.pageX + 14, window.scrollX + window.innerWidth - tip.offsetWidth - 8)}px`;
  tip.style.top = `${ev.pageY + 14}px`;
});
