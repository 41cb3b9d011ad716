// The corral dashboard page: live cluster view over a WebSocket, history search, task pages
// and actions. Plain browser JavaScript; charts come from charts.js.
"use strict";

const CSRF = document.querySelector('meta[name="corral-csrf"]').content;
const COLORS = { ok: "#2f9e62", error: "#d8463f", aborted: "#e5a02a", other: "#8a95a8" };
const $ = (id) => document.getElementById(id);

const state = {
  engines: [],
  series: [],        // [wall time, completed/s, failed/s, unassigned, pending]
  timeline: [],      // {lane, start, end, color, msgId}
  counts: {},
  submitted: 0, unassigned: 0, pending: 0, alive: 0,
  connected: false, socketOpen: false,
  armed: new Map(),  // "engine:action" -> expiry (ms): a second click confirms
  history: { skip: 0, limit: 50, total: 0, params: new URLSearchParams() },
  clockSkew: 0,
};
// What a benchmark or a test reads: when the last update was sent, received and drawn.
window.corralDashboard = { updates: 0, lastUpdate: null };

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}
const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 0)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.floor(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}
const time = (iso) => (iso ? new Date(iso).toLocaleString("sv-SE") : "–");
const clockTime = (iso) => (iso ? new Date(iso).toLocaleTimeString("sv-SE") : "–");
const parse = (iso) => (iso ? Date.parse(iso) / 1000 : NaN);

function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (box.hidden = true), 3500);
}

async function post(url) {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin", headers: { "X-Corral-CSRF": CSRF },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// ------------------------------------------------------------------ live data

function addCompletions(items) {
  for (const [msgId, engineId, status, started, completed] of items) {
    const end = parse(completed);
    if (engineId === null || Number.isNaN(end)) continue;
    const start = parse(started);
    state.timeline.push({
      lane: engineId, msgId, start: Number.isNaN(start) ? end : start, end,
      color: COLORS[status] || COLORS.other,
    });
  }
  const cutoff = Date.now() / 1000 - 600;
  let drop = 0;
  while (drop < state.timeline.length && state.timeline[drop].end < cutoff) drop++;
  if (drop) state.timeline.splice(0, drop);
  if (state.timeline.length > 20000) state.timeline.splice(0, state.timeline.length - 20000);
}

function apply(message) {
  Object.assign(state, {
    engines: message.engines, counts: message.counts, submitted: message.submitted,
    unassigned: message.unassigned, pending: message.pending, alive: message.alive,
    connected: message.connected,
  });
  $("cluster-id").textContent = message.cluster_id;
  if (message.type === "snapshot") {
    state.series = message.series;
    state.timeline = [];
    addCompletions(message.timeline);
  } else {
    if (message.point) {
      state.series.push(message.point);
      if (state.series.length > 900) state.series.shift();
    }
    addCompletions(message.completions);
  }
  scheduleRender(message);
}

let renderPending = null;
function scheduleRender(message) {
  const received = Date.now() / 1000;
  if (renderPending) return;
  renderPending = requestAnimationFrame(() => {
    renderPending = null;
    renderLive();
    window.corralDashboard.updates += 1;
    window.corralDashboard.lastUpdate = {
      sent: message.sent ?? null, received, rendered: Date.now() / 1000,
    };
  });
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  socket.onopen = () => { state.socketOpen = true; renderLinkState(); };
  socket.onmessage = (event) => apply(JSON.parse(event.data));
  socket.onclose = () => {
    state.socketOpen = false;
    renderLinkState();
    setTimeout(connect, 2000);
  };
}

function renderLinkState() {
  const box = $("link-state");
  const live = state.socketOpen && state.connected;
  box.className = "link-state " + (live ? "live" : state.socketOpen ? "" : "down");
  $("link-text").textContent = live ? "live" : state.socketOpen ? "controller not answering" : "dashboard offline";
}

// ------------------------------------------------------------------ cluster view

function renderLive() {
  renderLinkState();
  const done = Object.values(state.counts).reduce((a, b) => a + b, 0);
  const failed = done - (state.counts.ok || 0);
  const dead = state.engines.length - state.alive;
  $("engine-count").textContent = fmt(state.alive);
  $("engine-sub").textContent = dead ? `${dead} dead or restarting` : "all alive";
  $("done-count").textContent = fmt(done);
  $("submitted-sub").textContent = `${fmt(state.submitted)} submitted`;
  $("failed-count").textContent = fmt(failed);
  $("failed-sub").textContent = state.counts.aborted ? `${fmt(state.counts.aborted)} aborted` : "";
  const last = state.series[state.series.length - 1];
  $("rate-value").textContent = last ? Charts.formatNumber(last[1]) : "–";
  $("pending-count").textContent = fmt(state.pending);
  $("unassigned-sub").textContent = `${fmt(state.unassigned)} unassigned`;
  if ($("view-cluster").hidden) return;
  renderEngines();
  renderCharts();
}

// The span a chart shows: the chosen window, or ("auto") the data's own span within limits.
function span(choice, earliest, now, low, high) {
  if (choice !== "auto") return Number(choice);
  return Math.min(high, Math.max(low, Number.isFinite(earliest) ? now - earliest + 2 : low));
}

let lastCharts = 0;
function renderCharts() {
  lastCharts = Date.now();
  const now = Date.now() / 1000;
  const choice = $("timeline-window").value;
  const firstPoint = state.series.length ? state.series[0][0] : NaN;
  const rateWindow = span(choice, firstPoint, now, 60, 900);
  Charts.line($("rate-chart"), [
    { color: COLORS.ok, fill: "rgba(47,158,98,0.10)", points: state.series.map((p) => [p[0], p[1]]) },
    { color: COLORS.error, points: state.series.map((p) => [p[0], p[2]]) },
  ], now, rateWindow);
  const alive = state.engines.filter((e) => e.state === "idle" || e.state === "busy");
  Charts.bars($("queue-chart"), [
    ...alive.map((e) => ({ label: String(e.id), value: e.queue + e.tasks, color: "#7d8fe0" })),
    { label: "wait", value: state.unassigned, color: "#f0b44c", always: true },
  ]);
  const lanes = state.engines.filter((e) => e.state !== "dead" || e.completed).map((e) => e.id);
  const items = state.timeline.slice();
  for (const e of alive) {
    if (e.running) items.push({ lane: e.id, start: now - e.running_for, end: now, color: "#3b6fd8" });
  }
  const earliest = items.reduce((low, item) => Math.min(low, item.start), Infinity);
  const window = span(choice, earliest, now, 30, 600);
  // lanes stay readable with many engines: the timeline grows up to 640 px
  $("timeline").style.height = `${Math.min(640, Math.max(220, 30 + lanes.length * 10))}px`;
  Charts.timeline($("timeline"), lanes, items, now, window, "no task completed in this window");
}

function actionButton(engine, action, label) {
  const key = `${engine.id}:${action}`;
  const armed = (state.armed.get(key) || 0) > Date.now();
  const disabled = action === "shutdown" && !(engine.state === "idle" || engine.state === "busy");
  return `<button type="button" class="small ${action === "shutdown" ? "danger" : ""}"
    data-action="${action}" data-engine="${engine.id}" ${disabled ? "disabled" : ""}>${armed ? "sure?" : label}</button>`;
}

function engineCells(e) {
  const cpu = e.cpu === null ? "–" :
    `<div class="bar"><span data-width="${Math.min(100, e.cpu)}"></span><em>${e.cpu.toFixed(0)}%</em></div>`;
  const running = e.running ?
    `<a href="#/task/${esc(e.running)}" class="mono">…${esc(e.running.slice(-8))}</a> for ${e.running_for < 1 ? "<1 s" : seconds(e.running_for)}` :
    (e.replaced_by !== null ? `replaced by engine ${e.replaced_by}` : "");
  return [
    [e.id, "num"],
    [`<span class="badge ${esc(e.state)} state">${esc(e.state)}</span>`, ""],
    [esc(e.hostname || "–"), ""],
    [e.pid ?? "–", "num"],
    [fmt(e.completed), "num"],
    [fmt(e.queue + e.tasks), "num"],
    [running, ""],
    [cpu, ""],
    [bytes(e.memory), "num"],
    [`${actionButton(e, "restart", "restart")} ${actionButton(e, "shutdown", "shut down")}`, "num"],
  ];
}

// Cells are updated in place and only when they changed, so what is under the pointer (a
// button being clicked, a link) stays put while the table is live.
function renderEngines() {
  const body = $("engines").tBodies[0];
  const existing = new Map([...body.querySelectorAll("tr[data-engine-id]")].map((tr) => [tr.dataset.engineId, tr]));
  if (!state.engines.length) {
    body.innerHTML = '<tr><td colspan="10" class="empty">no engines yet</td></tr>';
    return;
  }
  body.querySelector("td.empty")?.parentElement.remove();
  let previous = null;
  for (const e of state.engines) {
    const key = String(e.id);
    let tr = existing.get(key);
    existing.delete(key);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.engineId = key;
    }
    tr.className = e.state;
    engineCells(e).forEach(([html, cls], i) => {
      const td = tr.cells[i] || tr.insertCell(i);
      if (td.dataset.html === String(html)) return;
      td.innerHTML = html;
      td.dataset.html = String(html);
      td.className = cls;
      // the CSP forbids inline style attributes; widths set through the DOM are allowed
      for (const bar of td.querySelectorAll(".bar > span")) bar.style.width = `${bar.dataset.width}%`;
    });
    const next = previous ? previous.nextSibling : body.firstChild;
    if (next !== tr) body.insertBefore(tr, next);
    previous = tr;
  }
  for (const tr of existing.values()) tr.remove();
}

$("engines").addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const key = `${button.dataset.engine}:${button.dataset.action}`;
  if ((state.armed.get(key) || 0) < Date.now()) {
    state.armed.set(key, Date.now() + 4000);
    button.textContent = "sure?";
    return;
  }
  state.armed.delete(key);
  try {
    await post(`/api/engine/${button.dataset.engine}/${button.dataset.action}`);
    toast(`engine ${button.dataset.engine}: ${button.dataset.action} requested`);
  } catch (err) {
    toast(`engine ${button.dataset.engine}: ${err.message}`);
  }
});
$("timeline-window").addEventListener("change", renderCharts);
window.addEventListener("resize", renderCharts);

// ------------------------------------------------------------------ history

let historyRequest = 0;
async function loadHistory() {
  const { skip, limit, params } = state.history;
  const query = new URLSearchParams(params);
  query.set("skip", skip);
  query.set("limit", limit);
  const ticket = ++historyRequest;
  const response = await fetch(`/api/tasks?${query}`, { credentials: "same-origin" });
  const body = await response.json();
  if (ticket !== historyRequest) return; // a newer search was made meanwhile
  const error = $("search-error");
  error.hidden = response.ok;
  if (!response.ok) {
    error.textContent = body.error || response.statusText;
    return;
  }
  state.history.total = body.total;
  $("history").tBodies[0].innerHTML = body.rows.map((r) => `
    <tr data-msg-id="${esc(r.msg_id)}">
      <td class="mono">${esc(r.msg_id)}</td>
      <td><span class="badge ${esc(r.status)}">${esc(r.status)}</span></td>
      <td>${esc(r.queue === "task" ? "balanced" : r.queue === "mux" ? "direct" : r.queue)}</td>
      <td class="num">${r.engine_id ?? "–"}</td>
      <td class="call mono" title="${esc(r.call || "")}">${esc(r.call || r.msg_type || "")}</td>
      <td>${time(r.submitted)}</td>
      <td>${clockTime(r.started)}</td>
      <td>${clockTime(r.completed)}</td>
      <td class="num">${seconds(r.duration)}</td>
      <td class="mono">${esc((r.client || "").slice(0, 8))}</td>
    </tr>`).join("") || '<tr><td colspan="10" class="empty">no task matches</td></tr>';
  const last = Math.min(skip + limit, body.total);
  $("page-info").textContent = body.total ?
    `${fmt(skip + 1)}–${fmt(last)} of ${fmt(body.total)} tasks, newest first` : "";
  $("page-newer").disabled = skip === 0;
  $("page-older").disabled = last >= body.total;
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(event.target)) if (value.trim()) params.set(name, value.trim());
  location.hash = `#/history?${params}`;
});
$("page-newer").addEventListener("click", () => {
  state.history.skip = Math.max(0, state.history.skip - state.history.limit);
  loadHistory();
});
$("page-older").addEventListener("click", () => {
  state.history.skip += state.history.limit;
  loadHistory();
});
$("history").addEventListener("click", (event) => {
  const row = event.target.closest("tr[data-msg-id]");
  if (row) location.hash = `#/task/${row.dataset.msgId}`;
});

// ------------------------------------------------------------------ one task

async function loadTask(msgId) {
  $("task-id").textContent = msgId;
  $("task-fields").innerHTML = "";
  $("task-sections").innerHTML = "";
  const response = await fetch(`/api/task/${encodeURIComponent(msgId)}`, { credentials: "same-origin" });
  const task = await response.json();
  $("task-error").hidden = response.ok;
  if (!response.ok) {
    $("task-error").textContent = task.error || response.statusText;
    $("task-status").textContent = "";
    $("task-status").className = "badge";
    $("task-abort").disabled = true;
    return;
  }
  $("task-status").textContent = task.status;
  $("task-status").className = `badge ${task.status}`;
  $("task-abort").disabled = task.status !== "pending";
  const fields = [
    ["queue", task.queue === "task" ? "load-balanced" : task.queue === "mux" ? "direct" : task.queue],
    ["type", task.msg_type],
    ["engine", task.engine_id === null ? "–" : `${task.engine_id} (${task.engine_uuid})`],
    ["client", task.client],
    ["submitted", time(task.submitted)],
    ["started", time(task.started)],
    ["completed", time(task.completed)],
    ["duration", seconds(task.duration)],
    ["resubmitted", task.resubmitted ? "yes" : "no"],
  ];
  for (const [key, value] of Object.entries(task.flags)) fields.push([key, JSON.stringify(value)]);
  $("task-fields").innerHTML = fields.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v ?? "–")}</dd>`).join("");
  const sections = [];
  const section = (title, text, cls = "") => {
    if (text) sections.push(`<h3>${esc(title)}</h3><pre class="${cls}">${esc(text)}</pre>`);
  };
  section("call", task.call);
  section("code", task.code);
  section("result", task.result || task.execute_result);
  if (task.error) section(`${task.error.ename}: ${task.error.evalue}`, task.error.traceback || " ", "traceback");
  section("stdout", task.stdout);
  section("stderr", task.stderr);
  $("task-sections").innerHTML = sections.join("");
}

$("task-abort").addEventListener("click", async () => {
  const msgId = $("task-id").textContent;
  try {
    await post(`/api/task/${encodeURIComponent(msgId)}/abort`);
    toast(`abort of ${msgId.slice(0, 8)}… sent`);
    setTimeout(() => loadTask(msgId), 1000);
  } catch (err) {
    toast(`abort: ${err.message}`);
  }
});

// ------------------------------------------------------------------ routing

function route() {
  const hash = location.hash.slice(1) || "/";
  const [path, query] = hash.split("?");
  const view = path.startsWith("/task/") ? "task" : path.startsWith("/history") ? "history" : "cluster";
  for (const name of ["cluster", "history", "task"]) $(`view-${name}`).hidden = name !== view;
  $("nav-cluster").classList.toggle("active", view === "cluster");
  $("nav-history").classList.toggle("active", view !== "cluster");
  if (view === "cluster") renderLive();
  if (view === "history") {
    const params = new URLSearchParams(query || "");
    state.history.params = params;
    state.history.skip = 0;
    $("q-msg-id").value = params.get("msg_id") || "";
    $("q-status").value = params.get("status") || "";
    $("q-engine").value = params.get("engine") || "";
    $("q-query").value = params.get("q") || "";
    loadHistory();
  }
  if (view === "task") loadTask(decodeURIComponent(path.slice("/task/".length)));
}

window.addEventListener("hashchange", route);
route();
connect();
// Without updates (controller gone) the time axes still move; with them, no second drawing.
setInterval(() => {
  if (!$("view-cluster").hidden && Date.now() - lastCharts > 1500) renderCharts();
}, 1000);
