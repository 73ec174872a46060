// tpotserve's page. It talks to the same JSON API as every other client (docs/api.md):
//   GET /registry                                                    -> the model selector
//   GET /models/current, GET /models, POST /models/<v>/activate     -> the model panel
//   POST /predict                                                    -> the prediction form
//   GET|POST /datasets, POST /retrain, GET|DELETE /jobs/<id>         -> the retrain panel
//   GET /models/<name>/versions/<v>/leaderboard, .../card?format=json -> the leaderboard and card panel
//   GET /drift, GET /quality                                         -> the drift and live quality panel
//   GET /shadow                                                      -> its shadow candidate lines
// The default model uses those unnamed endpoints (so a server from before named models works);
// another selected model uses /models/<name>, /models/<name>/versions, /models/<name>/predict
// and /models/<name>/versions/<v>/activate (see modelPaths).
// Admin actions ask for the API key once and keep it in sessionStorage (this tab only).

import { barChart, histogramChart, lineChart, valueBars } from "./charts.js";

const ADMIN_KEY = "tpotserve.adminKey";
const PREDICT_KEY = "tpotserve.predictKey";
const JOB_KEY = "tpotserve.job";
const JOB_POLL_MS = 1000;
const SERVE_WAIT_MS = 60000;
const REFRESH_MS = 15000;

const $ = (selector, root = document) => root.querySelector(selector);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const state = {
  registry: null, // GET /registry; null until read, or when the server has none
  registryMissing: false, // the server answered 404: one from before named models
  model: null, // the selected model's name; null: the default model
  current: null, // GET /models/current (or /models/<name>) of the selected model
  featureSignature: null, // the feature names the form was built for
  datasets: [],
  jobToken: null, // the job being followed; a new one stops the old loop
  docVersion: null, // the version whose leaderboard and card are shown; null: the current one
  docShown: null, // "<model> <version>" of the documents on screen
  drift: null, // the last GET /drift answer shown
  driftFeature: null, // the feature whose histogram is shown
};

// --- formatting ---------------------------------------------------------------

function fmtScore(value) {
  return Number.isFinite(value) ? value.toFixed(3) : "–";
}

function fmtNumber(value) {
  if (!Number.isFinite(value)) return "–";
  return Math.abs(value) >= 1000 || Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function fmtTime(iso) {
  const ms = Date.parse(iso);
  return Number.isFinite(ms) ? new Date(ms).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" }) : "–";
}

function versionTime(meta) {
  // created_at, or else the time in the version id (20261127T123713Z-76617c).
  const ms = Date.parse(meta.created_at);
  if (Number.isFinite(ms)) return ms;
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z/.exec(meta.version || "");
  return m ? Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) : 0;
}

function code(text) {
  const node = document.createElement("code");
  node.textContent = text;
  return node;
}

/** An element with text and child nodes; strings become text nodes (never markup). */
function elt(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined) continue;
    if (name === "className") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

// --- models by name ----------------------------------------------------------------

/** null for the default model (or no name), else the name. */
function namedOrDefault(name) {
  return !name || name === state.registry?.default ? null : name;
}

/** The selected (or given) model's name as the server calls it; null when the server has no registry. */
function modelName(name = state.model) {
  return namedOrDefault(name) ?? state.registry?.default ?? null;
}

/** The API paths of a model: the unnamed endpoints for the default one, /models/<name>/... for the others. */
function modelPaths(name = state.model) {
  const named = namedOrDefault(name);
  if (named === null) {
    return {
      current: "/models/current",
      versions: "/models",
      predict: "/predict",
      activate: (version) => `/models/${encodeURIComponent(version)}/activate`,
      drift: "/drift",
      quality: "/quality",
      shadow: "/shadow",
      document: documentPath(name),
    };
  }
  const base = `/models/${encodeURIComponent(named)}`;
  return {
    current: base,
    versions: `${base}/versions`,
    predict: `${base}/predict`,
    activate: (version) => `${base}/versions/${encodeURIComponent(version)}/activate`,
    drift: `${base}/drift`,
    quality: `${base}/quality`,
    shadow: `${base}/shadow`,
    document: documentPath(name),
  };
}

/** A version's leaderboard or card: these have no unnamed endpoint, so the default model goes by
 * its registry name; null until the registry is read (or on a server without one). */
function documentPath(name) {
  const shown = modelName(name);
  if (!shown) return null;
  return (version, doc) => `/models/${encodeURIComponent(shown)}/versions/${encodeURIComponent(version)}/${doc}`;
}

/** " of model <name>" once the server has named models, else "". */
function ofModel(name = state.model) {
  const shown = modelName(name);
  return shown ? ` of model ${shown}` : "";
}

// --- HTTP -----------------------------------------------------------------------

/** One API call. Never throws: {ok, status, headers, body, error} with error = the API's {code, message, field}. */
async function api(method, path, { json, body, key } = {}) {
  const headers = { Accept: "application/json" };
  let payload = body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  }
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, cache: "no-store" });
  } catch (err) {
    return {
      ok: false, status: 0, headers: new Headers(), body: null,
      error: { code: "network", message: `the server could not be reached (${err.message})`, field: null },
    };
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  let error = null;
  if (!response.ok) {
    error = (data && data.error) || { code: `http_${response.status}`, message: `${response.status} ${response.statusText}`, field: null };
    const retry = response.headers.get("Retry-After");
    if (retry) error = { ...error, retryAfter: Number(retry) };
  }
  return { ok: response.ok, status: response.status, headers: response.headers, body: data, error };
}

/** Ask for a key in the page's dialog; resolves to the key, or null when canceled. */
function askKey(storage, message) {
  const dialog = $("#key-dialog");
  const input = $("#key-input");
  $("#key-title").textContent = storage === ADMIN_KEY ? "Admin key" : "API key";
  $("#key-message").textContent = message || "";
  input.value = "";
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = input.value.trim();
        input.value = "";
        if (dialog.returnValue === "ok" && key) {
          sessionStorage.setItem(storage, key);
          updateKeyButton();
          resolve(key);
        } else {
          resolve(null);
        }
      },
      { once: true },
    );
    dialog.showModal();
    input.focus();
  });
}

/** An API call that needs a key: asks once, keeps it for the session, asks again if it is refused. */
async function authorized(storage, method, path, options = {}, firstMessage = null) {
  let message = null;
  for (let attempt = 0; attempt < 3; attempt += 1) {
    let key = sessionStorage.getItem(storage) || (storage === PREDICT_KEY ? sessionStorage.getItem(ADMIN_KEY) : null);
    if (!key || message) {
      key = await askKey(storage, message || firstMessage);
      if (key === null) {
        return { ok: false, status: 0, cancelled: true, error: { code: "cancelled", message: "no key given: nothing was sent", field: null } };
      }
    }
    const result = await api(method, path, { ...options, key });
    if (result.status !== 401) return result;
    sessionStorage.removeItem(storage);
    updateKeyButton();
    message = `The server refused that key (${result.error.message}). Try again.`;
  }
  return { ok: false, status: 401, error: { code: "unauthorized", message: "the key was refused", field: null } };
}

const adminApi = (method, path, options) => authorized(ADMIN_KEY, method, path, options);

function updateKeyButton() {
  $("#forget-key").hidden = !(sessionStorage.getItem(ADMIN_KEY) || sessionStorage.getItem(PREDICT_KEY));
}

// --- errors next to the fields they name ------------------------------------------

function clearErrors(form) {
  form.querySelectorAll("[data-error-for]").forEach((node) => { node.textContent = ""; });
  form.querySelectorAll("[data-warning-for]").forEach((node) => { node.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach((node) => node.removeAttribute("aria-invalid"));
}

function fieldName(field) {
  // Batch errors say instances[0].PetalWidth; this page sends one instance.
  return field === null || field === undefined ? null : String(field).replace(/^instances\[\d+\]\./, "");
}

function slotFor(form, attribute, field) {
  if (field === null) return null;
  return [...form.querySelectorAll(`[${attribute}]`)].find((node) => node.getAttribute(attribute) === field) || null;
}

/** Show an API error beside the field it names, or under the form when it names none we show. */
function showError(form, error, extra = null) {
  const field = fieldName(error.field);
  const slot = field ? slotFor(form, "data-error-for", field) : null;
  let text = error.message;
  if (error.retryAfter) text += ` (retry in ${error.retryAfter} s)`;
  if (slot && field) {
    slot.textContent = text;
    const input = slot.closest(".field, form")?.querySelector("input, select");
    if (input) input.setAttribute("aria-invalid", "true");
  } else {
    const general = form.querySelector('.form-error[data-error-for=""]');
    general.textContent = field ? `${field}: ${text}` : text;
    if (extra) general.append(" ", extra);
  }
}

// --- header ---------------------------------------------------------------------------

function setServing(model, error = null) {
  const node = $("#serving");
  const name = modelName();
  const serving = name ? `serving ${name} ` : "serving ";
  if (model) {
    node.replaceChildren(serving, code(model.version), ` · ${model.task || ""} of ${model.target || "?"} · CV ${model.scoring || ""} ${fmtScore(model.cv_score)}`);
  } else {
    node.textContent = `${name ? `${name}: ` : ""}${error ? `no model served: ${error.message}` : "no model served"}`;
  }
}

// --- predict panel ----------------------------------------------------------------------

function renderPredictForm(model) {
  const classes = Array.isArray(model.classes) && model.classes.length ? ` into ${model.classes.join(", ")}` : "";
  $("#predict-about").textContent =
    `${model.task === "regression" ? "Predicts" : "Classifies"} ${model.target || "the target"}${classes} ` +
    `from ${model.features.length} features (data set ${model.dataset || "?"}). Enter the measurements:`;
  const signature = JSON.stringify(model.features.map((f) => f.name));
  if (signature === state.featureSignature) return; // same features: keep what was typed
  state.featureSignature = signature;
  const fields = $("#feature-fields");
  fields.replaceChildren(
    ...model.features.map((feature, index) => {
      const wrap = document.createElement("div");
      wrap.className = "field";
      const id = `feature-${index}`;
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = feature.name;
      const input = document.createElement("input");
      input.id = id;
      input.type = "number";
      input.step = "any";
      input.dataset.feature = feature.name;
      input.setAttribute("inputmode", "decimal");
      const hasRange = Number.isFinite(feature.min) && Number.isFinite(feature.max);
      if (hasRange) input.placeholder = `e.g. ${fmtNumber((feature.min + feature.max) / 2)}`;
      const range = document.createElement("span");
      range.className = "range";
      range.textContent = hasRange ? `trained on ${fmtNumber(feature.min)} – ${fmtNumber(feature.max)}` : "";
      const error = document.createElement("span");
      error.className = "field-error";
      error.setAttribute("data-error-for", feature.name);
      error.setAttribute("role", "alert");
      const warning = document.createElement("span");
      warning.className = "field-warning";
      warning.setAttribute("data-warning-for", feature.name);
      wrap.append(label, input, range, error, warning);
      return wrap;
    }),
  );
  $("#prediction").hidden = true; // an answer of another model's features
}

function fillExample() {
  for (const feature of state.current?.features || []) {
    const input = [...document.querySelectorAll("#feature-fields input")].find((node) => node.dataset.feature === feature.name);
    if (input && Number.isFinite(feature.min) && Number.isFinite(feature.max)) {
      input.value = fmtNumber((feature.min + feature.max) / 2);
    }
  }
}

async function predict(event) {
  event.preventDefault();
  const form = $("#predict-form");
  clearErrors(form);
  const instance = {};
  for (const input of form.querySelectorAll("#feature-fields input")) {
    // An empty field is left out: the API answers "missing feature" and names it.
    if (input.value.trim() !== "") instance[input.dataset.feature] = Number(input.value);
  }
  const button = $("#predict-submit");
  button.disabled = true;
  const path = modelPaths().predict;
  try {
    const stored = sessionStorage.getItem(PREDICT_KEY);
    let result = await api("POST", path, { json: instance, key: stored });
    if (result.status === 401) {
      // This server protects predictions with PREDICT_API_KEY (the admin key works too).
      result = await authorized(PREDICT_KEY, "POST", path, { json: instance }, "This server needs a key for predictions.");
    }
    if (!result.ok) {
      showError(form, result.error);
      if (result.status === 503) refreshModels();
      return;
    }
    renderPrediction(result);
  } finally {
    button.disabled = false;
  }
}

function renderPrediction(result) {
  const body = result.body;
  const version = result.headers.get("X-Model-Version") || body.model_version;
  const regression = !body.probabilities;
  $("#prediction").hidden = false;
  $("#prediction-label").textContent = regression ? "Predicted value" : "Predicted class";
  $("#predicted-value").textContent = regression && Number.isFinite(body.Prediction) ? fmtNumber(body.Prediction) : String(body.Prediction);
  $("#proba-figure").hidden = regression;
  if (!regression) barChart($("#proba-chart"), body.probabilities, body.Prediction);
  const form = $("#predict-form");
  const list = $("#prediction-warnings");
  list.replaceChildren();
  for (const warning of body.warnings || []) {
    const field = fieldName(warning.field);
    const slot = slotFor(form, "data-warning-for", field);
    if (slot) slot.textContent = warning.message;
    const item = document.createElement("li");
    item.textContent = field ? `${field}: ${warning.message}` : warning.message;
    list.append(item);
  }
  const name = result.headers.get("X-Model-Name") || modelName();
  $("#prediction-meta").replaceChildren(`answered by model ${name ? `${name}, version ` : ""}`, code(version),
    ` at ${new Date().toLocaleTimeString()}`);
  if (state.current && version && version !== state.current.version) refreshModels(); // the served model changed
}

// --- model panel ----------------------------------------------------------------------------

function fact(list, term, ...value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.append(...value);
  list.append(dt, dd);
}

function renderCurrent(model) {
  const list = $("#current-model");
  list.replaceChildren();
  fact(list, "version", code(model.version));
  fact(list, "task", `${model.task || "?"}: ${model.target || "?"} from data set ${model.dataset || "?"}`);
  fact(list, "CV score", `${fmtScore(model.cv_score)} ${model.scoring || ""}`);
  fact(list, "holdout score", `${fmtScore(model.holdout_score)} on ${model.holdout_rows ?? "?"} rows kept out of the search`);
  fact(list, "trained", `${fmtTime(model.created_at)}, ${model.training_rows ?? "?"} rows, ${model.training_seconds ?? "?"} s`);
  if (model.gate && model.gate.reason) fact(list, "gate", model.gate.reason);
  if (model.contract) fact(list, "contract", contractBrief(model.contract));
  if (model.mixed_contracts) {
    const n = (model.other_contract_versions || []).length;
    fact(list, "history", `mixed: ${n} stored version${n === 1 ? " has" : "s have"} another contract (marked in the table); docs/models.md says how to split them into a model of their own`);
  }
  $("#current-pipeline").textContent = model.pipeline || "(not recorded)";
}

/** The live metric comparable to a version's scoring (accuracy with accuracy, r2 with r2), or null. */
function liveMetric(scoring) {
  return { accuracy: "accuracy", r2: "r2" }[scoring] || null;
}

/** "4 features → species, classification; classes setosa, versicolor, virginica" */
function contractBrief(contract) {
  const classes = contract.classes ? `; classes ${contract.classes.join(", ")}` : "";
  return `${(contract.features || []).length} features (${(contract.features || []).map((f) => f.name).join(", ")}) → ${contract.target}, ${contract.task}${classes}`;
}

function renderVersions(listing, quality = null) {
  const versions = [...(listing.versions || [])].sort((a, b) => versionTime(a) - versionTime(b));
  // One chart, one contract: versions of another contract (another target, maybe another score) are listed, not charted.
  const charted = versions.filter((v) => !v.other_contract);
  const scorings = [...new Set(charted.map((v) => v.scoring).filter(Boolean))];
  const live = new Map((quality?.versions || []).map((q) => [q.version, q]));
  const livePoint = (v) => {
    const metric = liveMetric(v.scoring);
    const entry = live.get(v.version);
    return metric && entry && Number.isFinite(entry[metric]) ? entry[metric] : null;
  };
  const metrics = [...new Set(charted.filter((v) => livePoint(v) !== null).map((v) => liveMetric(v.scoring)))];
  lineChart(
    $("#score-chart"),
    charted.map((v) => ({ t: versionTime(v), cv: v.cv_score, holdout: v.holdout_score, live: livePoint(v), label: v.version, current: v.current })),
    { yLabel: scorings.length === 1 ? scorings[0] : "score", liveLabel: metrics.length === 1 ? `live ${metrics[0]}` : "live" },
  );
  const others = versions.length - charted.length;
  $("#score-caption").textContent =
    `${charted.length} stored version${charted.length === 1 ? "" : "s"} over time` +
    (scorings.length > 1 ? ` (scorings differ: ${scorings.join(", ")})` : "") +
    (others ? `; ${others} of another contract not charted` : "");
  const rows = versions.reverse().map((v) => {
    const tr = document.createElement("tr");
    tr.dataset.version = v.version;
    if (v.current) tr.className = "current";
    if (v.other_contract) tr.classList.add("other-contract");
    const cells = [
      code(v.version),
      new Date(versionTime(v)).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" }),
      `${v.dataset || "?"} → ${v.target || "?"}`,
      `${v.task || "?"}, ${v.scoring || "?"}${v.other_contract ? " (another contract)" : ""}`,
      fmtScore(v.cv_score),
      fmtScore(v.holdout_score),
      v.selection?.winner || "–",
      v.gate ? (v.gate.promoted ? "promoted" : "held back") : "–",
    ];
    cells.forEach((content, index) => {
      const td = document.createElement("td");
      td.append(content);
      if (index === 4 || index === 5) td.className = "num";
      if (index === 6) {
        td.className = "winner";
        if (v.selection?.summary) td.title = v.selection.summary;
      }
      if (index === 7 && v.gate && v.gate.reason) td.title = v.gate.reason;
      if (index === 7 && v.trigger) {
        td.append(elt("span", { className: "trigger" }, ` · ${v.trigger.kind}`));
        td.title = `${td.title ? `${td.title}; ` : ""}trained by the scheduler: ${triggerText(v.trigger)}`;
      }
      tr.append(td);
    });
    const action = document.createElement("td");
    if (v.current) {
      action.textContent = "serving";
    } else {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary small activate";
      button.textContent = "Activate";
      button.title = `serve ${v.version} (rollback)`;
      button.addEventListener("click", () => activate(v.version, button));
      action.append(button);
    }
    tr.append(action);
    return tr;
  });
  $("#versions tbody").replaceChildren(...rows);
  renderDocVersions(listing);
}

let refreshChain = Promise.resolve();
let retryTimer = null;

/** Re-read what is served and every stored version; rebuild the form if the features changed. */
function refreshModels() {
  // One refresh at a time, each reading after the one before: the last call always sees fresh data.
  refreshChain = refreshChain.then(readModels, readModels);
  return refreshChain;
}

async function readModels() {
  const selected = state.model;
  const paths = modelPaths(selected);
  const [current, listing, quality, shadow] = await Promise.all([
    api("GET", paths.current), api("GET", paths.versions), api("GET", watchQuery(paths.quality)),
    api("GET", paths.shadow),
  ]);
  if (selected !== state.model) return; // another model was selected meanwhile: its own read follows
  $("#models-name").textContent = modelName() || "";
  $("#predict-form").hidden = !current.ok;
  $("#pipeline-details").hidden = !current.ok;
  if (current.ok) {
    state.current = current.body;
    setServing(current.body);
    renderCurrent(current.body);
    renderPredictForm(current.body);
  } else {
    setServing(null, current.error);
    $("#predict-about").textContent = `No model to predict with yet: ${current.error.message}`;
    if (current.status === 503 && retryTimer === null) {
      // No model yet (the first training may be running): look again when the API says.
      retryTimer = setTimeout(() => { retryTimer = null; refreshModels(); }, 1000 * (current.error.retryAfter || 5));
    }
  }
  if (listing.ok) {
    renderVersions(listing.body, quality.ok ? quality.body : null);
    $("#models-error").textContent = "";
  } else {
    $("#models-error").textContent = listing.error.message;
  }
  renderQuality(quality);
  renderShadow(shadow);
  await Promise.all([loadDocuments(), current.ok ? loadDrift() : Promise.resolve()]);
}

// --- leaderboard and model card ---------------------------------------------------------------

function renderDocVersions(listing) {
  const select = $("#doc-version");
  const versions = [...(listing.versions || [])].sort((a, b) => versionTime(b) - versionTime(a));
  if (state.docVersion && !versions.some((v) => v.version === state.docVersion)) state.docVersion = null;
  select.replaceChildren(
    ...versions.map((v) => elt("option", { value: v.version }, `${v.version}${v.current ? " (serving)" : ""}${v.selection?.winner ? ` · ${v.selection.winner}` : ""}`)),
  );
  const current = versions.find((v) => v.current);
  select.value = state.docVersion || current?.version || versions[0]?.version || "";
}

/** Read and show the leaderboard and card of the chosen version (the current one by default). */
async function loadDocuments(force = false) {
  const selected = state.model;
  const paths = modelPaths(selected);
  const version = $("#doc-version").value;
  $("#card-panel").hidden = paths.document === null && state.registryMissing;
  if (!paths.document || !version) return;
  const key = `${modelName(selected)} ${version}`;
  if (!force && state.docShown === key) return; // a version's documents never change
  const [board, card] = await Promise.all([
    api("GET", paths.document(version, "leaderboard")),
    api("GET", `${paths.document(version, "card")}?format=json`),
  ]);
  if (selected !== state.model || $("#doc-version").value !== version) return;
  state.docShown = board.ok && card.ok ? key : null;
  const problems = [board, card].filter((r) => !r.ok).map((r) => r.error.message);
  $("#card-error").textContent = [...new Set(problems)].join("; ");
  $("#card-body").hidden = !board.ok && !card.ok;
  if (board.ok) renderLeaderboard(board.body);
  else $("#leaderboard tbody").replaceChildren();
  if (card.ok) renderCard(card.body);
  else $("#model-card").replaceChildren();
}

function fmtMs(value) {
  return Number.isFinite(value) ? value.toFixed(3) : "–";
}

function renderLeaderboard(board) {
  const rows = (board.rows || []).map((row) => {
    const classes = [row.source === "baseline" ? "baseline" : "tpot"];
    if (row.selected) classes.push("selected");
    if (row.error) classes.push("failed");
    const name = elt("td", {}, code(row.name));
    if (row.source === "baseline") name.append(" ", elt("span", { className: "tag baseline" }, "baseline"));
    if (row.tpot_pick) name.append(" ", elt("span", { className: "tag pick" }, "TPOT's pick"));
    const note = row.error ? row.error : row.selected ? "published candidate" : "";
    const tr = elt("tr", { className: classes.join(" "), dataset: { name: row.name, source: row.source || "" } },
      elt("td", { className: "num" }, row.rank ?? "–"),
      name,
      elt("td", {}, row.source || "–"),
      elt("td", { className: "num" }, fmtScore(row.cv_score)),
      elt("td", { className: "num" }, fmtScore(row.holdout_score)),
      elt("td", { className: "num" }, row.complexity ?? "–"),
      elt("td", { className: "num" }, fmtMs(row.predict_ms)),
      elt("td", { className: row.error ? "note bad" : "note" }, note),
    );
    if (row.pipeline) tr.title = row.pipeline;
    if (row.selected) tr.setAttribute("aria-current", "true");
    return tr;
  });
  $("#leaderboard tbody").replaceChildren(...rows);
  const parts = [];
  if (board.selection?.summary) parts.push(board.selection.summary);
  const t = board.tpot;
  if (t) parts.push(`TPOT: ${plural(t.total ?? 0, "pipeline")}, ${t.evaluated ?? 0} evaluated, ${t.invalid ?? 0} invalid, ${t.timed_out ?? 0} timed out; ${t.shown ?? 0} shown`);
  parts.push(`scoring ${board.scoring || "?"}${board.cv_folds ? `, ${board.cv_folds}-fold CV` : ""}`);
  $("#leaderboard-summary").textContent = parts.join(" · ");
}

function range(entry) {
  return `${fmtNumber(entry.min)} – ${fmtNumber(entry.max)}`;
}

function stepList(steps) {
  return elt("ol", { className: "steps" }, ...(steps || []).map((step) => {
    const params = Object.entries(step.params || {});
    const item = elt("li", {}, elt("strong", {}, step.name), " ", code(step.class), elt("span", { className: "hint" }, ` ${step.module || ""}`));
    if (params.length) {
      item.append(elt("div", { className: "params" }, ...params.map(([k, v]) => code(`${k}=${typeof v === "string" ? JSON.stringify(v) : JSON.stringify(v)}`))));
    }
    if (step.steps) item.append(stepList(step.steps));
    return item;
  }));
}

function renderCard(card) {
  const root = $("#model-card");
  const ds = card.dataset || {};
  const scores = card.scores || {};
  const interval = scores.holdout_interval;
  const facts = elt("dl", { className: "facts", id: "card-facts" });
  fact(facts, "version", code(card.version || "?"));
  fact(facts, "task", `${card.task || "?"}: ${ds.target || "?"} from ${(ds.features || []).length} features`);
  fact(facts, "data set", code(ds.id || "?"), ds.sha256 ? elt("span", { className: "hint", title: ds.sha256 }, ` sha256 ${ds.sha256.slice(0, 12)}…`) : "");
  fact(facts, "rows", `${ds.rows ?? "?"}: ${ds.training_rows ?? "?"} for the search, ${ds.holdout_rows ?? "?"} held out`);
  if (ds.class_balance) {
    fact(facts, "class balance", Object.entries(ds.class_balance).map(([c, share]) => `${c} ${(share * 100).toFixed(1)} %`).join(", "));
  } else if (ds.target_range) {
    fact(facts, "target range", `${range(ds.target_range)} (mean ${fmtNumber(ds.target_range.mean)}, sd ${fmtNumber(ds.target_range.std)})`);
  }
  fact(facts, "trained", `${fmtTime(card.created_at)}${card.job_id ? ` by job ${card.job_id}` : ""}${Number.isFinite(card.training_seconds) ? `, ${fmtNumber(card.training_seconds)} s` : ""}`);
  if (card.budget) {
    const b = card.budget;
    fact(facts, "budget", `${b.max_time_mins ?? "?"} min, ${b.generations ?? "?"} generations of ${b.population_size ?? "?"}, ${b.cv ?? "?"}-fold CV`);
  }

  const scoreList = elt("dl", { className: "facts", id: "card-scores" });
  fact(scoreList, "CV", `${fmtScore(scores.cv)} ${scores.scoring || ""}${scores.cv_folds ? ` (${scores.cv_folds} folds)` : ""}`);
  fact(scoreList, "holdout", `${fmtScore(scores.holdout)}`,
    interval ? elt("span", { id: "card-interval" }, ` (${Math.round((interval.confidence || 0.95) * 100)} % interval ${fmtScore(interval.low)} – ${fmtScore(interval.high)}, ${interval.resamples ?? "?"} resamples)`) : "");
  if (card.selection?.summary) fact(scoreList, "selection", card.selection.summary);

  const pipeline = card.pipeline || {};
  const codeBlock = pipeline.code
    ? elt("pre", { id: "card-code", className: "code" }, pipeline.code)
    : elt("p", { id: "card-code-unavailable", className: "hint" }, `No Python code: ${pipeline.code_unavailable || "not recorded"}`);

  let errors;
  if (card.confusion_matrix) {
    const cm = card.confusion_matrix;
    errors = elt("div", {}, elt("h4", {}, "Confusion matrix on the holdout"),
      elt("div", { className: "table-wrap" }, elt("table", { id: "card-confusion", className: "matrix" },
        elt("thead", {}, elt("tr", {}, elt("th", {}, "true \\ predicted"), ...cm.labels.map((l) => elt("th", {}, String(l))))),
        elt("tbody", {}, ...cm.matrix.map((row, i) => {
          const total = row.reduce((a, b) => a + b, 0) || 1;
          return elt("tr", {}, elt("th", {}, String(cm.labels[i])), ...row.map((n, j) => elt("td", {
            className: `num${i === j ? " diagonal" : n ? " off" : ""}`, style: `--share: ${(n / total).toFixed(3)}`,
          }, String(n))));
        })))));
  } else if (card.residuals) {
    const r = card.residuals;
    const list = elt("dl", { className: "facts", id: "card-residuals" });
    for (const [key, label] of [["mae", "MAE"], ["rmse", "RMSE"], ["mean_error", "mean error"], ["median_abs_error", "median |error|"], ["p90_abs_error", "90th percentile |error|"], ["max_abs_error", "max |error|"]]) {
      if (r[key] !== undefined) fact(list, label, fmtNumber(r[key]));
    }
    errors = elt("div", {}, elt("h4", {}, "Residuals on the holdout"), list);
  }

  const importance = card.permutation_importance || {};
  const chart = elt("div", { id: "card-importance", className: "chart" });
  const importanceBlock = elt("div", {}, elt("h4", {}, "Permutation importance on the holdout"));
  if (importance.error) {
    importanceBlock.append(elt("p", { className: "hint", id: "card-importance-error" }, importance.error));
  } else {
    importanceBlock.append(chart, elt("p", { className: "hint" }, `drop in ${importance.scoring || "score"} when the feature is shuffled, mean ± sd of ${importance.n_repeats ?? "?"} repeats`));
    const items = (importance.features || []).map((f) => ({
      label: f.feature, value: f.mean, spread: f.std, cls: f.mean > 0 ? "importance" : "importance none",
      data: { feature: f.feature, mean: f.mean }, title: `${f.feature}: ${f.mean} ± ${f.std}`,
    }));
    valueBars(chart, items, { format: (v) => fmtNumber(v), empty: "no features" });
  }

  const features = elt("div", { className: "table-wrap" }, elt("table", { id: "card-features" },
    elt("thead", {}, elt("tr", {}, ...["feature", "type", "min", "max", "distinct"].map((h) => elt("th", {}, h)))),
    elt("tbody", {}, ...(ds.features || []).map((f) => elt("tr", {},
      elt("td", {}, f.name), elt("td", {}, f.type || ""), elt("td", { className: "num" }, fmtNumber(f.min)),
      elt("td", { className: "num" }, fmtNumber(f.max)), elt("td", { className: "num" }, f.distinct ?? "–")))),
  ));

  const gate = card.gate || {};
  const libraries = Object.entries(card.library_versions || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  root.replaceChildren(
    card.description ? elt("p", { id: "card-description", className: "description" }, card.description) : "",
    elt("div", { className: "card-grid" },
      elt("div", {}, facts, elt("h4", {}, "Scores"), scoreList,
        elt("p", { id: "card-gate", className: `gate ${gate.promoted ? "good" : "bad"}` },
          `Gate (${gate.mode || "?"}): ${gate.promoted ? "published" : "not published"}${gate.reason ? `: ${gate.reason}` : ""}`)),
      elt("div", {}, errors || "", importanceBlock)),
    elt("h4", {}, "Features"), features,
    elt("h4", {}, `Pipeline: ${pipeline.selected || "?"} (${pipeline.source || "?"})`),
    stepList(pipeline.steps), codeBlock,
    libraries ? elt("p", { className: "hint" }, `Libraries: ${libraries}`) : "",
  );
}

// --- drift and live quality -----------------------------------------------------------------

function watchQuery(path) {
  const windowS = $("#drift-window").value;
  return windowS ? `${path}?window=${encodeURIComponent(windowS)}` : path;
}

const VERDICT_TEXT = { ok: "no drift", drift: "drift", not_enough_rows: "not enough rows yet" };

async function loadDrift() {
  const selected = state.model;
  const result = await api("GET", watchQuery(modelPaths(selected).drift));
  if (selected !== state.model) return;
  if (!result.ok) {
    state.drift = null;
    $("#drift-error").textContent = result.error.code === "no_reference"
      ? `${result.error.message}` : `drift: ${result.error.message}`;
    $("#drift-summary").textContent = "";
    $("#drift-summary").className = "drift-summary";
    valueBars($("#drift-chart"), [], { empty: "no drift report" });
    $("#drift-feature").replaceChildren();
    $("#drift-histogram").replaceChildren();
    return;
  }
  $("#drift-error").textContent = "";
  renderDrift(result.body);
}

function renderDrift(report) {
  state.drift = report;
  const features = report.features || [];
  const summary = $("#drift-summary");
  summary.className = `drift-summary verdict-${report.verdict}`;
  const share = Number.isFinite(report.drifted_share) ? `${(report.drifted_share * 100).toFixed(0)} % of features drifted` : "";
  summary.replaceChildren(
    elt("strong", { id: "drift-verdict" }, VERDICT_TEXT[report.verdict] || report.verdict),
    ` · version `, code(report.version || "?"), report.served === false ? " (not served)" : "",
    ` · ${plural(report.rows ?? 0, "live row")}${report.enough_rows ? "" : ` (at least ${report.min_rows} needed)`}`,
    share ? ` · ${share}${report.drifted_features?.length ? `: ${report.drifted_features.join(", ")}` : ""}` : "",
    report.thresholds ? ` · thresholds JS ${report.thresholds.js_distance}, PSI ${report.thresholds.psi}` : "",
  );
  const js = report.thresholds?.js_distance || 0.1;
  const top = Math.max(2 * js, ...features.map((f) => (Number.isFinite(f.js_distance) ? f.js_distance : 0)));
  valueBars($("#drift-chart"), features.map((f) => ({
    label: f.feature, value: f.js_distance, cls: `verdict-${f.verdict}`,
    data: { feature: f.feature, verdict: f.verdict },
    title: `${f.feature}: ${VERDICT_TEXT[f.verdict] || f.verdict}; JS ${f.js_distance ?? "–"}, PSI ${f.psi ?? "–"}, ` +
      `${Number.isFinite(f.out_of_range_share) ? (f.out_of_range_share * 100).toFixed(1) : "–"} % out of the training range`,
  })), { max: top, format: (v) => (Number.isFinite(v) ? v.toFixed(3) : "–"), onPick: (item) => pickDriftFeature(item.label), empty: "no features" });
  const select = $("#drift-feature");
  select.replaceChildren(...features.map((f) => elt("option", { value: f.feature }, `${f.feature} · ${VERDICT_TEXT[f.verdict] || f.verdict}`)));
  if (!features.some((f) => f.feature === state.driftFeature)) {
    // The most drifted feature first.
    const ranked = [...features].sort((a, b) => (b.js_distance ?? -1) - (a.js_distance ?? -1));
    state.driftFeature = ranked[0]?.feature ?? null;
  }
  if (state.driftFeature !== null) pickDriftFeature(state.driftFeature);
}

function pickDriftFeature(name) {
  const feature = (state.drift?.features || []).find((f) => f.feature === name);
  if (!feature) return;
  state.driftFeature = name;
  $("#drift-feature").value = name;
  document.querySelectorAll("#drift-chart .bar-row").forEach((row) => row.classList.toggle("picked", row.dataset.feature === name));
  histogramChart($("#drift-histogram"), feature.bins || [], feature.reference_shares || [], feature.live_shares);
  const outside = Number.isFinite(feature.out_of_range_share) ? `, ${(feature.out_of_range_share * 100).toFixed(1)} % out of the training range` : "";
  $("#drift-histogram-caption").textContent =
    `${feature.feature} (${feature.kind}): share of rows per bin, training vs ${plural(feature.rows ?? 0, "live row")}` +
    `${outside}; JS ${feature.js_distance ?? "–"}, PSI ${feature.psi ?? "–"}`;
}

function renderQuality(result) {
  const table = $("#quality-table");
  const summary = $("#quality-summary");
  if (!result.ok) {
    table.tHead.replaceChildren();
    table.tBodies[0].replaceChildren();
    summary.textContent = result.status === 404 ? "" : `live quality: ${result.error.message}`;
    return;
  }
  const report = result.body;
  const metrics = report.task === "regression" ? ["mae", "rmse", "r2"] : ["accuracy"];
  table.tHead.replaceChildren(elt("tr", {}, ...["version", "feedback rows", ...metrics.map((m) => `live ${m}`), "holdout", "scoring"].map((h) => elt("th", {}, h))));
  table.tBodies[0].replaceChildren(...(report.versions || []).map((v) => elt("tr", { className: v.served ? "current" : "", dataset: { version: v.version } },
    elt("td", {}, code(v.version), v.served ? " (serving)" : ""),
    elt("td", { className: "num" }, String(v.rows)),
    ...metrics.map((m) => elt("td", { className: `num live-${m}` }, report.task === "regression" && m !== "r2" ? fmtNumber(v[m]) : fmtScore(v[m]))),
    elt("td", { className: "num" }, fmtScore(v.holdout_score)),
    elt("td", {}, v.scoring || ""),
  )));
  const skipped = Object.entries(report.skipped || {});
  summary.textContent = (report.versions || []).length
    ? (skipped.length ? `skipped feedback: ${skipped.map(([reason, n]) => `${reason} (${n})`).join(", ")}` : "")
    : "No feedback on the answers of this window yet.";
}

/** The version in shadow, if any: agreement and latency, both versions on the same labelled rows, the decision. */
function renderShadow(result) {
  const table = $("#shadow-table");
  const summary = $("#shadow-summary");
  const decision = $("#shadow-decision");
  table.tHead.replaceChildren();
  table.tBodies[0].replaceChildren();
  decision.textContent = "";
  if (!result.ok) {
    summary.textContent = result.status === 404 ? "" : `shadow: ${result.error.message}`;
    return;
  }
  const report = result.body;
  if (!report.shadow) {
    summary.textContent = "No version in shadow (tpotserve shadow set VERSION, or POST …/versions/<v>/shadow).";
    return;
  }
  const figures = report.figures || {};
  const latency = figures.latency || {};
  const agreement = Number.isFinite(figures.agreement) ? `${(figures.agreement * 100).toFixed(1)} %` : "–";
  summary.textContent = `${report.shadow.version} in shadow of ${report.served_version} since ${report.shadow.since} ` +
    `(share ${(report.shadow.share * 100).toFixed(1)} %): ${plural(figures.rows ?? 0, "row")} compared, agreement ${agreement}; ` +
    `shadow latency p50 ${fmtNumber(latency.p50_ms)} ms, p95 ${fmtNumber(latency.p95_ms)} ms`;
  const labelled = figures.labelled || {};
  const metrics = report.task === "regression" ? ["mse", "rmse", "r2"] : ["accuracy"];
  table.tHead.replaceChildren(elt("tr", {}, ...["role", "version", "labelled rows", ...metrics].map((h) => elt("th", {}, h))));
  table.tBodies[0].replaceChildren(...[["served", figures.served_version], ["shadow", figures.shadow_version]].map(([role, version]) =>
    elt("tr", { dataset: { role } },
      elt("td", {}, role), elt("td", {}, code(version || "")),
      elt("td", { className: "num" }, String(labelled.rows ?? 0)),
      ...metrics.map((m) => elt("td", { className: `num shadow-${m}` }, m === "accuracy" || m === "r2" ? fmtScore(labelled[role]?.[m]) : fmtNumber(labelled[role]?.[m]))),
    )));
  const evaluation = report.evaluation;
  if (evaluation) {
    const auto = report.promotion?.enabled ? "automatic promotion on" : "automatic promotion off";
    decision.textContent = `decision: ${evaluation.decision} — ${evaluation.reason} (${auto})`;
  }
}

/** Poll the current version of model ``name`` until it is ``version``; true when it was in time. */
async function waitServed(version, name = state.model, timeoutMs = SERVE_WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  const model = namedOrDefault(name);
  while (Date.now() < deadline) {
    const result = await api("GET", modelPaths(model).current);
    if (result.ok && result.body.version === version) {
      // Each API worker loads a new version on its own: done once the panels' own read agrees
      // (or, when another model is selected by now, once the API said so).
      await refreshModels();
      if (state.model !== model || state.current?.version === version) return true;
    }
    await sleep(500);
  }
  await refreshModels();
  return false;
}

async function activate(version, button) {
  const message = $("#models-error");
  message.textContent = "";
  button.parentElement.querySelector(".refusal")?.remove();
  button.disabled = true;
  const model = state.model;
  try {
    let result = await adminApi("POST", modelPaths(model).activate(version));
    if (!result.ok && result.error.code === "contract_changed") {
      // Shown next to the button; the override is a deliberate second step.
      const refusal = document.createElement("p");
      refusal.className = "refusal form-error";
      refusal.setAttribute("role", "alert");
      refusal.textContent = result.error.message;
      button.after(refusal);
      const change = result.error.contract_change ? contractChangeText(result.error.contract_change) : "";
      if (!window.confirm(`${version}${ofModel(model)} serves another contract than the current version${change ? `: ${change}` : ""}.\n\nEvery client of this model will get answers of the new shape. Activate it anyway (replace the contract)?`)) return;
      refusal.remove();
      result = await adminApi("POST", modelPaths(model).activate(version), { json: { replace_contract: true } });
    }
    if (!result.ok) {
      message.textContent = result.error.message;
      return;
    }
    button.textContent = "activating…";
    if (!(await waitServed(version, model))) {
      message.textContent = `${version}${ofModel(model)} is activated (job ${result.body.job_id}) but not served yet; refresh in a moment.`;
    }
  } finally {
    button.disabled = false;
  }
}

/** A ContractChange (the 409's error.contract_change) in a few words. */
function contractChangeText(change) {
  const parts = [];
  if (change.features_added?.length) parts.push(`features added: ${change.features_added.join(", ")}`);
  if (change.features_missing?.length) parts.push(`features missing: ${change.features_missing.join(", ")}`);
  if (change.features_retyped?.length) parts.push(`features retyped: ${change.features_retyped.map((f) => f.name).join(", ")}`);
  if (change.features_reordered) parts.push("features reordered");
  if (change.target) parts.push(`target ${change.target.from} → ${change.target.to}`);
  if (change.task) parts.push(`task ${change.task.from} → ${change.task.to}`);
  if (change.classes_removed?.length) parts.push(`classes removed: ${change.classes_removed.join(", ")}`);
  return parts.join("; ");
}

// --- the model selector ----------------------------------------------------------------------

/** Read GET /registry and fill the selector; a server without it (404) keeps the page single-model. */
async function loadRegistry() {
  const result = await api("GET", "/registry");
  const first = state.registry === null;
  if (!result.ok) {
    if (result.status === 404) {
      state.registry = null;
      state.registryMissing = true;
      $("#model-pick").hidden = true;
      $("#rt-model-field").hidden = true;
    }
    return;
  }
  state.registry = result.body;
  const models = state.registry.models || [];
  const gone = state.model !== null && !models.some((m) => m.name === state.model);
  const select = $("#model-select");
  select.replaceChildren(
    ...models.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = `${m.name}${m.default ? " (default)" : ""}${m.current_version ? "" : " · no version yet"}`;
      return option;
    }),
  );
  select.value = modelName();
  $("#model-names").replaceChildren(
    ...models.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      return option;
    }),
  );
  $("#model-pick").hidden = false;
  $("#rt-model-field").hidden = false;
  if (gone) {
    await selectModel(null); // the selected model is no longer on the volume: back to the default
  } else if (first) {
    presetRetrain();
    if (state.current) setServing(state.current); // now with the model's name
    $("#models-name").textContent = modelName() || "";
    loadDocuments(); // they go by the model's name, known now
  }
}

/** Show model ``name`` in every panel. */
function selectModel(name) {
  state.model = namedOrDefault(name);
  state.current = null;
  $("#policy-form").hidden = true; // another model's policy: read again on request
  $("#policy-summary").textContent = "";
  $("#policy-state").replaceChildren();
  state.docVersion = null;
  state.docShown = null;
  state.driftFeature = null;
  $("#model-select").value = modelName();
  $("#prediction").hidden = true; // an answer of the model selected before
  $("#models-error").textContent = "";
  presetRetrain();
  return refreshModels();
}

/** The retrain form for the selected model: its name, and the data set and target of its current version. */
function presetRetrain() {
  const name = modelName();
  $("#rt-model").value = name || "";
  const entry = (state.registry?.models || []).find((m) => m.name === name);
  if (!entry?.dataset || !state.datasets.some((d) => d.id === entry.dataset)) return;
  $("#rt-dataset").value = entry.dataset;
  renderTargets();
  if ([...$("#rt-target").options].some((o) => o.value === entry.target)) $("#rt-target").value = entry.target;
}

// --- retrain panel ----------------------------------------------------------------------------

function datasetLabel(meta) {
  const name = meta.bundled ? meta.id : `${meta.filename || "upload"} (${meta.id})`;
  return `${name} · ${meta.rows} rows`;
}

function renderDatasets(selectId = null) {
  const select = $("#rt-dataset");
  const keep = selectId || select.value;
  select.replaceChildren(
    ...state.datasets.map((meta) => {
      const option = document.createElement("option");
      option.value = meta.id;
      option.textContent = datasetLabel(meta);
      return option;
    }),
  );
  if (state.datasets.some((meta) => meta.id === keep)) select.value = keep;
  renderTargets();
}

function renderTargets() {
  const meta = state.datasets.find((d) => d.id === $("#rt-dataset").value);
  const select = $("#rt-target");
  const columns = (meta?.columns || []).map((c) => c.name);
  select.replaceChildren(
    ...columns.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      return option;
    }),
  );
  // The bundled data set knows its target; an upload defaults to its last column.
  if (meta) select.value = meta.target || columns[columns.length - 1] || "";
}

async function loadDatasets(selectId = null) {
  const result = await api("GET", "/datasets");
  if (result.ok) {
    const first = state.datasets.length === 0;
    state.datasets = result.body.datasets || [];
    renderDatasets(selectId);
    if (first && !selectId) presetRetrain(); // the registry may have come first
  } else {
    showError($("#retrain-form"), result.error);
  }
}

async function upload(event) {
  event.preventDefault();
  const form = $("#upload-form");
  clearErrors(form);
  $("#upload-result").textContent = "";
  const file = $("#upload-file").files[0];
  if (!file) {
    showError(form, { message: "choose a CSV file first", field: "file" });
    return;
  }
  const data = new FormData();
  data.append("file", file, file.name);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const result = await adminApi("POST", "/datasets", { body: data });
    if (!result.ok) {
      showError(form, result.error);
      return;
    }
    const meta = result.body;
    $("#upload-result").replaceChildren(
      code(meta.id),
      `: ${meta.rows} rows, ${meta.columns.length} columns${meta.created ? "" : " (already uploaded)"}. Choose the target column below.`,
    );
    await loadDatasets(meta.id);
  } finally {
    button.disabled = false;
  }
}

function retrainBody() {
  const form = $("#retrain-form");
  const body = { dataset: form.elements.dataset.value || "iris" };
  // A name the registry does not have yet creates that model; none (an old server): the default one.
  const model = $("#rt-model-field").hidden ? "" : form.elements.model.value.trim();
  if (model) body.model = model;
  for (const name of ["target", "task", "scoring", "promote"]) {
    if (form.elements[name].value) body[name] = form.elements[name].value;
  }
  for (const name of ["max_time_mins", "generations", "population_size", "cv", "random_state"]) {
    const raw = form.elements[name].value.trim();
    if (raw !== "") body[name] = Number(raw); // the API checks ranges and integers, and names the field
  }
  if (!form.elements.baselines.checked) body.baselines = false; // checked: the server's default (true)
  const description = form.elements.description.value.trim();
  if (description) body.description = description;
  return body;
}

async function startRetrain(event) {
  event.preventDefault();
  const form = $("#retrain-form");
  clearErrors(form);
  const button = $("#retrain-submit");
  button.disabled = true;
  let following = false;
  try {
    const result = await adminApi("POST", "/retrain", { json: retrainBody() });
    if (result.ok) {
      following = true;
      followJob(result.body.job_id);
      return;
    }
    let extra = null;
    if (result.status === 409 && result.error.job_id) {
      extra = document.createElement("button");
      extra.type = "button";
      extra.className = "secondary small";
      extra.textContent = "Follow that job";
      extra.addEventListener("click", () => { clearErrors(form); followJob(result.error.job_id); });
    }
    showError(form, result.error, extra);
  } finally {
    if (!following) button.disabled = false;
  }
}

// Elapsed time as the trainer last reported it, advanced locally between reports.
const clock = { reported: null, at: 0 };

function renderJob(view) {
  const status = $("#job-status");
  status.textContent = view.status;
  status.className = `badge ${view.status}`;
  $("#job-cancel").hidden = !["queued", "started"].includes(view.status);
  const p = view.progress || {};
  const request = view.request || {};
  const planned = p.generations_planned ?? request.generations;
  const generation = p.generation ?? 0;
  $("#job-generation-text").textContent = `generation ${generation} of ${planned ?? "?"}`;
  $("#job-generation-bar").max = planned || 1;
  $("#job-generation-bar").value = Math.min(generation, planned || 1);

  if (p.elapsed_s !== undefined && p.elapsed_s !== clock.reported) {
    clock.reported = p.elapsed_s;
    clock.at = performance.now();
  }
  let elapsed = clock.reported ?? 0;
  if (view.status === "started" && clock.reported !== null) elapsed += (performance.now() - clock.at) / 1000;
  const budgetMins = p.budget_mins ?? request.max_time_mins;
  const budgetS = Number.isFinite(budgetMins) ? budgetMins * 60 : null;
  $("#job-time-text").textContent = `elapsed ${elapsed.toFixed(0)} s of ${budgetS !== null ? `${fmtNumber(budgetS)} s budget` : "?"}`;
  $("#job-time-bar").max = budgetS || 1;
  $("#job-time-bar").value = Math.min(elapsed, budgetS || 1);

  const parts = [];
  if (view.status === "queued") parts.push("waiting for the training worker");
  if (p.stage) parts.push(`stage ${p.stage}`);
  if (Number.isFinite(p.best_cv_score)) parts.push(`best CV ${request.scoring || "score"} ${fmtScore(p.best_cv_score)}`);
  if (p.pipelines_evaluated !== undefined) {
    parts.push(`${plural(p.pipelines_evaluated, "pipeline")} evaluated, ${p.pipelines_failed ?? 0} failed`);
  }
  if (p.training_rows !== undefined) parts.push(`${p.training_rows} search rows + ${p.holdout_rows} holdout rows, ${p.features} features`);
  if (request.dataset) parts.unshift(`${request.model ? `${request.model}: ` : ""}${request.dataset} → ${request.target} (${request.task})`);
  $("#job-progress").textContent = parts.join(" · ");
  const trigger = view.trigger || request.trigger;
  $("#job-trigger").hidden = !trigger;
  $("#job-trigger").textContent = trigger ? `Started by the scheduler: ${triggerText(trigger)}` : "";
}

/** Why an automatic training ran, in words: "drift: 3 of 4 features drifted on 600 rows". */
function triggerText(trigger) {
  if (!trigger) return "";
  const f = trigger.figures || {};
  const why = {
    schedule: () => `schedule (${trigger.cron ? `cron ${trigger.cron}` : `every ${trigger.every_s} s`}, due ${fmtTime(trigger.due)})`,
    drift: () => `drift: ${fmtNumber((f.drifted_share ?? 0) * 100)}% of the features drifted (${(f.drifted_features || []).join(", ")}) on ${f.rows} rows`,
    quality: () => `live quality: ${f.scoring} ${fmtScore(f.live_score)} vs holdout ${fmtScore(f.holdout_score)} on ${f.rows} labelled rows`,
    feedback: () => `feedback: ${f.new_rows} new labelled rows (threshold ${f.threshold})`,
  }[trigger.kind];
  return why ? why() : trigger.kind;
}

const POLICY_EXAMPLE = {
  schedule: { cron: "0 3 * * *", timezone: "UTC" },
  triggers: { drift: { share: 0.3 }, quality: { margin: 0.05, min_rows: 100 } },
  budget: { max_time_mins: 2 },
  min_spacing_s: 3600,
};

function policyPath() {
  const shown = modelName();
  return shown ? `/models/${encodeURIComponent(shown)}/policy` : null;
}

function renderPolicy(view) {
  const form = $("#policy-form");
  form.hidden = false;
  clearErrors(form);
  const policy = view.policy;
  const state = view.scheduler || {};
  $("#policy-text").value = policy ? JSON.stringify(policy, null, 2) : "";
  $("#policy-summary").textContent = policy
    ? `Policy set ${fmtTime(view.set_at)}${policy.enabled === false ? " (disabled)" : ""}` +
      (state.checked_at ? `; the scheduler last checked it ${fmtTime(state.checked_at)}` : "; not checked by a scheduler yet")
    : `No policy${ofModel()}: it trains only on request.`;
  const items = [];
  if (state.next_due) items.push(`next scheduled training ${fmtTime(state.next_due)}`);
  for (const [kind, figures] of Object.entries(state.triggers || {})) {
    if (kind === "note") { items.push(figures); continue; }
    const parts = Object.entries(figures).filter(([k]) => !["fired", "drifted_features", "note"].includes(k))
      .map(([k, v]) => `${k} ${typeof v === "number" ? fmtNumber(v) : v}`);
    items.push(`${kind}: ${figures.fired ? "FIRED" : "not fired"}${figures.note ? ` (${figures.note})` : ""}; ${parts.join(", ")}`);
  }
  if (state.held_by_spacing) items.push(`held back by the spacing until ${fmtTime(state.held_by_spacing.until)} (${state.held_by_spacing.fired.join(", ")})`);
  for (const job of state.enqueued || []) items.push(`enqueued ${job.job_id} (${job.trigger})`);
  for (const [kind, last] of Object.entries(state.last || {})) {
    items.push(`last ${kind} training: job ${last.job_id} at ${fmtTime(last.at)}: ${triggerText(last.trigger)}`);
  }
  if (state.error) items.push(`error: ${state.error}`);
  $("#policy-state").replaceChildren(...items.map((text) => elt("li", {}, text)));
}

async function loadPolicy() {
  const path = policyPath();
  if (!path) return;
  const result = await adminApi("GET", path);
  if (result.ok) renderPolicy(result.body);
  else if (!result.cancelled) $("#policy-summary").textContent = `Could not read the policy: ${result.error.message}`;
}

async function savePolicy(event, remove = false) {
  event?.preventDefault();
  const form = $("#policy-form");
  clearErrors(form);
  const path = policyPath();
  let body;
  if (!remove) {
    try {
      body = JSON.parse($("#policy-text").value || "{}");
    } catch (error) {
      showError(form, { message: `not JSON: ${error.message}`, field: null });
      return;
    }
  }
  const result = await adminApi(remove ? "DELETE" : "PUT", path, remove ? {} : { json: body });
  if (result.ok && result.body.written === false) {
    $("#policy-summary").textContent = `The write is queued as job ${result.body.job_id}.`;
  } else if (result.ok) {
    renderPolicy(result.body);
  } else if (!result.cancelled) {
    showError(form, result.error);
  }
}

function setOutcome(text, tone = "", ...nodes) {
  const node = $("#job-outcome");
  node.className = `outcome ${tone}`;
  node.replaceChildren(text, ...nodes);
}

async function followJob(jobId) {
  const token = {};
  state.jobToken = token;
  sessionStorage.setItem(JOB_KEY, jobId);
  clock.reported = null;
  $("#job").hidden = false;
  $("#job-id").textContent = jobId;
  setOutcome("");
  $("#retrain-submit").disabled = true;
  let view = null;
  try {
    while (state.jobToken === token) {
      const result = await api("GET", `/jobs/${encodeURIComponent(jobId)}`);
      if (result.ok) {
        view = result.body;
        renderJob(view);
        if (["finished", "failed", "canceled"].includes(view.status)) break;
      } else if (result.status === 404) {
        setOutcome(result.error.message, "bad");
        sessionStorage.removeItem(JOB_KEY);
        return;
      } else {
        setOutcome(`could not read the job: ${result.error.message}; retrying`, "bad");
      }
      await sleep(JOB_POLL_MS);
    }
    if (state.jobToken !== token || !view) return;
    sessionStorage.removeItem(JOB_KEY);
    await finishJob(view);
  } finally {
    if (state.jobToken === token) $("#retrain-submit").disabled = false;
  }
}

async function finishJob(view) {
  if (view.status === "failed") {
    setOutcome(`The training failed: ${view.error || "no reason recorded"}. The served model is unchanged.`, "bad");
    return;
  }
  if (view.status === "canceled") {
    setOutcome("The training was canceled. The served model is unchanged.", "bad");
    return;
  }
  const r = view.result || {};
  const model = namedOrDefault(view.request?.model);
  const of = ofModel(model);
  const scores = ` (CV ${r.scoring || ""} ${fmtScore(r.cv_score)}, holdout ${fmtScore(r.holdout_score)})`;
  // The run may have created a model, and its panels are where the new version is: show them.
  if (state.registry) await loadRegistry();
  if (state.registry && model !== state.model) await selectModel(model);
  if (!r.published) {
    setOutcome("Stored version ", "", code(r.version), `${of}${scores}, not promoted: ${r.gate?.reason || "promote was never"}. Activate it from the model panel if you want it.`);
    await refreshModels();
    return;
  }
  setOutcome("Trained version ", "", code(r.version), `${of}${scores}; waiting for the API to serve it…`);
  if (await waitServed(r.version, model)) {
    setOutcome("Now serving the new version ", "good", code(r.version), `${of}${scores}`);
  } else {
    setOutcome("Version ", "bad", code(r.version), " was published but the API has not loaded it yet; see GET /readyz (last_load_error).");
  }
}

async function cancelJob() {
  const jobId = $("#job-id").textContent;
  const result = await adminApi("DELETE", `/jobs/${encodeURIComponent(jobId)}`);
  if (!result.ok) setOutcome(result.error.message, "bad");
}

// --- start -----------------------------------------------------------------------------------

function start() {
  $("#predict-form").addEventListener("submit", predict);
  $("#predict-example").addEventListener("click", fillExample);
  $("#upload-form").addEventListener("submit", upload);
  $("#retrain-form").addEventListener("submit", startRetrain);
  $("#rt-dataset").addEventListener("change", renderTargets);
  $("#model-select").addEventListener("change", (event) => selectModel(event.target.value));
  $("#job-cancel").addEventListener("click", cancelJob);
  $("#doc-version").addEventListener("change", (event) => {
    state.docVersion = event.target.value;
    loadDocuments();
  });
  $("#drift-window").addEventListener("change", () => refreshModels());
  $("#drift-refresh").addEventListener("click", () => refreshModels());
  $("#drift-feature").addEventListener("change", (event) => pickDriftFeature(event.target.value));
  $("#policy-load").addEventListener("click", loadPolicy);
  $("#policy-example").addEventListener("click", () => {
    $("#policy-form").hidden = false;
    $("#policy-text").value = JSON.stringify(POLICY_EXAMPLE, null, 2);
  });
  $("#policy-form").addEventListener("submit", savePolicy);
  $("#policy-delete").addEventListener("click", (event) => savePolicy(event, true));
  $("#forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(ADMIN_KEY);
    sessionStorage.removeItem(PREDICT_KEY);
    updateKeyButton();
  });
  updateKeyButton();
  refreshModels(); // the default model, through the unnamed endpoints: no need to wait for the registry
  loadRegistry();
  loadDatasets();
  const job = sessionStorage.getItem(JOB_KEY);
  if (job) followJob(job); // a reload keeps following the run
  // Someone else may retrain or roll back: notice it now and then.
  setInterval(async () => {
    if (document.hidden) return;
    if (!state.registryMissing) loadRegistry(); // models created elsewhere
    const selected = state.model;
    const result = await api("GET", modelPaths(selected).current);
    if (selected === state.model && result.ok && result.body.version !== state.current?.version) refreshModels();
    else if (selected === state.model && result.ok) loadDrift(); // live inputs move on between versions
  }, REFRESH_MS);
}

start();
