import WebSocket from "ws"; // Node only: in a browser, delete this line

const EDGE = process.env.SHARDCHAT_URL ?? "http://127.0.0.1:8080";
const nonce = () => crypto.randomUUID().replaceAll("-", "");
const OP = { DISPATCH: 0, HEARTBEAT: 1, IDENTIFY: 2, SUBSCRIBE: 4, SEND: 8, HELLO: 10, REPLY: 13 };

async function graphql(query, variables = {}, token = undefined) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${EDGE}/graphql`, { method: "POST", headers, body: JSON.stringify({ query, variables }) });
  const body = await res.json();
  if (body.errors) throw new Error(`${body.errors[0].extensions.code}: ${body.errors[0].message}`);
  return body.data;
}

const { register } = await graphql(
  "mutation($u: String!, $p: String!) { register(username: $u, password: $p) { accessToken } }",
  { u: `raw_${nonce().slice(0, 8)}`, p: "correct horse battery" },
);
const token = register.accessToken;
const { createRoom: room } = await graphql('mutation { createRoom(name: "raw") { id lastSeq } }', {}, token);

const { url } = await (await fetch(`${EDGE}/gateway`)).json(); // GET /gateway?key=... for affinity
const socket = new WebSocket(`${url}?v=1&encoding=json`);
const send = (op, d, id = null) => socket.send(JSON.stringify({ op, d, id }));
let lastS = null; // the last DISPATCH s: heartbeats and RESUME carry it
let heartbeat;
let requestId = 0;

socket.onmessage = (event) => {
  const { op, t, s, id, d } = JSON.parse(event.data);
  if (op === OP.HELLO) {
    heartbeat = setInterval(() => send(OP.HEARTBEAT, lastS), d.heartbeat_interval_ms);
    send(OP.IDENTIFY, { token, client: { name: "raw-example", version: "1" } });
  } else if (op === OP.DISPATCH) {
    lastS = s;
    if (t === "READY") {
      send(OP.SUBSCRIBE, { rooms: [{ room_id: room.id, after_seq: room.lastSeq }] }, ++requestId);
    } else if (t === "ROOM_SUBSCRIBED") {
      send(OP.SEND, { room_id: room.id, content: "hello over a bare WebSocket", nonce: nonce() }, ++requestId);
    } else if (t === "MESSAGE_CREATE") {
      console.log("received:", d.content, "seq", d.seq);
      clearInterval(heartbeat);
      socket.close(1000); // 1000: the session ends (any other code would leave it resumable)
    }
  } else if (op === OP.REPLY && !d.ok) {
    console.error(`request ${id} failed:`, d.error.code, d.error.message);
  }
};
socket.onclose = (event) => console.log("closed:", event.code);
