// The experiments, newest first, with their jobs' states.
import {
  $, api, cell, clear, el, experimentLink, pageOffset, renderPager, showError, stateBadge, timeEl,
} from "./common.js";

const LIMIT = 50;
const offset = pageOffset();

function counts(byState) {
  const order = ["running", "pending", "blocked", "succeeded", "failed", "cancelled"];
  const states = Object.keys(byState || {}).sort((a, b) => {
    const ia = order.indexOf(a), ib = order.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  return el("span", { class: "counts" }, states.map((s) => el("span", { class: "count" }, stateBadge(s), ` ${byState[s]}`)));
}

async function load() {
  let data;
  try {
    data = await api(`/api/v1/experiments?limit=${LIMIT}&offset=${offset}`);
  } catch (err) {
    showError(err);
    return;
  }
  showError(null);
  const now = Date.now() / 1000;
  const body = clear($("#experiments tbody"));
  for (const e of data.experiments) {
    body.append(el("tr", { dataset: { experiment: e.name } },
      cell(experimentLink(e.name)),
      cell(e.user),
      cell(e.queue),
      cell(timeEl(e.submitted_at, now)),
      cell(String(e.jobs), "num"),
      cell(counts(e.counts))));
  }
  if (!data.experiments.length) {
    body.append(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No experiments yet: `labq submit spec.yaml`.")));
  }
  $("#summary").textContent = `${data.total} experiment${data.total === 1 ? "" : "s"}`;
  renderPager($("#pager"), data.total, offset, LIMIT, data.experiments.length);
}

load();
