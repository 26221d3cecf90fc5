// The web client: auth (with two-factor), rooms, people and invitations, real-time chat over the
// gateway, history, read state and settings over GraphQL. Plain ES modules, no build step.
// Hooks for other modules: renderMsg(m) renders one message, fromGateway(d) turns a gateway
// message payload into the shape GraphQL returns (MSG), #composer is the one message form.
import { Api } from "./api.js";
import { Gateway } from "./gateway.js";
import { FileTray, renderAttachments } from "./files.js"; // attachments (files.js)
import * as e2e from "./e2e.js"; // end-to-end encrypted rooms (e2e.js)

const $ = (s) => document.querySelector(s);
const api = new Api();
let gw = null;
const state = {
  me: null, rooms: new Map(), current: null, users: new Map(), status: new Map(),
  typing: new Map(),   // user id -> {room, timer}: cleared by their next message or after TYPING_MS
  invitations: [],
  answered: new Set(), // room ids of invitations answered here: a poll already on its way still lists them
  menuFor: null,       // id of the message whose action menu is open
  editing: null,       // {id, text}: the message being edited inline
};
// per room: {id, name, lastSeq, direct, public, encrypted, myRole, unread, mentions, muted, lastReadSeq,
//            msgs: Map(id -> msg), pending: Map(nonce -> msg), loaded, hasMore, members}

const MSG = "id roomId seq authorId content nonce createdAt editedAt deleted mentions reactions { emoji count me } author { id username } attachments { id filename contentType size width height } encrypted { ciphertext nonce epoch senderDevice signature }";
const ROOM = "id name lastSeq public direct encrypted myRole lastReadSeq unreadCount mentionCount muted";
const INVITE = "roomId roomName createdAt inviter { id username }";
const TYPING_MS = 5000;
const POLL_MS = 10_000;   // rooms and invitations: nothing on the gateway announces them
const REACTIONS = ["👍", "❤️", "😂", "🎉"];
const lastRoomKey = () => `shardchat.room.${state.me.id}`;

// ---------- notices (never alert()) ----------
function toast(text, kind = "error") {
  const t = el("div", `toast ${kind}`);
  t.setAttribute("role", kind === "error" ? "alert" : "status");
  const close = el("button", "close", "×");
  close.type = "button"; close.setAttribute("aria-label", "Dismiss");
  close.onclick = () => t.remove();
  t.append(el("span", "", text), close);
  $("#toasts").append(t);
  setTimeout(() => t.remove(), kind === "error" ? 15_000 : 6000);
}
const fail = (err) => toast(err.message || String(err));

// ---------- auth ----------
$("#auth-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  const [u, p, code] = [f.get("username"), f.get("password"), f.get("totp")];
  $("#auth-error").textContent = "";
  try {
    if (e.submitter?.value === "register") await api.register(u, p);
    else await api.login(u, p, $("#totp-row").hidden ? null : code);
    await startChat();
  } catch (err) {
    if (err.reason === "TWO_FACTOR_REQUIRED") {
      $("#totp-row").hidden = false; $("#auth-totp").focus();
      $("#auth-error").textContent = "Enter the code from your authenticator app.";
    } else $("#auth-error").textContent = err.message;
  }
});
$("#logout").onclick = async () => { gw?.stop(); await api.logout(); location.reload(); };

async function startChat() {
  const d = await api.gql(`{ me { id username } rooms { ${ROOM} } invitations { ${INVITE} } }`);
  state.me = d.me; state.users.set(d.me.id, d.me.username);
  e2e.start(api, d.me, () => render()).catch(() => {}); // this browser's device keys (e2e.js)
  d.rooms.forEach(addRoom);
  setInvitations(d.invitations);
  $("#auth").hidden = true; $("#chat").hidden = false; $("#me").textContent = d.me.username;
  state.membersOn = matchMedia("(min-width: 1000px)").matches;
  renderNotifyButton();
  gw = new Gateway(() => api.token());
  // subscribe after the seqs the counts above are from: what comes meanwhile is replayed
  for (const r of state.rooms.values()) gw.markSeen(r.id, r.lastSeq);
  gw.addEventListener("status", (e) => { $("#conn").textContent = e.detail; $("#conn").className = `badge ${e.detail}`; });
  gw.addEventListener("READY", () => { if (gw.rooms.size === 0 && state.rooms.size) gw.subscribe([...state.rooms.keys()]).catch(() => {}); });
  // The gateway learns our status only from PRESENCE_UPDATE: announce it on every (re)connect,
  // or everyone (us included) shows as offline.
  for (const t of ["READY", "RESUMED"]) gw.addEventListener(t, () => gw.presence($("#status").value));
  gw.addEventListener("closed", () => { api.clear(); location.reload(); });
  for (const t of ["MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "REACTION_ADD", "REACTION_REMOVE",
    "MEMBER_JOIN", "MEMBER_LEAVE", "TYPING_START", "PRESENCE_UPDATE", "READ_STATE"])
    gw.addEventListener(t, (e) => onEvent(t, e.detail));
  await gw.start();
  const last = localStorage.getItem(lastRoomKey());
  if (last && state.rooms.has(last)) await selectRoom(last);
  setInterval(() => { if (!document.hidden) refresh().catch(() => {}); }, POLL_MS);
}

// Rooms someone else put us in (a direct conversation, an accepted invitation in another tab)
// and new invitations: fetched again every POLL_MS and when the tab comes back.
async function refresh() {
  const gen = roomsGen;
  const d = await api.gql(`{ rooms { ${ROOM} } invitations { ${INVITE} } }`);
  const pending = new Set(d.invitations.map((i) => i.roomId));
  for (const id of state.answered) if (!pending.has(id)) state.answered.delete(id);
  setInvitations(d.invitations);
  if (gen !== roomsGen) return; // we entered or left a room meanwhile: the answer may predate it
  const listed = new Set(d.rooms.map((r) => r.id));
  const fresh = d.rooms.filter((r) => !state.rooms.has(r.id));
  for (const r of d.rooms) {
    const known = state.rooms.get(r.id);
    if (known && r.id !== state.current) Object.assign(known, readState(r));
  }
  for (const r of fresh) { addRoom(r); gw.markSeen(r.id, r.lastSeq); }
  if (fresh.length) gw.subscribe(fresh.map((r) => r.id)).catch(() => {});
  for (const id of [...state.rooms.keys()]) if (!listed.has(id)) dropRoom(id);
  renderRooms();
}
document.addEventListener("visibilitychange", () => {
  if (document.hidden || !state.me) return;
  markRead();
  refresh().catch(() => {});
});

// ---------- rooms ----------
let roomsGen = 0; // bumped whenever we enter or leave a room
const readState = (r) => ({ unread: r.unreadCount, mentions: r.mentionCount, muted: r.muted, lastReadSeq: r.lastReadSeq });
function addRoom(r) {
  if (!state.rooms.has(r.id)) {
    roomsGen++;
    state.rooms.set(r.id, { id: r.id, name: r.name, lastSeq: r.lastSeq, direct: r.direct, public: r.public, encrypted: r.encrypted, myRole: r.myRole,
      ...readState(r), msgs: new Map(), pending: new Map(), loaded: false, hasMore: true, members: [] });
  }
  renderRooms();
}
function dropRoom(id) {
  if (state.rooms.delete(id)) roomsGen++;
  if (state.current === id) {
    state.current = null; localStorage.removeItem(lastRoomKey());
    $("#room-title").textContent = "Pick a room"; $("#room-id").textContent = ""; $("#room-e2e").replaceChildren();
    $("#composer").hidden = true; $("#room-actions").hidden = true; $("#pick-hint").hidden = false;
    $("#messages").replaceChildren(); $("#members").replaceChildren(); showMembers(state.membersOn);
  }
  renderRooms();
}
// A direct room is named "alice, bob": show the other one.
function roomName(r) {
  if (!r.direct) return r.name;
  return r.name.split(", ").filter((n) => n !== state.me.username).join(", ") || r.name;
}
function renderRooms() {
  let total = 0;
  $("#no-rooms").hidden = state.rooms.size > 0;
  $("#rooms").replaceChildren(...[...state.rooms.values()].map((r) => {
    if (!r.muted) total += r.unread;
    const b = el("button", `room${r.id === state.current ? " active" : ""}${r.muted ? " muted-room" : ""}`);
    b.type = "button";
    if (r.id === state.current) b.setAttribute("aria-current", "true");
    const name = el("span", "name", `${r.direct ? "@ " : "# "}${roomName(r)}`);
    if (r.encrypted) name.prepend(e2e.lock());
    b.append(name);
    if (r.mentions) b.append(badge("mention", `@${cap(r.mentions)}`, `${r.mentions} mentions`));
    if (r.unread) b.append(badge("unread", cap(r.unread), `${r.unread} unread`));
    b.onclick = () => selectRoom(r.id).catch(fail);
    const li = el("li"); li.append(b);
    return li;
  }));
  document.title = total ? `(${cap(total)}) shardchat` : "shardchat";
}
const cap = (n) => (n > 999 ? "999+" : String(n));
function badge(cls, text, label) {
  const s = el("span", `count ${cls}`, text);
  s.setAttribute("aria-label", label);
  return s;
}

$("#create-room").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  try {
    const d = await api.gql(`mutation($n: String!, $p: Boolean, $e: Boolean) { createRoom(name: $n, public: $p, encrypted: $e) { ${ROOM} } }`,
      { n: f.get("name"), p: f.get("public") === "on", e: f.get("encrypted") === "on" });
    e.target.reset();
    await enterRoom(d.createRoom);
  } catch (err) { fail(err); }
});
$("#join-room").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const d = await api.gql(`mutation($r: ID!) { joinRoom(roomId: $r) { ${ROOM} } }`, { r: new FormData(e.target).get("id").trim() });
    e.target.reset();
    await enterRoom(d.joinRoom);
  } catch (err) { fail(err); }
});
// A room we just got into: its history first, then the live stream after it.
async function enterRoom(room) {
  addRoom(room);
  const r = state.rooms.get(room.id);
  if (!r.loaded) await loadHistory(room.id);
  gw.subscribe([room.id]).catch(() => {});
  await selectRoom(room.id);
}

async function selectRoom(id) {
  const r = state.rooms.get(id);
  if (!r) return;
  state.current = id; state.menuFor = null; state.editing = null;
  localStorage.setItem(lastRoomKey(), id);
  setNav(false);
  $("#room-title").textContent = roomName(r);
  $("#room-id").textContent = r.direct ? "direct conversation" : `${r.public ? "public" : "private"} room · id ${id}`;
  e2e.roomHeader($("#room-e2e"), r, () => (r.members || []).map((m) => m.id), (u) => state.users.get(u) || u);
  $("#composer").hidden = false; $("#room-actions").hidden = false; $("#pick-hint").hidden = true;
  $("#leave").hidden = r.direct;
  $("#invite-open").hidden = r.direct || (!r.public && r.myRole === "MEMBER");
  showMembers(state.membersOn);
  renderMute();
  renderRooms();
  if (!r.loaded) await loadHistory(id);
  if (state.current !== id) return;
  render(true);
  markRead();
  await loadMembers(id);
}

// Read up to the newest event shown, when the room is on screen in a visible tab: at most one
// markRead per room and second (mutations are rate limited), with the newest seq at that time.
// The server answers (and tells our other tabs, READ_STATE) with the new counts.
function markRead() {
  const r = state.rooms.get(state.current);
  if (!r || document.hidden || (!r.unread && !r.mentions && r.lastReadSeq >= r.lastSeq)) return;
  r.unread = 0; r.mentions = 0; renderRooms();
  r.readTimer ||= setTimeout(() => {
    r.readTimer = null;
    api.gql("mutation($r: ID!, $s: Int!) { markRead(roomId: $r, seq: $s) { roomId lastReadSeq unreadCount mentionCount muted } }", { r: r.id, s: r.lastSeq })
      .then((d) => applyReadState(d.markRead)).catch(fail);
  }, 1000);
}
function applyReadState(s) {
  const r = state.rooms.get(s.roomId ?? s.room_id);
  if (!r) return;
  Object.assign(r, { lastReadSeq: s.lastReadSeq ?? s.last_read_seq, unread: s.unreadCount ?? s.unread_count,
    mentions: s.mentionCount ?? s.mention_count, muted: s.muted });
  renderRooms(); renderMute();
}

function renderMute() {
  const r = state.rooms.get(state.current);
  if (!r) return;
  $("#mute").textContent = r.muted ? "Unmute" : "Mute";
  $("#mute").setAttribute("aria-pressed", String(r.muted));
}
$("#mute").onclick = () => {
  const r = state.rooms.get(state.current);
  api.gql("mutation($r: ID!, $m: Boolean!) { setRoomMuted(roomId: $r, muted: $m) { roomId lastReadSeq unreadCount mentionCount muted } }", { r: r.id, m: !r.muted })
    .then((d) => applyReadState(d.setRoomMuted)).catch(fail);
};
$("#leave").onclick = async () => {
  const id = state.current;
  try {
    await api.gql("mutation($r: ID!) { leaveRoom(roomId: $r) }", { r: id });
    dropRoom(id);
    toast("You left the room.", "info");
  } catch (err) { fail(err); }
};

// ---------- members ----------
async function loadMembers(id) {
  const d = await api.gql(`query($id: ID!) { room(id: $id) { memberRoles { role user { id username status } } } }`, { id });
  const r = state.rooms.get(id);
  if (!r) return;
  r.members = (d.room?.memberRoles || []).map(({ role, user }) => {
    state.users.set(user.id, user.username); state.status.set(user.id, user.status);
    return { id: user.id, role };
  });
  renderMembers();
}
function renderMembers() {
  const r = state.rooms.get(state.current);
  const members = [...(r?.members || [])].sort((a, b) => (state.users.get(a.id) || "").localeCompare(state.users.get(b.id) || ""));
  $("#members").replaceChildren(...members.map((m) => {
    const status = state.status.get(m.id) || "offline";
    const li = el("li", "member");
    const dot = el("span", `dot ${status}`); dot.setAttribute("aria-hidden", "true");
    li.append(dot, el("span", "name", `${state.users.get(m.id) || m.id}${m.id === state.me.id ? " (you)" : ""}`),
      el("span", "muted", m.role === "MEMBER" ? status : `${status} · ${m.role.toLowerCase()}`));
    return li;
  }));
  $("#members-toggle").textContent = `Members (${members.length})`;
}
// The member list beside the conversation (above it on a phone), shown or not by the user.
function showMembers(on) {
  state.membersOn = on;
  $("#members-panel").hidden = !on || !state.current;
  $("#members-toggle").setAttribute("aria-expanded", String(on));
}
$("#members-toggle").onclick = () => showMembers(!state.membersOn);

// ---------- people: search, direct conversations, invitations ----------
// A debounced search box listing users with one action button each (searchUsers is rate limited).
function userSearch(input, list, label, onPick) {
  let timer = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const prefix = input.value.trim();
      if (!prefix) { list.replaceChildren(); return; }
      try {
        const d = await api.gql("query($p: String!) { searchUsers(prefix: $p, limit: 8) { id username status } }", { p: prefix });
        if (input.value.trim() !== prefix) return;
        const users = d.searchUsers.filter((u) => u.id !== state.me.id);
        list.replaceChildren(...users.map((u) => {
          const li = el("li", "person");
          const b = el("button", "secondary", label); b.type = "button";
          b.setAttribute("aria-label", `${label} ${u.username}`);
          b.onclick = () => onPick(u, b).catch(fail);
          li.append(el("span", "name", u.username), b);
          return li;
        }));
        if (!users.length) list.replaceChildren(el("li", "muted", "nobody by that name"));
      } catch (err) { fail(err); }
    }, 300);
  });
  input.form.addEventListener("submit", (e) => e.preventDefault());
}
userSearch($("#user-search-input"), $("#user-results"), "Message", async (u) => {
  const d = await api.gql(`mutation($u: ID!) { openDirectRoom(userId: $u) { ${ROOM} } }`, { u: u.id });
  $("#user-search-input").value = ""; $("#user-results").replaceChildren();
  await enterRoom(d.openDirectRoom);
  $("#composer-input").focus();
});
userSearch($("#invite-input"), $("#invite-results"), "Invite", async (u, button) => {
  await api.gql("mutation($r: ID!, $u: [ID!]!) { inviteToRoom(roomId: $r, userIds: $u) }", { r: state.current, u: [u.id] });
  button.textContent = "Invited"; button.disabled = true;
  toast(`Invited ${u.username}.`, "info");
});
$("#invite-open").onclick = () => {
  $("#invite-room").textContent = roomName(state.rooms.get(state.current));
  $("#invite-results").replaceChildren(); $("#invite-input").value = "";
  $("#invite-dialog").showModal();
};

function setInvitations(list) {
  list = list.filter((i) => !state.answered.has(i.roomId));
  state.invitations = list;
  $("#invitations-box").hidden = !list.length;
  $("#invitations").replaceChildren(...list.map((inv) => {
    const li = el("li", "invitation");
    const accept = el("button", "", "Accept"), decline = el("button", "secondary", "Decline");
    accept.type = decline.type = "button";
    accept.setAttribute("aria-label", `Accept invitation to ${inv.roomName}`);
    decline.setAttribute("aria-label", `Decline invitation to ${inv.roomName}`);
    accept.onclick = () => answerInvitation(inv, true).catch(fail);
    decline.onclick = () => answerInvitation(inv, false).catch(fail);
    li.append(el("span", "name", `${inv.roomName}`), el("span", "muted", `from ${inv.inviter.username}`), accept, decline);
    return li;
  }));
}
async function answerInvitation(inv, accept) {
  const room = accept
    ? (await api.gql(`mutation($r: ID!) { acceptInvitation(roomId: $r) { ${ROOM} } }`, { r: inv.roomId })).acceptInvitation
    : (await api.gql("mutation($r: ID!) { declineInvitation(roomId: $r) }", { r: inv.roomId }), null);
  state.answered.add(inv.roomId);
  setInvitations(state.invitations);
  if (room) await enterRoom(room);
}

// ---------- history ----------
// Newest page first, older pages on scroll-back. The gateway resumes after the newest seq we
// hold, so no event is lost between the page and the live stream.
async function loadHistory(id, before = null) {
  const r = state.rooms.get(id);
  const d = await api.gql(`query($r: ID!, $b: ID) { messages(roomId: $r, before: $b, limit: 40) { hasMore items { ${MSG} } } }`, { r: id, b: before });
  for (const m of d.messages.items) {
    state.users.set(m.authorId, m.author.username); r.msgs.set(m.id, m); gw?.markSeen(id, m.seq);
    r.lastSeq = Math.max(r.lastSeq, m.seq);
  }
  r.hasMore = d.messages.hasMore; r.loaded = true;
}
$("#messages").addEventListener("scroll", async (e) => {
  const r = state.rooms.get(state.current);
  if (e.target.scrollTop > 20 || !r?.hasMore || r.loadingOlder) return;
  r.loadingOlder = true;
  const oldest = [...r.msgs.values()].sort(bySeq)[0];
  const h = e.target.scrollHeight;
  await loadHistory(r.id, oldest?.id).catch(fail).finally(() => { r.loadingOlder = false; });
  render(); e.target.scrollTop = e.target.scrollHeight - h;
});

// ---------- live events ----------
// A gateway message payload (MESSAGE_CREATE d, SEND's REPLY result) in the GraphQL Message shape.
function fromGateway(d) {
  return { id: d.id, roomId: d.room_id, seq: d.seq, authorId: d.author_id, content: d.content, createdAt: d.created_at,
    deleted: false, mentions: d.mentions || [], reactions: [], nonce: d.nonce, attachments: d.attachments || [], encrypted: d.encrypted };
}
function onEvent(t, d) {
  if (t === "PRESENCE_UPDATE") { state.status.set(d.user_id, d.status); return renderMembers(); }
  if (t === "READ_STATE") return applyReadState(d);
  const r = state.rooms.get(d.room_id);
  if (!r) return;
  if (d.seq) r.lastSeq = Math.max(r.lastSeq, d.seq);
  if (t === "MEMBER_JOIN" || t === "MEMBER_LEAVE") {
    if (t === "MEMBER_LEAVE" && d.user_id === state.me.id) return dropRoom(d.room_id); // left elsewhere, or removed
    // the member list shown is the current room's: refetch it (names and statuses come along)
    if (d.room_id === state.current) loadMembers(d.room_id).catch(() => {});
    return;
  }
  if (t === "TYPING_START") {
    if (d.user_id === state.me.id) return;
    clearTyping(d.user_id);
    state.typing.set(d.user_id, { room: d.room_id, timer: setTimeout(() => { state.typing.delete(d.user_id); renderTyping(); }, TYPING_MS) });
    return renderTyping();
  }
  const m = r.msgs.get(d.id || d.message_id);
  if (t === "MESSAGE_CREATE") {
    if (d.nonce && d.author_id === state.me.id) r.pending.delete(d.nonce);
    if (!m) r.msgs.set(d.id, fromGateway(d));
    clearTyping(d.author_id); // their message is here: they stopped typing it
    if (!state.users.has(d.author_id)) lookupUser(d.author_id);
    if (d.author_id !== state.me.id) onIncoming(r, d);
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
// Someone else's new message: read at once if on screen, else counted; a notification when the
// tab is hidden and the room not muted.
function onIncoming(r, d) {
  const mentioned = (d.mentions || []).includes(state.me.id);
  const text = preview(d);
  if (r.id === state.current && !document.hidden) {
    $("#announce").textContent = `${state.users.get(d.author_id) || "someone"}: ${text}`;
    markRead(); return;
  }
  r.unread++; if (mentioned) r.mentions++;
  renderRooms();
  if (document.hidden && !r.muted && "Notification" in window && Notification.permission === "granted") {
    const who = state.users.get(d.author_id) || "someone";
    const title = r.direct ? who : `${who} ${mentioned ? "mentioned you in" : "in"} ${roomName(r)}`;
    const n = new Notification(title, { body: text, tag: `room-${r.id}` });
    n.onclick = () => { window.focus(); selectRoom(r.id).catch(fail); n.close(); };
  }
}
// What an announcement or a notification shows of a message (an encrypted one is not decrypted yet).
function preview(d) {
  if (d.encrypted) return "encrypted message";
  return d.content.slice(0, 200) || (d.attachments?.length ? `${d.attachments.length} file(s)` : "");
}
function clearTyping(userId) {
  const t = state.typing.get(userId);
  if (!t) return;
  clearTimeout(t.timer); state.typing.delete(userId); renderTyping();
}
async function lookupUser(id) {
  state.users.set(id, "…");
  const d = await api.gql(`query($id: ID!) { user(id: $id) { username } }`, { id });
  state.users.set(id, d.user?.username || id); render();
}
function renderTyping() {
  const names = [...state.typing].filter(([, v]) => v.room === state.current).map(([u]) => state.users.get(u) || u);
  $("#typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}

// ---------- notifications ----------
function renderNotifyButton() {
  const b = $("#notify");
  if (!("Notification" in window)) { b.hidden = true; return; }
  b.textContent = Notification.permission === "granted" ? "Notifications on" : "Enable notifications";
  b.disabled = Notification.permission !== "default";
  if (Notification.permission === "denied") b.textContent = "Notifications blocked";
}
$("#notify").onclick = async () => { await Notification.requestPermission(); renderNotifyButton(); };

// ---------- sending ----------
let lastTyping = 0;
$("#composer-input").addEventListener("input", () => {
  if (Date.now() - lastTyping > 4000 && state.current) { lastTyping = Date.now(); gw.typing(state.current); }
});
const files = new FileTray(api, { input: $("#attach input"), list: $("#uploads"), drop: $("#room"), error: $("#upload-error"), room: () => state.current });
$("#composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = e.target.content, content = input.value.trim(), room = state.current;
  if ((!content && !files.count) || !room) return;
  const attachmentIds = files.count ? await files.ready(room) : []; // files: uploaded, else errors shown
  if (!attachmentIds) return;
  input.value = ""; lastTyping = 0;
  const nonce = [...crypto.getRandomValues(new Uint8Array(12))].map((b) => b.toString(16).padStart(2, "0")).join("");
  const r = state.rooms.get(room);
  r.pending.set(nonce, { id: `pending-${nonce}`, authorId: state.me.id, content, pending: true, seq: Infinity, reactions: [], mentions: [] });
  render(true);
  try {
    const m = await (r.encrypted ? e2e.send(room, content, nonce, attachmentIds) : gw.sendMessage(room, content, nonce, attachmentIds)); // REPLY: the stored message
    r.pending.delete(nonce); files.sent();
    if (!r.msgs.has(m.id)) r.msgs.set(m.id, fromGateway({ room_id: room, ...m })); // e2e.send's has no room_id
    r.lastSeq = Math.max(r.lastSeq, m.seq);
  } catch (err) {
    if (attachmentIds.length) { r.pending.delete(nonce); files.refused(err); input.value ||= content; } // files refused: keep the text
    else { const p = r.pending.get(nonce); if (p) p.failed = err.message; }
  }
  if (state.current === room) render(true);
});

// ---------- rendering ----------
const bySeq = (a, b) => a.seq - b.seq;
const dayOf = (iso) => new Date(iso).toDateString();
function dayLabel(iso) {
  const d = new Date(iso), today = new Date(), yesterday = new Date(Date.now() - 86_400_000);
  if (d.toDateString() === today.toDateString()) return "Today";
  if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
  return d.toLocaleDateString([], { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}
function render(stick = false) {
  const r = state.rooms.get(state.current); if (!r) return;
  const box = $("#messages");
  const atBottom = stick || box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  // a re-render replaces the nodes: put the focus back where it was
  const focused = document.activeElement?.closest?.("#messages .msg") ? [document.activeElement.closest(".msg").dataset.id, document.activeElement.dataset.act] : null;
  const out = [];
  let day = null;
  for (const m of [...r.msgs.values()].sort(bySeq).concat([...r.pending.values()])) {
    if (m.createdAt && dayOf(m.createdAt) !== day) {
      day = dayOf(m.createdAt);
      out.push(el("h2", "day", dayLabel(m.createdAt)));
    }
    out.push(renderMsg(m));
  }
  box.replaceChildren(...out);
  if (focused) box.querySelector(`.msg[data-id="${focused[0]}"] [data-act="${focused[1]}"]`)?.focus();
  if (atBottom) box.scrollTop = box.scrollHeight;
  renderTyping();
}
function renderMsg(m) {
  const mine = m.authorId === state.me.id;
  const div = el("div", `msg${m.pending ? " pending" : ""}${m.deleted ? " deleted" : ""}${(m.mentions || []).includes(state.me.id) ? " mention" : ""}`);
  div.dataset.id = m.id;
  const meta = el("div", "meta");
  meta.append(el("span", "who", state.users.get(m.authorId) || m.authorId));
  if (m.createdAt) {
    const time = el("time", "muted", new Date(m.createdAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
    time.dateTime = m.createdAt; time.title = new Date(m.createdAt).toLocaleString();
    meta.append(time);
  }
  if (m.editedAt) meta.append(el("span", "muted", "(edited)"));
  if (m.pending) meta.append(el("span", m.failed ? "error" : "muted", m.failed ? `not sent: ${m.failed}` : "sending…"));
  div.append(meta);
  if (state.editing?.id === m.id && !m.deleted) div.append(editForm(m));
  else if (m.encrypted && !m.deleted) div.append(e2e.textElement(m));
  else div.append(el("div", "text", m.deleted ? "message deleted" : m.content));
  if (m.attachments?.length && !m.deleted) div.append(renderAttachments(m.attachments));
  if (m.pending || m.deleted) return div;
  if (m.reactions.length) {
    const row = el("div", "reactions");
    for (const x of m.reactions) {
      const b = el("button", `reaction${x.me ? " me" : ""}`, `${x.emoji} ${x.count}`);
      b.type = "button"; b.dataset.act = `r${x.emoji}`;
      b.setAttribute("aria-pressed", String(x.me));
      b.setAttribute("aria-label", `${x.emoji} ${x.count}, ${x.me ? "remove your reaction" : "react"}`);
      b.onclick = () => react(m, x.emoji, !x.me);
      row.append(b);
    }
    div.append(row);
  }
  // The actions: a visible "⋯" button (touch and keyboard), not a hover.
  const open = state.menuFor === m.id;
  const more = el("button", "more", "⋯");
  more.type = "button"; more.dataset.act = "more";
  more.setAttribute("aria-label", `Actions for the message from ${state.users.get(m.authorId) || "unknown"}`);
  more.setAttribute("aria-expanded", String(open));
  more.onclick = () => { state.menuFor = open ? null : m.id; render(); if (!open) document.querySelector(`.msg[data-id="${m.id}"] .menu button`)?.focus(); };
  div.append(more);
  if (open) {
    const menu = el("div", "menu");
    menu.setAttribute("role", "group"); menu.setAttribute("aria-label", "Message actions");
    const item = (text, label, act, fn) => {
      const b = el("button", "", text); b.type = "button"; b.dataset.act = act;
      b.setAttribute("aria-label", label);
      b.onclick = () => { state.menuFor = null; fn(); render(); };
      menu.append(b);
    };
    for (const emoji of REACTIONS) item(emoji, `React ${emoji}`, `m${emoji}`, () => react(m, emoji, !m.reactions.find((x) => x.emoji === emoji)?.me));
    if (mine) {
      // an encrypted message is editable once decrypted here (its text is then known)
      const text = m.encrypted ? e2e.textOf(m) : m.content;
      if (text !== null) item("Edit", "Edit message", "edit", () => { state.editing = { id: m.id, text }; });
      item("Delete", "Delete message", "delete", () => mutate("mutation($id: ID!) { deleteMessage(id: $id) }", { id: m.id }));
    }
    menu.addEventListener("keydown", (e) => { if (e.key === "Escape") { state.menuFor = null; render(); div.querySelector(".more")?.focus(); } });
    div.append(menu);
  }
  return div;
}
function editForm(m) {
  const f = el("form", "edit");
  const input = el("input"); input.value = state.editing.text; input.maxLength = 4000; input.dataset.act = "edit-input";
  input.setAttribute("aria-label", "Edit message");
  input.oninput = () => { state.editing.text = input.value; };
  const save = el("button", "", "Save"), cancel = el("button", "secondary", "Cancel");
  cancel.type = "button";
  const close = () => { state.editing = null; render(); $(`.msg[data-id="${m.id}"] .more`)?.focus(); };
  cancel.onclick = close;
  input.onkeydown = (e) => { if (e.key === "Escape") close(); };
  f.onsubmit = (e) => {
    e.preventDefault();
    const content = input.value.trim(), old = m.encrypted ? e2e.textOf(m) : m.content;
    if (content && content !== old && m.encrypted) e2e.edit(m, content).catch(fail);
    else if (content && content !== old) mutate("mutation($id: ID!, $c: String!) { editMessage(id: $id, content: $c) { id } }", { id: m.id, c: content });
    close();
  };
  f.append(input, save, cancel);
  setTimeout(() => { if (document.activeElement !== input && state.editing?.id === m.id && !f.contains(document.activeElement)) input.focus(); });
  return f;
}
function react(m, emoji, add) {
  mutate(`mutation($m: ID!, $e: String!) { ${add ? "addReaction" : "removeReaction"}(messageId: $m, emoji: $e) }`, { m: m.id, e: emoji });
}
// The resulting room event arrives over the gateway and updates the view.
function mutate(q, v) { api.gql(q, v).catch(fail); }
function el(tag, cls = "", text = "") { const e = document.createElement(tag); if (cls) e.className = cls; if (text) e.textContent = text; return e; }

// ---------- phone layout: the room list slides in over the conversation ----------
function setNav(open) {
  document.body.classList.toggle("nav-open", open);
  $("#menu").setAttribute("aria-expanded", String(open));
  $("#backdrop").hidden = !open;
  if (open) $("#sidebar button, #sidebar input")?.focus();
}
$("#menu").onclick = () => setNav(!document.body.classList.contains("nav-open"));
$("#backdrop").onclick = () => setNav(false);
document.addEventListener("keydown", (e) => { if (e.key === "Escape" && document.body.classList.contains("nav-open")) { setNav(false); $("#menu").focus(); } });

// ---------- settings: two-factor authentication ----------
$("#open-settings").onclick = async () => {
  $("#settings").showModal();
  $("#tfa-error").textContent = ""; $("#tfa-recovery").hidden = true; $("#tfa-confirm").hidden = true;
  await showTwoFactor().catch((err) => { $("#tfa-error").textContent = err.message; });
};
async function showTwoFactor() {
  const { twoFactor } = await api.gql("{ twoFactor { enabled recoveryCodesLeft } }");
  $("#tfa-status").textContent = twoFactor.enabled
    ? `Two-factor is on (${twoFactor.recoveryCodesLeft} recovery codes left).`
    : "Two-factor is off: your password alone signs you in.";
  $("#tfa-begin").hidden = twoFactor.enabled || !$("#tfa-confirm").hidden;
  $("#tfa-disable").hidden = !twoFactor.enabled;
}
function tfaForm(id, run) {
  $(id).addEventListener("submit", async (e) => {
    e.preventDefault();
    $("#tfa-error").textContent = "";
    try { await run(new FormData(e.target)); e.target.reset(); await showTwoFactor(); }
    catch (err) { $("#tfa-error").textContent = err.message; }
  });
}
tfaForm("#tfa-begin", async (f) => {
  const { beginTwoFactorSetup: s } = await api.gql("mutation($p: String!) { beginTwoFactorSetup(password: $p) { secret otpauthUri } }", { p: f.get("password") });
  $("#tfa-secret").textContent = s.secret; $("#tfa-uri").href = s.otpauthUri;
  $("#tfa-confirm").hidden = false; $("#tfa-begin").hidden = true; $("#tfa-code").focus();
});
tfaForm("#tfa-confirm", async (f) => {
  const { confirmTwoFactor: codes } = await api.gql("mutation($c: String!) { confirmTwoFactor(code: $c) }", { c: f.get("code").trim() });
  $("#tfa-confirm").hidden = true;
  $("#tfa-codes").replaceChildren(...codes.map((c) => el("li", "", c)));
  $("#tfa-recovery").hidden = false;
});
tfaForm("#tfa-disable", async (f) => {
  await api.gql("mutation($c: String!) { disableTwoFactor(code: $c) }", { c: f.get("code").trim() });
  toast("Two-factor authentication is off.", "info");
});

$("#status").onchange = (e) => gw?.presence(e.target.value);
if (api.session) startChat().catch(() => { api.clear(); });
