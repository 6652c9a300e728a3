// The console page: pick a served model, give it an input, see its prediction, its explanation drawn,
// and its variants' answers side by side (docs/console.md).
import {INPUT_HEADERS, explain, loadModels, ping, predict} from "./api.js";
import {Recording} from "./recorder.js";
import {divergingBars, element, errorBox, highlightedText, imageHeatMap, milliseconds, percent, predictionBars,
  strongestTokens} from "./draw.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "torchserve-console-inference-key";
// Recordings stop by themselves: the handlers refuse clips over their max_seconds (30 s by default).
const MAX_RECORDING_SECONDS = 10;

const state = {
  key: "",
  models: [],          // every archive in the store (name, version, modality, runtime, labels, ...)
  model: null,         // the selected archive
  input: null,         // {blob, name, url} for a file or recording; text is read from the box when sent
  inputSerial: 0,      // bumped when the input or model changes: answers to an older one are dropped
  recording: null,
  explained: false,    // whether the shown explanation belongs to the current input (options re-run it)
};

// ---- the key -------------------------------------------------------------------------------------
// `make console` prints a URL with the key in its fragment (#key=...), which the browser never sends.
// It is kept in this tab's sessionStorage and taken out of the address bar, so a screenshot or a shared
// screen does not show it.
function takeKeyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key !== null) {
    sessionStorage.setItem(KEY_STORAGE, key);
    params.delete("key");
    history.replaceState(null, "", `${location.pathname}${params.toString() ? `#${params}` : ""}`);
  }
  return {key: key ?? sessionStorage.getItem(KEY_STORAGE) ?? "", model: params.get("model")};
}

function showBanner(message, {focusKey = false} = {}) {
  const banner = $("banner");
  banner.replaceChildren(...(Array.isArray(message) ? message : [message]));
  banner.hidden = false;
  if (focusKey) $("key-input").focus();
}

function hideBanner() {
  $("banner").hidden = true;
}

function keyRefused(reply) {
  showBanner([
    element("strong", {text: "TorchServe refused the inference key. "}),
    `It answered ${reply.status} ${reply.body.type}: “${reply.body.message}”. `,
    "Keys expire (token_expiration_min, 60 minutes in config.properties) and change at every restart: paste the current ",
    element("code", {text: "inference.key"}), " from ", element("code", {text: "key_file.json"}),
    " into the key field above, or run ", element("code", {text: "make console"}), " again for a fresh link.",
  ], {focusKey: true});
  setServerStatus("key refused", "bad");
}

function setServerStatus(text, tone) {
  const status = $("server-status");
  status.textContent = text;
  status.dataset.tone = tone;
}

async function checkServer() {
  if (!state.key) {
    showBanner([element("strong", {text: "No inference key. "}),
      "Open the link that ", element("code", {text: "make console"}), " prints (it carries the key), or paste ",
      element("code", {text: "inference.key"}), " from ", element("code", {text: "key_file.json"}), " into the key field."],
    {focusKey: true});
    setServerStatus("no key", "bad");
    return;
  }
  const reply = await ping(state.key);
  if (reply.ok) {
    hideBanner();
    setServerStatus(`TorchServe ${reply.body.status || "answers"}`, "good");
  } else if (reply.keyRefused) {
    keyRefused(reply);
  } else {
    showBanner([element("strong", {text: "TorchServe does not answer. "}), `${reply.error.status} ${reply.error.type}: ${reply.error.message}`]);
    setServerStatus("TorchServe unreachable", "bad");
  }
}

// Every answer goes through here: a refused key is the page's problem, not the model's.
function noteKey(reply) {
  if (reply.keyRefused) keyRefused(reply);
  else if (reply.status !== 0 && reply.status !== 502) setServerStatus("TorchServe answers", "good");
  return reply;
}

// ---- models --------------------------------------------------------------------------------------
function modelsNamed(name) {
  return state.models.filter((model) => model.name === name);
}

function defaultVersion(name) {
  const versions = modelsNamed(name);
  return versions.find((model) => model.default) || versions[0];
}

// The model an archive is a variant of (its model.json's source), or its own name for a base model.
function baseOf(model) {
  return model.variant_of || model.name;
}

// Names of a base model and its variants: the base first, then the variants by name.
function baseFirst(base) {
  return (a, b) => (a === base ? -1 : b === base ? 1 : a.localeCompare(b));
}

// A model and its variants (archives whose model.json names it as their source): the version picked
// of the model shown, the default version of the others.
function family(model) {
  const base = baseOf(model);
  const names = [...new Set(state.models.filter((m) => m.modality === model.modality && (m.name === base || m.variant_of === base))
    .map((m) => m.name))];
  names.sort(baseFirst(base));
  return names.map((name) => (name === model.name ? model : defaultVersion(name)));
}

function runtimeText(model) {
  return model.quantization ? `${model.runtime}, ${model.quantization} int8` : model.runtime;
}

// A long model name wraps after its underscores, not in the middle of a word.
function breakable(name) {
  return name.split(/(?<=_)/).flatMap((part, i) => (i ? [element("wbr"), part] : [part]));
}

function renderModelList() {
  const list = $("model-list");
  const names = [...new Set(state.models.map((model) => model.name))];
  const bases = [...new Set(names.map((name) => baseOf(defaultVersion(name))))].sort();
  const items = [];
  for (const base of bases) {
    const members = names.filter((name) => baseOf(defaultVersion(name)) === base).sort(baseFirst(base));
    for (const name of members) {
      const model = defaultVersion(name);
      const versions = modelsNamed(name).length;
      const usable = model.modality !== null;
      const button = element("button", {type: "button", className: "model", "data-model": name, disabled: !usable,
        title: usable ? null : "no model.json in this archive: the console cannot tell what input it takes"},
      element("span", {className: "model-name"}, ...breakable(name)),
      element("span", {className: "model-kind",
        text: usable ? `${model.modality} · ${runtimeText(model)}${versions > 1 ? ` · ${versions} versions` : ""}` : "unknown kind"}));
      items.push(element("li", {className: model.variant_of ? "variant" : "base"}, button));
    }
  }
  list.replaceChildren(...items);
}

function selectModel(name, version) {
  const model = version ? modelsNamed(name).find((m) => m.version === version) : defaultVersion(name);
  if (!model || model.modality === null) return;
  const modalityChanged = !state.model || state.model.modality !== model.modality;
  state.model = model;
  state.inputSerial++;
  state.explained = false;
  for (const button of document.querySelectorAll("#model-list .model")) {
    button.setAttribute("aria-current", button.dataset.model === name ? "true" : "false");
  }
  $("model-title").textContent = model.name;
  const labels = model.labels.length;
  $("model-facts").textContent = `${model.modality} · ${runtimeText(model)} · version ${model.version}` +
    `${model.default ? " (default)" : ""} · ${labels} labels` +
    (model.variant_of ? ` · a variant of ${model.variant_of}` : "");
  const versions = modelsNamed(name);
  $("version-row").hidden = versions.length < 2;
  $("version-select").replaceChildren(...versions.map((m) => element("option", {value: m.version, selected: m === model,
    text: `${m.version}${m.default ? " (default)" : ""}`})));
  if (modalityChanged) setInputArea(model.modality);
  $("target-select").replaceChildren(element("option", {value: "", text: "the predicted label"}),
    ...model.labels.map((label) => element("option", {value: label, text: label})));
  for (const node of document.querySelectorAll(".image-option")) node.hidden = model.modality !== "image";
  // The buttons' disabled states are updateReadiness's (below): they depend on the input too.
  $("compare-button").title = family(model).length < 2 ? `no variants of ${baseOf(model)} in the model store` : "";
  $("explain-options").disabled = !model.explainable;
  $("explain-note").textContent = model.explainable ? "" :
    `${model.runtime} graphs have no explanations (Captum differentiates the torch runtime only)` +
    (model.variant_of ? `: explain with ${model.variant_of}.` : ".");
  $("prediction-body").replaceChildren(element("p", {className: "note", text: inputPrompt(model.modality)}));
  $("explanation-body").replaceChildren();
  $("comparison-body").replaceChildren();
  updateReadiness();
  // Another model of the same modality (a variant, another version) answers the file already picked.
  if (!modalityChanged && state.input) runPredict();
  const params = new URLSearchParams(location.hash.slice(1));
  params.set("model", name);
  history.replaceState(null, "", `#${params}`);
}

function inputPrompt(modality) {
  return {image: "Drop, paste or choose an image: it is predicted at once.",
    text: "Type a text, then Predict (Ctrl+Enter).",
    audio: "Choose a sound file or record one: it is predicted at once."}[modality];
}

// ---- inputs --------------------------------------------------------------------------------------
function setInputArea(modality) {
  const usesFile = modality === "image" || modality === "audio";
  $("file-input-area").hidden = !usesFile;
  $("text-input-area").hidden = modality !== "text";
  $("record-row").hidden = modality !== "audio";
  $("file-input").accept = modality === "image" ? "image/*" : modality === "audio" ? "audio/*,.wav,.flac,.ogg" : "";
  $("drop-title").textContent = modality === "image" ? "Drop an image here, or choose one" : "Drop a sound file here, or choose one";
  $("drop-hint").textContent = modality === "image" ? "PNG, JPEG, WebP, GIF, BMP or TIFF; Ctrl+V pastes one" :
    "WAV, FLAC or OGG; or record from the microphone";
  setInput(null);
}

function setInput(input) {
  if (state.input && state.input.url) URL.revokeObjectURL(state.input.url);
  state.input = input;
  state.inputSerial++;
  state.explained = false;
  const preview = $("input-preview");
  if (!input) {
    preview.replaceChildren();
  } else if (state.model.modality === "image") {
    preview.replaceChildren(element("img", {src: input.url, alt: `the image sent: ${input.name}`}),
      element("p", {className: "note", text: `${input.name} · ${sizeText(input.blob.size)}`}));
  } else {
    preview.replaceChildren(element("audio", {src: input.url, controls: true}),
      element("p", {className: "note", text: `${input.name} · ${sizeText(input.blob.size)}`}));
  }
  updateReadiness();
}

function sizeText(bytes) {
  return bytes >= 1048576 ? `${(bytes / 1048576).toFixed(1)} MiB` : `${Math.max(1, Math.round(bytes / 1024))} KiB`;
}

async function takeFile(file) {
  if (!file || !state.model || !["image", "audio"].includes(state.model.modality)) return;
  // The bytes are read once, now: every request (predict, explain, each variant compared) sends these,
  // even if the file on disk changes or goes away meanwhile.
  let blob;
  try {
    blob = new Blob([await file.arrayBuffer()], {type: file.type});
  } catch (error) {
    $("prediction-body").replaceChildren(errorBox({status: 0, type: "UnreadableFile", message: `${file.name}: ${error.message}`}));
    return;
  }
  setInput({blob, name: file.name || `pasted.${(file.type.split("/")[1] || "bin")}`, url: URL.createObjectURL(blob)});
  runPredict();
}

// What is sent: the text box's text, or the file; null (with a note why) when there is nothing yet.
function currentInput() {
  if (!state.model) return null;
  if (state.model.modality === "text") {
    const text = $("text-box").value;
    return {text};
  }
  return state.input;
}

function updateReadiness() {
  const ready = Boolean(state.model && (state.model.modality === "text" || state.input));
  $("predict-button").disabled = !ready;
  $("explain-button").disabled = !ready || !state.model.explainable;
  $("compare-button").disabled = !ready || family(state.model).length < 2;
}

async function toggleRecording() {
  if (!state.model || state.model.modality !== "audio") return;
  const button = $("record-button");
  if (state.recording) {
    const recording = state.recording;
    state.recording = null;
    clearInterval(recording.ticker);
    button.textContent = "● Record";
    button.setAttribute("aria-pressed", "false");
    const seconds = recording.seconds;
    const blob = await recording.stop();
    $("record-status").textContent = `recorded ${seconds.toFixed(1)} s at ${recording.context.sampleRate} Hz`;
    takeFile(new File([blob], "recording.wav", {type: "audio/wav"}));
    return;
  }
  try {
    state.recording = await Recording.start();
  } catch (error) {
    $("record-status").textContent = `the microphone is not available: ${error.message}`;
    return;
  }
  button.textContent = "■ Stop";
  button.setAttribute("aria-pressed", "true");
  const recording = state.recording;
  recording.ticker = setInterval(() => {
    $("record-status").textContent = `recording… ${recording.seconds.toFixed(1)} s (stops at ${MAX_RECORDING_SECONDS} s)`;
    if (recording.seconds >= MAX_RECORDING_SECONDS && state.recording === recording) toggleRecording();
  }, 100);
}

// ---- prediction ----------------------------------------------------------------------------------
function inputHeaderList(reply) {
  const headers = reply.inputHeaders();
  if (!headers.length) return null;
  const list = element("dl", {className: "input-headers"});
  for (const [name, value] of headers) {
    list.append(element("dt", {text: name}), element("dd", {"data-header": name},
      element("span", {className: "header-value", text: value}), element("span", {className: "note", text: ` ${INPUT_HEADERS[name]}`})));
  }
  if (reply.headers.get("X-Text-Truncated") === "true") {
    list.append(element("dd", {className: "warning", text: "The text is longer than the model reads: only its first tokens count."}));
  }
  return list;
}

// A panel's answer is shown only if it is still the one wanted: the input, the model and the panel's
// latest request unchanged since it was sent (a target picked twice quickly, a new file meanwhile).
const latestRequest = {};

function panelBusy(id, text) {
  $(`${id}-body`).replaceChildren(element("p", {className: "note busy", text}));
  $(id).setAttribute("aria-busy", "true");
  const ticket = {input: state.inputSerial, request: (latestRequest[id] = (latestRequest[id] || 0) + 1)};
  return () => ticket.input === state.inputSerial && ticket.request === latestRequest[id];
}

function panelDone(id, ...children) {
  $(`${id}-body`).replaceChildren(...children.filter((child) => child !== null));
  $(id).setAttribute("aria-busy", "false");
}

async function runPredict() {
  const input = currentInput();
  if (!input || $("predict-button").disabled) return;
  const model = state.model;
  const stillWanted = panelBusy("prediction", `asking ${model.name}…`);
  const reply = noteKey(await predict(state.key, model, input));
  if (!stillWanted()) return;
  if (!reply.ok) {
    panelDone("prediction", errorBox(reply.error), element("p", {className: "meta", text: `${model.name} ${model.version} · ${milliseconds(reply.milliseconds)}`}));
    return;
  }
  panelDone("prediction",
    element("p", {className: "meta"}, element("strong", {className: "top-label", text: Object.keys(reply.body)[0]}),
      ` · ${model.name} ${model.version} · `, element("span", {className: "latency", text: milliseconds(reply.milliseconds)}),
      " round trip"),
    predictionBars(reply.body), inputHeaderList(reply));
}

// ---- explanation ---------------------------------------------------------------------------------
function explanationOptions() {
  return {target: $("target-select").value, method: $("method-select").value, noiseTunnel: $("smoothgrad-check").checked,
    // The audio handler draws the log-mel spectrogram with the attributions over it (spectrogram_png):
    // the page has the per-frame and per-band sums only, not the spectrogram.
    visualize: state.model.modality === "audio"};
}

async function runExplain() {
  const input = currentInput();
  if (!input || $("explain-button").disabled) return;
  const model = state.model;
  const options = explanationOptions();
  const stillWanted = panelBusy("explanation", `explaining with ${options.method}${options.noiseTunnel ? " and SmoothGrad" : ""}…`);
  const reply = noteKey(await explain(state.key, model, input, options));
  if (!stillWanted()) return;
  if (!reply.ok) {
    panelDone("explanation", errorBox(reply.error));
    return;
  }
  state.explained = true;
  const explanation = reply.body;
  const meta = element("p", {className: "meta"},
    "why ", element("strong", {className: "explained-target", text: explanation.target}),
    ` (p ${percent(explanation.probability)}) · ${explanation.method}${explanation.noise_tunnel ? " + SmoothGrad" : ""} · `,
    "convergence delta ", element("span", {className: "convergence-delta",
      text: explanation.convergence_delta === null ? "n/a" : String(Number(explanation.convergence_delta.toPrecision(3)))}),
    " · ", element("span", {className: "explain-time", text: milliseconds(reply.milliseconds)}));
  const view = element("div", {className: "explanation-view", "data-modality": model.modality});
  panelDone("explanation", meta, view, inputHeaderList(reply));
  if (model.modality === "image") await drawImageExplanation(view, explanation, input, model);
  else if (model.modality === "text") drawTextExplanation(view, explanation, input);
  else if (model.modality === "audio") drawAudioExplanation(view, explanation, reply);
}

async function drawImageExplanation(view, explanation, input, model) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(input.blob);
  } catch {
    // A format the browser cannot decode (TIFF) but PIL could: the grid alone, on a blank square.
    const blank = element("canvas", {width: model.preprocess.crop, height: model.preprocess.crop});
    bitmap = await createImageBitmap(blank);
  }
  const heat = element("div", {className: "heat-map-box"});
  view.append(heat, attributionLegend(explanation.target, "", " against; ",
    `${explanation.grid.rows}×${explanation.grid.columns} cells over the ${explanation.grid.input_size.join("×")} input the model saw`));
  const redraw = () => imageHeatMap(heat, bitmap, explanation, model.preprocess, Number($("opacity-range").value));
  redraw();
  $("opacity-range").oninput = redraw;
}

function drawTextExplanation(view, explanation, input) {
  const text = explanation.offsets_in === "normalized_text" ? explanation.normalized_text : input.text;
  view.append(highlightedText(text, explanation.tokens),
    attributionLegend(explanation.target, "", " against; hover or focus a token for its attribution",
      explanation.offsets_in === "normalized_text" ? " (shown in the text as the tokenizer normalised it)" : ""),
    strongestTokens(text, explanation.tokens));
}

// "<for> evidence for <target> <against> against..." under an explanation: `swatches` "" for the page's
// green and red, "audio-" for the spectrogram's red and blue.
function attributionLegend(target, swatches, ...after) {
  return element("p", {className: "legend"}, element("span", {className: `swatch ${swatches}for`}), ` evidence for ${target} `,
    element("span", {className: `swatch ${swatches}against`}), ...after);
}

// The handler's spectrogram PNG colours attributions red (for) and blue (against): the bars here follow it.
const SPECTROGRAM_COLOURS = {forColour: "#d62728", againstColour: "#1f5fbf"};

function drawAudioExplanation(view, explanation, reply) {
  const start = Number(reply.headers.get("X-Audio-Window-Start") || 0);
  const frames = explanation.frames;
  const seconds = frames.length * explanation.frame_hop_seconds;
  if (explanation.spectrogram_png) {
    view.append(element("img", {className: "spectrogram", src: `data:image/png;base64,${explanation.spectrogram_png}`,
      alt: `log-mel spectrogram of the window with attributions for ${explanation.target}: red for, blue against`}));
  }
  const strongest = frames.reduce((best, value, i) => (value > frames[best] ? i : best), 0);
  view.append(element("div", {className: "audio-charts"},
    divergingBars(frames, {horizontal: true, width: 520, height: 120, ...SPECTROGRAM_COLOURS,
      label: `attribution per time frame; most for ${explanation.target} at ${(start + strongest * explanation.frame_hop_seconds).toFixed(2)} s`,
      axis: `per frame: ${frames.length} frames of ${milliseconds(explanation.frame_hop_seconds * 1000)}, ` +
        `${start.toFixed(2)}–${(start + seconds).toFixed(2)} s of the clip`}),
    divergingBars(explanation.mel_bands, {horizontal: false, width: 120, height: 200, ...SPECTROGRAM_COLOURS,
      label: `attribution per mel band, ${explanation.mel_bands.length} bands`,
      axis: `per mel band: ${explanation.mel_bands.length}, low at the bottom`})),
  attributionLegend(explanation.target, "audio-", " against (the spectrogram's colours)"));
}

// ---- compare -------------------------------------------------------------------------------------
function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

async function runCompare() {
  const input = currentInput();
  if (!input || $("compare-button").disabled) return;
  const variants = family(state.model);
  const rounds = Math.max(1, Math.min(20, Number($("rounds-input").value) || 1));
  const stillWanted = panelBusy("comparison", `asking ${variants.map((m) => m.name).join(", ")}, ${rounds} round${rounds > 1 ? "s" : ""} each…`);
  const results = [];
  // One request at a time: run together, the models would share the CPU and each latency would carry the others'.
  for (const model of variants) {
    const replies = [];
    for (let round = 0; round < rounds; round++) replies.push(noteKey(await predict(state.key, model, input)));
    if (!stillWanted()) return;
    results.push({model, replies});
  }
  const cards = results.map(({model, replies}) => {
    const answered = replies.find((reply) => reply.ok);
    const failed = replies.find((reply) => !reply.ok);
    const times = replies.map((reply) => reply.milliseconds);
    return element("article", {className: "variant-card", "data-model": model.name,
      "data-top-label": answered ? Object.keys(answered.body)[0] : ""},
    element("h3", {text: model.name}),
    element("p", {className: "note", text: `${runtimeText(model)} · version ${model.version}`}),
    answered ? predictionBars(answered.body) : null,
    failed ? errorBox(failed.error) : null,
    element("p", {className: "meta"}, "latency ", element("strong", {className: "latency", text: milliseconds(median(times))}),
      ` median of ${times.length} (min ${milliseconds(Math.min(...times))})`));
  });
  const tops = results.map(({replies}) => replies.find((reply) => reply.ok)).map((reply) => (reply ? Object.keys(reply.body)[0] : null));
  const agree = tops.every((top) => top !== null && top === tops[0]);
  panelDone("comparison",
    element("p", {className: "meta", text: agree ? `All ${results.length} answer ${tops[0]}.` :
      `They differ: ${results.map(({model}, i) => `${model.name}: ${tops[i] ?? "error"}`).join(", ")}.`}),
    element("div", {className: "compare-grid"}, ...cards),
    element("p", {className: "note", text: "Latency: the page's round trip through the console, requests one after another."}));
}

// ---- wiring --------------------------------------------------------------------------------------
function typingIn(target) {
  return target instanceof HTMLElement && (target.matches("input, textarea, select") || target.isContentEditable);
}

function wire() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key-input").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.key);
    $("key-input").value = "";
    checkServer();
  });
  $("model-list").addEventListener("click", (event) => {
    const button = event.target.closest("button.model");
    if (button) selectModel(button.dataset.model);
  });
  $("model-list").addEventListener("keydown", (event) => {
    if (!["ArrowDown", "ArrowUp"].includes(event.key)) return;
    const buttons = [...document.querySelectorAll("#model-list .model:not(:disabled)")];
    const index = buttons.indexOf(document.activeElement);
    const next = buttons[(index + (event.key === "ArrowDown" ? 1 : -1) + buttons.length) % buttons.length];
    if (next) { next.focus(); event.preventDefault(); }
  });
  $("version-select").addEventListener("change", (event) => selectModel(state.model.name, event.target.value));
  $("drop-zone").addEventListener("click", () => $("file-input").click());
  $("drop-zone").addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file-input").click(); }
  });
  $("file-input").addEventListener("change", (event) => { takeFile(event.target.files[0]); event.target.value = ""; });
  for (const name of ["dragenter", "dragover"]) {
    $("drop-zone").addEventListener(name, (event) => { event.preventDefault(); $("drop-zone").classList.add("dragging"); });
  }
  $("drop-zone").addEventListener("dragleave", () => $("drop-zone").classList.remove("dragging"));
  $("drop-zone").addEventListener("drop", (event) => {
    event.preventDefault();
    $("drop-zone").classList.remove("dragging");
    takeFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file && state.model?.modality === "image") { event.preventDefault(); takeFile(file); }
  });
  $("record-button").addEventListener("click", toggleRecording);
  $("predict-button").addEventListener("click", runPredict);
  $("explain-button").addEventListener("click", runExplain);
  $("compare-button").addEventListener("click", runCompare);
  $("text-box").addEventListener("input", () => { state.inputSerial++; state.explained = false; });
  // A new target, method or SmoothGrad redraws the explanation shown, for the same input.
  for (const id of ["target-select", "method-select", "smoothgrad-check"]) {
    $(id).addEventListener("change", () => { if (state.explained) runExplain(); });
  }
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); runPredict(); return; }
    if (event.ctrlKey || event.metaKey || event.altKey || typingIn(event.target)) return;
    const action = {p: runPredict, e: runExplain, c: runCompare, r: toggleRecording,
      o: () => { if (!$("file-input-area").hidden) $("file-input").click(); },
      m: () => (document.querySelector("#model-list .model[aria-current=true]") || document.querySelector("#model-list .model:not(:disabled)"))?.focus(),
    }[event.key];
    if (action) { event.preventDefault(); action(); }
  });
}

async function start() {
  wire();
  const {key, model} = takeKeyFromFragment();
  state.key = key;
  try {
    const listed = await loadModels();
    state.models = listed.models;
    if (listed.problems.length) {
      $("store-problems").hidden = false;
      $("store-problems").textContent = `Skipped: ${listed.problems.join("; ")}`;
    }
  } catch (error) {
    showBanner(`The model list could not be read: ${error.message}`);
  }
  renderModelList();
  const first = state.models.find((m) => m.name === model && m.modality !== null) || state.models.find((m) => m.modality !== null);
  if (first) selectModel(first.name);
  await checkServer();
}

start();
