// The task-affinity dashboard: plain JavaScript against the /v1 API, no dependencies.
// Views (by URL hash): #/ jobs, #/jobs/<id> one job, #/submit the form. The API key is kept in
// sessionStorage and sent as a bearer token with every request.
"use strict";

const KEY_STORAGE = "task-affinity-key";
const POLL_MS = 1500;
const TERMINAL = ["succeeded", "failed", "cancelled"];

const $ = (id) => document.getElementById(id);
let pollTimer = null;
let keepFlash = false; // a message for the view being opened (e.g. "Submitted job ...")
let viewToken = 0; // bumps on every navigation: stale async work checks it and stops

// ---------------------------------------------------------------------------------------------- API
class ApiProblem extends Error {
  constructor(status, detail, errors) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.errors = errors || [];
  }
}

function apiKey() { return sessionStorage.getItem(KEY_STORAGE); }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const key = apiKey();
  if (key) headers["Authorization"] = "Bearer " + key;
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (err) {
    throw new ApiProblem(0, "cannot reach the server: " + err.message);
  }
  if (!response.ok) {
    let detail = response.statusText, errors = [];
    try {
      const body = await response.json();
      if (body && body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      if (body && Array.isArray(body.errors)) errors = body.errors;
    } catch (_) { /* not JSON */ }
    const problem = new ApiProblem(response.status, detail, errors);
    if (response.status === 401) { forgetKey(detail); }
    throw problem;
  }
  return response;
}

async function apiJson(path, options) { return (await api(path, options)).json(); }

// ------------------------------------------------------------------------------------------ helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function pct(x) { return Math.round((x || 0) * 100) + "%"; }

function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, sec = s % 60;
  return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(sec).padStart(2, "0");
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function fmt(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  if (v === null || v === undefined) return "–";
  if (Array.isArray(v)) return v.map(fmt).join(", ");
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function flash(text, bad = false) {
  const f = $("flash");
  f.textContent = text;
  f.className = bad ? "flash bad" : "flash";
  f.hidden = !text;
}

function stopPolling() { if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; } }

function schedule(fn, token) {
  stopPolling();
  pollTimer = setTimeout(() => { if (token === viewToken) fn(); }, POLL_MS);
}

function statusBadge(status) { return el("span", { class: "badge " + status, "data-status": status }, status); }

function progressText(job) {
  if (job.status === "running") {
    const eta = job.eta_seconds !== null && job.eta_seconds !== undefined ? " · ETA " + duration(job.eta_seconds) : "";
    return (job.stage || "starting") + " · " + pct(job.progress) + eta;
  }
  if (job.status === "queued") return "queued" + (job.cancel_requested ? " (cancelling)" : "");
  if (job.status === "succeeded") return "done in " + duration(job.summary && job.summary.seconds
    ? Object.values(job.summary.seconds).reduce((a, b) => a + (typeof b === "number" ? b : 0), 0) : 0);
  return job.status;
}

// Download with the bearer header (a plain link could not send it).
async function download(path, filename) {
  try {
    const blob = await (await api(path)).blob();
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    flash("download failed: " + err.message, true);
  }
}

// ------------------------------------------------------------------------------------------- views
function show(view) {
  for (const id of ["view-login", "view-jobs", "view-job", "view-submit"]) $(id).hidden = id !== view;
  $("nav").hidden = view === "view-login";
}

function forgetKey(reason) {
  sessionStorage.removeItem(KEY_STORAGE);
  stopPolling();
  viewToken++;
  show("view-login");
  const e = $("login-error");
  e.textContent = reason || "";
  e.hidden = !reason;
}

function route() {
  viewToken++;
  stopPolling();
  if (!apiKey()) { forgetKey(""); return; }
  const hash = location.hash.replace(/^#/, "") || "/";
  const job = hash.match(/^\/jobs\/([^/]+)$/);
  if (job) return showJob(decodeURIComponent(job[1]));
  if (hash === "/submit") return showSubmit();
  return showJobs();
}

// -- jobs list
async function showJobs() {
  show("view-jobs");
  const token = viewToken;
  const refresh = async () => {
    if (token !== viewToken) return;
    const status = $("status-filter").value;
    try {
      const q = new URLSearchParams({ limit: "50" });
      if (status) q.set("status", status);
      const page = await apiJson("/v1/jobs?" + q);
      if (token !== viewToken) return;
      renderJobs(page);
    } catch (err) {
      if (token === viewToken && err.status !== 401) flash(err.message, true);
    }
    if (token === viewToken) schedule(refresh, token);
  };
  $("status-filter").onchange = () => { stopPolling(); refresh(); };
  await refresh();
}

function renderJobs(page) {
  const body = $("jobs-body");
  body.replaceChildren(...page.items.map((job) => {
    const source = job.manifest && job.manifest.dataset ? job.manifest.dataset.source : "";
    const active = !TERMINAL.includes(job.status);
    return el("tr", { "data-testid": "job-row", "data-job-id": job.id, "data-status": job.status },
      el("td", {}, el("a", { href: "#/jobs/" + encodeURIComponent(job.id), "data-testid": "job-link" }, el("code", {}, job.id))),
      el("td", {}, statusBadge(job.status)),
      el("td", {}, job.stage || ""),
      el("td", { class: "progress" }, el("progress", { max: "1", value: String(job.progress || 0) }), " ", pct(job.progress)),
      el("td", {}, job.status === "running" ? duration(job.eta_seconds) : ""),
      el("td", {}, el("code", {}, source)),
      el("td", { "data-testid": "job-model" }, job.manifest && job.manifest.model ? job.manifest.model.kind : ""),
      el("td", { class: "small" }, when(job.created_at)),
      el("td", {}, active && !job.cancel_requested
        ? el("button", { type: "button", class: "secondary", onclick: () => cancelJob(job.id) }, "Cancel") : ""));
  }));
  $("jobs-empty").hidden = page.total > 0;
  $("jobs-total").textContent = page.total > page.items.length ? `showing ${page.items.length} of ${page.total}` : "";
}

async function cancelJob(id) {
  try {
    await apiJson("/v1/jobs/" + encodeURIComponent(id) + "/cancel", { method: "POST" });
    flash("Cancellation requested for " + id);
  } catch (err) { flash(err.message, true); }
}

// -- one job
async function showJob(id) {
  show("view-job");
  const token = viewToken;
  $("job-id").textContent = id;
  $("job-status").replaceChildren();
  $("job-results").hidden = true;
  $("job-progress-box").hidden = false;
  $("job-error").hidden = true;
  $("job-cancel").onclick = () => cancelJob(id);
  let loaded = false;
  const refresh = async () => {
    if (token !== viewToken) return;
    let job;
    try {
      job = await apiJson("/v1/jobs/" + encodeURIComponent(id));
    } catch (err) {
      if (token !== viewToken) return;
      if (err.status === 404) { flash(err.message, true); return; }
      if (err.status !== 401) flash(err.message, true);
      schedule(refresh, token);
      return;
    }
    if (token !== viewToken) return;
    renderJobHead(job);
    if (job.status === "succeeded" && !loaded) {
      loaded = true;
      await loadResults(job, token);
    }
    if (!TERMINAL.includes(job.status)) schedule(refresh, token);
  };
  await refresh();
}

function renderJobHead(job) {
  const badge = $("job-status");
  badge.className = "badge " + job.status;
  badge.textContent = job.status;
  badge.dataset.status = job.status;
  $("job-cancel").hidden = TERMINAL.includes(job.status) || job.cancel_requested;
  $("job-progress").value = job.status === "succeeded" ? 1 : job.progress || 0;
  $("job-progress-text").textContent = progressText(job);
  const err = $("job-error");
  err.textContent = job.error ? "Error: " + job.error : "";
  err.hidden = !job.error;
  $("job-progress-box").hidden = job.status === "succeeded";
  $("job-manifest").textContent = JSON.stringify(job.manifest, null, 2);
}

async function loadResults(job, token) {
  const base = "/v1/jobs/" + encodeURIComponent(job.id);
  let affinity, groups;
  try {
    [affinity, groups] = await Promise.all([apiJson(base + "/affinity"), apiJson(base + "/groups")]);
  } catch (err) {
    if (token === viewToken) flash("cannot load the results: " + err.message, true);
    return;
  }
  if (token !== viewToken) return;
  $("job-results").hidden = false;
  renderAdvice(groups);
  renderGroups(groups);
  drawHeatmap(affinity, groups);
  renderMetadata(job, affinity, groups);
  renderDownloads(job, base);
}

function pct(x) { return typeof x === "number" ? (100 * x).toFixed(1) + "%" : undefined; }

function renderAdvice(groups) {
  const a = groups.advice || {};
  $("job-verdict").textContent = a.verdict || "no advice recorded";
  const rel = a.reliability || {};
  const half = rel.split_half && rel.split_half.spearman_brown;
  const stab = rel.stability && rel.stability.mean_ari;
  const rows = [
    ["recommendation", a.recommendation],
    ["predicted gain over one model for all", pct(a.predicted_gain)],
    ["affinity split-half correlation", typeof half === "number" ? fmt(half) : undefined],
    [`groups' ARI against ${(rel.stability && rel.stability.of) || "resamples"}`,
      typeof stab === "number" ? fmt(stab) : undefined],
    ["split against random partitions of its sizes", a.random_control ? `${pct(a.random_control.gain_over_random)}`
      + ` ± ${pct(a.random_control.se)} (${a.random_control.passed ? "beats them"
        : a.random_control.instead_of !== undefined ? "no better: not advised" : "no better"})`
      : undefined],
    ["one training's spread from seed to seed", a.training_noise ? `± ${pct(a.training_noise.gain_sd)} of one model `
      + `for all's loss on a check fold (${a.training_noise.seeds} seeds per fold)` : undefined],
    ["best split against one model per task", a.split_over_alone ? `${a.split_over_alone.instead_of} groups: `
      + `${pct(a.split_over_alone.gain_over_alone)} ± ${pct(a.split_over_alone.se)} (no better: not advised)`
      : undefined],
    ["candidates (k: predicted gain)", (a.candidates || []).filter((c) => c.predicted_gain !== undefined)
      .map((c) => `${c.k}${c.source === "outputs" ? " (outputs)" : ""}: ${pct(c.predicted_gain)}`).join(", ") || undefined],
  ];
  $("job-advice").replaceChildren(...rows.filter(([, v]) => v !== undefined && v !== null)
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
}

function renderGroups(groups) {
  $("groups-body").replaceChildren(...groups.groups.map((g, i) =>
    el("tr", { "data-testid": "group-row", "data-group": String(i) },
      el("td", {}, String(i)), el("td", {}, String(g.length)),
      el("td", { "data-testid": "group-tasks" }, g.join(", ")))));
}

function renderMetadata(job, affinity, groups) {
  const s = job.summary || {};
  const est = affinity.estimator || {};
  const rows = [
    ["estimator", affinity.method],
    ["tasks", s.tasks !== undefined ? s.tasks : affinity.tasks.length],
    ["rows", s.rows], ["features", s.features],
    ["texts", s.tokens !== undefined ? `up to ${s.tokens} tokens` : undefined],
    ...modelRows(job, s.model),
    ["subsets", est.num_subsets !== undefined ? `${est.num_subsets} of ${est.subset_size} tasks` : undefined],
    ["projection", est.projection_dim !== undefined ? `${est.projection} d = ${est.projection_dim}` : undefined],
    ["ridge l2", est.l2],
    ["grouping", `${groups.method}, k = ${groups.k}`],
    ["objective", groups.objective],
    ["k selection", groups.k_selection ? fmt(groups.k_selection.chosen !== undefined ? groups.k_selection.chosen : groups.k_selection) : undefined],
    ["vs planted groups", groups.truth && groups.truth.ari !== undefined ? "ARI " + fmt(groups.truth.ari) : undefined],
    ["device", s.device],
    ["seconds", s.seconds && typeof s.seconds === "object"
      ? Object.entries(s.seconds).map(([k, v]) => `${k} ${fmt(v)}`).join(", ") : s.seconds],
    ["created", when(job.created_at)], ["finished", when(job.finished_at)], ["attempts", job.attempts],
  ];
  $("job-metadata").replaceChildren(...rows.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, fmt(v))]));
}

function count(n) { return typeof n === "number" ? n.toLocaleString("en-US") : undefined; }

// The base model: its kind, and what was trained and differentiated against the whole model.
function modelRows(job, m) {
  const kind = (m && m.kind) || (job.manifest && job.manifest.model && job.manifest.model.kind);
  if (!m) return [["model", kind]];
  const share = (n) => (m.parameters ? ` (${(100 * n / m.parameters).toPrecision(2)}% of the model)` : "");
  const parts = [m.lora !== undefined ? `LoRA ${count(m.lora)}` : null, m.neck !== undefined ? `neck ${count(m.neck)}` : null,
    m.heads !== undefined ? `heads ${count(m.heads)}` : null]
    .filter(Boolean).join(" + ");
  return [
    ["model", kind],
    ["model parameters", count(m.parameters)],
    ["trained", m.trained !== undefined ? count(m.trained) + (parts ? ` = ${parts}` : "") + share(m.trained) : undefined],
    ["differentiated", m.differentiated !== undefined ? count(m.differentiated) + share(m.differentiated) : undefined],
  ];
}

function renderDownloads(job, base) {
  const names = (job.summary && job.summary.artifacts) ||
    ["affinity.json", "groups.json", "subsets.json", "heatmap.png", "summary.json"];
  const items = [["affinity.csv", base + "/affinity?format=csv", job.id + "-affinity.csv"]]
    .concat(names.map((n) => [n, base + "/artifacts/" + encodeURIComponent(n), n]));
  $("downloads").replaceChildren(...items.map(([label, path, filename]) =>
    el("li", {}, el("a", { href: path, "data-testid": "download-link", onclick: (e) => { e.preventDefault(); download(path, filename); } }, label))));
}

// -- heatmap: canvas, tasks ordered by group, lines between groups, hover tooltip
function order(tasks, groups) {
  const index = new Map(tasks.map((t, i) => [t, i]));
  const seen = new Set(), ord = [], bounds = [];
  for (const g of groups.groups) {
    for (const t of g) if (index.has(t) && !seen.has(t)) { seen.add(t); ord.push(index.get(t)); }
    bounds.push(ord.length);
  }
  tasks.forEach((t, i) => { if (!seen.has(t)) ord.push(i); });
  return { ord, bounds: bounds.slice(0, -1) };
}

function color(v, m) {
  // diverging: blue (negative) – white – red (positive)
  const t = m > 0 ? Math.max(-1, Math.min(1, v / m)) : 0;
  const [r, g, b] = t >= 0 ? [178, 24, 43] : [33, 102, 172];
  const a = Math.abs(t);
  return `rgb(${Math.round(255 + (r - 255) * a)},${Math.round(255 + (g - 255) * a)},${Math.round(255 + (b - 255) * a)})`;
}

function drawHeatmap(affinity, groups) {
  const canvas = $("heatmap"), tip = $("heatmap-tooltip");
  const tasks = affinity.tasks, M = affinity.matrix, counts = affinity.counts;
  const n = tasks.length;
  const { ord, bounds } = order(tasks, groups);
  const groupOf = new Map();
  groups.groups.forEach((g, i) => g.forEach((t) => groupOf.set(t, i)));
  let m = 0;
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (i !== j && isFinite(M[i][j])) m = Math.max(m, Math.abs(M[i][j]));

  const ctx = canvas.getContext("2d");
  const labels = n <= 64;
  ctx.font = "11px system-ui, sans-serif";
  const margin = labels ? Math.ceil(Math.max(...tasks.map((t) => ctx.measureText(t).width))) + 8 : 4;
  const avail = Math.max(200, Math.min(720, (canvas.parentElement.parentElement.clientWidth || 720) - margin - 24));
  const cell = Math.max(1, Math.floor(avail / n));
  const size = margin + cell * n + 2;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = size * dpr; canvas.height = size * dpr;
  canvas.style.width = size + "px"; canvas.style.height = size + "px";
  Object.assign(canvas.dataset, { tasks: String(n), cell: String(cell), margin: String(margin) });
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, size, size);

  for (let a = 0; a < n; a++) {
    for (let b = 0; b < n; b++) {
      const i = ord[a], j = ord[b];
      ctx.fillStyle = i === j ? "#e4e7ec" : color(M[i][j], m);
      ctx.fillRect(margin + b * cell, margin + a * cell, cell, cell);
    }
  }
  ctx.strokeStyle = "#1d2430"; ctx.lineWidth = 1.5;
  for (const k of bounds) {
    const p = margin + k * cell;
    ctx.beginPath(); ctx.moveTo(p, margin); ctx.lineTo(p, margin + n * cell); ctx.stroke();
    ctx.beginPath(); ctx.moveTo(margin, p); ctx.lineTo(margin + n * cell, p); ctx.stroke();
  }
  ctx.strokeRect(margin, margin, n * cell, n * cell);
  if (labels) {
    ctx.fillStyle = "#1d2430"; ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    ord.forEach((i, a) => ctx.fillText(tasks[i], margin - 4, margin + (a + 0.5) * cell));
    ctx.save(); ctx.rotate(-Math.PI / 2); ctx.textAlign = "left";
    ord.forEach((i, b) => ctx.fillText(tasks[i], -(margin - 4), margin + (b + 0.5) * cell));
    ctx.restore();
  }

  const legend = $("legend"), lctx = legend.getContext("2d");
  for (let x = 0; x < legend.width; x++) {
    lctx.fillStyle = color((2 * x / (legend.width - 1) - 1) * m, m);
    lctx.fillRect(x, 0, 1, legend.height);
  }
  $("legend-min").textContent = fmt(-m);
  $("legend-max").textContent = fmt(m);

  const cellAt = (ev) => {
    const r = canvas.getBoundingClientRect();
    const scale = size / r.width;
    const x = (ev.clientX - r.left) * scale - margin, y = (ev.clientY - r.top) * scale - margin;
    const b = Math.floor(x / cell), a = Math.floor(y / cell);
    return a >= 0 && b >= 0 && a < n && b < n ? [a, b, ev.clientX - r.left, ev.clientY - r.top] : null;
  };
  canvas.onmousemove = (ev) => {
    const hit = cellAt(ev);
    if (!hit) { tip.hidden = true; return; }
    const [a, b, x, y] = hit;
    const i = ord[a], j = ord[b];
    const ti = tasks[i], tj = tasks[j];
    let text;
    if (i === j) {
      const gain = affinity.self_gain ? ` · self gain ${fmt(affinity.self_gain[i])}` : "";
      text = `${ti} (group ${groupOf.get(ti)})${gain}`;
    } else {
      const c = counts ? ` · ${counts[i][j]} subsets` : "";
      text = `${ti} × ${tj}: ${fmt(M[i][j])}${c} · groups ${groupOf.get(ti)} / ${groupOf.get(tj)}`;
    }
    tip.textContent = text;
    tip.dataset.row = ti; tip.dataset.col = tj; tip.dataset.value = String(M[i][j]);
    tip.hidden = false;
    const wrap = $("heatmap-wrap").clientWidth;
    tip.style.left = Math.min(x + 14, Math.max(0, wrap - tip.offsetWidth)) + "px";
    tip.style.top = (y + 14) + "px";
  };
  canvas.onmouseleave = () => { tip.hidden = true; };
}

// -- submit form: the form writes the manifest (the JSON box, which experts may edit); the data and model
// kinds, their column fields and starting settings come from the server (GET /v1/schema/kinds), so a kind a
// plug-in adds appears here without changing this page.
let examples = null;
let kinds = null;
let upload = null; // the uploaded dataset the form uses: {id, filename, format, rows, columns}
let roles = {}; // column -> role: "field:<dataset field>", "task:binary", "task:regression" or "ignore"

const TASK_ROLES = [["task:binary", "task (binary 0/1)"], ["task:regression", "task (regression)"]];
const FIELD_LABELS = { features: "feature", text: "text", text_pair: "second text (pairs)", node_column: "node id" };

function currentManifest() {
  const raw = $("manifest-input").value.trim();
  if (!raw) return {};
  try { return JSON.parse(raw); } catch (_) { return null; }
}

// Apply a change of the form to the manifest in the JSON box.
function editManifest(change) {
  const m = currentManifest();
  if (m === null) {
    showProblem("The manifest in the JSON box is not valid JSON; fix it there, or reload the page to start over.", []);
    return;
  }
  change(m);
  $("manifest-input").value = JSON.stringify(m, null, 2);
}

function dataKind(name) { return (kinds.data || []).find((k) => k.name === name); }
function modelKind(name) { return (kinds.models || []).find((k) => k.name === name); }
function modelsFor(data) { return (kinds.models || []).filter((k) => !k.error && (k.accepts || []).includes(data)); }
function sourceMode() { return document.querySelector("input[name=source-mode]:checked").value; }

function kValue() {
  const v = $("k-input").value.trim();
  return /^\d+$/.test(v) ? Number(v) : (v || "auto");
}

function fieldValue(text) {
  const t = text.trim();
  if (t === "") return null;
  try { return JSON.parse(t); } catch (_) { /* a plain string */ }
  if (/^-?\d+(\.\d+)?(\s*,\s*-?\d+(\.\d+)?)+$/.test(t)) return t.split(",").map(Number); // "64, 64"
  return t;
}

function fieldText(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  if (Array.isArray(v) && v.every((x) => typeof x === "number")) return v.join(", ");
  return JSON.stringify(v);
}

function fillSelect(select, options, value) {
  select.replaceChildren(...options.map(([v, label, disabled]) =>
    el("option", { value: v, disabled: disabled || null }, label)));
  if (value !== undefined && options.some(([v]) => v === value)) select.value = value;
}

function renderModelKinds(data, chosen) {
  const options = modelsFor(data).map((k) => [k.name, k.name]);
  if (!options.length) options.push(["", `no model kind takes ${data} data`, true]);
  fillSelect($("model-kind"), options, chosen);
}

function renderModelFields(manifest) {
  const kind = modelKind($("model-kind").value);
  const given = (manifest && manifest.model) || {};
  const fields = Object.entries((kind && kind.fields) || {});
  $("model-fields").replaceChildren(...fields.flatMap(([name, start]) => {
    const id = "model-field-" + name;
    const value = Object.prototype.hasOwnProperty.call(given, name) ? given[name] : start;
    return [el("label", { for: id }, name.replace(/_/g, " ")),
      el("input", { id, type: "text", value: fieldText(value), "data-testid": id, "data-field": name,
        onchange: (ev) => editManifest((m) => {
          m.model = m.model || {};
          const v = fieldValue(ev.target.value);
          if (v === null) delete m.model[name]; else m.model[name] = v;
        }) })];
  }));
}

// The model kind's starting settings (those of a built-in job that uses it) replace the model, training,
// estimation and grouping sections: the previous kind's fields do not apply to the new one.
function applyModelKind(m, name) {
  const kind = modelKind(name);
  for (const section of ["model", "training", "estimation", "grouping"]) {
    m[section] = JSON.parse(JSON.stringify(((kind && kind.settings) || {})[section] || {}));
  }
  m.model.kind = name;
  m.grouping.k = kValue();
}

// Whether a data kind's source is a graph upload (a node table and its edge list: two files).
function readsGraphs(name) {
  const kind = dataKind(name);
  return !!(kind && (kind.sources || []).includes("graph"));
}

function defaultRoles(kind, columns) {
  const out = {};
  const fields = (kind && kind.columns) || [];
  const singles = fields.filter((f) => !f.many).map((f) => f.field);
  const many = fields.find((f) => f.many);
  for (const c of columns) {
    if (/^(label|task|target|y)([_\s-]?\d*|[_\s-].*)$/i.test(c)) out[c] = "task:binary";
    else if (singles.length) out[c] = "field:" + singles.shift();
    else out[c] = many ? "field:" + many.field : "ignore";
  }
  return out;
}

function renderColumns() {
  const kind = dataKind($("data-kind").value);
  const show = upload && !["npz", "images"].includes(upload.format); // their columns are arrays, not a table's
  $("columns-box").hidden = !show;
  if (!show) return;
  const options = ((kind && kind.columns) || []).map((f) => ["field:" + f.field, FIELD_LABELS[f.field] || f.field.replace(/_/g, " ")])
    .concat(TASK_ROLES, [["ignore", "not used"]]);
  $("columns-body").replaceChildren(...upload.columns.map((c) => {
    const select = el("select", { "data-testid": "column-role", "data-column": c,
      onchange: (ev) => { roles[c] = ev.target.value; editManifest(applyDataset); } });
    fillSelect(select, options, roles[c]);
    roles[c] = select.value;
    return el("tr", { "data-testid": "column-row", "data-column": c }, el("td", {}, el("code", {}, c)), el("td", {}, select));
  }));
}

// The dataset section from the upload and the column roles.
function applyDataset(m) {
  if (!upload) return;
  const kind = dataKind($("data-kind").value);
  const dataset = { kind: kind ? kind.name : "table", source: upload.id };
  if (!["npz", "images"].includes(upload.format)) {
    for (const f of (kind && kind.columns) || []) {
      const cols = upload.columns.filter((c) => roles[c] === "field:" + f.field);
      if (cols.length) dataset[f.field] = f.many ? cols : cols[0];
    }
    const tasks = upload.columns.filter((c) => roles[c] && roles[c].startsWith("task:"))
      .map((c) => ({ name: c, type: roles[c].slice(5) }));
    if (tasks.length) dataset.tasks = tasks;
  }
  m.dataset = dataset;
}

function syncControls(m) {
  const modelName = (m.model && m.model.kind) || "mlp";
  const model = modelKind(modelName);
  const data = (m.dataset && m.dataset.kind) || (model && model.accepts ? model.accepts[0] : "table");
  $("data-kind").value = data;
  renderModelKinds(data, modelName);
  $("k-input").value = m.grouping && m.grouping.k !== undefined ? fieldText(m.grouping.k) : "auto";
  renderModelFields(m);
}

function loadExample(name) {
  if (!examples || !examples[name]) return;
  $("manifest-input").value = JSON.stringify(examples[name], null, 2);
  syncControls(examples[name]);
}

function setSourceMode(mode) {
  $("upload-box").hidden = mode !== "upload";
  $("builtin-box").hidden = mode !== "builtin";
  if (mode === "builtin") {
    $("columns-box").hidden = true;
    loadExample($("example-select").value);
  } else {
    renderColumns();
    editManifest((m) => {
      applyModelKind(m, $("model-kind").value);
      m.dataset = { kind: $("data-kind").value };
      applyDataset(m);
    });
    renderModelFields(currentManifest());
  }
}

async function showSubmit() {
  show("view-submit");
  if (!examples || !kinds) {
    try {
      [examples, kinds] = await Promise.all([(await fetch("/static/examples.json")).json(),
        (await fetch("/v1/schema/kinds")).json()]);
    } catch (err) {
      examples = examples || {};
      kinds = kinds || { data: [{ name: "table", columns: [{ field: "features", many: true }] }],
        models: [{ name: "mlp", accepts: ["table"], settings: {}, fields: {} }] };
      flash("cannot load the kinds this server runs: " + err.message, true);
    }
    fillSelect($("example-select"), Object.keys(examples).map((name) =>
      [name, name === "small" ? "small planted job (under a minute)" : `built-in ${name} job`]));
    fillSelect($("data-kind"), (kinds.data || []).map((k) => [k.name, k.error ? `${k.name} (${k.error})` : k.name, !!k.error]));
    $("example-select").onchange = () => loadExample($("example-select").value);
    for (const radio of document.querySelectorAll("input[name=source-mode]")) {
      radio.onchange = () => setSourceMode(sourceMode());
    }
    $("data-kind").onchange = () => {
      const data = $("data-kind").value;
      $("edges-box").hidden = !readsGraphs(data);
      const keep = modelsFor(data).some((k) => k.name === $("model-kind").value);
      renderModelKinds(data, $("model-kind").value);
      if (upload) roles = defaultRoles(dataKind(data), upload.columns);
      renderColumns();
      editManifest((m) => {
        if (!keep) applyModelKind(m, $("model-kind").value);
        m.dataset = Object.assign({}, m.dataset || {}, { kind: data });
        applyDataset(m);
      });
      renderModelFields(currentManifest());
    };
    $("model-kind").onchange = () => {
      editManifest((m) => applyModelKind(m, $("model-kind").value));
      renderModelFields(currentManifest());
    };
    $("k-input").onchange = () => editManifest((m) => { m.grouping = m.grouping || {}; m.grouping.k = kValue(); });
    $("dataset-upload").onclick = uploadDataset;
    renderModelKinds($("data-kind").value);
  }
  if (!$("manifest-input").value) setSourceMode(sourceMode());
}

function showProblem(detail, errors) {
  $("form-detail").textContent = detail;
  $("form-errors").replaceChildren(...(errors || []).map((e) =>
    el("li", { "data-testid": "form-error", "data-field": e.field }, el("code", {}, e.field || "body"), " ",
      e.message && e.field && e.message.startsWith(e.field + ":") ? e.message.slice(e.field.length + 1).trim() : e.message)));
  $("form-problem").hidden = false;
}

async function submitManifest(ev) {
  ev.preventDefault();
  $("form-problem").hidden = true;
  let manifest;
  try {
    manifest = JSON.parse($("manifest-input").value);
  } catch (err) {
    $("expert").open = true;
    showProblem("The manifest is not valid JSON: " + err.message, []);
    return;
  }
  const button = ev.submitter || ev.target.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const job = await apiJson("/v1/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(manifest),
    });
    keepFlash = true;
    flash("Submitted job " + job.id);
    location.hash = "#/";
  } catch (err) {
    if (err.status !== 401) showProblem(`${err.status || ""} ${err.detail}`.trim(), err.errors);
  } finally {
    button.disabled = false;
  }
}

async function uploadDataset() {
  const file = $("dataset-file").files[0];
  const out = $("upload-result");
  out.hidden = false;
  if (!file) {
    out.className = "small error";
    out.textContent = "choose a file first";
    return;
  }
  const form = new FormData();
  if (readsGraphs($("data-kind").value)) { // a graph is two files in one request: its node table and edge list
    const edges = $("edges-file").files[0];
    if (!edges) {
      out.className = "small error";
      out.textContent = "choose the graph's edge list too";
      return;
    }
    form.append("nodes", file);
    form.append("edges", edges);
  } else {
    form.append("file", file);
  }
  out.className = "small";
  out.textContent = "uploading…";
  try {
    const ds = await apiJson("/v1/datasets", { method: "POST", body: form });
    upload = ds;
    roles = defaultRoles(dataKind($("data-kind").value), ds.columns);
    out.replaceChildren(`Uploaded ${ds.filename}: ${ds.rows} rows, ${ds.columns.length} columns. Id `,
      el("code", { "data-testid": "dataset-id" }, ds.id));
    renderColumns();
    editManifest(applyDataset);
  } catch (err) {
    out.className = "small error";
    out.textContent = err.detail;
  }
}

// ------------------------------------------------------------------------------------------- start
async function login(ev) {
  ev.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  try {
    await apiJson("/v1/jobs?limit=1");
  } catch (err) {
    if (err.status !== 401) { forgetKey(err.message); }
    return; // a 401 already cleared the key and shows the reason
  }
  $("key-input").value = "";
  $("login-error").hidden = true;
  flash("");
  route();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => { forgetKey(""); flash(""); });
  $("submit-form").addEventListener("submit", submitManifest);
  window.addEventListener("hashchange", () => { if (!keepFlash) flash(""); keepFlash = false; route(); });
  route();
});
