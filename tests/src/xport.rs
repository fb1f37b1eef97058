//! One hub served by every network transport at once, and clients that pick a transport per connection.
//!
//! [`Servers`] starts a WebSocket, a QUIC (native and WebTransport on one UDP port, development certificate) and
//! a long-poll/SSE (h2c) server on loopback ports, all for the same [`Hub`]. [`Peer`] is a protocol client over any
//! of them ([`Via`]) with generous timeouts, built on each transport crate's own test client.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use herald::core::Hub;
use herald::core::testkit::protocol::{Harness, RawClient, Seen, TestTokens};
use herald::longpoll::testkit::{LpHarness, LpRaw, Reading};
use herald::quic::client::{QuicConnector, WebTransportConnector};
use herald::quic::testkit::{Flavour, QuicHarness, QuicRaw};
use herald::websocket::testkit::{TokenPlacement, WsClient, WsHarness};
use serde_json::{Value, json};

/// How long a [`Peer`] waits for anything it expects before failing: generous, for a loaded machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// A transport, as a client chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// WebSocket (token in the `Authorization` header).
    WebSocket,
    /// Native QUIC, ALPN `herald/1` (token in the stream header).
    Quic,
    /// WebTransport over HTTP/3 (token in the stream header).
    WebTransport,
    /// HTTP long-poll (`GET …/events`), over h2c.
    LongPoll,
    /// HTTP long-poll session read over Server-Sent Events (opened with `?reader=sse`), over h2c.
    Sse,
}

impl Via {
    /// Every transport.
    pub const ALL: [Via; 5] = [Via::WebSocket, Via::Quic, Via::WebTransport, Via::LongPoll, Via::Sse];

    /// The `transport` label of the server's connection metrics for connections made this way.
    pub fn label(self) -> &'static str {
        match self {
            Via::WebSocket => "websocket",
            Via::Quic => "quic",
            Via::WebTransport => "webtransport",
            Via::LongPoll => "longpoll",
            Via::Sse => "sse",
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The three servers of one hub, and the clients' connectors.
#[derive(Debug)]
pub struct Servers {
    /// Token minting matching the hub's authentication.
    pub tokens: TestTokens,
    /// The WebSocket server.
    pub ws: WsHarness,
    /// The QUIC server (native and WebTransport).
    pub quic: QuicHarness,
    /// The long-poll server, read by polling.
    pub lp: LpHarness,
    /// The same long-poll server, read over SSE.
    pub sse: LpHarness,
    native: QuicConnector,
    web: WebTransportConnector,
}

impl Servers {
    /// Serves `hub` (which must authenticate with `tokens.auth()`) over every transport, on ephemeral loopback
    /// ports.
    pub async fn start(hub: Hub, tokens: TestTokens) -> Self {
        let ws = WsHarness::start(hub.clone(), tokens.clone(), TokenPlacement::Header).await;
        let quic = QuicHarness::start(hub.clone(), tokens.clone(), Flavour::Native).await;
        let lp = LpHarness::start_h2c(hub, tokens.clone(), Reading::Poll).await;
        let sse = LpHarness { reading: Reading::Sse, ..lp.clone() };
        let options = quic.server.client_options();
        let native = QuicConnector::new(options.clone()).expect("a native QUIC connector");
        let web = WebTransportConnector::new(options).expect("a WebTransport connector");
        Self { tokens, ws, quic, lp, sse, native, web }
    }

    /// The WebTransport connector (trusting the server's development certificate), for requests this module
    /// has no helper for.
    pub fn webtransport(&self) -> &WebTransportConnector {
        &self.web
    }

    /// Opens a connection over `via`, presenting `token` at connect time.
    pub async fn connect(&self, via: Via, token: Option<String>) -> Raw {
        match via {
            Via::WebSocket => Raw::Ws(self.ws.connect(token).await),
            Via::Quic => {
                let client =
                    self.native.connect(self.quic.server.addr, token.as_deref()).await.expect("a native QUIC session");
                Raw::Quic(QuicRaw(client.into_stream()))
            }
            Via::WebTransport => {
                let url = self.quic.server.wt_url(None);
                let client = self.web.connect(&url, token.as_deref()).await.expect("a WebTransport session");
                Raw::Quic(QuicRaw(client.into_stream()))
            }
            Via::LongPoll => Raw::Lp(Box::new(self.lp.connect(token).await)),
            Via::Sse => Raw::Lp(Box::new(self.sse.connect(token).await)),
        }
    }
}

/// A connection over any transport, as the transport crate's test client sees it.
#[derive(Debug)]
pub enum Raw {
    /// WebSocket.
    Ws(WsClient),
    /// Native QUIC or WebTransport.
    Quic(QuicRaw),
    /// Long-poll or SSE.
    Lp(Box<LpRaw>),
}

impl Raw {
    async fn send_text(&mut self, text: String) {
        match self {
            Raw::Ws(c) => c.send_text(text).await,
            Raw::Quic(c) => c.send_text(text).await,
            Raw::Lp(c) => c.send_text(text).await,
        }
    }

    async fn next(&mut self) -> Option<Seen> {
        match self {
            Raw::Ws(c) => c.next().await,
            Raw::Quic(c) => c.next().await,
            Raw::Lp(c) => c.next().await,
        }
    }

    /// Closes from the client side, normally: a WebSocket close frame, a QUIC or WebTransport close with code
    /// 1000, a `DELETE` of the long-poll session.
    pub async fn close(self) {
        match self {
            Raw::Ws(mut c) => c.0.close(None).await.expect("send the WebSocket close frame"),
            Raw::Quic(mut c) => c.0.close(1000, "bye"),
            Raw::Lp(c) => c.session().expect("an open long-poll session").delete().await.expect("DELETE the session"),
        }
    }
}

/// A protocol client over one connection: numbers commands, matches replies, buffers the other events in order.
#[derive(Debug)]
pub struct Peer {
    /// The authenticated user.
    pub user: String,
    /// The transport of this connection.
    pub via: Via,
    /// The `hello` event.
    pub hello: Value,
    raw: Raw,
    next_id: u64,
    backlog: VecDeque<Value>,
}

impl Peer {
    /// Connects as `user` over `via` (token at connect time) and checks the `hello`.
    pub async fn connect(servers: &Servers, via: Via, user: &str) -> Self {
        let raw = servers.connect(via, Some(servers.tokens.token(user))).await;
        let mut peer =
            Peer { user: user.to_owned(), via, hello: Value::Null, raw, next_id: 1, backlog: VecDeque::new() };
        peer.hello = peer.event("hello").await;
        assert_eq!(peer.hello["user"], json!(user), "{via}: hello names the user: {}", peer.hello);
        assert_eq!(peer.hello["version"], json!(1), "{via}: protocol version 1: {}", peer.hello);
        peer
    }

    /// The next frame from the server; panics if the connection ends or nothing arrives within [`WAIT`].
    async fn pull(&mut self) -> Value {
        match tokio::time::timeout(WAIT, self.raw.next()).await {
            Ok(Some(Seen::Frame(v))) => v,
            Ok(Some(Seen::Closed(code))) => {
                panic!("{} over {}: the server closed with {code:?}; buffered {:?}", self.user, self.via, self.backlog)
            }
            Ok(None) => panic!("{} over {}: the connection vanished; buffered {:?}", self.user, self.via, self.backlog),
            Err(_) => panic!("{} over {}: nothing within {WAIT:?}; buffered {:?}", self.user, self.via, self.backlog),
        }
    }

    /// The next event of type `ty`; other events stay buffered, in order.
    pub async fn event(&mut self, ty: &str) -> Value {
        if let Some(pos) = self.backlog.iter().position(|v| v["type"] == ty)
            && let Some(v) = self.backlog.remove(pos)
        {
            return v;
        }
        loop {
            let v = self.pull().await;
            if v["type"] == ty {
                return v;
            }
            self.backlog.push_back(v);
        }
    }

    /// Sends `command` (without `id`) and returns its id, without waiting for the reply.
    pub async fn send_only(&mut self, mut command: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.raw.send_text(command.to_string()).await;
        id
    }

    /// Sends `command` (without `id`) and returns `Ok(reply)` or `Err(error event)`. Events that arrive first
    /// are buffered.
    pub async fn cmd(&mut self, command: Value) -> Result<Value, Value> {
        let id = self.send_only(command).await;
        loop {
            let v = self.pull().await;
            if v["id"] == json!(id) && (v["type"] == "reply" || v["type"] == "error") {
                return if v["type"] == "reply" { Ok(v) } else { Err(v) };
            }
            self.backlog.push_back(v);
        }
    }

    /// Like [`cmd`](Self::cmd), panicking on an error.
    pub async fn ok(&mut self, command: Value) -> Value {
        let shown = command.to_string();
        match self.cmd(command).await {
            Ok(reply) => reply,
            Err(e) => panic!("{} over {}: {shown} failed: {e}", self.user, self.via),
        }
    }

    /// The `message` events of `channel` buffered now, removed from the buffer, in order.
    pub fn take_buffered(&mut self, channel: &str) -> Vec<Value> {
        let (taken, rest) = std::mem::take(&mut self.backlog)
            .into_iter()
            .partition(|v| v["type"] == "message" && v["channel"] == channel);
        self.backlog = rest;
        taken.into()
    }

    /// Every `message` event of `channel` up to and including the one with seq `last`, in arrival order (so a
    /// gap, a duplicate or a reordering shows in the result).
    pub async fn messages_through(&mut self, channel: &str, last: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let is_ours = |v: &Value| v["type"] == "message" && v["channel"] == channel;
        loop {
            let next = match self.backlog.iter().position(is_ours) {
                Some(pos) => self.backlog.remove(pos).expect("a buffered event"),
                None => {
                    let v = self.pull().await;
                    if !is_ours(&v) {
                        self.backlog.push_back(v);
                        continue;
                    }
                    v
                }
            };
            let seq = next["seq"].as_u64().expect("message.seq");
            out.push(next);
            if seq == last {
                return out;
            }
            assert!(out.len() <= 10_000, "{} over {}: never got seq {last} on {channel}: {out:?}", self.user, self.via);
        }
    }

    /// A `ping` round trip; then asserts that no `message` event of `channel` is buffered. Everything the server
    /// queued for this connection before the `ping` reply has arrived by then.
    pub async fn assert_no_more_messages(&mut self, channel: &str) {
        self.ok(json!({"type": "ping"})).await;
        let extra = self.take_buffered(channel);
        assert!(extra.is_empty(), "{} over {}: unexpected messages on {channel}: {extra:?}", self.user, self.via);
    }

    /// Closes the connection normally (see [`Raw::close`]).
    pub async fn close(self) {
        self.raw.close().await;
    }
}
