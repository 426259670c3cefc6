// One experiment's results: a sortable, filterable table of its jobs, a
// parallel-coordinates plot of the swept params against the main metric,
// per-step curves of the ticked jobs, and the files a job kept.
import {
  $, DASH, PLOT_CONFIG, api, cell, clear, el, fmtDuration, fmtNumber, jobLink, pageOffset, plotLayout, plotly,
  plotText, queryParam, renderPager, shortNode, showError, stateBadge,
} from "./common.js";
import { showFiles } from "./files.js";

const LIMIT = 50;
const PLOT_ROWS = 1000;
const name = $("#page").dataset.experiment;
const base = `/api/v1/results/${encodeURIComponent(name)}`;
const state = {
  offset: pageOffset(),
  sort: queryParam("sort"),
  ascending: queryParam("ascending") === null ? null : queryParam("ascending") === "true",
  data: null,
  ticked: new Set(),
};

// ---------------------------------------------------------------- the table

function columns(data) {
  const cols = [
    { key: "job_id", label: "job", get: (r) => r.job_id, render: (r) => jobLink(r.job_id), num: true },
    { key: "state", label: "state", get: (r) => r.state, render: (r) => stateBadge(r.state) },
  ];
  const stages = new Set(data.rows.map((r) => r.stage));
  if (stages.size > 1) cols.push({ key: "stage", label: "stage", get: (r) => r.stage });
  for (const p of data.varying_params) {
    cols.push({ key: p, label: p, kind: "param", get: (r) => r.params[p], num: true });
  }
  for (const m of data.metric_names) {
    cols.push({ key: m, label: m, kind: "metric", get: (r) => r.metrics[m], num: true, main: m === data.metric });
  }
  cols.push({ key: "duration", label: "duration", get: (r) => r.duration, render: (r) => fmtDuration(r.duration), num: true });
  cols.push({ key: "node_id", label: "node", get: (r) => r.node_id, render: (r) => shortNode(r.node_id) });
  return cols;
}

// The sort the server applied, redone on the page so that text columns
// (a state, a string param) are ordered too: numbers first, then text, then missing.
function compare(a, b) {
  const rank = (v) => (typeof v === "number" && Number.isFinite(v) ? 0 : v === null || v === undefined ? 2 : 1);
  const ra = rank(a), rb = rank(b);
  if (ra !== rb) return ra - rb;
  if (ra === 0) return a - b;
  if (ra === 1) return String(a).localeCompare(String(b), undefined, { numeric: true });
  return 0;
}

function sortRows(rows, col, ascending) {
  const keyed = rows.map((r, i) => ({ r, i, v: col.get(r) }));
  keyed.sort((x, y) => {
    const rx = x.v === null || x.v === undefined, ry = y.v === null || y.v === undefined;
    if (rx !== ry) return rx ? 1 : -1; // missing last, whichever the direction
    const c = compare(x.v, y.v);
    return (ascending ? c : -c) || x.i - y.i;
  });
  return keyed.map((k) => k.r);
}

function setUrl() {
  const params = new URLSearchParams();
  if (state.sort) params.set("sort", state.sort);
  if (state.ascending !== null && state.sort) params.set("ascending", String(state.ascending));
  if (state.offset) params.set("offset", String(state.offset));
  const query = params.toString();
  history.replaceState(null, "", location.pathname + (query ? `?${query}` : ""));
}

function header(cols, data) {
  const row = clear($("#results thead tr"));
  row.append(el("th", { scope: "col" }, el("span", { class: "visually-hidden" }, "compare curves")));
  const sortedBy = state.sort || data.metric;
  for (const col of cols) {
    const active = col.key === sortedBy;
    const ascending = active ? effectiveAscending(data) : null;
    const button = el("button", { type: "button", class: "sort", dataset: { key: col.key } }, col.label,
      el("span", { class: "arrow", "aria-hidden": "true" }, active ? (ascending ? " ▲" : " ▼") : ""));
    button.addEventListener("click", () => resort(col.key, data));
    row.append(el("th", {
      scope: "col", class: [col.num ? "num" : "", col.main ? "main" : "", col.kind || ""].join(" ").trim(),
      "aria-sort": active ? (ascending ? "ascending" : "descending") : "none",
      dataset: { key: col.key },
    }, button));
  }
  row.append(el("th", { scope: "col" }, el("span", { class: "visually-hidden" }, "files")));
}

// What the server sorted by when no direction was asked: the metric's mode.
function effectiveAscending(data) {
  if (state.ascending !== null) return state.ascending;
  if (!state.sort || state.sort === data.metric) return data.mode === "min";
  return false;
}

function resort(key, data) {
  const current = state.sort || data.metric;
  if (key === current) state.ascending = !effectiveAscending(data);
  else state.ascending = key === data.metric ? data.mode === "min" : true;
  state.sort = key;
  state.offset = 0; // a new order starts at its first page
  setUrl();
  loadTable();
}

function renderTable(data) {
  const cols = columns(data);
  header(cols, data);
  const sortedBy = state.sort || data.metric;
  const sortCol = cols.find((c) => c.key === sortedBy);
  const rows = sortCol ? sortRows(data.rows, sortCol, effectiveAscending(data)) : data.rows;
  const body = clear($("#results tbody"));
  for (const r of rows) {
    const box = el("input", { type: "checkbox", class: "pick", "aria-label": `compare the curves of job ${r.job_id}` });
    box.checked = state.ticked.has(r.job_id);
    box.dataset.job = r.job_id;
    box.addEventListener("change", () => {
      if (box.checked) state.ticked.add(r.job_id);
      else state.ticked.delete(r.job_id);
      loadCurves();
    });
    const files = el("button", { type: "button", class: "small files-button", "aria-label": `files of job ${r.job_id}` }, "files");
    files.addEventListener("click", () => {
      showFiles($("#files"), r.job_id);
      $("#files-h").scrollIntoView({ block: "start", behavior: "smooth" });
    });
    const tr = el("tr", { dataset: { job: r.job_id, state: r.state }, class: r.best ? "best" : null },
      cell(box));
    for (const col of cols) {
      const content = col.render ? col.render(r) : fmtNumber(col.get(r));
      tr.append(cell(content, [col.num ? "num" : "", col.main ? "main" : ""].join(" ").trim() || null));
    }
    tr.append(cell(files));
    if (r.error) tr.title = r.error;
    body.append(tr);
  }
  if (!rows.length) body.append(el("tr", {}, el("td", { colspan: cols.length + 2, class: "empty" }, "No jobs on this page.")));
  applyFilter();
}

function searchable(row) {
  const words = [row.state, String(row.job_id), row.stage, row.node_id || ""];
  for (const v of Object.values(row.params || {})) words.push(fmtNumber(v));
  return words.join("\u0000").toLowerCase();
}

function applyFilter() {
  const data = state.data;
  if (!data) return;
  const text = $("#filter").value.trim().toLowerCase();
  const byId = new Map(data.rows.map((r) => [String(r.job_id), r]));
  let shown = 0;
  for (const tr of $("#results tbody").rows) {
    const row = byId.get(tr.dataset.job);
    if (!row) continue;
    const visible = !text || searchable(row).includes(text);
    tr.hidden = !visible;
    if (visible) shown += 1;
  }
  $("#shown").textContent = text ? `${shown} of ${data.rows.length} rows on this page match` : "";
}

async function loadTable() {
  const params = new URLSearchParams({ limit: String(LIMIT), offset: String(state.offset) });
  if (state.sort) params.set("sort", state.sort);
  if (state.ascending !== null && state.sort) params.set("ascending", String(state.ascending));
  let data;
  try {
    data = await api(`${base}?${params}`);
  } catch (err) {
    showError(err);
    $("#summary").textContent = "";
    return null;
  }
  showError(null);
  state.data = data;
  renderTable(data);
  const metric = !data.metric ? "no metric reported yet"
    : `main metric ${data.metric} (${data.mode === "min" ? "lower" : "higher"} is better)`;
  const key = state.sort || data.metric;
  const textKey = key && data.rows.some((r) => typeof (r.metrics[key] ?? r.params[key] ?? r[key]) === "string");
  const order = key ? `; sorted by ${key}, ${effectiveAscending(data) ? "ascending" : "descending"}` : "";
  const partial = textKey && data.total > data.rows.length ? " within this page (the server orders numbers only)" : "";
  $("#summary").textContent = `${data.total} job${data.total === 1 ? "" : "s"}, ${metric}${order}${partial}`;
  const advice = $("#advice");
  clear(advice);
  for (const line of data.advice || []) advice.append(el("li", {}, line));
  advice.hidden = !(data.advice || []).length;
  renderPager($("#pager"), data.total, state.offset, LIMIT, data.rows.length);
  return data;
}

// ---------------------------------------------------------------- parallel coordinates

function dimension(label, values) {
  const numeric = values.every((v) => typeof v === "number" && Number.isFinite(v));
  if (numeric) return { label: plotText(label), values };
  const text = values.map((v) => (v === null || v === undefined ? DASH : fmtNumber(v)));
  const levels = [...new Set(text)].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const index = new Map(levels.map((l, i) => [l, i]));
  return {
    label: plotText(label), values: text.map((t) => index.get(t)), tickvals: levels.map((_, i) => i), ticktext: levels,
    range: [0, Math.max(levels.length - 1, 1)],
  };
}

async function loadParcoords() {
  const note = $("#parcoords-note");
  const P = plotly();
  if (!P) {
    note.textContent = "The charts need plotly.js, which did not load.";
    return;
  }
  let data;
  try {
    data = await api(`${base}?limit=${PLOT_ROWS}`);
  } catch (err) {
    note.textContent = `No plot: ${err.message}`;
    return;
  }
  const metric = data.metric;
  $("#metric-name").textContent = metric || "the metric";
  const rows = data.rows.filter((r) => metric && typeof r.metrics[metric] === "number" && Number.isFinite(r.metrics[metric]));
  const params = data.varying_params.filter((p) => {
    const seen = new Set(rows.map((r) => JSON.stringify(r.params[p] ?? null)));
    return seen.size > 1;
  });
  if (!rows.length || !params.length) {
    note.textContent = !metric ? "No metric reported yet." : !rows.length ? `No job has reported ${metric} yet.`
      : "No param varies between the jobs that reported the metric.";
    clear($("#parcoords"));
    return;
  }
  const dims = params.map((p) => dimension(p, rows.map((r) => r.params[p])));
  const values = rows.map((r) => r.metrics[metric]);
  dims.push({ label: plotText(metric), values });
  note.textContent = `${rows.length} job${rows.length === 1 ? "" : "s"}`
    + (data.total > PLOT_ROWS ? ` (the best ${PLOT_ROWS} of ${data.total})` : "")
    + `; drag along an axis to pick a range.`;
  const reversed = data.mode === "min";
  await P.react("parcoords", [{
    type: "parcoords",
    dimensions: dims,
    labelfont: { size: 13 }, tickfont: { size: 11 }, rangefont: { size: 10 },
    line: { color: values, colorscale: "Viridis", reversescale: reversed, showscale: true,
      colorbar: { title: { text: plotText(metric) } } },
  }], plotLayout({ margin: { l: 70, r: 90, t: 50, b: 30 } }), PLOT_CONFIG);
  if (document.querySelector("#parcoords .no-webgl")) {
    note.textContent = "The parallel-coordinates plot needs WebGL, which this browser has turned off.";
  }
}

// ---------------------------------------------------------------- curves

let curveRequest = 0;

function fillMetricChoice(data) {
  const select = $("#curve-metric");
  if (select.options.length) return;
  for (const m of data.metric_names) select.append(el("option", { value: m }, m));
  if (data.metric) select.value = data.metric;
  select.addEventListener("change", loadCurves);
}

async function loadCurves() {
  const note = $("#curves-note");
  const target = $("#curves");
  const P = plotly();
  const ids = [...state.ticked].sort((a, b) => a - b);
  const mine = ++curveRequest;
  if (!ids.length) {
    note.textContent = "Tick jobs in the table to compare their curves.";
    if (P) P.purge(target);
    clear(target);
    target.hidden = true;
    return;
  }
  if (!P) {
    note.textContent = "The charts need plotly.js, which did not load.";
    return;
  }
  const params = new URLSearchParams({ jobs: ids.join(",") });
  const metric = $("#curve-metric").value;
  if (metric) params.set("metric", metric);
  let data;
  try {
    data = await api(`${base}/curves?${params}`);
  } catch (err) {
    note.textContent = `No curves: ${err.message}`;
    return;
  }
  if (mine !== curveRequest) return; // a newer request is on its way
  const curves = data.curves || [];
  const missing = ids.filter((id) => !curves.some((c) => c.job_id === id));
  note.textContent = `${curves.length} curve${curves.length === 1 ? "" : "s"}`
    + (missing.length ? `; no per-step values for job ${missing.join(", ")}` : "");
  const traces = curves.map((c) => ({
    type: "scatter", mode: "lines+markers", name: `job ${c.job_id}`, x: c.steps, y: c.values,
    hovertemplate: `job ${c.job_id}<br>step %{x}<br>${plotText(c.metric)} %{y}<extra></extra>`,
  }));
  target.hidden = false;
  const yTitle = curves.length ? curves[0].metric : (data.metric || "");
  await P.react(target, traces, plotLayout({
    xaxis: { title: { text: "step" } }, yaxis: { title: { text: plotText(yTitle) } }, showlegend: true,
  }), PLOT_CONFIG);
}

// ---------------------------------------------------------------- start

$("#filter").addEventListener("input", applyFilter);
$("#curves").hidden = true;
const files = $("#files");
files.append(el("p", { class: "muted" }, files.dataset.empty));

loadTable().then((data) => {
  if (!data) return;
  fillMetricChoice(data);
  loadParcoords().catch((err) => { $("#parcoords-note").textContent = `No plot: ${err.message}`; });
});
