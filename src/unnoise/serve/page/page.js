// The page of `unnoise serve`: a form for a job, its live previews from the job's event stream, and
// the gallery of finished jobs. Plain browser APIs only (fetch, EventSource, canvas): nothing to build.
"use strict";

const $ = (id) => document.getElementById(id);
let models = {};          // name -> what GET /api/models says of it
let current = null;       // { id, source: EventSource } of the job being watched
let painted = false;      // whether the mask has any pixel marked
let picture = null;       // the uploaded image (an Image), redrawn when the model's size changes
let hintPicture = null;   // the uploaded hint (an Image), for models that read one
let stroke = null;        // the last point of the brush stroke being painted
let autoSampler = false;  // whether inpainting switched the sampler to ddpm (switched back when leaving it)

function token() { return $("token").value || sessionStorage.getItem("unnoise-token") || ""; }

function withToken(path) {
  const t = token();
  return t ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(t)}` : path;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) $("token-box").hidden = false;
  if (!response.ok) {
    const detail = Array.isArray(body.detail)
      ? body.detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}`).join("; ")
      : body.detail || response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function setStatus(text, failed = false) {
  $("status").textContent = text;
  $("status").className = failed ? "failed" : "";
}

function clearError() { if ($("status").className === "failed") setStatus("idle"); }

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

async function loadModels() {
  try {
    const info = await api("/api/models");
    models = Object.fromEntries(info.models.map((m) => [m.name, m]));
    $("model").replaceChildren(...info.models.map((m) => option(m.name, `${m.name} (step ${m.step})`)));
    $("sampler").replaceChildren(...info.samplers.map((s) => option(s, s)));
    $("n").max = info.limits.max_n;
    $("steps").max = info.limits.max_steps;
    $("server-note").textContent = `${info.models.length} model(s); up to ${info.limits.max_n} samples, ` +
      `${info.limits.max_steps} steps a job`;
    modelChanged();
    clearError();
    await loadGallery();
  } catch (err) {
    setStatus(`cannot reach the API: ${err.message}`, true);
  }
}

function modelChanged() {
  const m = models[$("model").value];
  if (!m) return;
  const labels = [option("", m.classes ? `each sample a class (i mod ${m.classes})` : "none")];
  const names = m.class_names || [];  // "9 Ankle boot" where the server names the classes (not "3 3")
  for (let k = 0; k < m.classes; k++) {
    labels.push(option(String(k), names[k] && names[k] !== String(k) ? `${k} ${names[k]}` : String(k)));
  }
  $("label").replaceChildren(...labels);
  $("label-box").hidden = !m.classes || m.text;
  $("prompt-box").hidden = !m.text;
  if (m.text && !$("prompt").value && m.defaults.prompts.length) $("prompt").value = m.defaults.prompts[0];
  $("sampler").value = m.defaults.sampler;
  $("steps").value = m.defaults.steps;
  $("guidance").value = m.defaults.guidance;
  for (const name of ["sdedit", "inpaint"]) $(`mode-${name}`).disabled = !m.modes.includes(name);  // image models'
  if ($(`mode-${mode()}`).disabled) $("mode-sample").checked = true;
  for (const id of ["image-canvas", "mask-canvas"]) {
    $(id).width = m.shape[2] || 1;
    $(id).height = m.shape[1] || 1;
  }
  painted = false;
  drawPicture();
  hintChanged(m);
  modeChanged();
}

function hintChanged(m) {
  // a ControlNet's hint at the model's size, or a super-resolution model's low-resolution image
  $("hint-box").hidden = !m.hint;
  if (!m.hint) return;
  $("hint-what").textContent = m.hint === "lowres"
    ? `the ${m.hint_shape[2]}x${m.hint_shape[1]} image to enlarge`
    : `the ${m.hint} hint, ${m.hint_shape[2]}x${m.hint_shape[1]} (e.g. white edges on black)`;
  $("hint-noise-box").hidden = m.hint !== "lowres";
  $("hint-noise").value = m.defaults.hint_noise;
  $("hint-canvas").width = m.hint_shape[2];
  $("hint-canvas").height = m.hint_shape[1];
  drawHint();
}

function drawHint() {
  const canvas = $("hint-canvas");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "black";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (hintPicture) ctx.drawImage(hintPicture, 0, 0, canvas.width, canvas.height);
}

function mode() { return document.querySelector("input[name=mode]:checked").value; }

function modeChanged() {
  const m = mode();
  $("edit-box").hidden = m === "sample";
  $("inpaint-controls").hidden = m !== "inpaint";
  $("mask-canvas").hidden = m !== "inpaint";
  $("strength-box").hidden = m !== "sdedit";
  const defaults = models[$("model").value]?.defaults;
  if (m === "inpaint" && defaults && $("sampler").value === defaults.sampler && defaults.sampler !== "ddpm") {
    $("sampler").value = "ddpm";  // the server's inpainting default
    autoSampler = true;
  } else if (m !== "inpaint" && autoSampler) {
    if (defaults && $("sampler").value === "ddpm") $("sampler").value = defaults.sampler;
    autoSampler = false;
  }
}

function drawPicture() {
  const canvas = $("image-canvas");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (picture) ctx.drawImage(picture, 0, 0, canvas.width, canvas.height);
}

function readImage(file, done) {
  // an uploaded file as an Image, handed to done(image) once decoded
  const image = new Image();
  image.onload = () => {
    URL.revokeObjectURL(image.src);
    clearError();
    done(image);
  };
  image.onerror = () => {
    URL.revokeObjectURL(image.src);
    setStatus(`cannot read ${file.name} as an image`, true);
  };
  image.src = URL.createObjectURL(file);
}

function paint(event) {
  if (!(event.buttons & 1) || mode() !== "inpaint") {
    stroke = null;
    return;
  }
  const canvas = $("mask-canvas");
  const box = canvas.getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * canvas.width;
  const y = ((event.clientY - box.top) / box.height) * canvas.height;
  const r = (Number($("brush").value) * canvas.width) / 28;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = ctx.strokeStyle = "rgb(255, 0, 0)";
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.fill();
  if (stroke) {  // join this point to the last, however fast the pointer moved
    ctx.lineWidth = 2 * r;
    ctx.beginPath();
    ctx.moveTo(stroke.x, stroke.y);
    ctx.lineTo(x, y);
    ctx.stroke();
  }
  stroke = { x, y };
  painted = true;
}

function maskURL() {
  // the mask as the server reads it: white where pixels are generated, black where kept
  const source = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = source.width;
  out.height = source.height;
  const pixels = source.getContext("2d").getImageData(0, 0, source.width, source.height);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const v = pixels.data[i + 3] > 0 ? 255 : 0;
    pixels.data.set([v, v, v, 255], i);
  }
  out.getContext("2d").putImageData(pixels, 0, 0);
  return out.toDataURL("image/png");
}

function request() {
  const body = {
    model: $("model").value, mode: mode(), n: Number($("n").value), seed: Number($("seed").value),
    sampler: $("sampler").value, steps: Number($("steps").value), guidance: Number($("guidance").value),
  };
  const m = models[body.model];
  if ($("label").value !== "" && m.classes && !m.text) body.label = Number($("label").value);
  if (m.text) body.prompt = $("prompt").value;
  if (body.mode !== "sample") body.image = $("image-canvas").toDataURL("image/png");
  if (body.mode === "sdedit") body.strength = Number($("strength").value);
  if (m.hint) body.hint = $("hint-canvas").toDataURL("image/png");
  if (m.hint === "lowres") body.hint_noise = Number($("hint-noise").value);
  if (body.mode === "inpaint") {
    body.mask = maskURL();
    body.resample = Number($("resample").value);
    body.jump = Number($("jump").value);
  }
  return body;
}

async function submit(event) {
  event.preventDefault();
  if (mode() !== "sample" && !picture) return setStatus("choose an image to edit first", true);
  if (models[$("model").value]?.hint && !hintPicture) return setStatus("choose the hint image first", true);
  if (mode() === "inpaint" && !painted) return setStatus("paint the region to generate on the image first", true);
  try {
    const job = await api("/api/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request()),
    });
    watch(job.id, job.position);
  } catch (err) {
    setStatus(err.message, true);
  }
}

function watch(id, position) {
  // the page follows one job, the newest; one submitted before it shows up in the gallery when this ends
  if (current) current.source.close();
  const source = new EventSource(withToken(`/api/jobs/${id}/events`));
  current = { id, source, previews: 0 };
  $("result-extra").replaceChildren();
  $("preview").dataset.job = id;
  $("preview").dataset.previews = "0";
  $("progress").value = 0;
  $("cancel").disabled = false;
  setStatus(`queued (position ${position})`);
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "queued") setStatus(`queued (position ${event.position})`);
    if (event.type === "started") setStatus("running");
    if (event.type === "step") {
      $("progress").max = event.total;
      $("progress").value = event.step;
      setStatus(`step ${event.step} of ${event.total}`);
      if (event.preview) {
        $("preview").src = event.preview;
        current.previews += 1;
        $("preview").dataset.previews = String(current.previews);
      }
    }
    if (["done", "cancelled", "failed"].includes(event.type)) {
      source.close();
      finished(id, event);
    }
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED && current?.source === source) setStatus("lost the event stream", true);
  };
}

async function finished(id, event) {
  if (current?.id !== id) return;  // a job no longer watched
  $("cancel").disabled = true;
  if (event.type === "done") {
    $("preview").src = withToken(event.result);
    $("result-extra").replaceChildren(...besides(id, event.files));
    setStatus("done");
  } else {
    setStatus(event.type === "failed" ? `failed: ${event.error}` : "cancelled", event.type === "failed");
  }
  try {
    await loadGallery(false);  // this job's card, and those of jobs submitted before it (they ran first)
  } catch (err) {
    setStatus(`${$("status").textContent}; the gallery: ${err.message}`, true);
  }
}

function besides(id, files) {
  // what audio, video and molecule jobs write beside the picture: a sound to play, an animation, coordinates
  const shown = [];
  if (files.wav) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "metadata";
    audio.src = withToken(files.wav);
    shown.push(audio);
  }
  if (files.gif) {
    const img = document.createElement("img");
    img.src = withToken(files.gif);
    img.alt = `job ${id}, the videos playing`;
    shown.push(img);
  }
  if (files.xyz) {
    const link = document.createElement("a");
    link.href = withToken(files.xyz);
    link.download = `unnoise-${id}.xyz`;
    link.textContent = "atoms and coordinates (.xyz)";
    shown.push(link);
  }
  return shown;
}

function card(job) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.job = job.id;
  const link = document.createElement("a");
  link.href = withToken(job.result);
  const img = document.createElement("img");
  img.src = withToken(job.result);
  img.alt = `job ${job.id}`;
  link.append(img);
  const s = job.settings;
  const r = job.request;
  const what = r.prompt != null ? `prompt "${r.prompt}"` : r.label != null ? `class ${r.label}` : "";
  const pre = document.createElement("pre");
  pre.textContent = [`${r.model} · ${s.mode}${what ? " · " + what : ""}`,
    `${s.sampler}, ${s.steps} steps, guidance ${s.guidance}`, `seed ${s.seed}, n ${s.n}`,
    s.mode === "sdedit" ? `strength ${s.strength}` : s.mode === "inpaint" ? `r ${s.resample}, jump ${s.jump}` : "",
  ].filter(Boolean).join("\n");
  div.append(link, ...besides(job.id, job.files), pre);
  return div;
}

async function loadGallery(fresh = true) {
  const { jobs } = await api("/api/jobs?state=done");  // newest first
  if (fresh) return $("gallery").replaceChildren(...jobs.map(card));
  const shown = new Set([...$("gallery").children].map((c) => c.dataset.job));
  $("gallery").prepend(...jobs.filter((job) => !shown.has(job.id)).map(card));
}

async function cancel() {
  if (!current) return;
  try {
    await api(`/api/jobs/${current.id}/cancel`, { method: "POST" });
  } catch (err) {
    setStatus(err.message, true);
  }
}

$("job-form").addEventListener("submit", submit);
$("cancel").addEventListener("click", cancel);
$("model").addEventListener("change", modelChanged);
document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", modeChanged));
$("upload").addEventListener("change", (e) => e.target.files[0] && readImage(e.target.files[0], (image) => {
  picture = image;
  drawPicture();
}));
$("hint-upload").addEventListener("change", (e) => e.target.files[0] && readImage(e.target.files[0], (image) => {
  hintPicture = image;
  drawHint();
}));
$("mask-canvas").addEventListener("pointerdown", (e) => {
  stroke = null;
  e.currentTarget.setPointerCapture(e.pointerId);  // the stroke goes on when the pointer leaves the canvas
  paint(e);
});
$("mask-canvas").addEventListener("pointermove", paint);
$("mask-canvas").addEventListener("pointerup", () => { stroke = null; });
$("clear-mask").addEventListener("click", () => {
  const c = $("mask-canvas");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
  painted = false;
});
$("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
$("new-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); });
$("token-box").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("unnoise-token", $("token").value);
  loadModels();
});
loadModels();
