// Who used what: resource-hours, jobs and waiting per user and per queue.
import {
  $, PLOT_CONFIG, api, cell, clear, el, fmtDuration, fmtNumber, fmtTime, plotLayout, plotly, plotText, queryParam, showError,
} from "./common.js";

const PERIODS = ["12h", "7d", "30d"];
const since = PERIODS.includes(queryParam("since")) ? queryParam("since") : (queryParam("since") || "7d");

function hours(h) {
  return h ? fmtNumber(Number(h.toFixed(h < 10 ? 2 : 1))) : "0";
}

function render(group, data) {
  const body = clear($(`#usage-${group} tbody`));
  for (const r of data.rows) {
    body.append(el("tr", {},
      el("th", { scope: "row" }, String(r[group])),
      cell(String(r.jobs), "num"),
      cell(String(r.attempts), "num"),
      cell(hours(r.cpu_hours), "num"),
      cell(hours(r.gpu_hours), "num"),
      cell(r.avg_wait_s === null ? "–" : fmtDuration(r.avg_wait_s), "num"),
      cell(hours(r.decayed_cpu_hours), "num"),
      cell(hours(r.decayed_gpu_hours), "num")));
  }
  if (!data.rows.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "empty" }, "No job held resources in this period.")));
  const P = plotly();
  const target = $(`#plot-${group}`);
  if (!P || !data.rows.length) {
    target.hidden = true;
    return;
  }
  target.hidden = false;
  const x = data.rows.map((r) => plotText(r[group]));
  const traces = [
    { type: "bar", name: "cpu-hours", x, y: data.rows.map((r) => r.cpu_hours) },
    { type: "bar", name: "decayed cpu-hours", x, y: data.rows.map((r) => r.decayed_cpu_hours) },
  ];
  if (data.rows.some((r) => r.gpu_hours || r.decayed_gpu_hours)) {
    traces.push({ type: "bar", name: "gpu-hours", x, y: data.rows.map((r) => r.gpu_hours) },
      { type: "bar", name: "decayed gpu-hours", x, y: data.rows.map((r) => r.decayed_gpu_hours) });
  }
  P.react(target, traces, plotLayout({ barmode: "group", bargap: 0.4, yaxis: { title: { text: "hours" } } }), PLOT_CONFIG);
}

async function load() {
  for (const a of document.querySelectorAll(".periods a")) {
    if (a.dataset.since === since) a.setAttribute("aria-current", "true");
  }
  let byUser, byQueue;
  try {
    [byUser, byQueue] = await Promise.all([
      api(`/api/v1/usage?since=${encodeURIComponent(since)}&by=user`),
      api(`/api/v1/usage?since=${encodeURIComponent(since)}&by=queue`),
    ]);
  } catch (err) {
    showError(err);
    $("#summary").textContent = "";
    return;
  }
  showError(null);
  $("#summary").textContent = `From ${fmtTime(byUser.since)} to ${fmtTime(byUser.now)}; `
    + `decayed usage (what fair share ranks by) halves every ${fmtDuration(byUser.half_life_s)}.`;
  render("user", byUser);
  render("queue", byQueue);
}

load();
