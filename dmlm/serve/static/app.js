// The dmlm serve page: plain JS over the /v1 routes (no framework, nothing from a CDN).
// It asks /health what the model can do and shows only those sections; every result shows
// how long the request took in the browser and how large the model batch it joined was.
"use strict";

const $ = (id) => document.getElementById(id);
let health = null;

function headers() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function call(path, body, json) {
  // POST to the API; returns [response, milliseconds]; a non-2xx answer throws its message
  const init = { method: "POST", headers: headers(), body };
  if (json) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const t0 = performance.now();
  const r = await fetch(path, init);
  const ms = performance.now() - t0;
  if (!r.ok) {
    let message = r.status + " " + r.statusText;
    try { message = (await r.json()).error.message || message; } catch (e) { /* not JSON */ }
    throw new Error(path + ": " + message);
  }
  return [r, ms];
}

function timing(id, ms, batch, extra) {
  const parts = [Math.round(ms) + " ms"];
  if (batch) parts.push("batch of " + batch);
  if (extra) parts.push(extra);
  $(id).textContent = "(" + parts.join(", ") + ")";
}

// -- speech in -----------------------------------------------------------------------------
async function runSpeech(blob, name) {
  showError("");
  $("input-name").textContent = name;
  $("input-name").hidden = false;
  const preview = $("input-audio");
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  const jobs = [];
  if (health.routes.transcribe) {
    $("transcript-box").hidden = false;
    $("transcript").textContent = "…";
    const form = new FormData();
    form.append("audio", blob, name);
    jobs.push(call("/v1/transcribe", form).then(async ([r, ms]) => {
      const out = await r.json();
      $("transcript").textContent = out.text;
      timing("transcript-time", ms, out.batch_size, out.duration.toFixed(2) + " s of audio");
    }));
  }
  if (health.routes.translate) {
    $("translation-box").hidden = false;
    $("translation").textContent = "…";
    const form = new FormData();
    form.append("audio", blob, name);
    form.append("to", $("to").value);
    jobs.push(call("/v1/translate", form).then(async ([r, ms]) => {
      const out = await r.json();
      $("translation").textContent = out.text;
      timing("translation-time", ms, out.batch_size, "→ " + out.to);
    }));
  }
  const results = await Promise.allSettled(jobs);
  const failed = results.filter((x) => x.status === "rejected").map((x) => x.reason.message);
  if (failed.length) showError(failed.join("\n"));
}

function wavBlob(chunks, rate) {
  // Float32 blocks -> a 16-bit PCM mono wav
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (at, s) => { for (let i = 0; i < s.length; i++) view.setUint8(at + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * n, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * n, true);
  let at = 44;
  for (const c of chunks) {
    for (let i = 0; i < c.length; i++, at += 2) {
      const s = Math.max(-1, Math.min(1, c[i]));
      view.setInt16(at, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
  }
  return new Blob([view], { type: "audio/wav" });
}

let recording = null;

async function toggleRecording(button, done) {
  // one recording at a time: a second Record button stops it, and the clip goes where it was started for
  if (recording) {
    const { stream, ctx, chunks } = recording;
    ({ button, done } = recording);
    recording = null;
    stream.getTracks().forEach((t) => t.stop());
    const rate = ctx.sampleRate;
    await ctx.close();
    button.textContent = "● Record";
    button.classList.remove("recording");
    if (!chunks.length) { showError("the microphone gave no audio"); return; }
    await done(wavBlob(chunks, rate), "recording.wav");
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const ctx = new AudioContext();
    await ctx.audioWorklet.addModule("/static/recorder-worklet.js");
    const node = new AudioWorkletNode(ctx, "dmlm-recorder");
    const chunks = [];
    node.port.onmessage = (e) => chunks.push(e.data);
    const mute = ctx.createGain();
    mute.gain.value = 0;  // the graph must reach the speakers to run; silently
    ctx.createMediaStreamSource(stream).connect(node).connect(mute).connect(ctx.destination);
    recording = { stream, ctx, chunks, button, done };
    button.textContent = "■ Stop";
    button.classList.add("recording");
  } catch (e) {
    showError("cannot record from the microphone: " + e.message);
  }
}

// -- speech to speech ----------------------------------------------------------------------
async function translateSpeech(blob, name) {
  showError("");
  $("s2st-name").textContent = name;
  $("s2st-name").hidden = false;
  $("s2st-input").src = URL.createObjectURL(blob);
  $("s2st-input").hidden = false;
  const form = new FormData();
  form.append("audio", blob, name);
  form.append("to", $("s2st-to").value);
  form.append("how", $("s2st-how").value);
  try {
    const [r, ms] = await call("/v1/translate-speech", form);
    const url = URL.createObjectURL(await r.blob());
    $("s2st-speech").src = url;
    $("s2st-download").href = url;
    $("s2st-box").hidden = false;
    timing("s2st-time", ms, r.headers.get("X-Dmlm-Batch-Size"), "→ " + r.headers.get("X-Dmlm-To") + " " +
      r.headers.get("X-Dmlm-How") + ", " + r.headers.get("X-Dmlm-Duration") + " s of speech");
  } catch (e) {
    showError(e.message);
  }
}

function showTargets() {
  // the languages the chosen way speaks into
  const to = $("s2st-to");
  to.replaceChildren(...health.speech_ways[$("s2st-how").value].map((lang) => new Option(lang, lang)));
}

// -- speech out ---------------------------------------------------------------------------
async function speak(event) {
  event.preventDefault();
  showError("");
  const text = $("speak-text").value;
  const button = $("speak-button");
  button.disabled = true;
  try {
    if (health.routes.speak) {
      const [r, ms] = await call("/v1/speak", { text }, true);
      const blob = await r.blob();
      const url = URL.createObjectURL(blob);
      $("speech").src = url;
      $("speech-download").href = url;
      $("speech-box").hidden = false;
      timing("speech-time", ms, r.headers.get("X-Dmlm-Batch-Size"), r.headers.get("X-Dmlm-Duration") + " s of speech");
    } else {
      const [r, ms] = await call("/v1/synthesize-units", { text }, true);
      const out = await r.json();
      $("units").textContent = out.units.join(" ");
      $("units-box").hidden = false;
      timing("units-time", ms, out.batch_size, out.units.length + " units; the model has no vocoder");
    }
  } catch (e) {
    showError(e.message);
  } finally {
    button.disabled = false;
  }
}

// -- image in ------------------------------------------------------------------------------
async function caption(file) {
  showError("");
  const img = $("image-preview");
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  img.title = file.name;
  $("caption-box").hidden = false;
  $("caption").textContent = "…";
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const [r, ms] = await call("/v1/caption", form);
    const out = await r.json();
    $("caption").textContent = out.text;
    timing("caption-time", ms, out.batch_size, out.width + "×" + out.height);
  } catch (e) {
    $("caption").textContent = "";
    showError(e.message);
  }
}

// -- start -----------------------------------------------------------------------------------
async function start() {
  try {
    health = await (await fetch("/health")).json();
  } catch (e) {
    showError("cannot reach the server: " + e.message);
    return;
  }
  const r = health.routes;
  $("model-line").textContent = health.model + " · tasks: " + health.tasks.join(", ") + " · dmlm " + health.version +
    (health.vocoder ? " · vocoder" : " · no vocoder");
  $("key-box").hidden = !health.auth;
  $("speech-in").hidden = !(r.transcribe || r.translate);
  $("speech-in-what").textContent = [r.transcribe && "transcribes", r.translate && "translates"].filter(Boolean).join(" and ");
  if (r.translate) {
    $("to-box").hidden = false;
    for (const lang of health.targets) $("to").append(new Option(lang, lang));
  }
  $("speech-to-speech").hidden = !r["translate-speech"];
  if (r["translate-speech"]) {
    for (const way of Object.keys(health.speech_ways)) $("s2st-how").append(new Option(way, way));
    showTargets();
  }
  $("speech-out").hidden = !r["synthesize-units"];
  $("image-in").hidden = !r.caption;
  $("nothing").hidden = Object.values(r).some(Boolean);
  $("record").addEventListener("click", () => toggleRecording($("record"), runSpeech));
  $("s2st-record").addEventListener("click", () => toggleRecording($("s2st-record"), translateSpeech));
  $("s2st-how").addEventListener("change", showTargets);
  $("s2st-file").addEventListener("change", (e) => {
    const f = e.target.files[0];
    e.target.value = "";
    if (f) translateSpeech(f, f.name);
  });
  // each input is cleared once read, so that choosing the same file again runs it again
  $("audio-file").addEventListener("change", (e) => {
    const f = e.target.files[0];
    e.target.value = "";
    if (f) runSpeech(f, f.name);
  });
  $("speak-form").addEventListener("submit", speak);
  $("image-file").addEventListener("change", (e) => {
    const f = e.target.files[0];
    e.target.value = "";
    if (f) caption(f);
  });
  document.body.dataset.ready = "1";
}

start();
