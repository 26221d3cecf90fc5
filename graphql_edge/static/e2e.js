// End-to-end encrypted rooms in the web client: the scheme of docs/e2e.md with libsodium.js
// (vendor/libsodium, the same C code as PyNaCl, so every byte matches shardchat.e2e), and the
// browser's device: its keys, the epoch keys it opened and its pins of other users' device
// lists live in IndexedDB. The server's answers are never trusted: each device list is checked
// from version 1, each sealed key's and message's signature against it.
//
// Top part: the scheme, pure (exported for the known-answer test, tests/browser). Then
// E2EClient (one per logged-in user), then what app.js calls: start, send, edit, textElement,
// textOf, lock, roomHeader.
import sodium from "./vendor/libsodium/libsodium-wrappers.js";

const utf8 = new TextEncoder();
const tag = (s) => utf8.encode(`shardchat/e2e/v1/${s}\0`);
const TAG = { list: tag("device-list"), proposal: tag("device"), roomKey: tag("room-key"), message: tag("message"), safety: tag("safety") };
const DEVICE_ID = 16, KEY = 32, SIG = 64, SEALED = 80, AEAD_NONCE = 24, AEAD_TAG = 16;
const ENTRY = 84, MAX_DEVICES = 32, MAX_REF = 32, FLAG_RESET = 1, SAFETY_ITERATIONS = 5200;
export const KIND_CREATE = 1, KIND_EDIT = 2;
const U32_MAX = 2 ** 32 - 1, U64_MAX = 2n ** 64n - 1n;
const MAX_CIPHERTEXT = 1 << 24; // a reader's bound; the server enforces the real limit
// Server refusals after which a send checks the room's key again and retries (docs/e2e.md 6.1).
const RETRY = new Set(["ROTATION_DUE", "STALE_EPOCH", "MEMBERS_CHANGED", "DEVICES_CHANGED"]);
const SEND_ATTEMPTS = 4;

export class SchemeError extends Error {}
export const ready = () => sodium.ready;

// ---------- encodings ----------
export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}
function uint(bytes, set) { const b = new Uint8Array(bytes); set(new DataView(b.buffer)); return b; }
const u8 = (n) => Uint8Array.of(n);
const u16 = (n) => uint(2, (v) => v.setUint16(0, n));
const u32 = (n) => uint(4, (v) => v.setUint32(0, n));
// Ids are snowflakes beyond JavaScript's safe integers: decimal strings, encoded with BigInt.
export function u64(id) {
  const n = BigInt(id);
  if (n < 0n || n > U64_MAX) throw new SchemeError(`${id} is not a u64`);
  return uint(8, (v) => v.setBigUint64(0, n));
}
class Reader {
  constructor(b, at = 0) { this.b = b; this.at = at; this.v = new DataView(b.buffer, b.byteOffset, b.byteLength); }
  bytes(n) { if (this.at + n > this.b.length) throw new SchemeError("too short"); const x = this.b.slice(this.at, this.at + n); this.at += n; return x; }
  num(n, get) { this.bytes(n); return get.call(this.v, this.at - n); }
  u8() { return this.num(1, DataView.prototype.getUint8); }
  u16() { return this.num(2, DataView.prototype.getUint16); }
  u32() { return this.num(4, DataView.prototype.getUint32); }
  u64() { return this.num(8, DataView.prototype.getBigUint64).toString(); }
}
const startsWith = (b, prefix) => b.length >= prefix.length && prefix.every((x, i) => b[i] === x);
export const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const compare = (a, b) => { for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i]; return a.length - b.length; };
export const hex = (b) => sodium.to_hex(b);
export const fromHex = (s) => sodium.from_hex(s);

// base64url without padding, strict: the canonical form only (as the server and Python check).
export const b64e = (b) => sodium.to_base64(b, sodium.base64_variants.URLSAFE_NO_PADDING);
export function b64d(text, size = null, what = "value") {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) throw new SchemeError(`${what} is not base64url without padding`);
  const raw = sodium.from_base64(text, sodium.base64_variants.URLSAFE_NO_PADDING);
  if (b64e(raw) !== text) throw new SchemeError(`${what} is not canonical base64url`);
  if (size !== null && raw.length !== size) throw new SchemeError(`${what} must be ${size} bytes`);
  return raw;
}

// SHA-512 is libsodium's crypto_hash; SHA-256 is not in its standard build: WebCrypto's.
const sha512 = (b) => sodium.crypto_hash(b);
export const sha256 = async (b) => new Uint8Array(await crypto.subtle.digest("SHA-256", b));

// ---------- keys and signatures ----------
const keypairs = new Map(); // seed hex -> Ed25519 key pair (derived once)
function signingPair(seed) {
  const k = hex(seed);
  if (!keypairs.has(k)) keypairs.set(k, sodium.crypto_sign_seed_keypair(seed));
  return keypairs.get(k);
}
export const signingPublic = (seed) => signingPair(seed).publicKey;
export const encryptionPublic = (secret) => sodium.crypto_scalarmult_base(secret);
export const sign = (seed, message) => sodium.crypto_sign_detached(message, signingPair(seed).privateKey);
export function verify(publicKey, message, signature) {
  if (signature?.length !== SIG || publicKey?.length !== KEY) return false;
  try { return sodium.crypto_sign_verify_detached(signature, message, publicKey); } catch { return false; }
}
export function newDevice() {
  return { deviceId: sodium.randombytes_buf(DEVICE_ID), signingSeed: sodium.randombytes_buf(KEY), encryptionSecrets: { 1: sodium.randombytes_buf(KEY) } };
}

// ---------- device lists (docs/e2e.md 4.1) ----------
// dl: { userId, version, prevHash, reset, signerDevice, issuedAtMs, devices: [{ deviceId, signingKey, encryptionKey, keyVersion }] }
export function encodeDeviceList(dl) {
  const devices = [...dl.devices].sort((a, b) => compare(a.deviceId, b.deviceId));
  if (devices.length < 1 || devices.length > MAX_DEVICES) throw new SchemeError(`a device list holds 1 to ${MAX_DEVICES} devices`);
  return concat(TAG.list, u64(dl.userId), u32(dl.version), dl.prevHash, u8(dl.reset ? FLAG_RESET : 0), dl.signerDevice,
    u64(dl.issuedAtMs), u16(devices.length), ...devices.map(deviceBytes));
}
const deviceBytes = (d) => concat(d.deviceId, d.signingKey, d.encryptionKey, u32(d.keyVersion));
const readDevice = (r) => ({ deviceId: r.bytes(DEVICE_ID), signingKey: r.bytes(KEY), encryptionKey: r.bytes(KEY), keyVersion: r.u32() });

export function decodeDeviceList(body) {
  if (!startsWith(body, TAG.list)) throw new SchemeError("not a device list");
  const r = new Reader(body, TAG.list.length);
  const dl = { userId: r.u64(), version: r.u32(), prevHash: r.bytes(32) };
  const flags = r.u8();
  Object.assign(dl, { reset: Boolean(flags & FLAG_RESET), signerDevice: r.bytes(DEVICE_ID), issuedAtMs: r.u64() });
  const count = r.u16();
  if (flags & ~FLAG_RESET) throw new SchemeError("unknown device list flags");
  if (count < 1 || count > MAX_DEVICES || body.length !== r.at + count * ENTRY) throw new SchemeError("device list size does not match its count");
  dl.devices = Array.from({ length: count }, () => readDevice(r));
  for (let i = 1; i < count; i++) if (compare(dl.devices[i - 1].deviceId, dl.devices[i].deviceId) >= 0) throw new SchemeError("devices must be in strictly ascending device_id order");
  if (dl.version < 1 || dl.devices.some((d) => d.keyVersion < 1)) throw new SchemeError("versions start at 1");
  return dl;
}
export const findDevice = (dl, id) => dl.devices.find((d) => equal(d.deviceId, id)) || null;
export const entryHash = (e) => sha256(concat(e.body, e.signature));

// One entry {body, signature} on top of the verified chain so far (null: it must be version 1).
// Returns { head, headHash, anchor, anchorVersion }; throws SchemeError on any fault.
export async function checkNext(entry, userId, prev) {
  const dl = decodeDeviceList(entry.body);
  if (dl.userId !== String(userId)) throw new SchemeError("device list of another user");
  const want = prev ? prev.head.version + 1 : 1;
  if (dl.version !== want) throw new SchemeError(`device list version ${dl.version}, expected ${want}`);
  if (!equal(dl.prevHash, prev ? prev.headHash : new Uint8Array(32))) throw new SchemeError("device list prev_hash does not match the previous version");
  if (!prev && !dl.reset) throw new SchemeError("version 1 of a device list must be a reset");
  let signer;
  if (dl.reset) {
    signer = findDevice(dl, dl.signerDevice);
    if (!signer) throw new SchemeError("a reset must be signed by a device it lists");
  } else {
    signer = findDevice(prev.head, dl.signerDevice);
    if (!signer) throw new SchemeError("signed by a device not in the previous version");
    for (const d of dl.devices) {
      const old = findDevice(prev.head, d.deviceId);
      if (!old) continue;
      if (!equal(old.signingKey, d.signingKey)) throw new SchemeError("a device's signing key changed");
      if (d.keyVersion < old.keyVersion || (d.keyVersion === old.keyVersion && !equal(d.encryptionKey, old.encryptionKey)))
        throw new SchemeError("a device's encryption key went back or changed in place");
    }
  }
  if (!verify(signer.signingKey, entry.body, entry.signature)) throw new SchemeError("device list signature does not verify");
  const headHash = await entryHash(entry);
  if (dl.reset) return { head: dl, headHash, anchor: signer.signingKey, anchorVersion: dl.version };
  return { head: dl, headHash, anchor: prev.anchor, anchorVersion: prev.anchorVersion };
}
export async function verifyChain(entries, userId) {
  let state = null;
  for (const e of entries) state = await checkNext(e, userId, state);
  if (!state) throw new SchemeError("empty device list chain");
  return state;
}

// ---------- device proposals (4.2) ----------
export function encodeProposal(userId, d, createdAtMs) {
  return concat(TAG.proposal, u64(userId), deviceBytes(d), u64(createdAtMs));
}
export function checkProposal(body, signature, userId) {
  if (!startsWith(body, TAG.proposal) || body.length !== TAG.proposal.length + 8 + ENTRY + 8) throw new SchemeError("not a device proposal");
  const r = new Reader(body, TAG.proposal.length);
  const owner = r.u64(), d = readDevice(r);
  if (owner !== String(userId)) throw new SchemeError("proposal of another user");
  if (d.keyVersion < 1 || !verify(d.signingKey, body, signature)) throw new SchemeError("proposal signature does not verify");
  return d;
}

// ---------- sealed room keys (5) ----------
// s: { roomId, epoch, recipientUser, recipientDevice, recipientKeyVersion, senderUser, senderDevice, sealed }
export function encodeStatement(s) {
  if (!(s.epoch >= 1 && s.epoch <= U32_MAX)) throw new SchemeError("epoch out of range");
  return concat(TAG.roomKey, u64(s.roomId), u32(s.epoch), u64(s.recipientUser), s.recipientDevice,
    u32(s.recipientKeyVersion), u64(s.senderUser), s.senderDevice, s.sealed);
}
export const sealRoomKey = (key, recipientKey) => sodium.crypto_box_seal(key, recipientKey);
export function openRoomKey(sealed, secret) {
  try {
    const key = sodium.crypto_box_seal_open(sealed, encryptionPublic(secret), secret);
    return key.length === KEY ? key : null;
  } catch { return null; }
}

// ---------- messages (6.2) ----------
// ctx: { roomId, epoch, authorId, senderDevice, kind, ref }
export const createContext = (roomId, epoch, authorId, device, sendNonce) => ({ roomId, epoch, authorId, senderDevice: device, kind: KIND_CREATE, ref: utf8.encode(sendNonce) });
export const editContext = (roomId, epoch, authorId, device, messageId) => ({ roomId, epoch, authorId, senderDevice: device, kind: KIND_EDIT, ref: u64(messageId) });
export function messageAad(c) {
  if (c.ref.length < 1 || c.ref.length > MAX_REF) throw new SchemeError("message reference must be 1 to 32 bytes");
  if (c.senderDevice.length !== DEVICE_ID || !(c.epoch >= 1 && c.epoch <= U32_MAX)) throw new SchemeError("bad sender device or epoch");
  return concat(TAG.message, u64(c.roomId), u32(c.epoch), u64(c.authorId), c.senderDevice, u8(c.kind), u8(c.ref.length), c.ref);
}
export const encodePlaintext = (text) => utf8.encode(JSON.stringify({ text }));

// The envelope {ciphertext, nonce, epoch, senderDevice, signature}, binary.
export function encryptMessage(ctx, plaintext, roomKey, signingSeed, nonce) {
  const aad = messageAad(ctx);
  const ciphertext = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, null, nonce, roomKey);
  return { ciphertext, nonce, epoch: ctx.epoch, senderDevice: ctx.senderDevice, signature: sign(signingSeed, concat(aad, nonce, ciphertext)) };
}
export function decryptMessage(ctx, env, roomKey) {
  try {
    const raw = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(null, env.ciphertext, messageAad(ctx), env.nonce, roomKey);
    const obj = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
    return typeof obj?.text === "string" ? obj.text : null;
  } catch { return null; }
}
// The receiver's checks, in order: { status: ok | unknown_device | bad_signature | no_key | tampered, text }.
export function openMessage(ctx, env, sender, roomKey) {
  if (!sender) return { status: "unknown_device", text: null };
  if (!verify(sender.signingKey, concat(messageAad(ctx), env.nonce, env.ciphertext), env.signature)) return { status: "bad_signature", text: null };
  if (!roomKey) return { status: "no_key", text: null };
  const text = decryptMessage(ctx, env, roomKey);
  return text === null ? { status: "tampered", text: null } : { status: "ok", text };
}
// Gateway events use snake_case, GraphQL camelCase: accept both.
const field = (d, snake, camel) => (snake in d ? d[snake] : d[camel]);
export function envelopeFromWire(w, maxCiphertext = MAX_CIPHERTEXT) {
  const epoch = w.epoch;
  if (!Number.isInteger(epoch) || epoch < 1 || epoch > U32_MAX) throw new SchemeError("epoch must be an integer from 1 to 2^32-1");
  const ciphertext = b64d(w.ciphertext, null, "ciphertext");
  if (ciphertext.length <= AEAD_TAG || ciphertext.length > maxCiphertext) throw new SchemeError("ciphertext size");
  return { ciphertext, nonce: b64d(w.nonce, AEAD_NONCE, "nonce"), epoch,
    senderDevice: b64d(field(w, "sender_device", "senderDevice"), DEVICE_ID, "sender_device"), signature: b64d(w.signature, SIG, "signature") };
}
// The GraphQL EncryptedPayloadInput of an envelope.
export const envelopeToGraphql = (e) => ({ ciphertext: b64e(e.ciphertext), nonce: b64e(e.nonce), epoch: e.epoch, senderDevice: b64e(e.senderDevice), signature: b64e(e.signature) });

// ---------- safety numbers (4.4) ----------
export function fingerprint(key, userId) {
  let h = sha512(concat(TAG.safety, key, u64(userId)));
  for (let i = 0; i < SAFETY_ITERATIONS; i++) h = sha512(concat(h, key));
  let out = "";
  for (let i = 0; i < 30; i += 5) {
    const n = h.slice(i, i + 5).reduce((acc, x) => acc * 256 + x, 0); // 40 bits: a safe integer
    out += String(n % 100000).padStart(5, "0");
  }
  return out;
}
export function safetyNumber(userA, anchorA, userB, anchorB) {
  const [lo, hi] = BigInt(userA) < BigInt(userB) ? [[userA, anchorA], [userB, anchorB]] : [[userB, anchorB], [userA, anchorA]];
  return fingerprint(lo[1], lo[0]) + fingerprint(hi[1], hi[0]);
}
export const grouped = (digits) => digits.match(/.{1,5}/g).join(" ");

// ---------- the device's state in IndexedDB ----------
// One record per user id: { deviceId, signingSeed, encryptionSecrets: {version: secret},
// roomKeys: {roomId: {epoch: key}}, pins: {userId: {anchor, version, headHash}} }, all keys as
// Uint8Array. libsodium keys are bytes, not WebCrypto CryptoKeys: they cannot be stored
// non-extractable (docs/e2e.md, "For a browser client").
const DB_NAME = "shardchat-e2e", STORE = "devices";
function db() {
  return new Promise((ok, fail) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => ok(req.result);
    req.onerror = () => fail(req.error);
  });
}
async function idb(mode, op) {
  const conn = await db();
  try {
    return await new Promise((ok, fail) => {
      const tx = conn.transaction(STORE, mode), req = op(tx.objectStore(STORE));
      tx.oncomplete = () => ok(req.result);
      tx.onerror = tx.onabort = () => fail(tx.error);
    });
  } finally { conn.close(); }
}
const loadState = (userId) => idb("readonly", (s) => s.get(String(userId)));
const saveState = (userId, state) => idb("readwrite", (s) => s.put(state, String(userId)));

// ---------- the client ----------
export class E2EError extends Error {}
const now = () => Date.now();
const bytesKey = (b) => hex(b);

export class E2EClient {
  constructor(api, userId) {
    this.api = api; this.userId = String(userId);
    this.state = null; this.status = "pending";
    this.identityChanges = new Set(); // users whose anchor changed: "safety number changed"
    this.chains = new Map();          // user id -> Promise of the verified list
    this.fetching = new Map();        // room id -> the sealed-key fetch under way
  }

  async gql(query, variables) { return this.api.gql(query, variables); }
  save() { return saveState(this.userId, this.state); }
  get keyVersion() { return Math.max(...Object.keys(this.state.encryptionSecrets).map(Number)); }
  get deviceId() { return this.state.deviceId; }
  ownEntry() {
    const v = this.keyVersion, s = this.state;
    return { deviceId: s.deviceId, signingKey: signingPublic(s.signingSeed), encryptionKey: encryptionPublic(s.encryptionSecrets[v]), keyVersion: v };
  }

  // Load or create this browser's device and make sure the key directory knows it.
  async setup() {
    await sodium.ready;
    this.state = await loadState(this.userId);
    if (!this.state) {
      this.state = { userId: this.userId, ...newDevice(), roomKeys: {}, pins: {} };
      await this.save();
    }
    if (!(await this.chainEntries(this.userId)).length) {
      await this.publish(this.nextList(null, [this.ownEntry()]));
    } else if (!findDevice((await this.devices(this.userId, true)).chain.head, this.deviceId)) {
      await this.propose(); // another device of the user approves it (or this one resets)
      return (this.status = "pending");
    }
    return (this.status = "active");
  }

  nextList(head, devices, reset = false) {
    const dl = { userId: this.userId, version: head ? head.head.version + 1 : 1, prevHash: head ? head.headHash : new Uint8Array(32),
      reset: reset || !head, signerDevice: this.deviceId, issuedAtMs: now(), devices };
    const body = encodeDeviceList(dl);
    return { body, signature: sign(this.state.signingSeed, body) };
  }
  async publish(entry) {
    const d = await this.gql("mutation($b: String!, $s: String!) { publishDeviceList(body: $b, signature: $s) }", { b: b64e(entry.body), s: b64e(entry.signature) });
    await this.devices(this.userId, true); // re-verify and pin what we wrote
    return d.publishDeviceList;
  }
  async propose() {
    const body = encodeProposal(this.userId, this.ownEntry(), now());
    await this.gql("mutation($b: String!, $s: String!) { proposeDevice(body: $b, signature: $s) }", { b: b64e(body), s: b64e(sign(this.state.signingSeed, body)) });
  }
  deviceFingerprint(d = null) { return grouped(fingerprint(d ? d.signingKey : signingPublic(this.state.signingSeed), this.userId)); }
  async pendingDevices() {
    const out = [];
    for (const p of (await this.gql("{ deviceProposals { deviceId body signature } }")).deviceProposals) {
      try { out.push(checkProposal(b64d(p.body), b64d(p.signature), this.userId)); } catch { /* never offered */ }
    }
    return out;
  }
  async approveDevice(device) {
    const mine = await this.devices(this.userId, true);
    return this.publish(this.nextList(mine.chain, [...mine.chain.head.devices.filter((d) => !equal(d.deviceId, device.deviceId)), device]));
  }
  // Start the list again with this browser alone (everyone sees this user's safety number change).
  async resetDevices() {
    const mine = await this.devices(this.userId, true);
    await this.publish(this.nextList(mine.chain, [this.ownEntry()], true));
    this.status = "active";
  }
  // A pending browser becomes active once another device of the user listed it.
  async activate() {
    const mine = await this.devices(this.userId, true);
    return (this.status = findDevice(mine.chain.head, this.deviceId) ? "active" : "pending");
  }

  // ----- device lists -----
  async chainEntries(userId) {
    const d = await this.gql("query($u: ID!) { deviceList(userId: $u) { body signature } }", { u: String(userId) });
    return d.deviceList.map((r) => ({ body: b64d(r.body), signature: b64d(r.signature) }));
  }
  // { chain, ever: Map(device hex -> device of any version), anchorChanged }, checked from
  // version 1 against this device's pin of the user.
  devices(userId, refresh = false) {
    userId = String(userId);
    if (refresh || !this.chains.has(userId)) {
      const p = this.fetchDevices(userId);
      this.chains.set(userId, p);
      p.catch(() => { if (this.chains.get(userId) === p) this.chains.delete(userId); });
    }
    return this.chains.get(userId);
  }
  async fetchDevices(userId) {
    const entries = await this.chainEntries(userId);
    if (!entries.length) throw new E2EError(`user ${userId} has no device keys`);
    let chain;
    try { chain = await verifyChain(entries, userId); } catch (e) { throw new E2EError(`device list of user ${userId} does not verify: ${e.message}`); }
    const pin = this.state.pins[userId];
    let anchorChanged = false;
    if (pin) {
      if (chain.head.version < pin.version) throw new E2EError(`device list of user ${userId} rolled back`);
      if (!equal(await entryHash(entries[pin.version - 1]), pin.headHash)) throw new E2EError(`device list of user ${userId} forked`);
      anchorChanged = !equal(chain.anchor, pin.anchor);
      if (anchorChanged) this.identityChanges.add(userId);
    }
    this.state.pins[userId] = { anchor: chain.anchor, version: chain.head.version, headHash: chain.headHash };
    await this.save();
    const ever = new Map();
    for (const e of entries) for (const d of decodeDeviceList(e.body).devices) ever.set(bytesKey(d.deviceId), d);
    return { chain, ever, anchorChanged };
  }
  async safetyNumber(otherUserId) {
    const mine = await this.devices(this.userId), theirs = await this.devices(otherUserId, true);
    return grouped(safetyNumber(this.userId, mine.chain.anchor, String(otherUserId), theirs.chain.anchor));
  }

  // ----- room keys -----
  async keyStatus(roomId) {
    const q = "query($r: ID!) { roomKeyStatus(roomId: $r) { epoch rotationDue changes memberIds missing { userId deviceId keyVersion } } }";
    return (await this.gql(q, { r: roomId })).roomKeyStatus;
  }
  seal(roomId, epoch, key, userId, device) {
    const sealed = sealRoomKey(key, device.encryptionKey);
    const statement = encodeStatement({ roomId, epoch, recipientUser: userId, recipientDevice: device.deviceId, recipientKeyVersion: device.keyVersion,
      senderUser: this.userId, senderDevice: this.deviceId, sealed });
    return { userId: String(userId), deviceId: b64e(device.deviceId), keyVersion: device.keyVersion, sealed: b64e(sealed), signature: b64e(sign(this.state.signingSeed, statement)) };
  }
  async keepKey(roomId, epoch, key) { (this.state.roomKeys[roomId] ||= {})[epoch] = key; await this.save(); }

  // A new epoch key sealed to every device of every current member; the new epoch.
  async rotateRoomKey(roomId) {
    const status = await this.keyStatus(roomId);
    const epoch = status.epoch + 1, key = sodium.randombytes_buf(KEY), keys = [];
    for (const uid of status.memberIds)
      for (const d of (await this.devices(uid, true)).chain.head.devices) keys.push(this.seal(roomId, epoch, key, uid, d));
    const q = `mutation($r: ID!, $e: Int!, $m: [ID!]!, $c: Int!, $d: String!, $k: [SealedRoomKeyInput!]!) {
      rotateRoomKey(roomId: $r, epoch: $e, memberIds: $m, changes: $c, senderDevice: $d, keys: $k) }`;
    await this.gql(q, { r: roomId, e: epoch, m: status.memberIds, c: status.changes, d: b64e(this.deviceId), k: keys });
    await this.keepKey(roomId, epoch, key);
    return epoch;
  }
  // The epoch to send under: rotate when one is due (or this device lacks the current key);
  // seal the current key to member devices that have none yet.
  async ensureKey(roomId) {
    const status = await this.keyStatus(roomId);
    const key = status.epoch > 0 ? await this.roomKey(roomId, status.epoch) : null;
    if (status.rotationDue || !key) return this.rotateRoomKey(roomId);
    const to = [];
    for (const m of status.missing) {
      const d = findDevice((await this.devices(m.userId, true)).chain.head, b64d(m.deviceId));
      if (d) to.push(this.seal(roomId, status.epoch, key, m.userId, d)); // only devices their user signed in
    }
    if (to.length) {
      const q = "mutation($r: ID!, $e: Int!, $d: String!, $k: [SealedRoomKeyInput!]!) { shareRoomKeys(roomId: $r, epoch: $e, senderDevice: $d, keys: $k) }";
      await this.gql(q, { r: roomId, e: status.epoch, d: b64e(this.deviceId), k: to });
    }
    return status.epoch;
  }
  // The epoch key: held, or opened from this device's sealed keys on the server.
  async roomKey(roomId, epoch) {
    const held = () => this.state.roomKeys[roomId]?.[epoch] || null;
    if (held()) return held();
    const running = this.fetching.get(roomId);
    if (running) { await running.catch(() => {}); if (held()) return held(); }
    const p = this.fetchKeys(roomId, epoch - 1).finally(() => { if (this.fetching.get(roomId) === p) this.fetching.delete(roomId); });
    this.fetching.set(roomId, p);
    await p;
    return held();
  }
  async fetchKeys(roomId, afterEpoch) {
    const q = `query($r: ID!, $d: String!, $a: Int) { roomKeys(roomId: $r, deviceId: $d, afterEpoch: $a) {
      epoch keyVersion senderId senderDevice sealed signature } }`;
    let rows = [];
    try { rows = (await this.gql(q, { r: roomId, d: b64e(this.deviceId), a: afterEpoch })).roomKeys; } catch { /* not a member (any more) */ }
    const held = (this.state.roomKeys[roomId] ||= {});
    for (const row of rows) if (!held[row.epoch]) { const key = await this.openKey(roomId, row); if (key) held[row.epoch] = key; }
    await this.save();
  }
  // A sealed key is accepted only if its statement's signature verifies with the sealing
  // device as listed (in any version) in its user's verified device list.
  async openKey(roomId, row) {
    const id = b64d(row.senderDevice, DEVICE_ID);
    let sender = (await this.devices(row.senderId)).ever.get(bytesKey(id));
    sender ||= (await this.devices(row.senderId, true)).ever.get(bytesKey(id));
    const secret = this.state.encryptionSecrets[row.keyVersion];
    if (!sender || !secret) return null;
    const sealed = b64d(row.sealed, SEALED);
    const statement = encodeStatement({ roomId, epoch: row.epoch, recipientUser: this.userId, recipientDevice: this.deviceId,
      recipientKeyVersion: row.keyVersion, senderUser: String(row.senderId), senderDevice: id, sealed });
    return verify(sender.signingKey, statement, b64d(row.signature)) ? openRoomKey(sealed, secret) : null;
  }

  // ----- messages -----
  async envelope(roomId, ctx, text) {
    const key = await this.roomKey(roomId, ctx.epoch);
    if (!key) throw new E2EError(`no key of epoch ${ctx.epoch} for room ${roomId}`);
    return encryptMessage(ctx, encodePlaintext(text), key, this.state.signingSeed, sodium.randombytes_buf(AEAD_NONCE));
  }
  // Encrypt under the current epoch and run the mutation; on an epoch refusal (someone rotated,
  // a member or device changed meanwhile) check the key again and retry.
  async store(roomId, ctxOf, text, query, variables) {
    for (let attempt = 1; ; attempt++) {
      const env = await this.envelope(roomId, ctxOf(await this.ensureKey(roomId)), text);
      try {
        return { env, data: await this.gql(query, { ...variables, e: envelopeToGraphql(env) }) };
      } catch (err) {
        if (!RETRY.has(err.reason) || attempt >= SEND_ATTEMPTS) throw err;
      }
    }
  }
  async send(roomId, text, nonce) {
    const q = `mutation($r: ID!, $n: String!, $e: EncryptedPayloadInput) { sendMessage(roomId: $r, nonce: $n, encrypted: $e) {
      id seq authorId createdAt nonce encrypted { ciphertext nonce epoch senderDevice signature } } }`;
    const ctxOf = (epoch) => createContext(roomId, epoch, this.userId, this.deviceId, nonce);
    const { data } = await this.store(roomId, ctxOf, text, q, { r: roomId, n: nonce });
    return data.sendMessage;
  }
  async edit(roomId, messageId, text) {
    const q = "mutation($i: ID!, $e: EncryptedPayloadInput) { editMessage(id: $i, encrypted: $e) { id editedAt encrypted { signature } } }";
    const ctxOf = (epoch) => editContext(roomId, epoch, this.userId, this.deviceId, messageId);
    return (await this.store(roomId, ctxOf, text, q, { i: messageId })).data.editMessage;
  }
  // m: the app's message ({ id, roomId, authorId, nonce, editedAt, encrypted }, the payload
  // snake_case or camelCase). An edit is checked as the message's author's (docs/e2e.md 7).
  async decrypt(m) {
    let env;
    try { env = envelopeFromWire(m.encrypted); } catch { return { status: "tampered", text: null }; }
    let ctx;
    if (m.editedAt) ctx = editContext(m.roomId, env.epoch, m.authorId, env.senderDevice, m.id);
    else {
      const n = utf8.encode(m.nonce || "");
      if (n.length < 1 || n.length > MAX_REF) return { status: "tampered", text: null };
      ctx = createContext(m.roomId, env.epoch, m.authorId, env.senderDevice, m.nonce);
    }
    let sender = null;
    try {
      const id = bytesKey(env.senderDevice);
      sender = (await this.devices(m.authorId)).ever.get(id) || (await this.devices(m.authorId, true)).ever.get(id) || null;
    } catch { /* no verifiable list: unknown_device */ }
    return openMessage(ctx, env, sender, await this.roomKey(m.roomId, env.epoch));
  }
}

// ---------- what app.js calls ----------
let client = null, starting = null, changed = () => {};
const shown = new Map();    // `${id}:${signature}` -> { status, text }
const working = new Set();  // the same, being decrypted

// After login: load or create this browser's device (onChange: redraw the messages).
export function start(api, me, onChange) {
  changed = onChange;
  client = new E2EClient(api, me.id);
  starting = client.setup().then(statusShown,
    (e) => { document.documentElement.dataset.e2e = "failed"; console.error("end-to-end encryption unavailable:", e); throw e; });
  return starting;
}
// The device's status on <html data-e2e>; messages that waited for it are decrypted again.
function statusShown(status) {
  if (document.documentElement.dataset.e2e === "pending" && status === "active") {
    for (const [k, v] of shown) if (v.status === "unavailable") shown.delete(k);
    changed();
  }
  document.documentElement.dataset.e2e = status;
  return status;
}
const PENDING = "this browser is not yet an approved device of yours: approve it from another of your devices, or reset (Safety numbers)";
let checking = null; // one look at our own device list at a time
async function active() {
  await starting;
  if (client.status !== "active") await (checking ||= client.activate().then(statusShown).finally(() => { checking = null; }));
  if (client.status !== "active") throw new Error(PENDING);
  return client;
}
const payloadKey = (m) => `${m.id}:${m.encrypted.signature}`;

// Send `text` encrypted; the stored message as a gateway REPLY gives it (snake_case).
export async function send(roomId, text, nonce, attachmentIds = []) {
  if (attachmentIds.length) throw new Error("files cannot be sent in end-to-end encrypted rooms yet");
  const m = await (await active()).send(roomId, text, nonce);
  shown.set(payloadKey(m), { status: "ok", text });
  return { id: m.id, seq: m.seq, author_id: m.authorId, content: "", created_at: m.createdAt, nonce: m.nonce, encrypted: m.encrypted, attachments: [] };
}
export async function edit(m, text) {
  const out = await (await active()).edit(m.roomId, m.id, text);
  shown.set(`${m.id}:${out.encrypted.signature}`, { status: "ok", text });
}
// The text of an encrypted message once decrypted and verified, else null.
export const textOf = (m) => (m.encrypted && shown.get(payloadKey(m))?.status === "ok" ? shown.get(payloadKey(m)).text : null);

const NOTICE = {
  unknown_device: "⚠ could not verify: sent from a device its author never listed",
  bad_signature: "⚠ could not verify this message: its signature is wrong",
  tampered: "⚠ could not decrypt this message: it was altered",
  no_key: "no key for this message on this device (sent before it could read the room)",
};
const RETRY_MS = 10_000; // a message that could not be checked (network, pending device): next try
// The .text element of an encrypted message: the verified text, or why not. Decrypts in the
// background the first time (then redraws through onChange).
export function textElement(m) {
  const span = document.createElement("span");
  const k = payloadKey(m);
  if (shown.get(k)?.status === "unavailable" && Date.now() - shown.get(k).at > RETRY_MS) shown.delete(k); // try again
  const got = shown.get(k);
  if (got) {
    span.className = got.status === "ok" ? "text" : "text e2e-warning";
    span.textContent = got.status === "ok" ? got.text : NOTICE[got.status] || `cannot decrypt here: ${got.text}`;
    span.title = got.status === "ok" ? "end-to-end encrypted, signature verified" : got.status;
    return span;
  }
  span.className = "text e2e-pending"; span.textContent = "decrypting…";
  if (!working.has(k)) {
    working.add(k);
    active().then((c) => c.decrypt(m)).then((r) => shown.set(k, r), (e) => shown.set(k, { status: "unavailable", text: e.message, at: Date.now() }))
      .finally(() => { working.delete(k); changed(); });
  }
  return span;
}
export function lock() {
  const s = document.createElement("span");
  s.className = "lock"; s.title = "end-to-end encrypted"; s.setAttribute("role", "img"); s.setAttribute("aria-label", s.title);
  return s;
}

// The room header's part: a lock and a "Safety numbers" button in encrypted rooms.
// members: () => the member ids shown; nameOf: id -> username.
export function roomHeader(box, room, members, nameOf) {
  box.replaceChildren();
  if (!room.encrypted) return;
  const b = document.createElement("button");
  b.type = "button"; b.id = "safety"; b.textContent = "Safety numbers";
  b.onclick = () => showSafety(members(), nameOf);
  box.append(lock(), b);
}
async function showSafety(memberIds, nameOf) {
  const dlg = document.createElement("dialog"), list = document.createElement("dl");
  dlg.className = "e2e-safety";
  const h = document.createElement("h3"); h.textContent = "Safety numbers";
  const hint = document.createElement("p");
  hint.className = "muted"; hint.textContent = "Compare each number with the one that member sees (in person or on a call). Equal numbers: nobody is in between.";
  const close = document.createElement("button"); close.textContent = "Close"; close.onclick = () => dlg.remove();
  dlg.append(h, hint, list);
  const add = (name, text, cls = "") => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = name; dd.textContent = text; dd.className = cls;
    list.append(dt, dd);
    return dd;
  };
  document.body.append(dlg); dlg.showModal();
  try {
    const c = await active();
    for (const uid of memberIds.filter((u) => String(u) !== c.userId)) {
      const dd = add(nameOf(uid), "…", "digits safety-number");
      dd.dataset.user = uid;
      try {
        dd.textContent = await c.safetyNumber(uid);
        if (c.identityChanges.has(String(uid))) dd.append(Object.assign(document.createElement("div"), { className: "e2e-warning", textContent: "⚠ safety number changed: compare again" }));
      } catch (e) { dd.textContent = e.message; dd.className = "e2e-warning"; }
    }
    for (const d of await c.pendingDevices()) {
      const dd = add("a new device of yours asks to be added", `fingerprint ${c.deviceFingerprint(d)} `);
      const ok = document.createElement("button"); ok.textContent = "Approve";
      ok.onclick = () => c.approveDevice(d).then(() => { dd.textContent = "approved"; }, (e) => { dd.textContent = e.message; });
      dd.append(ok);
    }
  } catch (e) {
    const dd = add("this browser", e.message, "e2e-warning");
    if (client?.status === "pending") {
      dd.append(Object.assign(document.createElement("div"), { className: "digits", textContent: `its fingerprint: ${client.deviceFingerprint()}` }));
      const reset = document.createElement("button");
      reset.textContent = "Use only this browser (reset)";
      reset.onclick = () => {
        if (!confirm("Make this browser your only device? Your other devices leave your list, and everyone sees your safety number change.")) return;
        client.resetDevices().then(() => { statusShown("active"); dd.className = ""; dd.textContent = "this browser is now your only device"; },
          (err) => { dd.textContent = err.message; });
      };
      dd.append(reset);
    }
  }
  dlg.append(close);
}
