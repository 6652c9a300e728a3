// Calls to TorchServe's inference API, through the console's own server (same origin: scripts/console.py
// says why TorchServe's CORS settings cannot serve this page). Every answer, good or bad, comes back
// as a Reply; nothing here throws for an HTTP status.

// The headers the handlers set that tell how an input was read (docs/console.md lists them), each with
// what it means: one list, for reading them here and explaining them on the page.
export const INPUT_HEADERS = {
  "X-Text-Tokens": "tokens the model read / tokens in the text",
  "X-Text-Truncated": "whether the text was cut to the model's length",
  "X-Audio-Window": "how the clip was fitted to the model's window",
  "X-Audio-Window-Start": "seconds into the clip where the window starts",
  "X-Audio-Duration": "seconds in the clip as sent",
};

export class Reply {
  constructor(status, body, headers, milliseconds) {
    this.status = status;         // HTTP status; 0 when the console's server itself could not be reached
    this.body = body;             // parsed JSON when it was JSON, else the text
    this.headers = headers;       // Headers
    this.milliseconds = milliseconds;  // round trip seen by the page: send, wait, read the whole answer
  }

  get ok() { return this.status >= 200 && this.status < 300; }

  // TorchServe's and the handlers' errors are {"code", "type", "message"}; anything else is shown as it came.
  get error() {
    if (this.ok) return null;
    const body = this.body;
    if (body && typeof body === "object" && typeof body.message === "string") {
      return {status: this.status, type: body.type || "Error", message: body.message};
    }
    return {status: this.status, type: "Error", message: typeof body === "string" && body ? body : `HTTP ${this.status}`};
  }

  // TorchServe 0.12 answers a missing, wrong or expired key with 400 InvalidKeyException.
  get keyRefused() {
    return this.status === 400 && this.body && this.body.type === "InvalidKeyException";
  }

  inputHeaders() {
    return Object.keys(INPUT_HEADERS).filter((name) => this.headers.has(name)).map((name) => [name, this.headers.get(name)]);
  }
}

async function call(method, path, key, body, headers) {
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, {
      method, body, cache: "no-store",
      headers: {...(key ? {Authorization: `Bearer ${key}`} : {}), ...headers},
    });
  } catch (error) {
    return new Reply(0, {type: "ConsoleUnreachable", message: `the console's server did not answer (${error.message}): is make console still running?`},
      new Headers(), performance.now() - started);
  }
  const text = await response.text();
  const milliseconds = performance.now() - started;
  let parsed = text;
  if ((response.headers.get("Content-Type") || "").includes("json") || /^\s*[{[]/.test(text)) {
    try { parsed = JSON.parse(text); } catch { /* shown as text */ }
  }
  return new Reply(response.status, parsed, response.headers, milliseconds);
}

// /predictions/<name>/<version>: the version shown is the one that answers, whichever is the default.
function modelPath(route, model) {
  return `/${route}/${encodeURIComponent(model.name)}/${encodeURIComponent(model.version)}`;
}

// The input as the handler takes it: text as text/plain (UTF-8); an image or audio file as raw bytes, whatever
// the file's type says (the handler reads the content: a text file picked as an image is then "not an image",
// where text/plain would have TorchServe decode it as text first).
function encodeInput(input) {
  if (input.text !== undefined) return {body: input.text, headers: {"Content-Type": "text/plain; charset=utf-8"}};
  return {body: input.blob, headers: {"Content-Type": "application/octet-stream"}};
}

export function ping(key) {
  return call("GET", "/ping", key);
}

export function predict(key, model, input) {
  const {body, headers} = encodeInput(input);
  return call("POST", modelPath("predictions", model), key, body, headers);
}

// options: {target: label or "", method, noiseTunnel, visualize}: the handler reads them from X-Explain-* headers.
export function explain(key, model, input, options) {
  const {body, headers} = encodeInput(input);
  const explainHeaders = {"X-Explain-Method": options.method, "X-Explain-Noise-Tunnel": String(options.noiseTunnel)};
  if (options.target) explainHeaders["X-Explain-Target"] = options.target;
  if (options.visualize) explainHeaders["X-Explain-Visualize"] = "true";
  return call("POST", modelPath("explanations", model), key, body, {...headers, ...explainHeaders});
}

export async function loadModels() {
  const reply = await call("GET", "/models.json");
  if (!reply.ok) throw new Error(reply.error.message);
  return reply.body;
}
