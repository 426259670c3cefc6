// The queue: running, pending and blocked jobs, why each waits and when it should start.
import {
  $, DASH, api, cell, clear, el, every, experimentLink, fmtNumber, jobLink, pageOffset, renderPager,
  shortNode, showError, stateBadge, timeEl,
} from "./common.js";

const LIMIT = 50;
const offset = pageOffset();

function row(job, now) {
  const waiting = job.state === "running" ? DASH : job.reason || DASH;
  const start = job.state === "pending" ? (job.estimated_start == null ? "unknown" : timeEl(job.estimated_start, now))
    : job.state === "running" ? el("span", {}, "started ", timeEl(job.started_at, now)) : DASH;
  return el("tr", { dataset: { job: job.id, state: job.state } },
    cell(jobLink(job.id), "num"),
    cell(experimentLink(job.experiment)),
    cell(job.stage),
    cell(job.user),
    cell(job.queue),
    cell(stateBadge(job.state)),
    cell(fmtNumber(job.cpu), "num"),
    cell(job.gpu_memory ? `${fmtNumber(job.gpu)} (${Math.round(job.gpu_memory / 2 ** 20)} MiB)` : fmtNumber(job.gpu), "num"),
    cell(waiting, "reason"),
    cell(start),
    cell(shortNode(job.node_id)));
}

async function load() {
  let data;
  try {
    data = await api(`/api/v1/queue?limit=${LIMIT}&offset=${offset}`);
  } catch (err) {
    showError(err);
    return;
  }
  showError(null);
  const banner = $("#banner");
  const notes = [data.unplaced, data.warning].filter(Boolean);
  banner.hidden = notes.length === 0;
  banner.textContent = notes.join(" · ");
  const body = clear($("#queue tbody"));
  for (const job of data.jobs) body.append(row(job, data.now));
  if (!data.jobs.length) {
    body.append(el("tr", {}, el("td", { colspan: 11, class: "empty" },
      offset ? "No jobs on this page." : "Nothing is running or waiting.")));
  }
  const total = data.total ?? data.jobs.length;
  const counts = {};
  for (const job of data.jobs) counts[job.state] = (counts[job.state] || 0) + 1;
  const parts = Object.entries(counts).map(([s, n]) => `${n} ${s}`);
  $("#summary").textContent = `${total} active job${total === 1 ? "" : "s"}`
    + (parts.length ? ` (this page: ${parts.join(", ")})` : "")
    + (data.scheduler && data.scheduler.running ? `; scheduler pid ${data.scheduler.pid}` : "");
  renderPager($("#pager"), total, offset, LIMIT, data.jobs.length);
}

every(5000, load);
