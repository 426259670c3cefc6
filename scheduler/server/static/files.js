// A job's kept files: pictures shown inline, the rest as download links.
import { api, clear, el, fmtBytes } from "./common.js";

const IMAGE = /\.(png|jpe?g|gif|svg|webp)$/i;

function fileUrl(jobId, path, attempt) {
  const encoded = String(path).split("/").map(encodeURIComponent).join("/");
  return `/api/v1/jobs/${encodeURIComponent(jobId)}/files/${encoded}?attempt=${encodeURIComponent(attempt)}`;
}

// The files an answer of /api/v1/jobs/{id}/files lists: [{path, bytes, kept, kind}].
// (The answer carries the attempt record whole, or its fields at the top level.)
function listed(data) {
  const attempt = data.attempt && typeof data.attempt === "object" ? data.attempt : data;
  const number = attempt.number ?? data.attempt;
  const files = [];
  for (const o of attempt.outputs || []) {
    files.push({ path: o.path, bytes: o.bytes, kept: o.kept !== false, kind: "output" });
  }
  const seen = new Set(files.map((f) => f.path));
  for (const a of attempt.artifacts || []) {
    const path = typeof a === "string" ? a : a.path;
    if (!seen.has(path)) files.push({ path, bytes: a.bytes ?? null, kept: true, kind: "artifact" });
  }
  return { number, state: attempt.state, files };
}

export async function showFiles(container, jobId) {
  clear(container).append(el("p", { class: "muted" }, `Loading the files of job ${jobId}…`));
  let data;
  try {
    data = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/files`);
  } catch (err) {
    clear(container).append(el("p", { class: "muted" }, `job ${jobId}: ${err.message}`));
    return;
  }
  const { number, files } = listed(data);
  clear(container);
  container.append(el("h3", {}, `Job ${jobId}, attempt ${number}: `,
    files.length ? `${files.length} file${files.length === 1 ? "" : "s"}` : "no files kept"));
  if (!files.length) return;
  const pictures = el("div", { class: "gallery" });
  const list = el("ul", { class: "files" });
  for (const f of files) {
    const url = fileUrl(jobId, f.path, number);
    const size = f.bytes === null || f.bytes === undefined ? "" : ` (${fmtBytes(f.bytes)})`;
    if (!f.kept) {
      list.append(el("li", {}, el("span", { class: "mono" }, f.path), `${size}, not kept: over the size limit`));
    } else if (IMAGE.test(f.path)) {
      pictures.append(el("figure", {},
        el("a", { href: url, target: "_blank", rel: "noopener" },
          el("img", { src: url, alt: f.path, loading: "lazy", class: "artifact" })),
        el("figcaption", { class: "mono" }, f.path, size)));
    } else {
      list.append(el("li", {}, el("a", { href: url, download: f.path.split("/").pop(), class: "mono" }, f.path), size));
    }
  }
  if (pictures.childElementCount) container.append(pictures);
  if (list.childElementCount) container.append(list);
}
