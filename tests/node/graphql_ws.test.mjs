// graphql-ws (the client library) and the graphql-transport-ws rules it relies on.
import assert from "node:assert/strict";
import { once } from "node:events";
import { test } from "node:test";

import { createClient } from "graphql-ws";

import { GRAPHQL_WS, WebSocket, createRoom, first, register, send } from "./edge.mjs";

const EVENTS = `subscription($r: ID!, $a: Int) {
  roomEvents(roomId: $r, afterSeq: $a) { __typename ... on Message { content } }
}`;

function client(connectionParams) {
  return createClient({ url: GRAPHQL_WS, webSocketImpl: WebSocket, connectionParams, retryAttempts: 0 });
}

for (const [name, params] of [
  ["authorization", (t) => ({ authorization: `Bearer ${t}` })],
  ["authToken", (t) => ({ authToken: t })],
  ["token", (t) => ({ token: t })],
  ["a function returning authToken", (t) => async () => ({ authToken: t })],
]) {
  test(`the token is accepted as connectionParams ${name}`, async () => {
    const alice = await register("gqlws");
    const roomId = await createRoom(alice.token, "live");
    const ws = client(params(alice.token));
    try {
      const events = ws.iterate({ query: EVENTS, variables: { r: roomId, a: 1 } });
      const next = first(events);
      await send(alice.token, roomId, `via ${name}`);
      assert.deepEqual(await next, { data: { roomEvents: { __typename: "Message", content: `via ${name}` } } });
      await events.return();
    } finally {
      await ws.dispose();
    }
  });
}

test("a bad token closes the socket with 4403", async () => {
  const ws = client({ authToken: "not-a-token" });
  try {
    await assert.rejects(first(ws.iterate({ query: "{ me { id } }" })), (err) => {
      assert.equal(err.code, 4403, String(err));
      return true;
    });
  } finally {
    await ws.dispose();
  }
});

test("queries and mutations run over the socket too (one next, then complete)", async () => {
  const alice = await register("gqlws");
  const ws = client({ authToken: alice.token });
  try {
    const results = [];
    for await (const result of ws.iterate({ query: "{ me { username } }" })) results.push(result);
    assert.deepEqual(results, [{ data: { me: { username: alice.username } } }]);
  } finally {
    await ws.dispose();
  }
});

/** A raw socket: the frames the server sent, and how it closed. */
async function raw(protocols, frames) {
  const socket = new WebSocket(GRAPHQL_WS, protocols);
  const received = [];
  socket.on("message", (data) => received.push(JSON.parse(String(data))));
  const unexpected = once(socket, "unexpected-response").then(([, res]) => `HTTP ${res.statusCode}`);
  const opened = once(socket, "open").then(() => "open");
  const how = await Promise.race([opened, unexpected]);
  assert.equal(how, "open", "the handshake must succeed; refusals are close codes");
  const closed = once(socket, "close");
  for (const frame of frames) {
    socket.send(JSON.stringify(frame));
    await new Promise((r) => setTimeout(r, 50));
  }
  const timer = setTimeout(() => socket.close(1000), 2000);
  const [code, reason] = await closed;
  clearTimeout(timer);
  return { received, code, reason: String(reason) };
}

test("a handshake without the graphql-transport-ws subprotocol is closed with 4406", async () => {
  const { code, reason } = await raw([], []);
  assert.equal(code, 4406);
  assert.equal(reason, "Subprotocol not acceptable");
});

test("a subscribe without payload.query is closed with 4400", async () => {
  const alice = await register("gqlws");
  for (const payload of [{}, { query: 42 }, { query: "{ me { id } }", variables: [1] }]) {
    const { received, code } = await raw(
      ["graphql-transport-ws"],
      [{ type: "connection_init", payload: { authToken: alice.token } }, { type: "subscribe", id: "1", payload }],
    );
    assert.deepEqual(received, [{ type: "connection_ack" }]);
    assert.equal(code, 4400, JSON.stringify(payload));
  }
});

test("a ping's payload comes back on the pong", async () => {
  const { received, code } = await raw(
    ["graphql-transport-ws"],
    [{ type: "ping", payload: { t: 12 } }, { type: "ping" }],
  );
  assert.deepEqual(received, [{ type: "pong", payload: { t: 12 } }, { type: "pong" }]);
  assert.equal(code, 1000);
});
