// tunehouse dashboard: hash routes over the server's own OpenAI-compatible /v1 API.
import { lineChart } from "./chart.js";
import { evalPage, evalsPage } from "./evals.js";
import { projectsPage } from "./projects.js";

const KEY = "tunehouse.apiKey";
const KEYS = "tunehouse.projectKeys";  // {project name: its key}, for switching between projects
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const EVAL_GRACE_POLLS = 150;  // a succeeded job's page waits up to 5 min for its eval's summary event
const view = document.getElementById("view");
let stopCurrent = () => {};  // each page clears its own timers when the route changes

// ---- API ---------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra = {}) {
  const key = localStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(`/v1${path}`, { ...options, headers: headers(options.headers) });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error.message; } catch { /* not JSON */ }
    if (response.status === 401) askForKey(message);
    throw new ApiError(response.status, message);
  }
  return response;
}
const getJson = async (path) => (await api(path)).json();

function askForKey(reason) {
  const dialog = document.getElementById("key-dialog");
  document.getElementById("key-reason").textContent = reason || "This server requires an API key.";
  if (!dialog.open) dialog.showModal();
}

document.getElementById("key-form").addEventListener("submit", () => {
  useKey(document.getElementById("key-input").value.trim(), document.getElementById("key-project").value.trim());
});

// One key per project: the page reads with the chosen one; each project sees only its own objects.
function projectKeys() {
  try { return JSON.parse(localStorage.getItem(KEYS) || "{}"); } catch { return {}; }
}
function useKey(key, project) {
  localStorage.setItem(KEY, key);
  if (project) localStorage.setItem(KEYS, JSON.stringify({ ...projectKeys(), [project]: key }));
  drawProjectSelect();
  route();
}
function drawProjectSelect() {
  const select = document.getElementById("project-select");
  const keys = projectKeys();
  const current = localStorage.getItem(KEY);
  select.replaceChildren(...Object.entries(keys).map(([name, key]) => h("option", { value: name, selected: key === current }, name)));
  if (!Object.values(keys).includes(current)) select.prepend(h("option", { value: "", selected: true }, "(key without a project)"));
  select.hidden = Object.keys(keys).length === 0;
}
document.getElementById("project-select").addEventListener("change", (event) => {
  const key = projectKeys()[event.target.value];
  if (key) useKey(key, event.target.value);
});
document.getElementById("key-button").addEventListener("click", () => askForKey("Change the API key used by this page."));

function showError(error) {
  if (error instanceof ApiError && error.status === 401) return;
  const box = document.getElementById("error");
  box.textContent = error.message || String(error);
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

// ---- helpers -----------------------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
const status = (s) => h("span", { class: `status ${s}` }, s);
const bytes = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} kB` : `${n} B`);
const duration = (s) => `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
function table(columns, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), h("tbody", {}, rows));
}
function every(ms, fn) {
  let stopped = false, timer;
  const tick = async () => {
    try { await fn(); } catch (e) { showError(e); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}
// `ft:{base}:{org}:{suffix}:{id}[:ckpt-step-N]` -> base
export function baseOf(model) {
  if (!model.startsWith("ft:")) return null;
  const parts = model.slice(3).split(":");
  const tail = parts[parts.length - 1].startsWith("ckpt-step-") ? 4 : 3;
  return parts.slice(0, parts.length - tail).join(":") || null;
}

const ui = { view, h, table, every, getJson, status, when, showError, useKey };  // what evals.js and projects.js draw with

// ---- jobs list ---------------------------------------------------------------------------------
function jobsPage() {
  const body = h("div", { class: "panel" }, h("p", { class: "muted" }, "Loading…"));
  view.replaceChildren(h("h1", {}, "Fine-tuning jobs"), body);
  return every(3000, async () => {
    const { data } = await getJson("/fine_tuning/jobs?limit=100");
    body.replaceChildren(data.length ? table(
      ["Job", "Status", "Model", "Fine-tuned model", "Created", "Finished"],
      data.map((j) => h("tr", { "data-job": j.id },
        h("td", { class: "mono" }, h("a", { href: `#/jobs/${j.id}` }, j.id)),
        h("td", {}, status(j.status)),
        h("td", { class: "mono" }, j.model),
        h("td", { class: "mono" }, j.fine_tuned_model || "–"),
        h("td", {}, when(j.created_at)),
        h("td", {}, when(j.finished_at)))),
    ) : h("p", { class: "muted" }, "No jobs yet. Create one with the SDK or `tunehouse jobs create`."));
  });
}

// ---- job page ----------------------------------------------------------------------------------
async function loadAllEvents(jobId) {
  // Newest first; `after` pages toward older events. Up to 10,000 per request.
  const events = [];
  let after = null;
  for (;;) {
    const page = await getJson(`/fine_tuning/jobs/${jobId}/events?limit=10000${after ? `&after=${after}` : ""}`);
    events.push(...page.data);
    if (!page.has_more || !page.data.length) return events.reverse();
    after = page.data[page.data.length - 1].id;
  }
}

async function loadNewEvents(jobId, lastSeen) {
  const fresh = [];
  let after = null;
  for (;;) {
    const page = await getJson(`/fine_tuning/jobs/${jobId}/events?limit=1000${after ? `&after=${after}` : ""}`);
    for (const e of page.data) {
      if (e.id === lastSeen) return fresh.reverse();
      fresh.push(e);
    }
    if (!page.has_more || !page.data.length) return fresh.reverse();
    after = page.data[page.data.length - 1].id;
  }
}

function jobPage(jobId) {
  const state = { events: [], metrics: new Map(), lastSeen: null, job: null, checkpointsAt: -1 };
  const header = h("div", { class: "panel", id: "job-header" });
  const lossChart = h("div", { class: "chart", id: "loss-chart" });
  const accChart = h("div", { class: "chart", id: "accuracy-chart" });
  const details = h("div", { class: "panel", id: "job-details" });
  const checkpoints = h("div", { class: "panel", id: "job-checkpoints" }, h("h2", {}, "Checkpoints"));
  const events = h("div", { class: "panel events", id: "job-events" }, h("h2", {}, "Events"));
  const notices = h("div", { class: "panel", id: "job-deliveries" }, h("h2", {}, "Notifications"),
    h("p", { class: "muted" }, "Webhooks and emails go out when the job ends."));
  view.replaceChildren(
    h("h1", {}, jobId), header,
    h("div", { class: "grid" },
      h("div", { class: "panel" }, h("h2", {}, "Loss"), lossChart),
      h("div", { class: "panel" }, h("h2", {}, "Token accuracy"), accChart)),
    h("div", { class: "grid" }, details, checkpoints), notices, events);

  const series = (key, name, color, dots) => ({
    name, color, dots,
    points: [...state.metrics.values()].filter((d) => typeof d[key] === "number").map((d) => [d.step, d[key]]),
  });
  function drawCharts() {
    lineChart(lossChart, [
      series("train_loss", "train", "var(--train)"),
      series("valid_loss", "validation", "var(--valid)", true),
      series("full_valid_loss", "full validation", "var(--full)", true),
    ], { title: "loss" });
    lineChart(accChart, [
      series("train_mean_token_accuracy", "train", "var(--train)"),
      series("valid_mean_token_accuracy", "validation", "var(--valid)", true),
      series("full_valid_mean_token_accuracy", "full validation", "var(--full)", true),
    ], { title: "accuracy" });
  }
  function drawEvents() {
    const shown = state.events.filter((e) => e.type !== "metrics").slice(-300).reverse();
    const lastMetric = state.events.findLast((e) => e.type === "metrics");
    if (lastMetric) shown.unshift(lastMetric);
    events.replaceChildren(h("h2", {}, `Events (${state.events.length})`), table(["Time", "Level", "Message"],
      shown.map((e) => h("tr", { class: e.level }, h("td", {}, when(e.created_at)), h("td", {}, e.level), h("td", {}, e.message)))));
  }
  function drawHeader() {
    const job = state.job;
    const last = [...state.metrics.values()].reduce((a, d) => (!a || d.step > a.step ? d : a), null);
    const nEpochs = Number.isInteger(job.hyperparameters?.n_epochs) ? job.hyperparameters.n_epochs : null;
    const parts = [];
    if (last) {
      parts.push(`step ${last.step}/${last.total_steps}`);
      if (nEpochs) parts.push(`epoch ${Math.max(1, Math.ceil(last.step / (last.total_steps / nEpochs)))}/${nEpochs}`);
      parts.push(`loss ${last.train_loss.toFixed(4)}`);
      if (typeof last.valid_loss === "number") parts.push(`valid ${last.valid_loss.toFixed(4)}`);
    }
    if (job.status === "running" && job.estimated_finish) parts.push(`ETA ${duration(Math.max(0, job.estimated_finish - Math.floor(Date.now() / 1000)))}`);
    const pct = last ? (100 * last.step) / last.total_steps : job.status === "succeeded" ? 100 : 0;
    header.replaceChildren(...[
      h("div", { class: "row" },
        h("div", {}, status(job.status), " ", h("span", { class: "mono" }, job.model), " → ",
          job.fine_tuned_model ? h("a", { class: "mono", href: `#/playground?model=${encodeURIComponent(job.fine_tuned_model)}` }, job.fine_tuned_model) : h("span", { class: "muted" }, "not yet")),
        h("div", { class: "muted", id: "job-progress-text" }, parts.join(" · ")),
        h("div", { class: "job-actions" },
          ["queued", "running"].includes(job.status) ? h("button", { type: "button", id: "pause-job", onclick: () => act("pause") }, "Pause") : null,
          job.status === "paused" ? h("button", { type: "button", id: "resume-job", onclick: () => act("resume") }, "Resume") : null,
          TERMINAL.has(job.status) ? null : h("button", { type: "button", class: "link", id: "cancel-job",
            onclick: () => confirm(`Cancel ${job.id}? A cancelled job cannot be resumed.`) && act("cancel") }, "Cancel"))),
      h("div", { class: "progress" }, h("div", { style: `width:${pct.toFixed(1)}%` })),
      job.error ? h("p", { class: "error" }, `Error: ${job.error.message}`) : null].filter(Boolean));
  }
  async function act(verb) {  // pause, resume or cancel; the answer is the job in its new state
    try {
      state.job = await (await api(`/fine_tuning/jobs/${jobId}/${verb}`, { method: "POST" })).json();
      drawHeader();
    } catch (e) { showError(e); }
  }
  function drawDetails() {
    const job = state.job;
    const hp = job.method?.[job.method?.type]?.hyperparameters || job.hyperparameters || {};
    const rows = [
      ["Created", when(job.created_at)], ["Finished", when(job.finished_at)],
      ["Method", job.method?.type || "supervised"],
      ...Object.entries(hp).map(([k, v]) => [k, String(v)]),
      ["Seed", String(job.seed)], ["Training file", job.training_file], ["Validation file", job.validation_file || "–"],
      ["Trained tokens", job.trained_tokens?.toLocaleString() || "–"],
      ["Integrations", job.integrations?.length ? job.integrations.map((i) => i.type).join(", ") : "–"],
      ["Evaluation", job.metadata?.eval_id ? h("a", { id: "job-eval", href: `#/evals/${job.metadata.eval_id}` }, job.metadata.eval_id)
        : job.validation_file && job.status === "succeeded" ? "being created" : "–"],
    ];
    const result = job.result_files?.[0];
    details.replaceChildren(...[h("h2", {}, "Hyperparameters and files"),
      h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { class: "mono" }, v)])),
      result ? h("p", {}, h("button", { class: "link", id: "result-file", type: "button",
        onclick: () => download(`/files/${result}/content`, `${job.id}_results.csv`) }, `Download result file (${result})`)) : null].filter(Boolean));
  }
  async function drawCheckpoints() {
    const { data } = await getJson(`/fine_tuning/jobs/${jobId}/checkpoints?limit=100`);
    checkpoints.replaceChildren(h("h2", {}, "Checkpoints"), data.length ? table(["Step", "Model", "Train loss", "Valid loss"],
      data.map((c) => h("tr", {}, h("td", {}, String(c.step_number)), h("td", { class: "mono" }, c.fine_tuned_model_checkpoint),
        h("td", {}, c.metrics?.train_loss?.toFixed(4) ?? "–"), h("td", {}, c.metrics?.valid_loss?.toFixed(4) ?? "–")))) : h("p", { class: "muted" }, "None yet."));
  }

  async function drawDeliveries() {  // the job's webhooks and emails, each with its last attempt
    const { data } = await getJson(`/fine_tuning/jobs/${jobId}/deliveries`);
    const last = (d) => d.attempts[d.attempts.length - 1];
    notices.replaceChildren(h("h2", {}, "Notifications"), data.length ? table(["Event", "To", "Status", "Attempts", "Last answer"],
      data.map((d) => h("tr", { class: d.status === "failed" ? "error" : "" }, h("td", {}, d.event_type),
        h("td", { class: "mono" }, d.channel === "email" ? d.recipient : d.endpoint_id), h("td", {}, d.status),
        h("td", {}, String(d.attempts.length)),
        h("td", {}, last(d) ? (last(d).response_status_code ?? last(d).error ?? "") + "" : "–")))) : h("p", { class: "muted" }, "None sent."));
  }

  return every(2000, async function refresh() {
    if (state.finished) return;  // one more pass after the job ended picked up its closing events
    state.job = await getJson(`/fine_tuning/jobs/${jobId}`);
    const fresh = state.lastSeen ? await loadNewEvents(jobId, state.lastSeen) : await loadAllEvents(jobId);
    for (const e of fresh) {
      if (e.type === "metrics" && e.data) state.metrics.set(e.data.step, e.data);
    }
    state.events.push(...fresh);
    if (fresh.length) state.lastSeen = fresh[fresh.length - 1].id;
    drawHeader();
    drawDetails();
    if (fresh.length || !lossChart.hasChildNodes()) { drawCharts(); drawEvents(); }
    const nCheckpointEvents = state.events.filter((e) => e.message.startsWith("Checkpoint created")).length;
    if (nCheckpointEvents !== state.checkpointsAt) { state.checkpointsAt = nCheckpointEvents; await drawCheckpoints(); }
    // after the job ends, its base-vs-fine-tuned eval still reports (a link, then its scores): a while longer
    const evalReported = !state.job.validation_file || state.events.some((e) => e.data?.eval_id && !e.message.includes(" queued"));
    if (TERMINAL.has(state.job.status)) {
      await drawDeliveries();
      state.grace = (state.grace ?? EVAL_GRACE_POLLS) - 1;
      state.finished = state.endSeen && (evalReported || state.job.status !== "succeeded" || state.grace <= 0);
      state.endSeen = true;
    }
    view.dataset.loaded = "true";
  });
}

async function download(path, filename) {
  try {
    const blob = await (await api(path)).blob();
    const url = URL.createObjectURL(blob);
    h("a", { href: url, download: filename }).click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (e) { showError(e); }
}

// ---- files -------------------------------------------------------------------------------------
function filesPage() {
  const list = h("div", { class: "panel" }, h("p", { class: "muted" }, "Loading…"));
  const input = h("input", { type: "file", id: "upload-input", accept: ".jsonl,.csv,.txt,.json" });
  const purpose = h("select", { id: "upload-purpose" }, ["fine-tune", "batch", "user_data"].map((p) => h("option", { value: p }, p)));
  const button = h("button", { type: "button", id: "upload-button" }, "Upload");
  async function refresh() {
    const { data } = await getJson("/files?limit=200");
    list.replaceChildren(data.length ? table(["File", "Name", "Purpose", "Size", "Created", "Status"],
      data.map((f) => h("tr", {}, h("td", { class: "mono" }, h("button", { class: "link mono", type: "button", onclick: () => download(`/files/${f.id}/content`, f.filename) }, f.id)),
        h("td", {}, f.filename), h("td", {}, f.purpose), h("td", {}, bytes(f.bytes)), h("td", {}, when(f.created_at)), h("td", {}, f.status)))) : h("p", { class: "muted" }, "No files yet."));
  }
  button.addEventListener("click", async () => {
    if (!input.files.length) return;
    const form = new FormData();
    form.append("purpose", purpose.value);
    form.append("file", input.files[0]);
    button.disabled = true;
    try { await api("/files", { method: "POST", body: form }); input.value = ""; await refresh(); } catch (e) { showError(e); } finally { button.disabled = false; }
  });
  view.replaceChildren(h("h1", {}, "Files"),
    h("div", { class: "panel" }, h("h2", {}, "Upload"), h("div", { class: "row" }, input, purpose, h("div", {}, button))), list);
  refresh().catch(showError);
  return () => {};
}

// ---- models ------------------------------------------------------------------------------------
function modelsPage() {
  const list = h("div", { class: "panel" }, h("p", { class: "muted" }, "Loading…"));
  view.replaceChildren(h("h1", {}, "Models"), list);
  getJson("/models").then(({ data }) => {
    data.sort((a, b) => b.created - a.created);
    list.replaceChildren(table(["Model", "Kind", "Owned by", "Created", ""],
      data.map((m) => h("tr", {}, h("td", { class: "mono" }, m.id),
        h("td", {}, m.id.includes(":ckpt-step-") ? "checkpoint" : m.id.startsWith("ft:") ? "fine-tuned" : "base"),
        h("td", {}, m.owned_by), h("td", {}, when(m.created)),
        h("td", {}, h("a", { href: `#/playground?model=${encodeURIComponent(m.id)}` }, "Try"), " ", exportControl(m.id))))));
  }).catch(showError);
  return () => {};
}

// Export: the server writes and checks the export, then answers it as one .tar (POST /v1/models/{id}/export).
const EXPORT_FORMATS = ["gguf", "ollama", "merged", "adapter", "vllm"];
function exportControl(model) {
  const format = h("select", { class: "export-format", "aria-label": `Export format for ${model}` },
    EXPORT_FORMATS.map((f) => h("option", { value: f }, f)));
  const button = h("button", { type: "button", class: "export-button" }, "Export");
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "Exporting…";
    try {
      const path = `/models/${encodeURIComponent(model).replace(/%2F/g, "/")}/export`;
      const response = await api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ format: format.value }) });
      const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "")?.[1] || `${format.value}.tar`;
      const url = URL.createObjectURL(await response.blob());
      h("a", { href: url, download: name }).click();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (e) { showError(e); } finally { button.disabled = false; button.textContent = "Export"; }
  });
  return h("span", { class: "export" }, format, " ", button);
}

// ---- playground: one prompt, base model vs fine-tuned model, side by side ---------------------
async function streamChat(model, messages, options, onText) {
  const response = await api("/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages, stream: true, ...options }),
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") return text;
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) { text += delta; onText(text); }
      }
    }
  }
  return text;
}

function playgroundPage(params) {
  const left = h("select", { id: "model-a" }), right = h("select", { id: "model-b" });
  const system = h("input", { type: "text", id: "system", placeholder: "optional" });
  const prompt = h("textarea", { id: "prompt", rows: 4, placeholder: "Ask both models the same thing…" });
  const maxTokens = h("input", { type: "number", id: "max-tokens", value: 128, min: 1 });
  const temperature = h("input", { type: "number", id: "temperature", value: 0, min: 0, max: 2, step: 0.1 });
  const send = h("button", { type: "button", id: "send" }, "Send to both");
  const answerA = h("div", { class: "answer", id: "answer-a" }), answerB = h("div", { class: "answer", id: "answer-b" });
  const titleA = h("h2", {}, "Before (base)"), titleB = h("h2", {}, "After (fine-tuned)");
  view.replaceChildren(h("h1", {}, "Playground"),
    h("div", { class: "panel" },
      h("div", { class: "row" }, h("div", {}, h("label", {}, "Base model"), left), h("div", {}, h("label", {}, "Fine-tuned model"), right)),
      h("label", {}, "System message"), system, h("label", {}, "Prompt"), prompt,
      h("div", { class: "row" }, h("div", {}, h("label", {}, "Max tokens"), maxTokens), h("div", {}, h("label", {}, "Temperature"), temperature), h("div", {}, send))),
    h("div", { class: "play" }, h("div", { class: "panel" }, titleA, answerA), h("div", { class: "panel" }, titleB, answerB)));

  getJson("/models").then(({ data }) => {
    const ids = data.map((m) => m.id);
    const tuned = ids.filter((id) => id.startsWith("ft:"));
    const bases = ids.filter((id) => !id.startsWith("ft:"));
    const wanted = params.get("model");
    const pickB = wanted && ids.includes(wanted) ? wanted : tuned[0] || ids[0];
    const pickA = (pickB && baseOf(pickB) && ids.includes(baseOf(pickB))) ? baseOf(pickB) : bases[0] || ids[0];
    for (const [select, pick] of [[left, pickA], [right, pickB]]) {
      select.replaceChildren(...ids.map((id) => h("option", { value: id, selected: id === pick }, id)));
    }
  }).catch(showError);

  send.addEventListener("click", async () => {
    if (!prompt.value.trim()) return;
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []), { role: "user", content: prompt.value }];
    const options = { max_tokens: Number(maxTokens.value) || 128, temperature: Number(temperature.value) || 0 };
    send.disabled = true;
    answerA.textContent = answerB.textContent = "…";
    delete answerA.dataset.done; delete answerB.dataset.done;
    const run = async (model, box) => {
      try { box.textContent = (await streamChat(model, messages, options, (t) => { box.textContent = t; })) || "(empty reply)"; }
      catch (e) { box.textContent = `Error: ${e.message}`; }
      box.dataset.done = "true";
    };
    await Promise.all([run(left.value, answerA), run(right.value, answerB)]);
    send.disabled = false;
  });
  return () => {};
}

// ---- router ------------------------------------------------------------------------------------
function route() {
  stopCurrent();
  delete view.dataset.loaded;
  const [path, query = ""] = (location.hash.slice(1) || "/jobs").split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(query);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === (parts[0] || "jobs"));
  if (parts[0] === "jobs" && parts[1]) stopCurrent = jobPage(decodeURIComponent(parts[1]));
  else if (parts[0] === "files") stopCurrent = filesPage();
  else if (parts[0] === "models") stopCurrent = modelsPage();
  else if (parts[0] === "playground") stopCurrent = playgroundPage(params);
  else if (parts[0] === "evals" && parts[1]) stopCurrent = evalPage(ui, decodeURIComponent(parts[1]), parts[2] === "runs" ? parts[3] : null);
  else if (parts[0] === "evals") stopCurrent = evalsPage(ui);
  else if (parts[0] === "projects") stopCurrent = projectsPage(ui);
  else stopCurrent = jobsPage();
}

async function start() {
  try {
    const info = await (await fetch("/dashboard/api/info")).json();
    document.getElementById("key-button").hidden = !info.auth_required;
    if (info.auth_required && !localStorage.getItem(KEY)) askForKey("This server requires an API key.");
  } catch (e) { showError(e); }
  drawProjectSelect();
  window.addEventListener("hashchange", route);
  route();
}
start();
