// What every page of the dashboard shares: reading the API, building DOM
// (text only: data never goes through innerHTML), formatting, paging.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function toLogin() {
  const here = location.pathname + location.search;
  location.assign("/login?next=" + encodeURIComponent(here));
}

// GET a JSON API path; a 401 sends the browser to the login page, any other
// error becomes an ApiError carrying the server's one-line message.
export async function api(path) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  } catch (err) {
    throw new ApiError(`the labq server did not answer (${err.message})`, 0);
  }
  if (response.status === 401) {
    toLogin();
    throw new ApiError("not logged in", 401);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    if (response.ok) throw new ApiError(`${path}: the answer was not JSON`, response.status);
  }
  if (!response.ok) {
    const message = body && typeof body.error === "string" ? body.error
      : body && typeof body.detail === "string" ? body.detail : `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status);
  }
  return body;
}

// Read an NDJSON stream, calling onLine(object) for each line.
export async function streamLines(path, onLine, signal) {
  const response = await fetch(path, { credentials: "same-origin", signal });
  if (response.status === 401) {
    toLogin();
    throw new ApiError("not logged in", 401);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.error) message = body.error;
    } catch (err) { /* not JSON: keep the status */ }
    throw new ApiError(message, response.status);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let at;
    while ((at = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, at);
      buffer = buffer.slice(at + 1);
      if (line.trim()) onLine(JSON.parse(line));
    }
  }
  buffer += decoder.decode();
  if (buffer.trim()) onLine(JSON.parse(buffer));
}

// el("a", {href: "/x", class: "y"}, "text", child, ...): strings become text nodes.
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

export function $(selector) {
  return document.querySelector(selector);
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function showError(err) {
  const box = $("#error");
  if (!box) return;
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  if (err.status === 401) return;
  box.textContent = err.message || String(err);
  box.hidden = false;
}

// ---------------------------------------------------------------- formatting

export const DASH = "–";

export function fmtNumber(value) {
  if (value === null || value === undefined || value === "") return DASH;
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    const abs = Math.abs(value);
    if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(3);
    return String(Number(value.toPrecision(4)));
  }
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return DASH;
  const s = Math.abs(seconds);
  if (s < 1) return `${seconds.toFixed(2)} s`;
  if (s < 60) return `${seconds.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

function roughly(seconds) {
  const s = Math.abs(seconds);
  if (s < 45) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(s < 36000 ? 1 : 0)} h`;
  return `${(s / 86400).toFixed(s < 864000 ? 1 : 0)} days`;
}

// "in 5 min" / "3 min ago" / "now", relative to the server's `now` when given.
export function fmtRelative(epoch, now) {
  if (epoch === null || epoch === undefined) return DASH;
  const delta = epoch - (now ?? Date.now() / 1000);
  if (Math.abs(delta) < 2) return "now";
  return delta > 0 ? `in ${roughly(delta)}` : `${roughly(delta)} ago`;
}

export function fmtTime(epoch) {
  if (epoch === null || epoch === undefined) return DASH;
  const d = new Date(epoch * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// A <time> element showing a relative time, with the exact one on hover.
export function timeEl(epoch, now, relative = true) {
  if (epoch === null || epoch === undefined) return DASH;
  return el("time", { datetime: new Date(epoch * 1000).toISOString(), title: fmtTime(epoch) },
    relative ? fmtRelative(epoch, now) : fmtTime(epoch));
}

export function stateBadge(state) {
  return el("span", { class: `state state-${String(state).replace(/[^a-z_]/g, "")}` }, state);
}

export function shortNode(nodeId) {
  return nodeId ? el("span", { title: nodeId, class: "mono" }, String(nodeId).slice(0, 8)) : DASH;
}

export function jobLink(id) {
  return el("a", { href: `/jobs/${encodeURIComponent(id)}` }, String(id));
}

export function experimentLink(name) {
  return el("a", { href: `/experiments/${encodeURIComponent(name)}` }, name);
}

export function cell(content, cls) {
  return el("td", cls ? { class: cls } : {}, content);
}

// ---------------------------------------------------------------- paging

export function queryParam(name, fallback = null) {
  const value = new URLSearchParams(location.search).get(name);
  return value === null ? fallback : value;
}

export function pageOffset() {
  const n = parseInt(queryParam("offset", "0"), 10);
  return Number.isFinite(n) && n > 0 ? n : 0;
}

function withOffset(offset) {
  const params = new URLSearchParams(location.search);
  if (offset > 0) params.set("offset", String(offset));
  else params.delete("offset");
  const query = params.toString();
  return location.pathname + (query ? `?${query}` : "");
}

// Prev/next links and "51–100 of 230" under a table.
export function renderPager(container, total, offset, limit, shown) {
  clear(container);
  if (!total || (offset === 0 && total <= limit)) {
    container.hidden = true;
    return;
  }
  container.hidden = false;
  const first = total ? offset + 1 : 0;
  const last = offset + shown;
  const prev = offset > 0
    ? el("a", { href: withOffset(Math.max(0, offset - limit)), rel: "prev" }, "← prev")
    : el("span", { class: "disabled", "aria-disabled": "true" }, "← prev");
  const next = offset + limit < total
    ? el("a", { href: withOffset(offset + limit), rel: "next" }, "next →")
    : el("span", { class: "disabled", "aria-disabled": "true" }, "next →");
  container.append(prev, el("span", { class: "range" }, `${first}–${last} of ${total}`), next);
}

// ---------------------------------------------------------------- refresh

// Call fn now and every `ms` while the tab is visible; fn returns a promise.
export function every(ms, fn) {
  let timer = null;
  let busy = false;
  const tick = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      await fn();
    } finally {
      busy = false;
    }
  };
  const start = () => {
    if (timer === null) timer = setInterval(tick, ms);
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) tick();
  });
  tick();
  start();
  return { stop: () => { clearInterval(timer); timer = null; } };
}

// ---------------------------------------------------------------- plotly

export function plotly() {
  return window.Plotly || null;
}

// Text for plotly's labels, titles, trace names and category ticks, which it
// reads as a little HTML (<b>, <a href>, entities): escaped, it shows as typed.
// (A parcoords dimension's ticktext is shown as it is: pass it raw.)
export function plotText(value) {
  return String(value).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

export const PLOT_CONFIG = { displaylogo: false, responsive: true };

export function plotLayout(extra) {
  return {
    margin: { l: 60, r: 20, t: 30, b: 50 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, sans-serif", size: 12 },
    ...extra,
  };
}
