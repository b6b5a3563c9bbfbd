// The web page: uses only the public API (/v1/...), like any other client.
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = ["succeeded", "failed", "canceled"];
const RECENT_KEY = "vgs.recentJobs";
const API_KEY = "vgs.apiKey";
const state = { models: {}, key: localStorage.getItem(API_KEY) || "", following: null, frames: null };

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  return h;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(Boolean(options.body)) });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const error = new Error(body?.error?.message || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.field = body?.error?.field;
    throw error;
  }
  return body;
}

// Errors appear next to the field they concern, or under the form.
const FIELD_ERRORS = ["api_key", "model", "mode", "class_label", "cond_frames", "num_frames", "num_samples",
                      "temperature", "top_k", "top_p", "guidance", "seed"];
function clearErrors() {
  for (const name of FIELD_ERRORS) {
    const box = $(`${name === "api_key" ? "api-key" : name}-error`);
    if (box) box.textContent = "";
    const input = $(name === "api_key" ? "api-key" : name);
    if (input) input.removeAttribute("aria-invalid");
  }
  $("form-error").textContent = "";
}
function showError(field, message) {
  const id = field === "api_key" ? "api-key" : field;
  const box = field ? $(`${id}-error`) : null;
  if (box) {
    box.textContent = message;
    const input = $(id);
    if (input) { input.setAttribute("aria-invalid", "true"); }
    const details = box.closest("details");
    if (details) details.open = true;
  } else {
    $("form-error").textContent = message;
  }
}

async function loadModels() {
  clearErrors();
  try {
    const data = await api("/v1/models");
    state.models = Object.fromEntries(data.models.map((m) => [m.name, m]));
    const select = $("model");
    select.replaceChildren(...data.models.map((m) => new Option(
      `${m.name}${m.worker_up ? "" : " (no worker up)"}`, m.name, false, m.name === data.default_model)));
    if (!data.models.length) showError("model", "No model is available yet: no worker has announced one.");
    onModelChange();
  } catch (error) {
    if (error.status === 401) {
      $("key-field").hidden = false;
      showError("api_key", state.key ? "This API key is not valid." : "This server needs an API key.");
      $("api-key").focus();
    } else {
      showError(null, error.message);
    }
  }
}

function currentModel() { return state.models[$("model").value]; }
function currentMode() { return document.querySelector('input[name="mode"]:checked')?.value; }

function onModelChange() {
  const model = currentModel();
  if (!model) return;
  $("model-info").textContent = `${model.frames} frames of ${model.resolution}x${model.resolution} at ` +
    `${model.fps} fps; ${model.workers} worker${model.workers === 1 ? "" : "s"} up`;
  setLengths(model);
  const previous = currentMode();
  $("modes").replaceChildren(...model.modes.map((mode, i) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    Object.assign(input, { type: "radio", name: "mode", value: mode, id: `mode-${mode}` });
    input.checked = previous ? mode === previous : i === 0;
    input.addEventListener("change", onModeChange);
    label.append(input, ` ${mode}`);
    return label;
  }));
  if (!currentMode()) document.querySelector('input[name="mode"]').checked = true;
  $("class_label").replaceChildren(...(model.class_names || []).map((name, i) => new Option(name, String(i))));
  const preview = $("frames-preview");
  preview.width = preview.height = model.resolution;
  onModeChange();
  drawPreview();
}

// The Frames field takes what the model can make: whole latent time steps up to its longest video.
function setLengths(model) {
  const step = model.frames_per_step || model.frames;
  const longest = model.max_frames || model.frames;
  Object.assign($("num_frames"), { min: step, max: longest, step, value: model.frames });
  $("num_frames-help").textContent = longest > model.frames
    ? `${model.frames} natively; up to ${longest}, in steps of ${step} (a window slides over time)`
    : `${model.frames}: this model's length`;
}

function onModeChange() {
  const mode = currentMode();
  $("class-field").hidden = mode !== "class";
  $("frames-field").hidden = mode !== "frames";
  // Guidance steers towards the class or frames, with models trained to also work without them; an
  // unconditional request has a class to steer to only where the model draws one ("classes").
  const model = currentModel();
  const steerable = mode !== "unconditional" || model?.unconditional === "classes";
  $("guidance-field").hidden = !steerable || !model?.guidance_supported;
  $("guidance").placeholder = String(model?.guidance ?? 1);
  $("temperature").placeholder = String(model?.temperature ?? 1);
}

// The preview draws what the model will get: the first frame, shorter side scaled, centre cut.
function drawSquare(source, width, height) {
  const canvas = $("frames-preview");
  const size = canvas.width;
  const ctx = canvas.getContext("2d");
  const side = Math.min(width, height);
  ctx.imageSmoothingEnabled = true;
  ctx.clearRect(0, 0, size, size);
  ctx.drawImage(source, (width - side) / 2, (height - side) / 2, side, side, 0, 0, size, size);
}

function drawPreview() {
  const file = $("cond_frames").files[0];
  if (!file) return;
  const url = URL.createObjectURL(file);
  if (file.type.startsWith("video/")) {
    const video = document.createElement("video");
    video.muted = true;
    video.preload = "auto";
    video.addEventListener("loadeddata", () => { video.currentTime = 0; }, { once: true });
    video.addEventListener("seeked", () => drawSquare(video, video.videoWidth, video.videoHeight), { once: true });
    video.src = url;
  } else {
    const image = new Image();
    image.onload = () => drawSquare(image, image.naturalWidth, image.naturalHeight);
    image.src = url;
  }
}

function readAsDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("the file could not be read"));
    reader.readAsDataURL(file);
  });
}

async function buildRequest() {
  const body = { model: $("model").value, mode: currentMode() };
  if (body.mode === "class") body.class_label = Number($("class_label").value);
  if (body.mode === "frames") {
    const file = $("cond_frames").files[0];
    if (!file) { showError("cond_frames", "Choose an image or a video whose first frames condition the model."); return null; }
    body.cond_frames = await readAsDataUri(file);
  }
  for (const [name, parse] of [["num_frames", Number], ["num_samples", parseInt], ["temperature", parseFloat],
                               ["top_k", parseInt], ["top_p", parseFloat], ["guidance", parseFloat],
                               ["seed", parseInt]]) {
    if ($(`${name}-field`)?.hidden) continue;
    const raw = $(name).value.trim();
    if (raw !== "") body[name] = Number.isNaN(parse(raw)) ? raw : parse(raw);
  }
  return body;
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const button = $("submit");
  button.disabled = true;
  try {
    const body = await buildRequest();
    if (!body) return;
    const job = await api("/v1/generate", { method: "POST", body: JSON.stringify(body) });
    remember(job.id);
    follow(job);
  } catch (error) {
    if (error.status === 401) { $("key-field").hidden = false; showError("api_key", error.message); }
    else showError(error.field && error.field !== "body" ? error.field : null, error.message);
  } finally {
    button.disabled = false;
  }
}

function remember(id) {
  const ids = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]").filter((x) => x !== id);
  ids.unshift(id);
  localStorage.setItem(RECENT_KEY, JSON.stringify(ids.slice(0, 20)));
}

// Follow a job: server-sent events read with fetch (EventSource cannot send an API key), polling as fallback.
async function follow(job) {
  if (state.following) state.following.abort();
  const controller = new AbortController();
  state.following = controller;
  render(job);
  try {
    const response = await fetch(`/v1/jobs/${job.id}/events`, { headers: headers(false), signal: controller.signal });
    if (!response.ok || !response.body) throw new Error("no event stream");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) { const update = JSON.parse(data); if (update.id) render(update); }
      }
    }
  } catch (error) {
    if (controller.signal.aborted) return;
    for (let latest = job; !TERMINAL.includes(latest.status);) {  // fallback: poll
      await new Promise((r) => setTimeout(r, 500));
      latest = await api(`/v1/jobs/${job.id}`);
      render(latest);
    }
  }
  refreshRecent();
}

function render(job) {
  $("current").hidden = false;
  $("current").dataset.job = job.id;
  $("job-id").textContent = job.id.slice(0, 8);
  const percent = Math.round((job.progress || 0) * 100);
  $("status-line").textContent = job.status === "failed" || job.status === "canceled"
    ? `${job.status}: ${job.error?.message || ""}` : `${job.status} ${percent}%`;
  $("current").dataset.status = job.status;
  $("progress").value = job.progress || 0;
  $("cancel").hidden = TERMINAL.includes(job.status);
  const notes = [...(job.warnings || [])];
  if (job.cancel_requested && !TERMINAL.includes(job.status)) notes.push("Cancel requested: the worker stops it.");
  $("job-warnings").textContent = notes.join(" ");
  $("job-warnings").hidden = notes.length === 0;
  const videos = $("videos");
  if (job.status !== "succeeded") { videos.replaceChildren(); return; }
  if (videos.dataset.job === job.id && videos.children.length) return;
  videos.dataset.job = job.id;
  const total = job.finished_at && job.created_at ? (Date.parse(job.finished_at) - Date.parse(job.created_at)) / 1000 : null;
  videos.replaceChildren(...job.outputs.map((out, i) => {
    const figure = document.createElement("figure");
    const video = document.createElement("video");
    Object.assign(video, { src: out.url, autoplay: true, loop: true, muted: true, playsInline: true, controls: true });
    video.className = "pixels";
    video.setAttribute("aria-label", `generated video ${i + 1}`);
    const caption = document.createElement("figcaption");
    const link = document.createElement("a");
    Object.assign(link, { href: out.url, download: `${job.id}_${i}.mp4`, textContent: `Download video ${i + 1}` });
    const m = job.metrics || {};
    caption.append(link, document.createElement("br"),
      `${out.frames} frames; ${total !== null ? total.toFixed(1) + " s in all, " : ""}` +
      `${m.sampling_seconds ?? "?"} s sampling, ` +
      `${m.tokens_per_second ?? "?"} tokens/s, batch of ${m.batch_jobs ?? 1}`);
    figure.append(video, caption);
    return figure;
  }));
}

async function cancel(id) {
  try { render(await api(`/v1/jobs/${id}/cancel`, { method: "POST" })); } catch (error) { showError(null, error.message); }
  refreshRecent();
}

async function refreshRecent() {
  const ids = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
  const items = [];
  const kept = [];
  for (const id of ids) {
    let job;
    try { job = await api(`/v1/jobs/${id}`); } catch (error) { if (error.status === 404) continue; else break; }
    kept.push(id);
    const li = document.createElement("li");
    li.dataset.job = id;
    if (job.outputs?.length) {
      const thumb = document.createElement("video");
      Object.assign(thumb, { src: job.outputs[0].url, muted: true, preload: "metadata", loop: true, autoplay: true });
      thumb.className = "pixels";
      thumb.setAttribute("aria-label", `thumbnail of job ${id.slice(0, 8)}`);
      li.append(thumb);
    }
    const show = document.createElement("button");
    Object.assign(show, { type: "button", className: "secondary", textContent: `${id.slice(0, 8)}` });
    show.addEventListener("click", () => follow(job));
    const status = document.createElement("span");
    status.className = "status";
    status.textContent = `${job.request?.mode || ""} ${job.status}`;
    li.append(show, status);
    if (!TERMINAL.includes(job.status)) {
      const stop = document.createElement("button");
      Object.assign(stop, { type: "button", className: "secondary", textContent: "Cancel" });
      stop.setAttribute("aria-label", `Cancel job ${id.slice(0, 8)}`);
      stop.addEventListener("click", () => cancel(id));
      li.append(stop);
    }
    items.push(li);
  }
  localStorage.setItem(RECENT_KEY, JSON.stringify(kept));
  $("recent").replaceChildren(...items);
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = state.key;
  if (state.key) $("key-field").hidden = false;
  $("api-key").addEventListener("change", () => {
    state.key = $("api-key").value.trim();
    localStorage.setItem(API_KEY, state.key);
    loadModels();
    refreshRecent();
  });
  $("model").addEventListener("change", onModelChange);
  $("cond_frames").addEventListener("change", drawPreview);
  $("generate").addEventListener("submit", submit);
  $("cancel").addEventListener("click", () => cancel($("current").dataset.job));
  loadModels();
  refreshRecent();
});
