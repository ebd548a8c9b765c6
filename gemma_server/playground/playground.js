// The playground: talks to this server's own public APIs (OpenAI or Workers AI), streams the
// answer as Server-Sent Events, and shows the same request as curl and OpenAI Python code.
// No framework, no build step, nothing fetched from elsewhere: it must work offline.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "gemma-server-api-key"; // session storage: gone when the tab closes
const PARAMS = ["temperature", "top_p", "top_k", "max_tokens", "seed",
                "repetition_penalty", "frequency_penalty", "presence_penalty"];
const INTEGER_PARAMS = new Set(["top_k", "max_tokens", "seed"]);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  models: [],            // /v1/models cards
  history: [],           // [{role, content}] of the conversation so far
  controller: null,      // AbortController of the answer being streamed
};

// --- the request the current settings describe ---------------------------------------------

function params() {
  const out = {};
  for (const name of PARAMS) {
    const text = $(name).value.trim();
    if (text === "") continue;
    const value = Number(text);
    // sent as typed: the server's validation answers for out-of-range values
    out[name] = Number.isFinite(value) ? value : text;
    if (INTEGER_PARAMS.has(name) && Number.isInteger(value)) out[name] = value;
  }
  return out;
}

function messages(input) {
  const list = [];
  const system = $("system").value.trim();
  if (system) list.push({role: "system", content: system});
  list.push(...state.history);
  if (input) list.push({role: "user", content: input});
  return list;
}

function selectedModel() {
  const id = $("model").value;
  const card = state.models.find((m) => m.id === id);
  return {id, parent: card ? card.parent : null};
}

// {path, body} of the request, streamed or not, for the current settings and `input`.
function buildRequest(input, stream) {
  const raw = $("raw").checked;
  const model = selectedModel();
  const p = params();
  if ($("route").value === "workers-ai") {
    // Workers AI names the base model in the path and an adapter in `lora`.
    const path = `/ai/run/${model.parent || model.id}`;
    const body = raw ? {prompt: input, raw: true} : {messages: messages(input)};
    if (model.parent) body.lora = model.id;
    Object.assign(body, p);
    if (stream) body.stream = true;
    return {path, body};
  }
  const path = raw ? "/v1/completions" : "/v1/chat/completions";
  const body = raw ? {model: model.id, prompt: input} : {model: model.id, messages: messages(input)};
  Object.assign(body, p);
  if (stream) Object.assign(body, {stream: true, stream_options: {include_usage: true}});
  return {path, body};
}

// --- code snippets ---------------------------------------------------------------------------

function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

function curlSnippet() {
  const {path, body} = buildRequest($("input").value, true);
  const lines = [`curl -N ${location.origin}${path}`, "  -H 'Content-Type: application/json'"];
  if (state.key) lines.push("  -H \"Authorization: Bearer $GEMMA_SERVER_API_KEY\"");
  lines.push(`  -d ${shellQuote(JSON.stringify(body, null, 1).replace(/\n\s*/g, " "))}`);
  return lines.join(" \\\n");
}

function pyValue(value) {
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) return "[" + value.map(pyValue).join(", ") + "]";
  if (typeof value === "object") {
    return "{" + Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pyValue(v)}`)
      .join(", ") + "}";
  }
  return JSON.stringify(value);
}

function pythonSnippet() {
  const input = $("input").value;
  const raw = $("raw").checked;
  const p = params();
  const standard = ["temperature", "top_p", "max_tokens", "seed", "frequency_penalty",
                    "presence_penalty"];
  const args = [`    model=${pyValue(selectedModel().id)},`];
  if (raw) args.push(`    prompt=${pyValue(input)},`);
  else args.push(`    messages=${pyValue(messages(input))},`);
  for (const name of standard) if (name in p) args.push(`    ${name}=${pyValue(p[name])},`);
  const extra = {};
  for (const name of ["top_k", "repetition_penalty"]) if (name in p) extra[name] = p[name];
  if (Object.keys(extra).length) args.push(`    extra_body=${pyValue(extra)},`);
  args.push("    stream=True,");
  const call = raw ? "client.completions.create" : "client.chat.completions.create";
  const piece = raw ? "chunk.choices[0].text" : "chunk.choices[0].delta.content";
  return [
    "import os",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${pyValue(location.origin + "/v1")},`,
    `                api_key=${state.key ? 'os.environ["GEMMA_SERVER_API_KEY"]' : '"unused"'})`,
    `for chunk in ${call}(`,
    ...args,
    "):",
    "    if chunk.choices:",
    `        print(${piece} or "", end="", flush=True)`,
  ].join("\n");
}

function refreshSnippets() {
  $("curl").textContent = curlSnippet();
  $("python").textContent = pythonSnippet();
}

// --- API calls -------------------------------------------------------------------------------

function headers() {
  const h = {"Content-Type": "application/json"};
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  return h;
}

// The API's own wording of an error body, in either API's shape.
function apiMessage(body, fallback) {
  if (body && body.error && body.error.message) return body.error.message;
  if (body && Array.isArray(body.errors) && body.errors.length) return body.errors[0].message;
  if (body && typeof body.detail === "string") return body.detail;
  return fallback;
}

async function errorOf(response) {
  const text = await response.text();
  try {
    return apiMessage(JSON.parse(text), text || `HTTP ${response.status}`);
  } catch {
    return text || `HTTP ${response.status}`;
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadModels() {
  const response = await fetch("/v1/models", {headers: headers()});
  if (response.status === 401) {
    $("key-panel").hidden = false;
    $("status").textContent = "This server needs an API key.";
    if (state.key) showError(await errorOf(response));
    $("api-key").focus();
    return;
  }
  if (!response.ok) {
    showError(await errorOf(response));
    return;
  }
  $("key-panel").hidden = true;
  showError("");
  state.models = (await response.json()).data;
  const select = $("model");
  select.replaceChildren(...state.models.map((card) => {
    const option = document.createElement("option");
    option.value = card.id;
    option.textContent = card.parent ? `${card.id} (LoRA on ${card.parent})` : card.id;
    return option;
  }));
  $("status").textContent = `${state.models.length} model(s) and adapter(s) served.`;
  refreshSnippets();
}

// --- the conversation ------------------------------------------------------------------------

function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = `message ${role}`;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(label, body);
  $("conversation").append(item);
  return item;
}

// Reads Server-Sent Events from a fetch response; calls onData(json) for each data event.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;  // a keep-alive comment
      if (data === "[DONE]") return;
      onData(JSON.parse(data));
    }
  }
}

// The text piece, the usage and the error of one streamed event, in either API's shape.
function piece(event) {
  const choice = event.choices && event.choices[0];
  const text = choice ? (choice.delta ? choice.delta.content : choice.text) : event.response;
  const error = event.error ? (event.error.message || String(event.error)) : null;
  return {text: text || "", usage: event.usage || null, error};
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function send() {
  const input = $("input").value;
  if (!input.trim() || state.controller) return;
  showError("");
  const raw = $("raw").checked;
  const {path, body} = buildRequest(input, true);
  const started = performance.now();
  let first = null;
  let chunks = 0;
  let usage = null;
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  $("stats").textContent = "";
  const user = addMessage("user", input);
  const answer = addMessage("assistant", "");
  const text = answer.querySelector(".text");
  let failed = false;
  try {
    const response = await fetch(path, {method: "POST", headers: headers(),
                                        body: JSON.stringify(body), signal: controller.signal});
    if (!response.ok) {
      failed = true;
      showError(await errorOf(response));
      return;
    }
    $("input").value = "";
    await readEvents(response, (event) => {
      const part = piece(event);
      if (part.error) {
        failed = true;
        showError(part.error);
      }
      if (part.usage) usage = part.usage;
      if (part.text) {
        if (first === null) first = performance.now();
        chunks += 1;
        text.textContent += part.text;
      }
    });
  } catch (error) {
    if (error.name === "AbortError") answer.classList.add("stopped");
    else {
      failed = true;
      showError(`The request failed: ${error.message}`);
    }
  } finally {
    state.controller = null;
    setBusy(false);
    if (failed && !text.textContent) {
      user.remove();
      answer.remove();
    } else if (!raw) {
      state.history.push({role: "user", content: input},
                         {role: "assistant", content: text.textContent});
    }
    showStats(started, first, usage ? usage.completion_tokens : chunks, !usage);
    refreshSnippets();
  }
}

function showStats(started, first, tokens, estimated) {
  if (first === null) return;
  const end = performance.now();
  const ttft = first - started;
  const seconds = (end - first) / 1000;
  const rate = tokens > 1 && seconds > 0 ? ((tokens - 1) / seconds).toFixed(1) : "–";
  $("stats").textContent = `TTFT ${Math.round(ttft)} ms · ${tokens}${estimated ? "~" : ""} ` +
    `tokens · ${rate} tok/s`;
}

// --- wiring ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", () => {
    state.history = [];
    $("conversation").replaceChildren();
    $("stats").textContent = "";
    showError("");
    refreshSnippets();
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.key);
    loadModels();
  });
  for (const id of ["system", "input", "model", "route", "raw", ...PARAMS]) {
    $(id).addEventListener("input", refreshSnippets);
    $(id).addEventListener("change", refreshSnippets);
  }
  for (const kind of ["curl", "python"]) {
    $(`copy-${kind}`).addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText($(kind).textContent);
        $("status").textContent = `${kind === "curl" ? "curl" : "Python"} snippet copied.`;
      } catch {
        $("status").textContent = "Copying needs clipboard access; select the text instead.";
      }
    });
  }
  refreshSnippets();
  loadModels();
});
