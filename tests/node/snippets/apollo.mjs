import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions";
import { createClient } from "graphql-ws";
import WebSocket from "ws"; // Node only: browsers have WebSocket built in

const EDGE = process.env.SHARDCHAT_URL ?? "http://127.0.0.1:8080";
const nonce = () => crypto.randomUUID().replaceAll("-", ""); // 32 bytes at most

// An account: register once, log in afterwards (login has the same shape).
const signedUp = await fetch(`${EDGE}/graphql`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({
    query: "mutation($u: String!, $p: String!) { register(username: $u, password: $p) { accessToken } }",
    variables: { u: `apollo_${nonce().slice(0, 8)}`, p: "correct horse battery" },
  }),
}).then((res) => res.json());
const token = signedUp.data.register.accessToken;

// Queries and mutations over HTTP, subscriptions over graphql-transport-ws.
const http = new HttpLink({
  uri: `${EDGE}/graphql`,
  useGETForQueries: true,
  headers: { authorization: `Bearer ${token}` },
});
const ws = createClient({
  url: `${EDGE.replace(/^http/, "ws")}/graphql`,
  webSocketImpl: WebSocket,
  connectionParams: { authToken: token },
});
const isSubscription = ({ query }) => query.definitions.some((d) => d.operation === "subscription");
const client = new ApolloClient({
  cache: new InMemoryCache(),
  link: ApolloLink.split(isSubscription, new GraphQLWsLink(ws), http),
});

const made = await client.mutate({
  mutation: gql`mutation { createRoom(name: "apollo") { id lastSeq } }`,
});
const room = made.data.createRoom;

// The room's events after its current seq: nothing is missed between here and the send.
const firstMessage = new Promise((resolve, reject) => {
  const events = client.subscribe({
    query: gql`subscription($r: ID!, $a: Int) {
      roomEvents(roomId: $r, afterSeq: $a) { ... on Message { id seq content author { username } } }
    }`,
    variables: { r: room.id, a: room.lastSeq },
  });
  const sub = events.subscribe({
    next: ({ data }) => {
      sub.unsubscribe();
      resolve(data.roomEvents);
    },
    error: reject,
  });
});
await client.mutate({
  mutation: gql`mutation($r: ID!, $c: String!, $n: String!) {
    sendMessage(roomId: $r, content: $c, nonce: $n) { id }
  }`,
  variables: { r: room.id, c: "hello from Apollo", n: nonce() },
});
const message = await firstMessage;
console.log("received:", message.content);

// Read state: counts come with the rooms; markRead moves the read position.
await client.mutate({
  mutation: gql`mutation($r: ID!, $s: Int!) { markRead(roomId: $r, seq: $s) { lastReadSeq } }`,
  variables: { r: room.id, s: message.seq },
});
const { data } = await client.query({
  query: gql`{ rooms { id unreadCount mentionCount lastReadSeq } }`,
  fetchPolicy: "network-only",
});
console.log("rooms:", JSON.stringify(data.rooms));
await ws.dispose();
