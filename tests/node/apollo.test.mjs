// Apollo Client 4 against the edge: GET queries, POST mutations, errors, batching, subscriptions.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { CombinedGraphQLErrors } from "@apollo/client/errors";
import { BatchHttpLink } from "@apollo/client/link/batch-http";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions";
import { createClient } from "graphql-ws";

import {
  GRAPHQL,
  GRAPHQL_RESPONSE,
  GRAPHQL_WS,
  WebSocket,
  createRoom,
  recordingFetch,
  register,
  send,
} from "./edge.mjs";

const ROOMS = gql`query Rooms { rooms { id name lastSeq } }`;
const CREATE = gql`mutation Create($n: String!, $m: [ID!]) { createRoom(name: $n, memberIds: $m) { id name } }`;
const MESSAGES = gql`query Messages($r: ID!) { messages(roomId: $r) { items { id content } hasMore } }`;
const EVENTS = gql`subscription Events($r: ID!, $a: Int) {
  roomEvents(roomId: $r, afterSeq: $a) { __typename ... on Message { id content seq } }
}`;

function apollo(link) {
  return new ApolloClient({ link, cache: new InMemoryCache() });
}

/** An HttpLink client that sends queries as GET, and the exchanges it made. */
function getForQueries(token) {
  const rec = recordingFetch();
  const link = new HttpLink({
    uri: GRAPHQL,
    fetch: rec.fetch,
    useGETForQueries: true,
    headers: { authorization: `Bearer ${token}` },
  });
  return { client: apollo(link), rec };
}

test("queries go as GET, mutations as POST, answered as application/graphql-response+json", async () => {
  const alice = await register("apollo");
  const bob = await register("apollo");
  const { client, rec } = getForQueries(alice.token);
  const made = await client.mutate({ mutation: CREATE, variables: { n: "apollo room", m: [bob.id] } });
  const roomId = made.data.createRoom.id;
  const { data } = await client.query({ query: ROOMS, fetchPolicy: "network-only" });
  assert.deepEqual(
    data.rooms.map((r) => r.id),
    [roomId],
  );
  assert.deepEqual(
    rec.calls.map((c) => [c.method, c.status]),
    [
      ["POST", 200],
      ["GET", 200],
    ],
  );
  for (const call of rec.calls) assert.match(call.contentType, /^application\/graphql-response\+json/);
  assert.match(rec.calls[1].url, /[?&]query=/);
});

test("request and field errors reach Apollo as CombinedGraphQLErrors with extensions.code", async () => {
  const owner = await register("apollo");
  const stranger = await register("apollo");
  const roomId = await createRoom(owner.token, "private");
  const { client, rec } = getForQueries(stranger.token);
  // a field error (the caller is not a member: the room does not exist for them): executed, so 2xx
  await assert.rejects(client.query({ query: MESSAGES, variables: { r: roomId } }), (err) => {
    assert.ok(CombinedGraphQLErrors.is(err), String(err));
    assert.equal(err.errors[0].extensions.code, "NOT_FOUND");
    return true;
  });
  assert.equal(rec.calls.at(-1).status, 294);
  // a request error (the document does not validate): 422, still a GraphQL response to Apollo
  await assert.rejects(client.query({ query: gql`query Bad { nope }` }), (err) => {
    assert.ok(CombinedGraphQLErrors.is(err), String(err));
    assert.equal(err.errors[0].extensions.code, "BAD_USER_INPUT");
    return true;
  });
  assert.equal(rec.calls.at(-1).status, 422);
  assert.match(rec.calls.at(-1).contentType, /^application\/graphql-response\+json/);
});

test("BatchHttpLink sends several operations in one POST of a JSON array", async () => {
  const alice = await register("batch");
  const r1 = await createRoom(alice.token, "one");
  const r2 = await createRoom(alice.token, "two");
  await send(alice.token, r1, "in one");
  await send(alice.token, r2, "in two");
  const rec = recordingFetch();
  const client = apollo(
    new BatchHttpLink({
      uri: GRAPHQL,
      fetch: rec.fetch,
      batchMax: 10,
      batchInterval: 20,
      headers: { authorization: `Bearer ${alice.token}` },
    }),
  );
  const [one, two, rooms] = await Promise.all([
    client.query({ query: MESSAGES, variables: { r: r1 } }),
    client.query({ query: MESSAGES, variables: { r: r2 } }),
    client.query({ query: ROOMS }),
  ]);
  assert.equal(rec.calls.length, 1, "one HTTP request for the three operations");
  assert.equal(rec.calls[0].method, "POST");
  assert.equal(JSON.parse(rec.calls[0].body).length, 3);
  assert.equal(rec.calls[0].status, 200);
  assert.equal(one.data.messages.items[0].content, "in one");
  assert.equal(two.data.messages.items[0].content, "in two");
  assert.equal(rooms.data.rooms.length, 2);
});

test("subscriptions through GraphQLWsLink with connectionParams.authToken", async () => {
  const alice = await register("wslink");
  const roomId = await createRoom(alice.token, "live");
  const ws = createClient({
    url: GRAPHQL_WS,
    webSocketImpl: WebSocket,
    connectionParams: { authToken: alice.token },
    retryAttempts: 0,
  });
  const http = new HttpLink({ uri: GRAPHQL, headers: { authorization: `Bearer ${alice.token}` } });
  const link = ApolloLink.split(
    ({ query }) => query.definitions.some((d) => d.operation === "subscription"),
    new GraphQLWsLink(ws),
    http,
  );
  const client = apollo(link);
  try {
    const got = new Promise((resolve, reject) => {
      const sub = client.subscribe({ query: EVENTS, variables: { r: roomId, a: 1 } }).subscribe({
        next: (result) => {
          sub.unsubscribe();
          resolve(result);
        },
        error: reject,
      });
    });
    const sent = await send(alice.token, roomId, "live over graphql-ws");
    const result = await got;
    assert.equal(result.error, undefined);
    assert.deepEqual(result.data.roomEvents, {
      __typename: "Message",
      id: sent.id,
      content: "live over graphql-ws",
      seq: sent.seq,
    });
  } finally {
    await ws.dispose();
  }
});

test("a missing Accept header or */* gets application/json", async () => {
  for (const accept of [undefined, "*/*"]) {
    const headers = { "content-type": "application/json" };
    if (accept) headers.accept = accept;
    const res = await fetch(GRAPHQL, {
      method: "POST",
      headers,
      body: JSON.stringify({ query: "{ __typename }" }),
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type"), /^application\/json/);
    assert.deepEqual(await res.json(), { data: { __typename: "Query" } });
  }
  const res = await fetch(GRAPHQL, {
    method: "POST",
    headers: { "content-type": "application/json", accept: GRAPHQL_RESPONSE },
    body: JSON.stringify({ query: "{ __typename }" }),
  });
  assert.match(res.headers.get("content-type"), /^application\/graphql-response\+json/);
});
