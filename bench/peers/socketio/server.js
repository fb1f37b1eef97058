// Socket.IO peer for herald-load: the same load shapes as Herald's bench server.
//
//   node server.js [--port=0] [--host=127.0.0.1]
//
// Prints `listening <host>:<port>` on stdout once it accepts connections; exits when stdin closes.
// Protocol (WebSocket transport only, /socket.io/?EIO=4&transport=websocket):
//   connect with auth {"user": "u5"}  -> the socket joins the room "u5" (its own inbox)
//   "join" room, ack                   -> joins a room, acknowledges (fan-out receivers)
//   "pub" room, body                   -> io.to(room).emit("m", body)   (fan-out publisher; encoded once)
//   "dm" user, body                    -> io.to(user).emit("m", body)   (1:1)
// Unlike Herald, nothing is stored and the sender gets no acknowledgement: this is the peer's fast path.
"use strict";

const http = require("http");
const { Server } = require("socket.io");

const arg = (name, dflt) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : dflt;
};
const host = arg("host", "127.0.0.1");
const port = Number(arg("port", "0"));

const server = http.createServer();
const io = new Server(server, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  httpCompression: false,
  // Benchmark runs are short; keep the heartbeat out of the measurement.
  pingInterval: 600000,
  pingTimeout: 600000,
  maxHttpBufferSize: 1e6,
});

io.on("connection", (socket) => {
  const user = socket.handshake.auth && socket.handshake.auth.user;
  if (typeof user === "string" && user.length > 0) socket.join(user);
  socket.on("join", (room, ack) => {
    if (typeof room === "string") socket.join(room);
    if (typeof ack === "function") ack();
  });
  socket.on("pub", (room, body) => {
    if (typeof room === "string") io.to(room).emit("m", body);
  });
  socket.on("dm", (to, body) => {
    if (typeof to === "string") io.to(to).emit("m", body);
  });
});

server.listen(port, host, () => {
  const a = server.address();
  process.stdout.write(`listening ${a.address}:${a.port}\n`);
});

process.stdin.on("data", () => {});
process.stdin.on("end", () => {
  io.close();
  process.exit(0);
});
process.stdin.resume();
