// The web client: auth, rooms, real-time chat over the gateway, history over GraphQL.
import { Api } from "./api.js";
import { Gateway } from "./gateway.js";
import { FileTray, renderAttachments } from "./files.js"; // attachments (files.js)
import * as e2e from "./e2e.js"; // end-to-end encrypted rooms (e2e.js)

const $ = (s) => document.querySelector(s);
const api = new Api();
let gw = null;
const state = { me: null, rooms: new Map(), current: null, users: new Map(), typing: new Map(), status: new Map() };
// per room: { id, name, lastSeq, msgs: Map(id -> msg), pending: Map(nonce -> msg), loaded, hasMore, unread }

const MSG = "id roomId seq authorId content nonce createdAt editedAt deleted reactions { emoji count me } author { id username } attachments { id filename contentType size width height } encrypted { ciphertext nonce epoch senderDevice signature }";

// ---------- auth ----------
$("#auth-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  try {
    await (e.submitter?.value === "register" ? api.register : api.login).call(api, f.get("username"), f.get("password"));
    await startChat();
  } catch (err) { $("#auth-error").textContent = err.message; }
});
$("#logout").onclick = async () => { gw?.stop(); await api.logout(); location.reload(); };

async function startChat() {
  const d = await api.gql(`{ me { id username } rooms { id name lastSeq encrypted } }`);
  state.me = d.me; state.users.set(d.me.id, d.me.username);
  e2e.start(api, d.me, () => render()).catch(() => {}); // this browser's device keys (e2e.js)
  d.rooms.forEach(addRoom);
  $("#auth").hidden = true; $("#chat").hidden = false; $("#me").textContent = d.me.username;
  gw = new Gateway(() => api.token());
  gw.addEventListener("status", (e) => { $("#conn").textContent = e.detail; $("#conn").className = `badge ${e.detail}`; });
  gw.addEventListener("READY", () => { if (gw.rooms.size === 0 && state.rooms.size) gw.subscribe([...state.rooms.keys()]); });
  // The gateway learns our status only from PRESENCE_UPDATE: announce it on every (re)connect,
  // or everyone (us included) shows as offline.
  for (const t of ["READY", "RESUMED"]) gw.addEventListener(t, () => gw.presence($("#status").value));
  gw.addEventListener("closed", () => { api.clear(); location.reload(); });
  for (const t of ["MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "REACTION_ADD", "REACTION_REMOVE", "MEMBER_JOIN", "MEMBER_LEAVE", "TYPING_START", "PRESENCE_UPDATE"])
    gw.addEventListener(t, (e) => onEvent(t, e.detail));
  await gw.start();
}

// ---------- rooms ----------
function addRoom(r) {
  if (!state.rooms.has(r.id)) state.rooms.set(r.id, { ...r, msgs: new Map(), pending: new Map(), loaded: false, hasMore: true, unread: 0 });
  renderRooms();
}
function renderRooms() {
  $("#rooms").replaceChildren(...[...state.rooms.values()].map((r) => {
    const li = el("li", r.id === state.current ? "active" : "", r.name);
    if (r.encrypted) li.prepend(e2e.lock());
    if (r.unread) li.append(el("span", "unread", String(r.unread)));
    li.onclick = () => selectRoom(r.id);
    return li;
  }));
}
$("#create-room").addEventListener("submit", (e) => roomForm(e, "mutation($n: String!, $e: Boolean) { createRoom(name: $n, encrypted: $e) { id name lastSeq encrypted } }", (f) => ({ n: f.get("name"), e: f.has("encrypted") }), "createRoom"));
$("#join-room").addEventListener("submit", (e) => roomForm(e, "mutation($r: ID!) { joinRoom(roomId: $r) { id name lastSeq encrypted } }", (f) => ({ r: f.get("id").trim() }), "joinRoom"));
async function roomForm(e, q, vars, field) {
  e.preventDefault();
  try {
    const room = (await api.gql(q, vars(new FormData(e.target))))[field];
    e.target.reset(); addRoom(room);
    await loadHistory(room.id);
    gw.subscribe([room.id]);
    selectRoom(room.id);
  } catch (err) { alert(err.message); }
}

async function selectRoom(id) {
  state.current = id;
  const r = state.rooms.get(id); r.unread = 0;
  $("#room-title").textContent = r.name; $("#room-id").textContent = `id ${id}`; $("#composer").hidden = false;
  e2e.roomHeader($("#room-e2e"), r, () => r.members || [], (u) => state.users.get(u) || u);
  renderRooms();
  if (!r.loaded) await loadHistory(id);
  render(true);
  renderMembers();
  await loadMembers(id);
}

async function loadMembers(id) {
  const d = await api.gql(`query($id: ID!) { room(id: $id) { members { id username status } } }`, { id });
  const members = d.room?.members || [];
  members.forEach((u) => { state.users.set(u.id, u.username); state.status.set(u.id, u.status); });
  state.rooms.get(id).members = members.map((u) => u.id);
  renderMembers();
}
function renderMembers() {
  const r = state.rooms.get(state.current);
  $("#members").textContent = (r?.members || []).map((u) => `${state.users.get(u) || u} (${state.status.get(u) || "offline"})`).join(", ");
}

// History: newest page first, older pages on scroll-back. The gateway resumes after the
// newest seq we hold, so no event is lost between the page and the live stream.
async function loadHistory(id, before = null) {
  const r = state.rooms.get(id);
  const d = await api.gql(`query($r: ID!, $b: ID) { messages(roomId: $r, before: $b, limit: 40) { hasMore items { ${MSG} } } }`, { r: id, b: before });
  for (const m of d.messages.items) { state.users.set(m.authorId, m.author.username); r.msgs.set(m.id, m); gw?.markSeen(id, m.seq); }
  r.hasMore = d.messages.hasMore; r.loaded = true;
}
$("#messages").addEventListener("scroll", async (e) => {
  const r = state.rooms.get(state.current);
  if (e.target.scrollTop > 20 || !r?.hasMore || r.loadingOlder) return;
  r.loadingOlder = true;
  const oldest = [...r.msgs.values()].sort(bySeq)[0];
  const h = e.target.scrollHeight;
  await loadHistory(r.id, oldest?.id).finally(() => { r.loadingOlder = false; });
  render(); e.target.scrollTop = e.target.scrollHeight - h;
});

// ---------- live events ----------
function onEvent(t, d) {
  if (t === "PRESENCE_UPDATE") { state.status.set(d.user_id, d.status); return renderMembers(); }
  const r = state.rooms.get(d.room_id);
  if (!r) return;
  if (t === "MEMBER_JOIN" || t === "MEMBER_LEAVE") {
    // the member list shown is the current room's: refetch it (names and statuses come along)
    if (d.room_id === state.current) loadMembers(d.room_id).catch(() => {});
    return;
  }
  if (t === "TYPING_START") {
    if (d.user_id === state.me.id) return;
    clearTimeout(state.typing.get(d.user_id)?.timer);
    state.typing.set(d.user_id, { room: d.room_id, timer: setTimeout(() => { state.typing.delete(d.user_id); renderTyping(); }, 8000) });
    return renderTyping();
  }
  const m = r.msgs.get(d.id || d.message_id);
  if (t === "MESSAGE_CREATE") {
    if (d.nonce && r.pending.has(d.nonce) && d.author_id === state.me.id) r.pending.delete(d.nonce);
    if (!m) r.msgs.set(d.id, { id: d.id, roomId: d.room_id, seq: d.seq, authorId: d.author_id, content: d.content, createdAt: d.created_at, deleted: false, reactions: [], attachments: d.attachments, nonce: d.nonce, encrypted: d.encrypted });
    if (!state.users.has(d.author_id)) lookupUser(d.author_id);
    if (d.room_id !== state.current) { r.unread++; renderRooms(); }
  } else if (t === "MESSAGE_UPDATE" && m) { m.content = d.content; m.editedAt = d.edited_at; m.encrypted = d.encrypted; }
  else if (t === "MESSAGE_DELETE" && m) { m.deleted = true; m.content = ""; }
  else if ((t === "REACTION_ADD" || t === "REACTION_REMOVE") && m) {
    const add = t === "REACTION_ADD" ? 1 : -1;
    let x = m.reactions.find((y) => y.emoji === d.emoji);
    if (!x) m.reactions.push((x = { emoji: d.emoji, count: 0, me: false }));
    x.count += add; if (d.user_id === state.me.id) x.me = add > 0;
    m.reactions = m.reactions.filter((y) => y.count > 0);
  }
  if (d.room_id === state.current) render();
}
async function lookupUser(id) {
  state.users.set(id, "…");
  const d = await api.gql(`query($id: ID!) { user(id: $id) { username } }`, { id });
  state.users.set(id, d.user?.username || id); render();
}
function renderTyping() {
  const names = [...state.typing].filter(([, v]) => v.room === state.current).map(([u]) => state.users.get(u) || u);
  $("#typing").textContent = names.length ? `${names.join(", ")} typing…` : "";
}

// ---------- sending ----------
let lastTyping = 0;
$("#composer input").addEventListener("input", () => {
  if (Date.now() - lastTyping > 8000 && state.current) { lastTyping = Date.now(); gw.typing(state.current); }
});
const files = new FileTray(api, { input: $("#attach input"), list: $("#uploads"), drop: $("#room"), error: $("#upload-error"), room: () => state.current });
$("#composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = e.target.content, content = input.value.trim(), room = state.current;
  if ((!content && !files.count) || !room) return;
  const attachmentIds = files.count ? await files.ready(room) : []; // files: uploaded, else errors shown
  if (!attachmentIds) return;
  input.value = "";
  const nonce = [...crypto.getRandomValues(new Uint8Array(12))].map((b) => b.toString(16).padStart(2, "0")).join("");
  const r = state.rooms.get(room);
  r.pending.set(nonce, { id: `pending-${nonce}`, authorId: state.me.id, content, pending: true, seq: Infinity, reactions: [] });
  render(true);
  try {
    const m = await (r.encrypted ? e2e.send(room, content, nonce, attachmentIds) : gw.sendMessage(room, content, nonce, attachmentIds)); // REPLY: the stored message
    r.pending.delete(nonce); files.sent();
    if (!r.msgs.has(m.id)) r.msgs.set(m.id, { id: m.id, roomId: room, seq: m.seq, authorId: m.author_id, content: m.content, createdAt: m.created_at, deleted: false, reactions: [], attachments: m.attachments, nonce: m.nonce, encrypted: m.encrypted });
  } catch (err) {
    if (!attachmentIds.length) r.pending.get(nonce).failed = err.message;
    else { r.pending.delete(nonce); files.refused(err); input.value ||= content; } // files refused: keep the text
  }
  render(true);
});

// ---------- rendering ----------
const bySeq = (a, b) => a.seq - b.seq;
function render(stick = false) {
  const r = state.rooms.get(state.current); if (!r) return;
  const box = $("#messages");
  const atBottom = stick || box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.replaceChildren(...[...r.msgs.values()].sort(bySeq).concat([...r.pending.values()]).map(renderMsg));
  if (atBottom) box.scrollTop = box.scrollHeight;
  renderTyping();
}
function renderMsg(m) {
  const div = el("div", `msg${m.pending ? " pending" : ""}${m.deleted ? " deleted" : ""}`);
  div.append(el("span", "who", state.users.get(m.authorId) || m.authorId),
    m.encrypted && !m.deleted ? e2e.textElement(m) : el("span", "text", m.deleted ? "message deleted" : m.content),
    el("span", "muted", `${m.editedAt ? " (edited)" : ""}${m.failed ? ` failed: ${m.failed}` : ""}`));
  if (m.attachments?.length && !m.deleted) div.append(renderAttachments(m.attachments));
  if (m.pending || m.deleted) return div;
  for (const x of m.reactions) {
    const b = el("button", `reaction${x.me ? " me" : ""}`, `${x.emoji} ${x.count}`);
    b.onclick = () => react(m, x.emoji, !x.me);
    div.append(b);
  }
  const actions = el("span", "actions");
  const add = el("button", "", "+👍"); add.onclick = () => react(m, "👍", true); actions.append(add);
  if (m.authorId === state.me.id) {
    const edit = el("button", "", "edit"); edit.onclick = () => editMsg(m);
    const del = el("button", "", "delete"); del.onclick = () => mutate("mutation($id: ID!) { deleteMessage(id: $id) }", { id: m.id });
    actions.append(edit, del);
  }
  div.append(actions);
  return div;
}
function react(m, emoji, add) {
  mutate(`mutation($m: ID!, $e: String!) { ${add ? "addReaction" : "removeReaction"}(messageId: $m, emoji: $e) }`, { m: m.id, e: emoji });
}
function editMsg(m) {
  const old = m.encrypted ? e2e.textOf(m) : m.content;
  const content = prompt("Edit message", old ?? "");
  if (content && content !== old && m.encrypted) e2e.edit(m, content).catch((err) => alert(err.message));
  else if (content && content !== old) mutate("mutation($id: ID!, $c: String!) { editMessage(id: $id, content: $c) { id } }", { id: m.id, c: content });
}
// The resulting room event arrives over the gateway and updates the view.
function mutate(q, v) { api.gql(q, v).catch((err) => alert(err.message)); }
function el(tag, cls = "", text = "") { const e = document.createElement(tag); if (cls) e.className = cls; if (text) e.textContent = text; return e; }

$("#status").onchange = (e) => gw?.presence(e.target.value);
if (api.session) startChat().catch(() => { api.clear(); });
