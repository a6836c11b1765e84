// The /ops page: polls /ops/api/state and draws it with uPlot (served from /static/vendor).
// Auth: the operator token from the first load's ?token=... (what `rewardloop up` prints) is
// kept in this tab's sessionStorage and sent as a Bearer header; the address bar drops it.
// Every text goes in via text nodes (js/dom.js, shared with the chat page).
import { fill, h } from "./js/dom.js";

const TOKEN_KEY = "rl_operator_token";
{
  const url = new URL(location.href);
  const t = url.searchParams.get("token");
  if (t) {
    try { sessionStorage.setItem(TOKEN_KEY, t); } catch { /* private mode: the cookie still works */ }
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url);
  }
}
const operatorToken = () => { try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; } };

const POLL_MS = Number(new URLSearchParams(location.search).get("every") || 5) * 1000;
const COLORS = ["#2f6fdf", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#5c940d", "#c2255c"];
const MARK = { alarm: "#e03131", rollback: "#f08c00", promote: "#2b8a3e", publish: "#37b24d", swap: "#adb5bd" };
const charts = {};          // name -> {u, sig}
window.opsCharts = charts;  // tests read the plotted data from here
let state = null;
let marks = [];

const $ = (id) => document.getElementById(id);
const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const utc = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "–");

const el = (tag, text, attrs) => h(tag, attrs || {}, text);

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(method, url) {
  const headers = { "Content-Type": "application/json" };
  const token = operatorToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(url, { method, credentials: "same-origin", headers });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    if (resp.status === 401 || resp.status === 403) showSignIn(resp.status, body.error && body.error.message);
    throw new Error((body.error && body.error.message) || `${resp.status} ${resp.statusText}`);
  }
  $("signin").hidden = true;
  return body;
}

function showSignIn(status, message) {
  const box = $("signin");
  box.hidden = false;
  $("signin-why").textContent = status === 403
    ? `${message || "admin endpoints are off"}. \`rewardloop up\` creates an operator token and prints the /ops URL.`
    : "This page needs the operator token: open the /ops?token=... URL that `rewardloop up` prints, or paste the token.";
}

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("signin-token").value.trim();
  if (!t) return;
  try { sessionStorage.setItem(TOKEN_KEY, t); } catch { /* private mode */ }
  $("signin-token").value = "";
  refresh();
});

function tagTable() {
  const tags = state.tags || {};
  const names = [...new Set(Object.values(tags).flatMap((c) => Object.keys(c)))].sort();
  const table = $("tags");
  fill(table.tHead.rows[0], el("th", "version", { scope: "col" }), names.map((n) => el("th", n, { scope: "col" })));
  fill(table.tBodies[0], Object.entries(tags).map(([v, counts]) =>
    h("tr", { "data-version": v }, el("th", v, { scope: "row" }), names.map((n) => el("td", counts[n] || 0)))));
  $("tags-empty").hidden = names.length > 0;
}

// vertical lines for alarms, publishes, promotions, rollbacks and swaps, on every chart
function markerPlugin() {
  return {
    hooks: {
      draw: [(u) => {
        const { ctx, bbox } = u;
        ctx.save();
        ctx.lineWidth = 1.5 * devicePixelRatio;
        for (const m of marks) {
          const x = u.valToPos(m.t, "x", true);
          if (x < bbox.left || x > bbox.left + bbox.width) continue;
          ctx.strokeStyle = MARK[m.kind] || "#868e96";
          ctx.setLineDash(m.kind === "swap" ? [2, 4] : []);
          ctx.beginPath();
          ctx.moveTo(x, bbox.top);
          ctx.lineTo(x, bbox.top + bbox.height);
          ctx.stroke();
        }
        ctx.restore();
      }],
    },
  };
}

function draw(name, series, data, yRange) {
  const sig = series.map((s) => s.label).join("|");
  const box = $("chart-" + name);
  const [min, max] = [state.since, state.now];
  let c = charts[name];
  if (!c || c.sig !== sig) {
    if (c) c.u.destroy();
    const opts = {
      width: Math.max(560, box.clientWidth || 600), height: 220, plugins: [markerPlugin()],
      scales: { x: { time: true, min, max }, y: yRange ? { range: yRange } : {} },
      series: [{}].concat(series), axes: [{}, { size: 55 }],
    };
    c = charts[name] = { u: new uPlot(opts, data, box), sig };
  } else {
    c.u.setData(data, false);
    c.u.setScale("x", { min, max });
  }
}

function drawCharts() {
  const s = state.series;
  const rewardSeries = [];
  const rewardData = [s.t];
  Object.entries(s.versions).forEach(([v, col], i) => {
    const stroke = COLORS[i % COLORS.length];
    rewardSeries.push({ label: `v ${v}`, stroke, width: 2, spanGaps: false, points: { show: true } },
      { label: `v ${v} lo`, stroke, dash: [4, 4], width: 1 }, { label: `v ${v} hi`, stroke, dash: [4, 4], width: 1 });
    rewardData.push(col.mean, col.lo, col.hi);
  });
  draw("reward", rewardSeries, rewardData, [-1, 1]);
  const names = Object.keys(s.signals);
  draw("signals", names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 1.5, points: { show: true } })),
    [s.t].concat(names.map((n) => s.signals[n])));
  draw("coverage", [{ label: "coverage", stroke: COLORS[2], width: 2, points: { show: true } }], [s.t, s.coverage], [0, 1]);
  draw("latency", [{ label: "latency s", stroke: COLORS[3], width: 2, points: { show: true } }], [s.t, s.latency_s]);
  draw("events", [{ label: "events/s", stroke: COLORS[5], width: 2, points: { show: true } }], [s.t, s.events_per_s]);
  draw("depths", [{ label: "pending", stroke: COLORS[4], width: 2, points: { show: true } },
    { label: "dead letters", stroke: "#e03131", width: 2, points: { show: true } }], [s.t, s.pending, s.dead_letters]);
  const c = s.chat;
  draw("chat", [{ label: "tokens/s idle", stroke: COLORS[0], width: 2, points: { show: true } },
    { label: "tokens/s training", stroke: COLORS[1], width: 2, points: { show: true } },
    { label: "TTFT p95 idle", stroke: COLORS[0], dash: [4, 4], width: 1, points: { show: true } },
    { label: "TTFT p95 training", stroke: COLORS[1], dash: [4, 4], width: 1, points: { show: true } }],
  [s.t, c.tokens_per_s_idle, c.tokens_per_s_training, c.ttft_p95_idle, c.ttft_p95_training]);
}

// one line: chat throughput and first-token latency while the learner trains, against idle
function chatLoad() {
  const c = state.chat;
  const side = (k) => `${fmt(c[k].tokens_per_s, 1)} tokens/s, TTFT p95 ${fmt(c[k].ttft_p95, 2)} s (${c[k].replies} replies)`;
  const ratio = c.training_vs_idle === null ? "" : ` = ${fmt(c.training_vs_idle, 2)}× idle`;
  const now = c.servers.filter((x) => x.age_s < 5);
  const busy = now.reduce((n, x) => n + x.active + x.waiting, 0);
  $("chat-load").textContent = `Chat while the learner trains: ${side("training")}${ratio} · idle: ${side("idle")} · ` +
    `now: ${now.length} server(s), ${busy} stream(s) generating or waiting` + (now.some((x) => x.training) ? ", a learner run is on" : "");
}

function tiles() {
  const box = $("tiles");
  box.replaceChildren();
  const last = (arr) => { for (let i = arr.length - 1; i >= 0; i--) if (arr[i] !== null) return arr[i]; return null; };
  const items = [
    ["pending rewards", state.depths.pending], ["dead letters", state.depths.dead_letters],
    ["coverage", fmt(last(state.series.coverage), 2)], ["latency s", fmt(last(state.series.latency_s), 1)],
    ["alarms in window", state.alarms.length],
  ];
  for (const [label, value] of items) {
    const t = el("div", null, { class: "tile" });
    t.append(el("b", value), el("span", label));
    box.append(t);
  }
  storageLine(state.storage);
  const p = state.pointers;
  $("pointers").textContent = `stable ${p.stable}` + (p.canary ? ` · canary ${p.canary} (${Math.round(p.canary_share * 100)}%)` : "");
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// Redis memory (alert at 80 % of maxmemory) and the archive task: one line under the tiles
function storageLine(st) {
  const line = $("storage");
  if (!st) return;
  const parts = [];
  let alert = false;
  if (st.redis_max) {
    parts.push(`Redis memory ${bytes(st.redis_used)} of ${bytes(st.redis_max)} (${Math.round(st.redis_ratio * 100)}%)`);
    if (st.memory_alert) { parts.push("ALERT: over 80% of maxmemory, writes stop when it is full"); alert = true; }
  } else {
    parts.push(`Redis memory ${bytes(st.redis_used)} (no maxmemory set)`);
  }
  const a = st.archive;
  if (!a.ran) parts.push("archive: no run yet (is `rewardloop beat` running?)");
  else if (!a.ok) { parts.push(`ALERT: archive failing since ${utc(a.failing_since)} UTC: ${a.error}`); alert = true; }
  else parts.push(`archive ${bytes(a.bytes)} in ${a.files} files, last run ${utc(a.last_ok_at)} UTC`);
  line.textContent = parts.join(" · ");
  line.className = alert ? "alert" : "";
}

async function move(url, what) {
  if (!confirm(what + "?")) return;
  try {
    const notice = await api("POST", url);
    setStatus(`${notice.event}: stable ${notice.stable}${notice.canary ? ", canary " + notice.canary : ""}`);
  } catch (err) {
    setStatus(`${what} failed: ${err.message}`, true);
  }
  await refresh();
}

function styleCell(s) {
  // reward-hacking monitors: a rising reward with a drifting style raises a "style" alarm
  if (!s || !s.n) return "–";
  return `${s.mean_words.toFixed(0)} w · ref ${s.refusal_rate.toFixed(2)} · ? ${s.question_rate.toFixed(2)} · d2 ${s.distinct2.toFixed(2)}`;
}

function probeCell(p) {
  // the gate's safety probe (learner/probe_check.py): reject = significantly less safe than the parent
  if (!p) return el("td", "–");
  const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(100 * x)}%`);
  const text = p.decision === "skipped" ? "skipped"
    : `${p.decision} · unsafe ${pct(p.unsafe_parent)} → ${pct(p.unsafe_new)} (p ${Number(p.p_value).toPrecision(2)})` +
      ` · rel ${fmt(p.relevance_parent, 2)} → ${fmt(p.relevance_new, 2)}`;
  return el("td", text, { class: `probe probe-${p.decision}`, title: p.reason || "" });
}

function adapters() {
  const body = $("adapters").tBodies[0];
  body.replaceChildren();
  for (const a of state.adapters) {
    const tr = el("tr", null, { class: a.role === "stable" ? "stable" : "", "data-version": a.version });
    const verdict = a.verdict ? (a.verdict.action || a.verdict.reason || "") : "";
    for (const cell of [a.version, a.parent || "–", a.state, a.role || "", a.samples, fmt(a.mean_reward),
      a.ci95[0] === null ? "–" : `${fmt(a.ci95[0])} … ${fmt(a.ci95[1])}`, styleCell(a.style), probeCell(a.probe),
      verdict]) tr.append(cell instanceof Node ? cell : el("td", cell));
    const td = el("td");
    if (a.state === "published" && a.role !== "stable") {
      const b = el("button", "Promote", { type: "button", class: "promote", "data-version": a.version });
      b.onclick = () => move(`/admin/adapters/${encodeURIComponent(a.version)}/promote`, `Promote version ${a.version} to stable`);
      td.append(b);
    }
    tr.append(td);
    body.append(tr);
  }
  const d = $("detectors").tBodies[0];
  d.replaceChildren();
  for (const r of state.detectors) {
    const tr = el("tr");
    for (const cell of [r.metric, r.detector, fmt(r.statistic, 2), fmt(r.threshold, 1), r.armed ? "yes" : "warming up", r.events]) tr.append(el("td", cell));
    d.append(tr);
  }
}

function timeline() {
  const rows = [];
  for (const a of state.alarms) rows.push({ t: a.at, kind: "alarm", what: `alarm: ${a.detector} ${a.metric}${a.direction ? " " + a.direction : ""}`,
    version: a.version, by: a.action || "", details: a.message, since: a.since, until: a.until });
  for (const h of state.timeline.history) rows.push({ t: Number(h.at), kind: h.event, what: h.event, version: h.version, by: h.by, details: h.reason });
  for (const s of state.timeline.swaps) rows.push({ t: Number(s.at), kind: "swap", what: `swap ${s.result}`, version: s.version, by: s.server, details: s.reason || `${fmt(s.seconds * 1000, 0)} ms` });
  rows.sort((a, b) => b.t - a.t);
  marks = rows.filter((r) => r.t >= state.since).map((r) => ({ t: r.t, kind: r.kind }));
  const body = $("timeline").tBodies[0];
  body.replaceChildren();
  for (const r of rows.slice(0, 200)) {
    const tr = el("tr", null, { class: r.kind === "alarm" ? "alarm" : "" });
    for (const cell of [utc(r.t), r.what, r.version || "", r.by || "", r.details || ""]) tr.append(el("td", cell));
    const td = el("td");
    if (r.kind === "alarm") {
      const q = new URLSearchParams({ since: String(r.since || state.since), until: String(r.until || r.t) });
      td.append(el("a", "sessions in window", { href: `/admin/sessions?${q}`, class: "sessions" }));
    }
    tr.append(td);
    body.append(tr);
  }
}

async function refresh() {
  try {
    state = await api("GET", `/ops/api/state?minutes=${$("window").value}`);
  } catch (err) {
    setStatus(`cannot load: ${err.message}`, true);
    return;
  }
  timeline();
  tiles();
  adapters();
  tagTable();
  chatLoad();
  drawCharts();
  setStatus(`updated ${utc(state.now)} UTC`);
}

$("window").onchange = refresh;
$("rollback").onclick = () => move("/admin/adapters/rollback", "Roll back (drop the canary, else back to the previous stable)");
refresh();
setInterval(refresh, POLL_MS);
