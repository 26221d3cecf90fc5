// urql (@urql/core) with its defaults: queries as GET, mutations as POST, graphql-ws subscriptions.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, fetchExchange, subscriptionExchange } from "@urql/core";
import { createClient as createWsClient } from "graphql-ws";
import { pipe, take, toPromise } from "wonka";

import { GRAPHQL, GRAPHQL_WS, WebSocket, createRoom, recordingFetch, register, send } from "./edge.mjs";

function urql(token, fetch, ws = undefined) {
  const exchanges = [fetchExchange];
  if (ws) {
    exchanges.push(
      subscriptionExchange({
        forwardSubscription: (request) => ({
          subscribe: (sink) => ({ unsubscribe: ws.subscribe({ ...request, query: request.query ?? "" }, sink) }),
        }),
      }),
    );
  }
  return new Client({
    url: GRAPHQL,
    exchanges,
    fetch,
    fetchOptions: { headers: { authorization: `Bearer ${token}` } },
    requestPolicy: "network-only",
  });
}

test("with its defaults urql queries by GET and mutates by POST", async () => {
  const alice = await register("urql");
  const bob = await register("urql");
  const rec = recordingFetch();
  const client = urql(alice.token, rec.fetch);
  const made = await client
    .mutation("mutation($n: String!, $m: [ID!]) { createRoom(name: $n, memberIds: $m) { id } }", {
      n: "urql room",
      m: [bob.id],
    })
    .toPromise();
  assert.equal(made.error, undefined, String(made.error));
  const roomId = made.data.createRoom.id;
  const listed = await client.query("{ rooms { id members { username } } }", {}).toPromise();
  assert.equal(listed.error, undefined, String(listed.error));
  assert.deepEqual(listed.data.rooms[0].id, roomId);
  assert.deepEqual(
    listed.data.rooms[0].members.map((m) => m.username).sort(),
    [alice.username, bob.username].sort(),
  );
  assert.deepEqual(
    rec.calls.map((c) => [c.method, c.status]),
    [
      ["POST", 200],
      ["GET", 200],
    ],
  );
  for (const call of rec.calls) assert.match(call.contentType, /^application\/graphql-response\+json/);
});

test("errors reach urql as graphQLErrors with extensions.code", async () => {
  const owner = await register("urql");
  const stranger = await register("urql");
  const roomId = await createRoom(owner.token, "private");
  const rec = recordingFetch();
  const client = urql(stranger.token, rec.fetch);
  const hidden = await client
    .query("query($r: ID!) { messages(roomId: $r) { items { id } } }", { r: roomId })
    .toPromise();
  assert.equal(hidden.error.graphQLErrors[0].extensions.code, "NOT_FOUND");
  assert.equal(rec.calls.at(-1).method, "GET");
  const invalid = await client.query("{ nope }", {}).toPromise();
  assert.equal(invalid.error.graphQLErrors[0].extensions.code, "BAD_USER_INPUT");
  assert.equal(invalid.error.networkError, undefined);
  assert.equal(rec.calls.at(-1).status, 422);
  const denied = await client
    .mutation("mutation($r: ID!) { sendMessage(roomId: $r, content: \"x\", nonce: \"n\") { id } }", { r: roomId })
    .toPromise();
  assert.equal(denied.error.graphQLErrors[0].extensions.code, "NOT_FOUND");
  assert.equal(rec.calls.at(-1).method, "POST");
});

test("subscriptions through subscriptionExchange + graphql-ws with connectionParams.token", async () => {
  const alice = await register("urqlws");
  const roomId = await createRoom(alice.token, "live");
  const ws = createWsClient({
    url: GRAPHQL_WS,
    webSocketImpl: WebSocket,
    connectionParams: { token: alice.token },
    retryAttempts: 0,
  });
  try {
    const client = urql(alice.token, undefined, ws);
    const got = pipe(
      client.subscription(
        "subscription($r: ID!, $a: Int) { roomEvents(roomId: $r, afterSeq: $a) { ... on Message { id content } } }",
        { r: roomId, a: 1 },
      ),
      take(1),
      toPromise,
    );
    const sent = await send(alice.token, roomId, "hello urql");
    const result = await got;
    assert.equal(result.error, undefined, String(result.error));
    assert.deepEqual(result.data.roomEvents, { id: sent.id, content: "hello urql" });
  } finally {
    await ws.dispose();
  }
});
