// County VPP operator console: polls the controller's HTTP API (/api/v1) and draws it.
// Plain browser JavaScript, no libraries; the charts are chart.js's, on <canvas>.
// Powers arrive in W (generator convention, export +) and are shown in MW; SOC arrives as
// a ratio and is shown in %; times are shown in the site's time zone (from the API).
"use strict";

const API = "/api/v1";
const REFRESH_MS = 3000;
const TREND_HOURS = 6;
const PCC_AHEAD_H = 2; // the plan drawn ahead of now on the PCC chart
const FORECAST_AHEAD_H = 6;
const TOKEN_KEY = "vpp.console.token";
const H = 3600e3; // one hour [ms]

const COLOR = {
  export: "#1f4e9c", cap: "#c62828", planned: "#d97706", uncontrolled: "#6b7280",
  p50: "#6d28d9", band: "rgba(109, 40, 217, 0.16)", actual: "#111827",
  curtailed: "#b45309",
  batteries: ["#047857", "#1d4ed8", "#be185d", "#7c2d12", "#4338ca"],
};

const state = {
  token: null,
  tz: "UTC",
  clock: null, // {siteMs, wallMs, rate}: the site's clock as last seen, for the header
  seen: [], // the last minute's [wall ms, site ms] pairs: how fast the site's clock runs
  series: sessionStorage.getItem("vpp.console.series"), // the forecast series shown
  refreshes: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c ?? "");
  return node;
}

// ---------------------------------------------------------------- token and API calls

class ApiError extends Error {
  constructor(status, detail) {
    super(status ? `${status}: ${detail}` : detail);
    this.status = status;
    this.detail = detail;
  }
}

function takeToken() {
  const hash = new URLSearchParams(location.hash.replace(/^#/, ""));
  const fromUrl = hash.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    // the token does not stay in the address bar (nor in history or bookmarks)
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, {method = "GET", auth = true} = {}) {
  const headers = {Accept: "application/json"};
  if (auth) headers.Authorization = `Bearer ${state.token}`;
  let res;
  try {
    res = await fetch(API + path, {method, headers, cache: "no-store"});
  } catch (err) {
    throw new ApiError(0, `the controller does not answer (${err.message})`);
  }
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const d = body && body.detail;
    throw new ApiError(res.status, typeof d === "string" ? d : JSON.stringify(d ?? res.statusText));
  }
  return body;
}

function showLogin(message) {
  document.body.classList.add("signed-out");
  $("login").hidden = false;
  $("signout").hidden = true;
  if (message) banner(message);
}

function useToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  state.token = token;
  document.body.classList.remove("signed-out");
  $("login").hidden = true;
  $("signout").hidden = false;
  $("alarm-error").hidden = true;
  banner("");
  refresh();
}

function forget(message) { // no token: nothing of the plant stays on the page
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.last = null;
  ["device-rows", "alarm-rows", "soc-bars", "fc-tabs", "pcc-legend", "fc-legend"].forEach((id) => $(id).replaceChildren());
  ["fc-meta", "curtail-by", "plan-message", "curtail-now"].forEach((id) => { $(id).textContent = ""; });
  for (const c of document.querySelectorAll("canvas.chart")) {
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
    Object.assign(c.dataset, {points: 0, band: 0});
    c.hover = null;
  }
  $("alarm-error").hidden = $("alarm-count").hidden = true;
  showLogin(message);
}

function banner(message) {
  $("banner").textContent = message;
  $("banner").hidden = !message;
}

// a refused call: 401 (no or unknown token) asks for another; 403 names the role needed
function authMessage(err) {
  if (err.status === 401) return `The API refused the token (401): ${err.detail}`;
  if (err.status === 403) return `Not allowed with this token (403): ${err.detail}`;
  return null;
}

// ---------------------------------------------------------------- units and times

function mw(w, digits) {
  if (w == null || !Number.isFinite(w)) return "–";
  const v = w / 1e6;
  return `${v.toFixed(digits ?? (Math.abs(v) < 10 ? 2 : 1))} MW`;
}
const pct = (ratio) => (ratio == null ? "–" : `${(ratio * 100).toFixed(1)} %`);
const seconds = (s) => (s == null ? "–" : s < 1 ? `${(s * 1000).toFixed(0)} ms` : `${s.toFixed(2)} s`);
const ms = (iso) => (iso ? Date.parse(iso) : null);

const formats = new Map();
function fmt(options) { // Intl formatters are slow to make: one per time zone and style
  const key = state.tz + JSON.stringify(options);
  if (!formats.has(key)) {
    formats.set(key, new Intl.DateTimeFormat("en-GB", {timeZone: state.tz, hourCycle: "h23", ...options}));
  }
  return formats.get(key);
}

function parts(t) {
  const p = {};
  for (const x of fmt({year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
    minute: "2-digit", second: "2-digit"}).formatToParts(t)) p[x.type] = x.value;
  return p;
}

// the site's local time: "14:05", with seconds "14:05:09", with the date "2026-04-15 14:05"
function local(t, {date = false, secs = false} = {}) {
  if (t == null || Number.isNaN(t)) return "–";
  const p = parts(t);
  const hm = `${p.hour}:${p.minute}${secs ? `:${p.second}` : ""}`;
  return date ? `${p.year}-${p.month}-${p.day} ${hm}` : hm;
}

function offsetMs(t) { // the site's UTC offset at t
  const p = parts(t);
  return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second) -
    Math.floor(t / 1000) * 1000;
}

const offsetLabel = (t) => // "UTC+08:00"
  fmt({timeZoneName: "longOffset"}).formatToParts(t).find((x) => x.type === "timeZoneName").value
    .replace("GMT", "UTC").replace(/^UTC$/, "UTC+00:00");

// where a chart of the past starts: TREND_HOURS back, or at its first point (a young run)
const since = (t, now) => Math.max(now - TREND_HOURS * H, Math.min(t[0] ?? now, now - H));

// ---------------------------------------------------------------- panels

// a chart in the site's local time (chart.js)
const plot = (canvas, spec) => chart(canvas, {timeLabel: local, tzOffset: offsetMs, ...spec});

function legend(node, items) {
  node.replaceChildren(...items.map(({label, color, dash, band}) => el("span", {class: "key"},
    el("i", {class: band ? "swatch band" : dash ? "swatch dashed" : "swatch",
      style: band ? `background:${color}` : `border-color:${color}`}), label)));
}

function renderHeader(health) {
  $("site").textContent = health.site;
  const overall = $("overall");
  overall.textContent = health.status;
  overall.dataset.status = health.status;
  const siteMs = ms(health.time);
  const wallMs = performance.now();
  // a simulated site's clock may run faster than the wall's: its rate over the last minute
  const seen = state.seen.filter(([w, s]) => wallMs - w < 60e3 && s <= siteMs);
  seen.push([wallMs, siteMs]);
  state.seen = seen;
  const [w0, s0] = seen[0];
  const rate = wallMs - w0 > 1500 ? Math.max(0, (siteMs - s0) / (wallMs - w0)) : state.clock?.rate ?? 1;
  state.clock = {siteMs, wallMs, rate};
  $("tz").textContent = `${state.tz} (${offsetLabel(siteMs)})`;
  $("rate").textContent = rate > 1.5 ? `simulated, ×${Number(rate.toPrecision(2))}` : "";
  tick();
}

function tick() {
  const c = state.clock;
  if (c) $("clock").textContent = local(c.siteMs + (performance.now() - c.wallMs) * c.rate, {secs: true});
}

function renderPcc(trend, schedule, health) {
  const now = ms(health.time);
  const t = trend.ts.map(ms);
  const x0 = since(t, now);
  const x1 = now + PCC_AHEAD_H * H;
  const lines = [
    {label: "Export (measured)", t, v: trend.export_w, color: COLOR.export, width: 2},
    {label: "Cap", t, v: trend.export_cap_w, color: COLOR.cap},
    {label: "Planned export", t, v: trend.planned_export_w, color: COLOR.planned, dash: [4, 3]},
    {label: "Uncontrolled export", t, v: trend.uncontrolled_export_w, color: COLOR.uncontrolled,
      dash: [1, 3], width: 2},
  ];
  if (schedule) { // the plan ahead, in its steps
    const st = schedule.index.map(ms);
    const step = (schedule.step_s ?? 900) * 1e3;
    lines.push({t: st, v: schedule.export_expected_w, color: COLOR.planned, dash: [4, 3], step},
      {t: st, v: schedule.export_cap_w, color: COLOR.cap, step});
  }
  const n = plot($("pcc-chart"), {x0, x1, lines, now});
  $("pcc-chart").dataset.points = n.lines[0];
  legend($("pcc-legend"), lines.filter((l) => l.label));
}

function renderForecast(forecasts, trend, health) {
  const names = Object.keys(forecasts).sort((a, b) => (a === "load") - (b === "load") || a.localeCompare(b));
  if (!names.includes(state.series)) state.series = names[0] ?? null;
  $("fc-tabs").replaceChildren(...names.map((name) => {
    const b = el("button", {type: "button", class: name === state.series ? "tab on" : "tab",
      textContent: forecasts[name].kind === name ? name : `${name} (${forecasts[name].kind})`});
    b.setAttribute("role", "tab");
    b.setAttribute("aria-selected", String(name === state.series));
    b.addEventListener("click", () => {
      state.series = name;
      sessionStorage.setItem("vpp.console.series", name);
      renderForecast(forecasts, trend, health);
    });
    return b;
  }));
  const canvas = $("fc-chart");
  if (!state.series) { canvas.dataset.band = 0; $("fc-meta").textContent = "No forecast issued yet."; return; }
  const f = forecasts[state.series];
  const now = ms(health.time);
  const step = f.step_s * 1e3;
  const mid = (iso) => ms(iso) + step / 2; // a step's value is drawn at its middle
  const q = f.quantiles_w;
  const ft = f.index.map(mid);
  const actual = trend?.actual_w?.[state.series] ?? {ts: [], value_w: []}; // none for a grid token
  const at = actual.ts.map(mid);
  const x0 = since([Math.min(at[0] ?? now, ft[0] ?? now)], now);
  const x1 = now + FORECAST_AHEAD_H * H;
  const lines = [
    {label: "Actual (interval mean)", t: at, v: actual.value_w, color: COLOR.actual, dots: true},
    {label: "Forecast P50", t: ft, v: q.p50, color: COLOR.p50, width: 2},
  ];
  const bands = [{label: "P10–P90", t: ft, lo: q.p10, hi: q.p90, color: COLOR.band}];
  const n = plot(canvas, {x0, x1, lines, bands, now});
  canvas.dataset.points = n.lines[0];
  canvas.dataset.band = n.bands[0];
  canvas.dataset.series = state.series;
  legend($("fc-legend"), [...lines, {label: "P10–P90 band", color: COLOR.band, band: true}]);
  $("fc-meta").textContent = `${state.series}: ${f.horizon} forecast issued ${local(ms(f.issued_at), {date: true})}` +
    ` by ${f.model}, ${f.step_s / 60}-minute steps` +
    (state.series === "load" ? "; load drawn positive (power drawn from the network)." : ".");
}

function renderSoc(assets, trend, health) {
  const batteries = assets.filter((a) => a.kind === "battery");
  const color = (id) => COLOR.batteries[Math.max(0, batteries.findIndex((a) => a.id === id)) % 5];
  $("soc-bars").replaceChildren(...batteries.map((a) => {
    const soc = a.points.soc?.value;
    const power = a.points.active_power_w?.value;
    const {soc_min: lo, soc_max: hi} = a.ratings;
    const bar = el("div", {class: "bar"}, el("div", {class: "fill",
      style: `width:${((soc ?? 0) * 100).toFixed(1)}%;background:${color(a.id)}`}));
    if (lo != null) bar.append(el("div", {class: "limit", style: `left:${lo * 100}%`, title: `min ${pct(lo)}`}));
    if (hi != null) bar.append(el("div", {class: "limit", style: `left:${hi * 100}%`, title: `max ${pct(hi)}`}));
    const doing = power == null ? "" : power > 1e4 ? `discharging ${mw(power)}` :
      power < -1e4 ? `charging ${mw(-power)}` : "idle";
    return el("div", {class: "soc-row", "data-asset": a.id},
      el("div", {class: "soc-label"}, el("b", {}, a.id), ` ${pct(soc)}`,
        el("span", {class: "muted"}, ` ${doing}`)), bar);
  }));
  const t = trend.ts.map(ms);
  const now = ms(health.time);
  const lines = Object.entries(trend.soc).map(([id, v]) => ({label: id, t, v, color: color(id), width: 2}));
  const n = plot($("soc-chart"), {x0: since(t, now), x1: now, lines, scale: 100, yMin: 0, yMax: 100});
  $("soc-chart").dataset.points = n.lines[0] ?? 0;
}

function renderCurtailment(assets, trend, health) {
  const t = trend.ts.map(ms);
  const now = ms(health.time);
  const lines = [{label: "Curtailed", t, v: trend.curtailed_w, color: COLOR.curtailed, width: 2}];
  const n = plot($("curtail-chart"), {x0: since(t, now), x1: now, lines});
  $("curtail-chart").dataset.points = n.lines[0];
  const latest = trend.curtailed_w.at(-1); // not known while a generator is not read
  $("curtail-now").textContent = latest == null ? "not known" : mw(latest);
  const by = assets.filter((a) => a.points.available_power_w && a.points.active_power_w).map((a) => {
    const {available_power_w: avail, active_power_w: out} = a.points;
    const known = a.health !== "offline" && avail.quality === "good" && out.quality === "good";
    return `${a.id} ${known ? mw(Math.max(0, avail.value - out.value)) : "not known"}`;
  });
  $("curtail-by").textContent = by.length ? `Available − output now: ${by.join(", ")}` : "";
}

function notable(a) {
  const p = a.points;
  const v = (name) => p[name]?.value;
  const notes = [];
  if (v("active_power_limit_w") != null && v("available_power_w") > v("active_power_limit_w")) {
    notes.push(`limited to ${mw(v("active_power_limit_w"))} of ${mw(v("available_power_w"))} available`);
  }
  if (v("soc") != null) notes.push(`SOC ${pct(v("soc"))}`);
  if (v("power_setpoint_w") != null) notes.push(`setpoint ${mw(v("power_setpoint_w"))}`);
  if (v("temperature_c") != null) notes.push(`${v("temperature_c").toFixed(1)} °C`);
  if (v("frequency_hz") != null) notes.push(`${v("frequency_hz").toFixed(2)} Hz`);
  if (v("wind_speed_m_s") != null) notes.push(`wind ${v("wind_speed_m_s").toFixed(1)} m/s`);
  const bad = Object.entries(p).filter(([, s]) => s.quality !== "good").map(([n, s]) => `${n} ${s.quality}`);
  if (a.health === "offline") notes.unshift("not answering: the values shown are its last");
  else if (bad.length) notes.push(bad.join(", "));
  return notes.join("; ");
}

function renderDevices(assets) {
  $("device-rows").replaceChildren(...assets.map((a) => {
    const power = a.points.active_power_w ?? a.points.export_w;
    return el("tr", {"data-asset": a.id},
      el("td", {}, el("b", {}, a.id)), el("td", {}, a.kind),
      el("td", {class: "health"}, el("span", {class: "badge", "data-status": a.health}, a.health)),
      el("td", {class: "num"}, power ? mw(power.value) : "–",
        power && power.quality !== "good" ? el("span", {class: "muted"}, ` (${power.quality})`) : ""),
      el("td", {class: "notes"}, notable(a)));
  }));
}

function renderPlan(health, schedule, scheduleError, trend) {
  const d = health.dispatch;
  const c = health.control;
  const m = health.mqtt;
  const exp = health.pcc.export_w;
  // the cap in force (a grid instruction may lower it) is the trend's; /health has the connection's
  const cap = trend?.export_cap_w?.at(-1) ?? health.pcc.export_cap_w;
  const facts = [
    ["PCC export", exp == null ? "unknown" : `${mw(exp)} of ${mw(cap)} cap`, exp == null ? {class: "warn"} : {}],
    [exp > cap ? "Above the cap" : "Below the cap", exp == null ? "–" : mw(Math.abs(cap - exp)),
      exp > cap ? {class: "warn"} : {}],
    ["Plan source", d ? d.plan_source : "no plan yet"],
    ["Solve status", d ? d.status : "–", {id: "plan-status", "data-status": d ? d.status : ""}],
    ["Solver", d ? `${d.solver}, ${seconds(d.solve_time_s)}` : "–"],
    ["Planned at", d ? local(ms(d.created_at), {date: true}) : "–"],
  ];
  if (d && d.fallback_reason) facts.push(["Fallback", d.fallback_reason, {class: "warn"}]);
  facts.push(
    ["Control mode", c.mode ?? "–"],
    ["Operating mode", c.operating_mode ?? "–"],
    ["Control steps", `${c.steps}, every ${c.interval_s} s`],
    ["Without a plan", `${c.fallback_steps} steps`],
    ["Last step", local(ms(c.last_step_at), {secs: true})],
    ["MQTT", m ? `${m.connected ? "connected" : "not connected"}, ${m.buffered} buffered, ` +
      `${m.dropped} dropped` : "not configured", m && !m.connected ? {class: "warn"} : {}],
  );
  $("plan-facts").replaceChildren(...facts.flatMap(([k, v, attrs]) => [el("dt", {}, k), el("dd", attrs ?? {}, v)]));
  $("plan-message").textContent = schedule ? schedule.message ?? "" : scheduleError ?? "";
}

function renderAlarms(alarms) {
  const order = (a) => (a.active && !a.acked_at ? 0 : a.active ? 1 : 2);
  const list = [...alarms].sort((a, b) => order(a) - order(b) || ms(b.raised_at) - ms(a.raised_at));
  const rows = list.map((a) => {
    const ack = a.acked_at ? `${a.acked_by ?? "?"}, ${local(ms(a.acked_at), {date: true})}` :
      el("button", {type: "button", class: "ack", "data-key": a.key, textContent: "Acknowledge",
        onclick: (ev) => acknowledge(a.key, ev.target)});
    return el("tr", {"data-key": a.key, class: `sev-${a.severity} ${a.active ? "active" : "cleared"}`},
      el("td", {}, el("span", {class: "badge", "data-status": a.severity}, a.severity)),
      el("td", {}, el("b", {}, a.key), el("div", {}, a.message)),
      el("td", {}, local(ms(a.raised_at), {date: true})),
      el("td", {}, a.active ? "active" : `cleared ${local(ms(a.cleared_at))}`),
      el("td", {class: "acked"}, ack));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", {colSpan: 5, class: "muted"}, "No alarms.")));
  $("alarm-rows").replaceChildren(...rows);
  const open = alarms.filter((a) => a.active && !a.acked_at).length;
  $("alarm-count").hidden = !open;
  $("alarm-count").textContent = `${open} unacknowledged alarm${open === 1 ? "" : "s"}`;
}

async function acknowledge(key, button) {
  button.disabled = true;
  const error = $("alarm-error");
  try {
    await api(`/alarms/${encodeURIComponent(key)}/ack`, {method: "POST"});
    error.hidden = true;
  } catch (err) {
    error.textContent = `Could not acknowledge ${key}: ${err.message}`;
    error.hidden = false;
    button.disabled = false;
  }
  await refresh();
}

function panelError(id, err) { // a panel whose data could not be had says why, in place
  const section = $(id);
  let p = section.querySelector(".error.fetch");
  if (!p) { p = el("p", {class: "error fetch", role: "alert"}); section.querySelector("h2").after(p); }
  p.textContent = err ? (err.status ? `${err.message}` : err.detail) : "";
  p.hidden = !err;
}

// ---------------------------------------------------------------- the refresh loop

let timer = null;
let running = null;

async function refresh() {
  if (running) { // one at a time; asked for meanwhile (a click, a new token): once more after
    state.again = true;
    return running;
  }
  clearTimeout(timer);
  running = (async () => {
    try {
      await refreshOnce();
    } finally {
      running = null;
      state.refreshes += 1;
      document.body.dataset.refreshes = state.refreshes;
      timer = setTimeout(refresh, state.again ? 0 : REFRESH_MS);
      state.again = false;
    }
  })();
  return running;
}

async function refreshOnce() {
  let health;
  try {
    health = await api("/health", {auth: false});
  } catch (err) {
    banner(`No answer from the controller's health endpoint: ${err.message}`);
    $("overall").textContent = "unreachable";
    $("overall").dataset.status = "unreachable";
    return;
  }
  state.tz = health.timezone || state.tz;
  renderHeader(health);
  if (!state.token) { renderPlan(health, null, "Sign in with a token to see the plant."); showLogin(); return; }

  const token = state.token; // a token changed meanwhile makes these answers moot
  const calls = {assets: "/assets", schedule: "/schedule", forecasts: "/forecasts",
    trend: `/trend?hours=${TREND_HOURS}`, alarms: "/alarms"};
  const got = await Promise.allSettled(Object.values(calls).map((p) => api(p)));
  const data = {};
  const errors = {};
  Object.keys(calls).forEach((k, i) => {
    if (got[i].status === "fulfilled") data[k] = got[i].value; else errors[k] = got[i].reason;
  });
  if (state.token !== token) return;
  const refused = Object.values(errors).map(authMessage).find(Boolean);
  if (Object.values(errors).some((e) => e.status === 401)) return forget(refused);
  banner(refused ?? "");
  if (data.trend?.timezone) state.tz = data.trend.timezone;
  state.last = {health, data, errors};
  draw(state.last);
}

function draw({health, data, errors}) { // every panel from one refresh's answers
  // no plan yet (404, or 503) is a state, not a fault: the plan panel says so
  const noPlan = [404, 503].includes(errors.schedule?.status) ? errors.schedule.detail : null;
  const guarded = (panel, needs, render) => {
    const err = needs.map((k) => errors[k]).find(Boolean);
    panelError(panel, err);
    if (!err) render();
  };
  renderPlan(health, data.schedule, noPlan ?? errors.schedule?.message, data.trend);
  guarded("pcc", ["trend"], () => renderPcc(data.trend, data.schedule, health));
  guarded("forecast", ["forecasts"], () => renderForecast(data.forecasts, data.trend, health));
  guarded("soc", ["assets", "trend"], () => renderSoc(data.assets, data.trend, health));
  guarded("curtailment", ["assets", "trend"], () => renderCurtailment(data.assets, data.trend, health));
  guarded("devices", ["assets"], () => renderDevices(data.assets));
  guarded("alarms", ["alarms"], () => renderAlarms(data.alarms.alarms));
}

function start() {
  state.token = takeToken();
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token-input").value.trim();
    $("token-input").value = "";
    if (token) useToken(token);
  });
  $("signout").addEventListener("click", () => forget("Token forgotten."));
  window.addEventListener("hashchange", () => { // a new #token=… link opened in this tab
    const before = state.token;
    const token = takeToken();
    if (token && token !== before) useToken(token);
  });
  $("signout").hidden = !state.token;
  document.body.classList.toggle("signed-out", !state.token);
  window.addEventListener("resize", () => { // charts are drawn at their canvas's size
    if (state.token && state.last) draw(state.last);
  });
  setInterval(tick, 1000);
  refresh();
}

start();
