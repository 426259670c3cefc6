// The nodes as the scheduler last saw them: capacity, what labq allocated, GPUs.
import {
  $, DASH, PLOT_CONFIG, api, cell, clear, el, every, fmtBytes, fmtNumber, plotLayout, plotly, plotText, showError, timeEl,
} from "./common.js";

function meter(used, total, text, label) {
  if (!total) return el("span", {}, text);
  return el("span", { class: "meter-cell" },
    el("meter", { min: 0, max: total, value: Math.min(used || 0, total), "aria-label": label }),
    el("span", {}, text));
}

function share(used, total, fmt) {
  if (total === undefined || total === null) return DASH;
  return `${fmt(used || 0)} / ${fmt(total)}`;
}

function gpuList(node) {
  if (!node.gpus || !node.gpus.length) return DASH;
  return el("ul", { class: "gpus" }, node.gpus.map((g) => {
    const parts = [`allocated ${fmtNumber(g.allocated ?? 0)}`];
    if (g.utilization !== null && g.utilization !== undefined) parts.push(`util ${fmtNumber(g.utilization)}%`);
    if (g.memory_total) parts.push(`mem ${fmtBytes(g.memory_used)} / ${fmtBytes(g.memory_total)}`);
    if (g.draining) parts.push(`draining ${fmtNumber(g.draining)}`);
    return el("li", {},
      el("span", { class: "mono" }, `GPU ${g.index}`), g.model ? ` ${g.model}` : "", ": ",
      el("meter", { min: 0, max: 1, value: Math.min(g.allocated ?? 0, 1), "aria-label": `GPU ${g.index} allocated share` }),
      " ", parts.join(", "));
  }));
}

function renderPlot(nodes) {
  const section = $("#gpu-section");
  const P = plotly();
  const gpus = [];
  for (const n of nodes) {
    if (!n.alive) continue;
    for (const g of n.gpus || []) gpus.push({ label: plotText(`${n.address} #${g.index}`), g });
  }
  section.hidden = gpus.length === 0;
  if (!gpus.length || !P) return;
  const x = gpus.map((e) => e.label);
  const traces = [{ type: "bar", name: "allocated share (%)", x, y: gpus.map((e) => 100 * (e.g.allocated ?? 0)) }];
  if (gpus.some((e) => e.g.utilization !== null && e.g.utilization !== undefined)) {
    traces.push({ type: "bar", name: "utilisation (%)", x, y: gpus.map((e) => e.g.utilization ?? null) });
  }
  if (gpus.some((e) => e.g.memory_total)) {
    traces.push({ type: "bar", name: "memory used (%)", x,
      y: gpus.map((e) => (e.g.memory_total ? (100 * (e.g.memory_used || 0)) / e.g.memory_total : null)) });
  }
  P.react("gpu-plot", traces, plotLayout({ barmode: "group", yaxis: { range: [0, 100], title: { text: "%" } } }),
    PLOT_CONFIG);
}

async function load() {
  let data;
  try {
    data = await api("/api/v1/nodes");
  } catch (err) {
    showError(err);
    return;
  }
  showError(null);
  const now = Date.now() / 1000;
  const body = clear($("#nodes tbody"));
  for (const n of data.nodes) {
    const total = n.total || {}, alloc = n.allocated || {};
    body.append(el("tr", { dataset: { node: n.node_id }, class: n.alive ? null : "dead" },
      cell(el("span", { class: "mono" }, n.address)),
      cell(el("span", { class: "mono", title: n.node_id }, String(n.node_id).slice(0, 8))),
      cell(n.alive ? "yes" : el("span", { class: "state state-failed" }, "dead")),
      cell(meter(alloc.CPU, total.CPU, share(alloc.CPU, total.CPU, fmtNumber), "cpu allocated")),
      cell(meter(alloc.memory, total.memory, share(alloc.memory, total.memory, fmtBytes), "memory allocated")),
      cell(total.GPU ? meter(alloc.GPU, total.GPU, share(alloc.GPU, total.GPU, fmtNumber), "gpu allocated") : DASH),
      cell(String(n.running_jobs), "num"),
      cell(gpuList(n)),
      cell(timeEl(n.updated_at, now))));
  }
  if (!data.nodes.length) {
    body.append(el("tr", {}, el("td", { colspan: 9, class: "empty" },
      "No node seen yet: the scheduler records the nodes once it runs.")));
  }
  const s = data.scheduler || {};
  const alive = data.nodes.filter((n) => n.alive).length;
  $("#summary").textContent = `${alive} of ${data.nodes.length} node${data.nodes.length === 1 ? "" : "s"} alive; `
    + (s.running ? `scheduler running (pid ${s.pid}), Ray ${s.ray || "unknown"}${s.address ? ` at ${s.address}` : ""}`
      : "no scheduler running");
  renderPlot(data.nodes);
}

every(10000, load);
