// One job: what it asked for, its attempts and events, advice, its live log and files.
import {
  $, DASH, api, cell, clear, el, experimentLink, fmtBytes, fmtNumber, fmtTime, showError, shortNode, stateBadge,
  streamLines, timeEl,
} from "./common.js";
import { showFiles } from "./files.js";

const jobId = $("#page").dataset.job;
const TERMINAL = new Set(["succeeded", "failed", "timed_out", "cancelled", "unschedulable", "upstream_failed"]);
const LOG_LIMIT = 2_000_000; // characters kept in the page; the oldest go first

let last = null; // the last status read
let refresh = null;

function term(dl, name, ...value) {
  dl.append(el("dt", {}, name), el("dd", {}, ...value));
}

function paramsList(params) {
  const entries = Object.entries(params || {});
  if (!entries.length) return DASH;
  return el("ul", { class: "params" }, entries.map(([k, v]) => el("li", {}, el("span", { class: "key" }, k), " = ",
    el("span", { class: "mono" }, fmtNumber(v)))));
}

function resources(job) {
  const parts = [`cpu ${fmtNumber(job.cpu)}`];
  if (job.gpu_memory) parts.push(`gpu memory ${fmtBytes(job.gpu_memory)}`);
  else if (job.gpu) parts.push(`gpu ${fmtNumber(job.gpu)}`);
  if (job.memory) parts.push(`memory ${fmtBytes(job.memory)}`);
  for (const [k, v] of Object.entries(job.custom || {})) parts.push(`${k} ${fmtNumber(v)}`);
  return parts.join(", ");
}

function renderDetails(data) {
  const job = data.job;
  const now = data.now;
  clear($("#state-badge")).append(stateBadge(job.state));
  const dl = clear($("#details"));
  term(dl, "experiment", experimentLink(job.experiment), ` · stage ${job.stage}`);
  if (job.cancel_requested && !TERMINAL.has(job.state)) term(dl, "cancel", "requested; the job is being stopped");
  const waiting = job.state === "pending" || job.state === "blocked";
  if (job.reason) term(dl, waiting ? "why waiting" : "reason", job.reason);
  if (job.state === "pending") {
    term(dl, "estimated start", data.estimated_start == null ? "unknown" : timeEl(data.estimated_start, now));
  }
  term(dl, "user", job.user);
  term(dl, "queue", `${job.queue} (priority ${job.priority})`);
  term(dl, "resources", resources(job));
  term(dl, "params", paramsList(job.params));
  term(dl, "runs", el(job.target_kind === "command" ? "code" : "span", { class: "mono" }, job.target));
  term(dl, "submitted", timeEl(job.submitted_at, now), ` (${fmtTime(job.submitted_at)})`);
  if (job.started_at) term(dl, "started", timeEl(job.started_at, now));
  if (job.ended_at) term(dl, "ended", timeEl(job.ended_at, now));
  if (job.node_id) {
    term(dl, "node", shortNode(job.node_id), job.gpu_ids && job.gpu_ids.length ? `, GPU ${job.gpu_ids.join(", ")}` : "");
  }
  const attempts = `${job.attempts} attempt${job.attempts === 1 ? "" : "s"} so far`;
  const retries = `up to ${job.retries} retr${job.retries === 1 ? "y" : "ies"}`;
  term(dl, "retries", `${attempts}, ${retries}` + (job.timeout ? `; timeout ${fmtNumber(job.timeout)} s` : ""));
  if (job.depends_on && job.depends_on.length) {
    term(dl, "after", job.depends_on.flatMap((id, i) => [i ? ", " : "", el("a", { href: `/jobs/${id}` }, String(id))]));
  }
  const advice = clear($("#advice"));
  for (const line of data.advice || []) advice.append(el("li", {}, line));
  advice.hidden = !(data.advice || []).length;
  $("#summary").textContent = data.warning || "";
}

function renderAttempts(data) {
  const body = clear($("#attempts tbody"));
  for (const a of data.attempts) {
    const gpus = (a.gpu_ids || []).join(", ") + (a.gpu_share ? ` (${fmtNumber(a.gpu_share)} each)` : "");
    body.append(el("tr", {},
      cell(String(a.number), "num"),
      cell(stateBadge(a.state)),
      cell(shortNode(a.node_id)),
      cell(gpus || DASH),
      cell(a.started_at ? fmtTime(a.started_at) : DASH),
      cell(a.ended_at ? fmtTime(a.ended_at) : DASH),
      cell(a.exit_code === null || a.exit_code === undefined ? DASH : String(a.exit_code), "num"),
      cell(a.error ? el("span", { class: "error-text", title: a.error }, a.error.trim().split("\n").pop()) : DASH),
      cell(fmtBytes(a.peak_rss), "num")));
  }
  if (!data.attempts.length) {
    body.append(el("tr", {}, el("td", { colspan: 9, class: "empty" },
      TERMINAL.has(data.job.state) ? "It never started." : "Not started yet.")));
  }
}

function renderEvents(data) {
  const body = clear($("#events tbody"));
  for (const e of data.events) {
    body.append(el("tr", {}, cell(fmtTime(e.ts), "nowrap"), cell(e.kind), cell(e.message)));
  }
  if (!data.events.length) body.append(el("tr", {}, el("td", { colspan: 3, class: "empty" }, "No events.")));
}

async function loadStatus() {
  let data;
  try {
    data = await api(`/api/v1/status/${encodeURIComponent(jobId)}`);
  } catch (err) {
    showError(err);
    return null;
  }
  showError(null);
  const changed = !last || last.job.state !== data.job.state || last.attempts.length !== data.attempts.length;
  last = data;
  renderDetails(data);
  renderAttempts(data);
  renderEvents(data);
  if (changed && data.attempts.length) showFiles($("#files"), jobId);
  if (TERMINAL.has(data.job.state) && refresh) {
    clearInterval(refresh);
    refresh = null;
  }
  return data;
}

// ---------------------------------------------------------------- the live log

const log = $("#log");
let logged = 0;

function appendLog(name, text) {
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
  const last = log.lastElementChild;
  if (last && last.dataset.stream === name) last.append(text);
  else log.append(el("span", { class: `stream-${name}`, dataset: { stream: name } }, text));
  logged += text.length;
  while (logged > LOG_LIMIT && log.firstElementChild) {
    logged -= log.firstElementChild.textContent.length;
    log.firstElementChild.remove();
  }
  if (atBottom) log.scrollTop = log.scrollHeight;
}

// The log is read once the job has an attempt (a pending job's page polls its
// status instead of holding a stream open); a retry's attempt is followed in turn.
let following = false;
let followed = 0; // the attempt last followed to its end

function maybeFollow(data) {
  const status = $("#log-state");
  if (following) return;
  if (!data.attempts.length) {
    log.hidden = TERMINAL.has(data.job.state);
    status.textContent = TERMINAL.has(data.job.state)
      ? `(no output: the job ended ${data.job.state} before it started)` : "(waiting for the job to start…)";
    return;
  }
  const latest = data.attempts[data.attempts.length - 1].number;
  if (latest <= followed) return;
  following = true;
  followLog(latest).finally(() => { following = false; });
}

async function followLog(number) {
  const status = $("#log-state");
  status.textContent = "(following…)";
  if (followed) log.append(el("span", { class: "muted" }, `\n— attempt ${number} —\n`));
  let done = false;
  try {
    await streamLines(`/api/v1/jobs/${encodeURIComponent(jobId)}/logs/stream?stream=both`, (line) => {
      if (line.done) {
        done = true;
        followed = Math.max(followed, line.attempt || number);
        status.textContent = `(attempt ${line.attempt}: complete)`;
        if (!logged) log.append(el("span", { class: "muted" }, "(no output)"));
        return;
      }
      if (typeof line.data === "string") appendLog(line.stream === "stderr" ? "stderr" : "stdout", line.data);
    });
  } catch (err) {
    followed = number;
    status.textContent = `(log unavailable: ${err.message})`;
    return;
  }
  if (!done) {
    followed = number;
    status.textContent = "(the server ended the log early: reload the page to read on)";
    return;
  }
  const data = await loadStatus();
  if (data) maybeFollow(data);
}

// ---------------------------------------------------------------- start

async function refreshStatus() {
  const data = await loadStatus();
  if (data) maybeFollow(data);
}

loadStatus().then((data) => {
  if (!data) return;
  if (!data.attempts.length) clear($("#files")).append(el("p", { class: "muted" }, $("#files").dataset.empty));
  if (!TERMINAL.has(data.job.state)) refresh = setInterval(refreshStatus, 3000);
  maybeFollow(data);
});
