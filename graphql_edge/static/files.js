// Attachments in the web client (docs/protocol.md section 11): the composer's file tray (attach
// button, drag-and-drop, per-file SHA-256 + createUpload + presigned PUT with a progress bar)
// and the rendering of a message's files (image previews from the thumbnail, download links).
// app.js owns the message flow; it calls `tray.ready(room)` before a send, `tray.sent()` /
// `tray.refused(err)` after it, and `renderAttachments(atts)` when it draws a message.

const UPLOAD = `mutation($r: ID!, $f: String!, $t: String!, $s: Int!, $h: String!) {
  createUpload(roomId: $r, filename: $f, contentType: $t, size: $s, sha256: $h) { id url method headers { name value } } }`;
const THUMB_TRIES = 10;       // thumbnails are made after the send: ask again for ~10 s
const STALE_MS = 30_000;      // refresh a download URL this long before it expires

const hex = (buf) => [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
const fileSize = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);
function el(tag, cls = "", text = "") { const e = document.createElement(tag); if (cls) e.className = cls; if (text) e.textContent = text; return e; }

let api = null; // the Api, given to FileTray (its bearer token signs the /files/{id} requests)

// ---------- composer: the tray of files to send ----------
export class FileTray {
  // input: the <input type=file>; list: where the tray shows; drop: the element files can be
  // dropped on; error: the tray's message line; room: () => the room shown now
  constructor(theApi, { input, list, drop, error, room }) {
    api = theApi;
    this.list = list; this.error = error; this.room = room; this.entries = [];
    input.addEventListener("change", () => { this.add(input.files); input.value = ""; });
    drop.addEventListener("dragover", (e) => { if (hasFiles(e) && this.room()) { e.preventDefault(); drop.classList.add("dropping"); } });
    drop.addEventListener("dragleave", (e) => { if (!drop.contains(e.relatedTarget)) drop.classList.remove("dropping"); });
    drop.addEventListener("drop", (e) => {
      drop.classList.remove("dropping");
      if (!hasFiles(e) || !this.room()) return;
      e.preventDefault(); this.add(e.dataTransfer.files);
    });
    // a file dropped anywhere else would replace the page (and the typed text) with the file
    for (const t of ["dragover", "drop"]) window.addEventListener(t, (e) => { if (hasFiles(e)) e.preventDefault(); });
  }

  get count() { return this.entries.length; }

  // Uploads start at once, for the room shown now.
  add(files) {
    this.error.textContent = "";
    for (const file of files) {
      const x = this.entry(file);
      this.entries.push(x); this.start(x, this.room());
    }
  }

  entry(file) {
    const li = el("li", "upload"), bar = el("progress"), err = el("span", "error");
    const remove = el("button", "remove", "×");
    remove.type = "button"; remove.title = `remove ${file.name}`; remove.setAttribute("aria-label", remove.title);
    const x = { file, li, bar, err, job: null, room: null, xhr: null };
    remove.onclick = () => { this.entries = this.entries.filter((y) => y !== x); li.remove(); x.xhr?.abort(); };
    bar.setAttribute("aria-label", `upload of ${file.name}`);
    li.append(el("span", "name", file.name), el("span", "muted", fileSize(file.size)), bar, remove, err);
    this.list.append(li);
    return x;
  }

  start(x, room) {
    x.xhr?.abort();
    x.room = room; x.err.textContent = ""; x.li.className = "upload"; x.bar.max = x.file.size || 1; x.bar.value = 0;
    const job = (x.job = upload(x));
    job.then(() => { if (x.job === job) x.li.classList.add("done"); },
      (e) => { if (x.job === job) { x.li.classList.add("failed"); x.err.textContent = e.message; } });
  }

  // The upload ids to send to `room`, in order, once every upload finished; null (errors shown,
  // nothing sent) when one failed. Files uploaded for another room are uploaded again for this one.
  async ready(room) {
    if (this.busy) return null; // a send with these files is under way
    this.busy = true; this.error.textContent = "";
    for (const x of this.entries) if (x.room !== room || x.li.classList.contains("failed")) this.start(x, room);
    const done = await Promise.allSettled(this.entries.map((x) => x.job));
    if (done.some((d) => d.status === "rejected")) { this.busy = false; this.error.textContent = "fix or remove the files marked in red, then send again"; return null; }
    return done.map((d) => d.value);
  }

  sent() { this.busy = false; this.entries = []; this.list.replaceChildren(); this.error.textContent = ""; }

  // The send was refused: the server's message goes next to the file it names ("X was refused:
  // ..."; that upload is deleted: the next send uploads it again) or under the tray.
  refused(err) {
    this.busy = false;
    const x = this.entries.find((y) => err.message.startsWith(`${y.file.name} `));
    if (!x) { this.error.textContent = err.message; return; }
    x.li.classList.add("failed"); x.err.textContent = err.message;
  }
}

const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");

async function upload(x) {
  const { file } = x;
  if (!crypto.subtle) throw new Error("uploads need a secure page (HTTPS or localhost)");
  const body = await file.arrayBuffer();
  const sha = hex(await crypto.subtle.digest("SHA-256", body));
  const type = file.type || "application/octet-stream";
  const u = (await api.gql(UPLOAD, { r: x.room, f: file.name, t: type, s: file.size, h: sha })).createUpload;
  await new Promise((ok, fail) => {
    const xhr = (x.xhr = new XMLHttpRequest());
    xhr.open(u.method, u.url);
    for (const h of u.headers) xhr.setRequestHeader(h.name, h.value); // exactly these: the URL is signed for them
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) { x.bar.max = e.total; x.bar.value = e.loaded; } };
    xhr.onload = () => (xhr.status < 300 ? ok() : fail(new Error(`upload refused by the store (HTTP ${xhr.status})`)));
    xhr.onerror = () => fail(new Error("upload failed: network error"));
    xhr.onabort = () => fail(new Error("upload cancelled"));
    xhr.send(body);
  });
  x.bar.value = x.bar.max;
  return u.id;
}

// ---------- messages: previews and download links ----------
// One element per attachment, kept across renders (app.js redraws the list on every event):
// an image loads once, a link keeps its URL.
const shown = new Map();

// atts: GraphQL Attachment objects or MESSAGE_CREATE's snake_case ones.
export function renderAttachments(atts) {
  const box = el("div", "attachments");
  box.append(...atts.map((a) => {
    const image = (a.contentType || a.content_type || "").startsWith("image/") && a.width;
    if (!shown.has(a.id)) shown.set(a.id, (image ? preview : fileLink)(a));
    return shown.get(a.id);
  }));
  return box;
}

// A presigned URL for /files/{id}[/thumbnail] (section 11, 5.), or null while a thumbnail is
// being made (404 with Retry-After); other errors throw with the server's message.
async function signedUrl(path) {
  const res = await fetch(path, { headers: { Accept: "application/json", Authorization: `Bearer ${await api.token()}` } });
  const body = await res.json().catch(() => ({}));
  if (res.ok) return { url: body.url, until: Date.now() + body.expires_in * 1000 - STALE_MS };
  if (res.status === 404 && res.headers.get("Retry-After")) return null;
  throw new Error(body.error?.message || `HTTP ${res.status}`);
}

// A link to the original (opens or downloads it): href set once signed, re-signed when stale.
function linkTo(a, att) {
  let signed = null;
  const sign = () => signedUrl(`/files/${att.id}`).then((s) => { signed = s; a.href = s.url; })
    .catch((e) => { a.title = e.message; a.classList.add("failed"); });
  a.href = `/files/${att.id}`;
  a.addEventListener("click", async (e) => {
    if (signed && Date.now() < signed.until) return;
    e.preventDefault(); await sign();
    if (signed) a.click();
  });
  sign();
  return a;
}

function fileLink(att) {
  const a = el("a", "file");
  a.download = att.filename;
  a.append(el("span", "name", att.filename), el("span", "muted", ` ${fileSize(att.size)}`));
  return linkTo(a, att);
}

function preview(att) {
  const a = el("a", "preview");
  a.target = "_blank"; a.rel = "noopener"; a.title = `${att.filename} (${fileSize(att.size)})`;
  const img = el("img");
  img.alt = att.filename;
  // reserve the box the thumbnail will fill (it fits in 320 x 320) so the list does not jump
  const k = Math.min(1, 320 / Math.max(att.width, att.height));
  img.width = Math.round(att.width * k); img.height = Math.round(att.height * k);
  a.append(img);
  (async () => {
    for (let i = 0; i < THUMB_TRIES; i++) {
      const s = await signedUrl(`/files/${att.id}/thumbnail`).catch(() => undefined);
      if (s) { img.dataset.kind = "thumbnail"; img.src = s.url; return; }
      if (s === undefined) break; // none will come (Pillow could not decode it): the original
      await sleep(1000);
    }
    const s = await signedUrl(`/files/${att.id}`).catch(() => null);
    if (s) { img.dataset.kind = "original"; img.src = s.url; }
  })();
  return linkTo(a, att);
}
