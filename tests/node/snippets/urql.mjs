import { Client, fetchExchange, subscriptionExchange } from "@urql/core";
import { createClient } from "graphql-ws";
import { pipe, subscribe } from "wonka";
import WebSocket from "ws"; // Node only

const EDGE = process.env.SHARDCHAT_URL ?? "http://127.0.0.1:8080";
const nonce = () => crypto.randomUUID().replaceAll("-", "");

const anonymous = new Client({ url: `${EDGE}/graphql`, exchanges: [fetchExchange] });
const signedUp = await anonymous
  .mutation("mutation($u: String!, $p: String!) { register(username: $u, password: $p) { accessToken } }", {
    u: `urql_${nonce().slice(0, 8)}`,
    p: "correct horse battery",
  })
  .toPromise();
const token = signedUp.data.register.accessToken;

const ws = createClient({
  url: `${EDGE.replace(/^http/, "ws")}/graphql`,
  webSocketImpl: WebSocket,
  connectionParams: { token },
});
const client = new Client({
  url: `${EDGE}/graphql`,
  fetchOptions: { headers: { authorization: `Bearer ${token}` } },
  exchanges: [
    fetchExchange,
    subscriptionExchange({
      forwardSubscription: (request) => ({
        subscribe: (sink) => ({ unsubscribe: ws.subscribe({ ...request, query: request.query ?? "" }, sink) }),
      }),
    }),
  ],
});

const made = await client.mutation('mutation { createRoom(name: "urql") { id lastSeq } }', {}).toPromise();
if (made.error) throw made.error; // GraphQL errors: made.error.graphQLErrors[0].extensions.code
const room = made.data.createRoom;

const firstMessage = new Promise((resolve) => {
  const { unsubscribe } = pipe(
    client.subscription(
      "subscription($r: ID!, $a: Int) { roomEvents(roomId: $r, afterSeq: $a) { ... on Message { id content } } }",
      { r: room.id, a: room.lastSeq },
    ),
    subscribe((result) => {
      unsubscribe();
      resolve(result.data.roomEvents);
    }),
  );
});
await client
  .mutation("mutation($r: ID!, $c: String!, $n: String!) { sendMessage(roomId: $r, content: $c, nonce: $n) { id } }", {
    r: room.id,
    c: "hello from urql",
    n: nonce(),
  })
  .toPromise();
console.log("received:", (await firstMessage).content);

const rooms = await client.query("{ rooms { id unreadCount mentionCount } }", {}).toPromise(); // a GET
console.log("rooms:", JSON.stringify(rooms.data.rooms));
await ws.dispose();
