"use strict";
// Socket.IO peer baseline for the shardchat load test (loadtest/scenarios/peers.py).
//
//   node server.js [PORT] [HOST]        (or PORT / HOST in the environment; PORT 0 = ephemeral)
//
// Pure in-memory broadcast, nothing persisted: a client emits "join" (a room name) and
// "send" ({room, content, nonce}); the server does io.to(room).emit("message", msg), which
// reaches every member of the room, the sender included, then acknowledges the sender.
// WebSocket transport only (no HTTP long-polling, no per-message deflate), ONE process:
// Node runs JavaScript on one thread, so this server uses at most one core for its
// Socket.IO work. Scaling out needs an adapter (for instance @socket.io/redis-adapter)
// and would add a Redis pub/sub hop per message; the baseline deliberately stays a
// single in-memory process (see loadtest/peers/README.md).
//
// Ready when it printed "listening on ws://HOST:PORT/socket.io/ ...".

const fs = require("node:fs");
const http = require("node:http");
const path = require("node:path");
const { Server } = require("socket.io");

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
const host = process.argv[3] ?? process.env.HOST ?? "127.0.0.1";

const httpServer = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  httpCompression: false,
  pingInterval: 25000, // the Engine.IO v4 defaults: the SERVER pings, the client answers
  pingTimeout: 20000,
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack(true);
  });
  socket.on("send", (msg, ack) => {
    if (msg === null || typeof msg !== "object" || msg.room === undefined) {
      if (typeof ack === "function") ack({ ok: false });
      return;
    }
    io.to(String(msg.room)).emit("message", msg);
    if (typeof ack === "function") ack({ ok: true, nonce: msg.nonce });
  });
});

function version() {
  const file = path.join(__dirname, "node_modules", "socket.io", "package.json");
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")).version;
  } catch {
    return "?";
  }
}

httpServer.listen({ port, host, backlog: 4096 }, () => {
  const bound = httpServer.address().port;
  console.log(
    `listening on ws://${host}:${bound}/socket.io/ node ${process.version} socket.io ${version()}`,
  );
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}
