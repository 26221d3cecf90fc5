// Gateway protocol v1 client: HELLO/IDENTIFY/heartbeats, SUBSCRIBE with after_seq, SEND with
// nonce, and resume: on a drop or a 4000-4499 close, reconnect via /gateway and RESUME with
// session_id + last s + `rooms` (the last room seq we hold per subscribed room, so the replay is
// exact even after a gateway crash: docs/protocol.md section 8); on INVALID_SESSION, IDENTIFY
// again and SUBSCRIBE each room after the last seq we delivered. Durable events are also
// deduplicated by room seq, so nothing shows twice whatever the server replays.
// RESUME lists at most this many rooms (~30 bytes each, the frame limit is 16 KiB); the rest
// resume from the server's saved position and rely on the room-seq dedupe.
const MAX_RESUME_ROOMS = 400;
const OP = { DISPATCH: 0, HEARTBEAT: 1, IDENTIFY: 2, PRESENCE: 3, SUBSCRIBE: 4, UNSUBSCRIBE: 5, RESUME: 6,
  RECONNECT: 7, SEND: 8, INVALID_SESSION: 9, HELLO: 10, ACK: 11, TYPING: 12, REPLY: 13 };

export class Gateway extends EventTarget {
  constructor(getToken) {
    super();
    this.getToken = getToken;      // async () => access token (refreshed when needed)
    this.sessionId = null; this.seq = null; this.resumeUrl = null; this.userId = null;
    this.roomSeqs = new Map();     // room id -> last delivered seq
    this.rooms = new Set();        // rooms we want subscribed
    this.pending = new Map();      // request id -> {resolve, reject, frame}
    this.nextId = 1; this.ws = null; this.ready = false; this.stopped = false; this.backoff = 500;
  }

  async start() { this.stopped = false; await this.open(); }
  stop() { this.stopped = true; this.ws?.close(1000); }

  async open() {
    const url = this.resumeUrl || (await (await fetch("/gateway")).json()).url;
    const ws = (this.ws = new WebSocket(`${url}${url.includes("?") ? "&" : "?"}v=1&encoding=json`));
    ws.onmessage = (e) => this.onFrame(JSON.parse(e.data));
    ws.onclose = (e) => this.onClose(e);
    this.status("connecting");
  }

  onClose(e) {
    clearTimeout(this.hbTimer); this.ready = false; this.status("offline");
    if (this.stopped || (e.code >= 4500 && e.code <= 4999)) { this.emit("closed", { code: e.code }); return; }
    if (e.code === 4501) this.sessionId = null;
    setTimeout(() => { this.resumeUrl = null; this.open().catch(() => this.onClose(e)); }, this.backoff * (0.5 + Math.random()));
    this.backoff = Math.min(this.backoff * 2, 15_000);
  }

  async onFrame(f) {
    switch (f.op) {
      case OP.HELLO: {
        const every = f.d.heartbeat_interval_ms;
        this.acked = true;
        const beat = () => {
          if (!this.acked) { this.ws.close(4000); return; } // zombie: drop and resume
          this.acked = false; this.raw({ op: OP.HEARTBEAT, d: this.seq });
          this.hbTimer = setTimeout(beat, every);
        };
        this.hbTimer = setTimeout(beat, every * Math.random());
        const token = await this.getToken();
        if (this.sessionId) this.raw({ op: OP.RESUME, d: { token, session_id: this.sessionId, seq: this.seq ?? 0, rooms: this.resumeRooms() } });
        else this.raw({ op: OP.IDENTIFY, d: { token, client: { name: "shardchat-web", version: "1" } } });
        break;
      }
      case OP.ACK: this.acked = true; break;
      case OP.HEARTBEAT: this.raw({ op: OP.HEARTBEAT, d: this.seq }); break;
      case OP.RECONNECT: this.resumeUrl = f.d?.url || null; this.ws.close(4000); break;
      case OP.INVALID_SESSION:
        this.sessionId = null; this.seq = null;
        this.raw({ op: OP.IDENTIFY, d: { token: await this.getToken() } });
        break;
      case OP.REPLY: {
        const p = this.pending.get(f.id); if (!p) break;
        this.pending.delete(f.id);
        f.d.ok ? p.resolve(f.d.result) : p.reject(Object.assign(new Error(f.d.error.message), { code: f.d.error.code }));
        break;
      }
      case OP.DISPATCH: this.onDispatch(f); break;
    }
  }

  onDispatch({ t, d, s }) {
    if (s != null) this.seq = s;
    if (t === "READY") {
      const fresh = this.sessionId === null;
      this.sessionId = d.session_id; this.resumeUrl = d.resume_url || null; this.userId = d.user?.id ?? null;
      this.onReady();
      if (fresh && this.rooms.size) this.subscribe([...this.rooms]);
    } else if (t === "RESUMED") this.onReady();
    else if (t === "ROOM_SUBSCRIBED") {
      this.rooms.add(d.room_id); // subscribed: RESUME lists it from now on
      // not recovered: the app refetches history, continue from the head; recovered: we are
      // caught up to d.seq, the position RESUME reports even before the room's next event
      if (!d.recovered || d.seq > (this.roomSeqs.get(d.room_id) ?? 0)) this.roomSeqs.set(d.room_id, d.seq);
    } else if (d && d.seq != null && d.room_id) {
      if (d.seq <= (this.roomSeqs.get(d.room_id) ?? 0)) return; // replay overlap: already shown
      this.roomSeqs.set(d.room_id, d.seq);
      if (t === "MEMBER_LEAVE" && d.user_id === this.userId) this.rooms.delete(d.room_id); // we left
    }
    this.emit(t, d);
  }

  // RESUME `rooms`: {room_id: last seq we hold} for the subscribed rooms that have a position.
  resumeRooms() {
    const out = {};
    let n = 0;
    for (const r of this.rooms) {
      if (n >= MAX_RESUME_ROOMS) break;
      if (this.roomSeqs.has(r)) { out[r] = this.roomSeqs.get(r); n++; }
    }
    return out;
  }

  onReady() {
    this.ready = true; this.backoff = 500; this.status("online");
    for (const [id, p] of this.pending) this.raw({ ...p.frame, id }); // resend: SEND is idempotent by nonce
  }

  subscribe(roomIds) {
    roomIds.forEach((r) => this.rooms.add(r));
    const rooms = roomIds.map((r) => (this.roomSeqs.has(r) ? { room_id: r, after_seq: this.roomSeqs.get(r) } : { room_id: r }));
    return this.request(OP.SUBSCRIBE, { rooms });
  }
  // Rooms whose history the app loaded itself: continue after the newest seq it has.
  markSeen(roomId, seq) { if (seq > (this.roomSeqs.get(roomId) ?? 0)) this.roomSeqs.set(roomId, seq); }
  unsubscribe(roomId) { this.rooms.delete(roomId); this.send(OP.UNSUBSCRIBE, { rooms: [roomId] }); }
  sendMessage(roomId, content, nonce, attachmentIds = []) {
    return this.request(OP.SEND, { room_id: roomId, content, nonce, ...(attachmentIds.length && { attachment_ids: attachmentIds }) });
  }
  typing(roomId) { this.send(OP.TYPING, { room_id: roomId }); }
  presence(status) { this.send(OP.PRESENCE, { status }); }

  request(op, d) {
    const id = this.nextId++, frame = { op, d };
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, frame });
      if (this.ready) this.raw({ ...frame, id });
    });
  }
  send(op, d) { if (this.ready) this.raw({ op, d }); }
  raw(frame) { if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame)); }
  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
  status(s) { this.emit("status", s); }
}
