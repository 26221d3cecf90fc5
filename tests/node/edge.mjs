// Shared helpers of the client-convention tests: where the edge is, users, a recording fetch.
//
// tests/integration/test_client_conventions.py starts a real `shardchat dev` and runs each
// *.test.mjs here with `node --test`, passing the edge's URL in SHARDCHAT_EDGE_URL.
import { randomBytes } from "node:crypto";
import WebSocket from "ws";

export const EDGE = (process.env.SHARDCHAT_EDGE_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "");
export const GRAPHQL = `${EDGE}/graphql`;
export const GRAPHQL_WS = GRAPHQL.replace(/^http/, "ws");

// Node 20 has no global WebSocket; Apollo's GraphQLWsLink refers to it when a socket errors.
globalThis.WebSocket ??= WebSocket;
export { WebSocket };

export const unique = (prefix) => `${prefix}${randomBytes(4).toString("hex")}`;

/** POST one operation the plain way; the parsed body. */
export async function gql(query, variables = {}, token = undefined) {
  const headers = { "content-type": "application/json", accept: "application/graphql-response+json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(GRAPHQL, { method: "POST", headers, body: JSON.stringify({ query, variables }) });
  return res.json();
}

/** A new user: { id, username, token }. */
export async function register(prefix = "u") {
  const username = unique(prefix);
  const body = await gql(
    "mutation($u: String!, $p: String!) { register(username: $u, password: $p) { accessToken user { id } } }",
    { u: username, p: "correct horse battery" },
  );
  if (!body.data) throw new Error(`register failed: ${JSON.stringify(body)}`);
  return { id: body.data.register.user.id, username, token: body.data.register.accessToken };
}

export async function createRoom(token, name, memberIds = []) {
  const body = await gql(
    "mutation($n: String!, $m: [ID!]) { createRoom(name: $n, memberIds: $m) { id } }",
    { n: name, m: memberIds },
    token,
  );
  if (!body.data) throw new Error(`createRoom failed: ${JSON.stringify(body)}`);
  return body.data.createRoom.id;
}

export async function send(token, roomId, content) {
  const body = await gql(
    "mutation($r: ID!, $c: String!, $n: String!) { sendMessage(roomId: $r, content: $c, nonce: $n) { id seq } }",
    { r: roomId, c: content, n: unique("n") },
    token,
  );
  if (!body.data) throw new Error(`sendMessage failed: ${JSON.stringify(body)}`);
  return body.data.sendMessage;
}

/** A fetch that records every exchange: method, URL, request body, status, Content-Type. */
export function recordingFetch() {
  const calls = [];
  const record = async (input, init = {}) => {
    const res = await fetch(input, init);
    calls.push({
      method: (init.method ?? "GET").toUpperCase(),
      url: String(input),
      body: typeof init.body === "string" ? init.body : undefined,
      accept: new Headers(init.headers).get("accept"),
      status: res.status,
      contentType: res.headers.get("content-type"),
    });
    return res;
  };
  return { fetch: record, calls };
}

/** The first value of an async iterator, or fail after `ms`. */
export async function first(iterator, ms = 5000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`nothing within ${ms} ms`)), ms);
  });
  try {
    const { value, done } = await Promise.race([iterator.next(), timeout]);
    if (done) throw new Error("the stream ended without a value");
    return value;
  } finally {
    clearTimeout(timer);
  }
}

/** Resolve when `predicate()` holds (polled), or fail after `ms`. */
export async function until(predicate, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const GRAPHQL_RESPONSE = "application/graphql-response+json";
