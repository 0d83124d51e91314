// bts-serve page: upload, follow the queue, view the result. Plain JS, no external resources.
"use strict";

const API = "api";
const STORE_KEY = "bts-serve-jobs";
const POLL_MS = 700;
const PLANES = ["axial", "coronal", "sagittal"];

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

const state = {
  info: null,
  jobs: new Map(), // id -> job JSON from the server
  order: [], // ids, newest first
  selected: null, // id shown in the viewer
  view: null, // viewer state of the selected job
  pollTimer: null,
};

// ---- small helpers ------------------------------------------------------------------------------
function fmtBytes(n) {
  if (n == null) return "";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

function fmtMinutes(s) {
  if (s == null) return "";
  if (s < 90) return `${Math.max(1, Math.round(s))} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v; // CSSOM, allowed by the page's CSP
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== false && v != null) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

function showMessage(text, kind = "error") {
  const box = $("#message");
  if (!text) { box.hidden = true; box.textContent = ""; return; }
  box.className = `message ${kind}`;
  box.textContent = text;
  box.hidden = false;
}

async function readError(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
    if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON */ }
  return `the server answered ${response.status} ${response.statusText}`;
}

function saveJobIds() {
  try { localStorage.setItem(STORE_KEY, JSON.stringify(state.order)); } catch (_) { /* private mode */ }
}

function loadJobIds() {
  try {
    const ids = JSON.parse(localStorage.getItem(STORE_KEY) || "[]");
    return Array.isArray(ids) ? ids.filter((x) => typeof x === "string" && /^[0-9a-f]{32}$/.test(x)) : [];
  } catch (_) { return []; }
}

// ---- model info ---------------------------------------------------------------------------------
async function loadInfo() {
  try {
    const r = await fetch(`${API}/info`);
    if (!r.ok) throw new Error(await readError(r));
    state.info = await r.json();
    const m = state.info.model;
    const regions = m.regions.join(", ");
    $("#model-info").innerHTML = "";
    $("#model-info").append(
      el("div", {}, "Model ", el("strong", { text: m.name })),
      el("div", { text: `${m.dataset} · ${m.spatial_dims}D · ${m.modalities.join(", ")} → ${regions}` }),
    );
    const lim = state.info.limits;
    $("#limits").textContent =
      `Up to ${lim.max_upload_mb} MB per upload. Results are kept for ${fmtMinutes(lim.keep_minutes * 60)}, then deleted.`;
  } catch (err) {
    $("#model-info").textContent = `model information unavailable: ${err.message}`;
  }
}

// ---- upload -------------------------------------------------------------------------------------
function upload(files) {
  if (!files || files.length === 0) return;
  showMessage(null);
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  form.append("probabilities", $("#opt-probabilities").checked ? "1" : "0");
  const total = Array.from(files).reduce((a, f) => a + f.size, 0);
  const maxMb = state.info ? state.info.limits.max_upload_mb : null;
  if (maxMb != null && total > maxMb * 1024 * 1024) {
    showMessage(`These files are ${fmtBytes(total)}, more than the ${maxMb} MB this server accepts.`);
    return;
  }
  const bar = $("#upload-progress");
  bar.hidden = false;
  setProgress(bar, 0, `uploading ${files.length} file${files.length > 1 ? "s" : ""}…`);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `${API}/jobs`);
  xhr.responseType = "json";
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) setProgress(bar, e.loaded / e.total, `uploading… ${Math.round((100 * e.loaded) / e.total)}%`);
  };
  xhr.onerror = () => { bar.hidden = true; showMessage("The upload failed: the server could not be reached."); };
  xhr.onload = () => {
    bar.hidden = true;
    const body = xhr.response || {};
    if (xhr.status >= 200 && xhr.status < 300) {
      addJob(body);
      if (!state.selected || !isViewing()) selectJob(body.id);
      poll();
    } else {
      showMessage(body.error || `The upload was refused (${xhr.status}).`);
    }
  };
  xhr.send(form);
}

function setProgress(bar, fraction, label) {
  $(".bar", bar).style.width = `${Math.round(100 * Math.min(1, Math.max(0, fraction)))}%`;
  $(".label", bar).textContent = label;
}

function setupDrop() {
  const drop = $("#drop");
  const input = $("#file-input");
  input.addEventListener("change", () => { upload(input.files); input.value = ""; });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => upload(e.dataTransfer.files));
  // A file dropped next to the zone must not make the browser navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}

// ---- jobs ---------------------------------------------------------------------------------------
function addJob(job) {
  state.jobs.set(job.id, job);
  if (!state.order.includes(job.id)) state.order.unshift(job.id);
  saveJobIds();
  renderJobs();
}

function forgetJob(id) {
  state.jobs.delete(id);
  state.order = state.order.filter((x) => x !== id);
  saveJobIds();
  if (state.selected === id) { state.selected = null; closeViewer(); }
  renderJobs();
}

async function removeJob(id) {
  try { await fetch(`${API}/jobs/${id}`, { method: "DELETE" }); } catch (_) { /* gone anyway */ }
  forgetJob(id);
}

async function poll() {
  clearTimeout(state.pollTimer);
  const pending = state.order.filter((id) => {
    const j = state.jobs.get(id);
    return !j || j.state === "queued" || j.state === "running";
  });
  await Promise.all(pending.map(async (id) => {
    try {
      const r = await fetch(`${API}/jobs/${id}`);
      if (r.status === 404) { forgetJob(id); return; }
      if (!r.ok) return;
      const job = await r.json();
      const before = state.jobs.get(id);
      state.jobs.set(id, job);
      if (job.state === "done" && (!before || before.state !== "done") && (state.selected === id || !isViewing())) {
        selectJob(id);
      }
    } catch (_) { /* server restarting: try again */ }
  }));
  renderJobs();
  const stillPending = state.order.some((id) => ["queued", "running"].includes((state.jobs.get(id) || {}).state));
  if (stillPending) state.pollTimer = setTimeout(poll, POLL_MS);
}

function jobDetail(job) {
  if (job.state === "queued") {
    return job.queue_position > 0 ? `waiting: ${job.queue_position} case${job.queue_position > 1 ? "s" : ""} ahead` : "waiting";
  }
  if (job.state === "running") return `${job.stage} · ${Math.round(100 * job.progress)}%`;
  if (job.state === "failed") return job.error;
  if (job.state === "done") {
    const wt = job.report && job.report.rows && job.report.rows.find((r) => r.primary);
    if (!wt) return "ready";
    return wt.ml == null ? `${wt.name}: ${wt.voxels.toLocaleString()} voxels` : `${wt.name}: ${wt.ml.toFixed(1)} mL`;
  }
  return "";
}

function renderJobs() {
  const list = $("#job-list");
  list.innerHTML = "";
  $("#no-jobs").hidden = state.order.length > 0;
  for (const id of state.order) {
    const job = state.jobs.get(id);
    if (!job) continue;
    const item = el("li", {
      class: `job${state.selected === id ? " selected" : ""}`,
      "data-job": id,
      "data-state": job.state,
      tabindex: 0,
      onclick: () => selectJob(id),
      onkeydown: (e) => { if (e.key === "Enter") selectJob(id); },
    },
    el("div", { class: "row" },
      el("span", { class: "name", text: job.name }),
      el("span", {},
        el("span", { class: `state ${job.state}`, text: job.state === "failed" ? "error" : job.state }),
        el("button", {
          class: "remove", title: "remove this case and delete its files", "aria-label": `remove ${job.name}`,
          onclick: (e) => { e.stopPropagation(); removeJob(id); },
        }, "×"))),
    el("div", { class: `detail${job.state === "failed" ? " error" : ""}`, text: jobDetail(job) }),
    job.notes && job.notes.length ? el("div", { class: "note", text: job.notes.join(" ") }) : null);
    if (job.state === "running" || job.state === "queued") {
      const bar = el("div", { class: "progress" }, el("div", { class: "bar" }), el("span", { class: "label" }));
      setProgress(bar, job.progress || 0, "");
      item.append(bar);
    }
    list.append(item);
  }
  renderSelectedStatus();
}

function isViewing() {
  return !$("#viewer").hidden;
}

function selectJob(id) {
  state.selected = id;
  renderJobs();
  const job = state.jobs.get(id);
  if (job && job.state === "done" && job.view) openViewer(job);
  else closeViewer();
}

// What the selected case is doing, in the main area while it waits, runs or has failed.
function renderSelectedStatus() {
  const box = $("#selected-status");
  const job = state.selected ? state.jobs.get(state.selected) : null;
  if (!job || job.state === "done") { box.hidden = true; return; }
  box.hidden = false;
  box.className = `message ${job.state === "failed" ? "error" : "info"}`;
  box.textContent = job.state === "failed"
    ? `${job.name} could not be segmented: ${job.error}`
    : `${job.name}: ${jobDetail(job)}`;
}

// ---- viewer -------------------------------------------------------------------------------------
function closeViewer() {
  $("#viewer").hidden = true;
  $("#placeholder").hidden = false;
  state.view = null;
}

function openViewer(job) {
  const v = job.view;
  const previous = state.view && state.view.id === job.id ? state.view : null;
  state.view = previous || {
    id: job.id,
    job,
    modality: v.default_modality,
    mode: "regions",
    visible: { regions: new Set(v.layers.regions.map((l) => l.name)), labels: new Set((v.layers.labels || []).map((l) => l.name)) },
    opacity: Number($("#opacity").value) / 100,
    index: v.center.slice(),
  };
  $("#placeholder").hidden = true;
  $("#viewer").hidden = false;
  $("#case-name").textContent = job.name;

  const sel = $("#modality");
  sel.innerHTML = "";
  for (const m of v.modalities) sel.append(el("option", { value: m, text: m }));
  sel.value = state.view.modality;

  $("#mode-field").hidden = !(v.layers.labels && v.layers.labels.length);
  renderModeButtons();
  renderLayers();
  for (const plane of PLANES) setupPlane(plane);
  renderReport(job);
  renderDownloads(job);
  renderAll();
}

function renderModeButtons() {
  for (const b of $$("#mode-field button")) b.setAttribute("aria-checked", String(b.dataset.mode === state.view.mode));
}

function renderLayers() {
  const box = $("#layers");
  box.innerHTML = "";
  const layers = state.view.job.view.layers[state.view.mode] || [];
  const visible = state.view.visible[state.view.mode];
  for (const layer of layers) {
    const input = el("input", { type: "checkbox", "data-layer": layer.name });
    input.checked = visible.has(layer.name);
    input.addEventListener("change", () => {
      if (input.checked) visible.add(layer.name); else visible.delete(layer.name);
      label.classList.toggle("off", !input.checked);
      renderAll();
    });
    const label = el("label", { class: `layer${input.checked ? "" : " off"}`, title: layer.title },
      input, el("span", { class: "swatch", style: `background:${layer.color}` }), layer.name);
    box.append(label);
  }
}

function planeGeom(plane) {
  return state.view.job.view.planes[plane];
}

function setupPlane(plane) {
  const fig = $(`.plane[data-plane="${plane}"]`);
  const g = planeGeom(plane);
  const slider = $(".slider", fig);
  slider.max = String(g.slices - 1);
  const frame = $(".frame", fig);
  // The stage is square: the frame fills its width (wide slices) or its height (tall ones).
  frame.style.width = g.aspect >= 1 ? "100%" : `${(100 * g.aspect).toFixed(3)}%`;
  frame.style.height = g.aspect >= 1 ? `${(100 / g.aspect).toFixed(3)}%` : "100%";
  for (const side of ["top", "bottom", "left", "right"]) $(`.ori.${side}`, fig).textContent = (g.labels || {})[side] || "";
}

function sliceUrl(plane) {
  const v = state.view;
  const g = planeGeom(plane);
  const layers = Array.from(v.visible[v.mode]).join(",");
  const q = new URLSearchParams({
    index: String(v.index[g.axis]), modality: v.modality, mode: v.mode, layers, opacity: v.opacity.toFixed(2),
  });
  return `${API}/jobs/${v.id}/slice/${plane}.png?${q}`;
}

// One request per plane in flight; moving a slider fast loads the latest slice, not every one.
const loader = {};
function loadSlice(plane) {
  const img = $(`.plane[data-plane="${plane}"] img`);
  const url = sliceUrl(plane);
  const slot = loader[plane] || (loader[plane] = { busy: false, want: null, shown: null });
  slot.want = url;
  if (slot.busy || slot.shown === url) return;
  slot.busy = true;
  const target = url;
  const done = () => {
    slot.busy = false;
    slot.shown = target;
    img.dataset.loaded = target;
    if (slot.want !== slot.shown) loadSlice(plane);
  };
  img.onload = done;
  img.onerror = done;
  img.src = target;
}

function renderPlane(plane) {
  const v = state.view;
  const g = planeGeom(plane);
  const fig = $(`.plane[data-plane="${plane}"]`);
  $(".slider", fig).value = String(v.index[g.axis]);
  $(".index", fig).textContent = `${v.index[g.axis] + 1} / ${g.slices}`;
  const col = v.index[g.cols_axis];
  const row = v.index[g.rows_axis];
  const fx = ((g.flip_cols ? g.cols - 1 - col : col) + 0.5) / g.cols;
  const fy = ((g.flip_rows ? g.rows - 1 - row : row) + 0.5) / g.rows;
  $(".cross.v", fig).style.cssText = `left:${(100 * fx).toFixed(2)}%;top:0;bottom:0`;
  $(".cross.h", fig).style.cssText = `top:${(100 * fy).toFixed(2)}%;left:0;right:0`;
  loadSlice(plane);
}

function renderAll() {
  if (!state.view) return;
  $(".planes").classList.toggle("no-cross", !$("#crosshair").checked);
  for (const plane of PLANES) renderPlane(plane);
}

function clampIndex(axis, value) {
  const shape = state.view.job.view.shape;
  return Math.min(shape[axis] - 1, Math.max(0, value));
}

function setupViewerControls() {
  $("#modality").addEventListener("change", (e) => { state.view.modality = e.target.value; renderAll(); });
  $("#opacity").addEventListener("input", (e) => {
    $("#opacity-value").textContent = `${e.target.value}%`;
    if (state.view) { state.view.opacity = Number(e.target.value) / 100; renderAll(); }
  });
  $("#crosshair").addEventListener("change", renderAll);
  $("#recenter").addEventListener("click", () => { state.view.index = state.view.job.view.center.slice(); renderAll(); });
  for (const b of $$("#mode-field button")) {
    b.addEventListener("click", () => { state.view.mode = b.dataset.mode; renderModeButtons(); renderLayers(); renderAll(); });
  }
  for (const plane of PLANES) {
    const fig = $(`.plane[data-plane="${plane}"]`);
    $(".slider", fig).addEventListener("input", (e) => {
      state.view.index[planeGeom(plane).axis] = Number(e.target.value);
      renderAll();
    });
    const stage = $(".stage", fig);
    const frame = $(".frame", fig);
    stage.addEventListener("wheel", (e) => {
      if (!state.view) return;
      e.preventDefault();
      const axis = planeGeom(plane).axis;
      state.view.index[axis] = clampIndex(axis, state.view.index[axis] + (e.deltaY > 0 ? -1 : 1));
      renderAll();
    }, { passive: false });
    frame.addEventListener("click", (e) => {
      if (!state.view) return;
      const g = planeGeom(plane);
      const rect = frame.getBoundingClientRect();
      let col = Math.floor(((e.clientX - rect.left) / rect.width) * g.cols);
      let row = Math.floor(((e.clientY - rect.top) / rect.height) * g.rows);
      if (g.flip_cols) col = g.cols - 1 - col;
      if (g.flip_rows) row = g.rows - 1 - row;
      state.view.index[g.cols_axis] = clampIndex(g.cols_axis, col);
      state.view.index[g.rows_axis] = clampIndex(g.rows_axis, row);
      renderAll();
    });
  }
}

function renderReport(job) {
  const table = $("#report");
  const rep = job.report || { rows: [] };
  $("thead", table).innerHTML = "";
  $("tbody", table).innerHTML = "";
  $("thead", table).append(el("tr", {},
    el("th", { text: "Region" }), el("th", { class: "num", text: "Volume (mL)" }), el("th", { class: "num", text: "Voxels" })));
  const groups = new Set(rep.rows.map((r) => r.kind));
  let group = null;
  for (const r of rep.rows) {
    if (groups.size > 1 && r.kind !== group) {
      group = r.kind;
      $("tbody", table).append(el("tr", { class: "group" }, el("td", { colspan: 3, text: group === "label" ? "Labels" : "Regions" })));
    }
    $("tbody", table).append(el("tr", {},
      el("td", { title: r.description || "" }, el("span", { class: "swatch", style: `background:${r.color}` }), r.title),
      el("td", { class: "num", text: r.ml == null ? "—" : r.ml.toFixed(2) }),
      el("td", { class: "num", text: r.voxels.toLocaleString() })));
  }
  $("#report-note").textContent = rep.note || "";
}

function renderDownloads(job) {
  const box = $("#downloads");
  box.innerHTML = "";
  for (const d of job.downloads || []) {
    box.append(el("a", { class: "download", href: `${API}/jobs/${job.id}/files/${d.key}`, download: d.filename, "data-key": d.key },
      el("span", { class: "what", text: d.label }), el("span", { class: "size", text: `${d.filename} · ${fmtBytes(d.size)}` })));
  }
  const left = job.expires_in_s;
  $("#expiry").textContent = left != null ? `These files are deleted from the server in about ${fmtMinutes(left)}.` : "";
}

// ---- start --------------------------------------------------------------------------------------
async function start() {
  setupDrop();
  setupViewerControls();
  await loadInfo();
  for (const id of loadJobIds()) {
    state.order.push(id);
    state.jobs.set(id, { id, name: "…", state: "queued", progress: 0, queue_position: 0 });
  }
  renderJobs();
  await poll();
}

document.addEventListener("DOMContentLoaded", start);
