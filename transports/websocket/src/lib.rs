//! Herald's WebSocket transport, on axum.
//!
//! Use it standalone ([`WebSocketTransport`], a [`Transport`] that binds its own listener) or mount
//! [`router`] inside an existing axum application:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use herald_core::Hub;
//! # fn demo(hub: Hub) {
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "my app" }))
//!     .merge(herald_websocket::router(hub, herald_websocket::WsConfig::default()));
//! # }
//! ```
//!
//! Clients connect to `GET /ws` (configurable) and present a token either at the upgrade — an
//! `Authorization: Bearer <token>` header or a `?token=<token>` query parameter (browsers cannot set headers
//! on WebSocket requests) — or later in an `auth` command. Frames are text messages carrying JSON
//! (`docs/protocol.md`). Close codes are [`CloseReason`]'s. A W3C `traceparent` header on the upgrade request
//! becomes the trace parent of the connection's commands; connections count under the `transport="websocket"`
//! metric label, and a refused upgrade request under `herald_connections_handshake_failures_total`.
//!
//! Memory: tungstenite allocates a 128 KiB read buffer per connection by default; here the read buffer
//! starts at [`WsConfig::read_buffer_size`] (512 bytes by default) and the write buffer is flushed after each
//! coalesced batch, so an idle connection holds a few KiB (see `docs/benchmarks.md`).

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_core::auth::Credentials;
use herald_core::driver::{self, CloseReason, ConnError, Connection, Inbound};
use herald_core::trace_context::TraceParent;
use herald_core::transport::{Shutdown, Transport, TransportError};
use herald_core::{Hub, Limits};
use serde::Deserialize;

/// WebSocket transport settings.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// The upgrade path. Default `/ws`.
    pub path: String,
    /// Initial read buffer per connection in bytes (grows for larger frames; it is also the most read per
    /// system call). Default 512: after the connection's task, the largest part of an idle connection's memory
    /// (see `docs/benchmarks.md`: 4096 gave 7.7 KB per idle connection, 512 about 3.2 KB).
    pub read_buffer_size: usize,
    /// Bytes buffered before a write is flushed to the socket. Default 4096.
    pub write_buffer_size: usize,
    /// Most bytes a connection may buffer for writing (a slow reader) before it fails. Default 1 MiB.
    pub max_write_buffer_size: usize,
    /// How long [`WebSocketTransport`] waits for sessions to close on shutdown. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            path: "/ws".into(),
            read_buffer_size: 512,
            write_buffer_size: 4096,
            max_write_buffer_size: 1024 * 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
struct AppState {
    hub: Hub,
    config: WsConfig,
}

#[derive(Deserialize)]
struct UpgradeQuery {
    token: Option<String>,
}

/// An axum router serving the WebSocket endpoint at `config.path`. Merge it into an application's router.
pub fn router(hub: Hub, config: WsConfig) -> Router {
    let path = config.path.clone();
    Router::new().route(&path, get(upgrade)).with_state(AppState { hub, config })
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// The `traceparent` header (W3C Trace Context), when valid.
fn trace_parent(headers: &HeaderMap) -> Option<TraceParent> {
    TraceParent::parse(headers.get("traceparent")?.to_str().ok()?)
}

async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<UpgradeQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            herald_core::metrics::handshake_failed("websocket", "bad_upgrade");
            return rejection.into_response();
        }
    };
    let token = bearer(&headers).or(query.token).filter(|t| !t.is_empty());
    let trace_parent = trace_parent(&headers);
    let limits: &Limits = &state.hub.config().limits;
    // Let frames up to 4x the protocol limit through to the driver, which answers them with an error event and
    // close code 1009 after reading them whole (so the peer sees the close rather than a reset). Larger ones
    // are cut off by tungstenite from the frame header alone, without buffering the payload: the peer then
    // usually sees the connection reset (1006) instead.
    let transport_max = limits.max_frame_bytes.saturating_mul(4).max(4096);
    let hub = state.hub.clone();
    ws.read_buffer_size(state.config.read_buffer_size)
        .write_buffer_size(state.config.write_buffer_size)
        .max_write_buffer_size(state.config.max_write_buffer_size)
        .max_message_size(transport_max)
        .max_frame_size(transport_max)
        .on_upgrade(move |socket| {
            // A task of its own: axum's upgrade task keeps its own state (the upgrade future, the WebSocket
            // configuration, the subprotocol) for as long as the callback's future runs; a fresh task holds only
            // the driver, about 250 bytes less per connection.
            tokio::spawn(driver::run(hub, WsConnection { socket, trace_parent }, token.map(Credentials::Bearer)));
            std::future::ready(())
        })
}

/// A WebSocket connection adapted to the driver.
struct WsConnection {
    socket: WebSocket,
    /// The upgrade request's `traceparent`, handed to the driver once.
    trace_parent: Option<TraceParent>,
}

fn conn_error(e: axum::Error) -> ConnError {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => ConnError::TooLarge,
        Some(tungstenite::Error::Protocol(p)) => ConnError::Protocol(p.to_string()),
        Some(tungstenite::Error::Utf8(m)) => ConnError::Protocol(format!("invalid UTF-8: {m}")),
        _ => ConnError::Io(inner),
    }
}

impl Connection for WsConnection {
    async fn recv(&mut self) -> Option<Result<Inbound, ConnError>> {
        let msg = match self.socket.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(conn_error(e))),
        };
        Some(Ok(match msg {
            Message::Text(t) => Inbound::Frame(Bytes::from(t)),
            Message::Binary(_) => Inbound::Unsupported,
            // tungstenite answers pings itself; both count as activity.
            Message::Ping(_) | Message::Pong(_) => Inbound::Activity,
            Message::Close(_) => return None,
        }))
    }

    async fn send(&mut self, frames: &[Bytes]) -> Result<(), ConnError> {
        // `poll_ready` + `start_send` is what `SinkExt::feed` does; spelled out, no message is held across a wait,
        // which keeps this future (part of every connection's task) small.
        for f in frames {
            std::future::poll_fn(|cx| self.socket.poll_ready_unpin(cx)).await.map_err(conn_error)?;
            // Frames are produced by serde_json, so always valid UTF-8; the check is cheap next to the write.
            let text = Utf8Bytes::try_from(f.clone()).map_err(|e| ConnError::Io(Box::new(e)))?;
            self.socket.start_send_unpin(Message::Text(text)).map_err(conn_error)?;
        }
        std::future::poll_fn(|cx| self.socket.poll_flush_unpin(cx)).await.map_err(conn_error)
    }

    async fn keepalive(&mut self) -> Result<(), ConnError> {
        self.socket.send(Message::Ping(Bytes::new())).await.map_err(conn_error)
    }

    fn transport(&self) -> &'static str {
        "websocket"
    }

    fn trace_parent(&self) -> Option<TraceParent> {
        self.trace_parent.clone()
    }

    // Written as a function returning a future (not `async fn`) so that the connection is held once in its state.
    #[allow(clippy::manual_async_fn)]
    fn close(mut self, reason: CloseReason) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let frame = CloseFrame { code: reason.code(), reason: Utf8Bytes::from_static(reason.text()) };
            let _ = self.socket.send(Message::Close(Some(frame))).await;
            // Give the peer a moment to answer the close; then drop the socket either way.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let mut errors = 0;
                while let Some(m) = self.socket.next().await {
                    match m {
                        Ok(Message::Close(_)) => break,
                        Ok(_) => {}
                        Err(e) => {
                            errors += 1;
                            tracing::trace!(error = %e, errors, "read error while closing");
                            if errors > 100 {
                                break;
                            }
                        }
                    }
                }
            })
            .await;
        }
    }
}

/// The WebSocket transport as a standalone server.
#[derive(Debug, Clone)]
pub struct WebSocketTransport {
    addr: SocketAddr,
    config: WsConfig,
    extra: Option<Router>,
}

impl WebSocketTransport {
    /// A transport that will listen on `addr`.
    pub fn new(addr: SocketAddr, config: WsConfig) -> Self {
        Self { addr, config, extra: None }
    }

    /// Serves `routes` (health checks, metrics, ...) on the same listener.
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.extra = Some(routes);
        self
    }

    /// Binds the listener now (to learn the port when `addr` has port 0) and returns a server to run.
    pub async fn bind(self) -> Result<BoundWebSocket, TransportError> {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|source| TransportError::Bind { addr: self.addr, source })?;
        Ok(BoundWebSocket { listener, config: self.config, extra: self.extra })
    }
}

/// A bound WebSocket server, ready to [`serve`](BoundWebSocket::serve).
#[derive(Debug)]
pub struct BoundWebSocket {
    listener: tokio::net::TcpListener,
    config: WsConfig,
    extra: Option<Router>,
}

impl BoundWebSocket {
    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then closes every session with 1001 and waits (up to the grace
    /// period) for them to finish.
    pub async fn serve(self, hub: Hub, shutdown: Shutdown) -> Result<(), TransportError> {
        let mut app = router(hub.clone(), self.config.clone());
        if let Some(extra) = self.extra {
            app = app.merge(extra);
        }
        let grace = self.config.shutdown_grace;
        let closing_hub = hub.clone();
        let signal = async move {
            shutdown.await;
            closing_hub.close_all(CloseReason::GoingAway);
        };
        let served = axum::serve(self.listener, app.into_make_service()).with_graceful_shutdown(signal);
        // Upgraded connections are not tracked by axum's graceful shutdown; wait for their sessions here.
        let result = served.await.map_err(|e| TransportError::Serve(Box::new(e)));
        let deadline = tokio::time::Instant::now() + grace;
        while hub.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        result
    }
}

#[async_trait]
impl Transport for WebSocketTransport {
    fn name(&self) -> &'static str {
        "websocket"
    }

    async fn serve(self: Box<Self>, hub: Hub, shutdown: Shutdown) -> Result<(), TransportError> {
        let addr = self.addr;
        let bound = (*self).bind().await?;
        tracing::info!(%addr, "websocket transport listening");
        bound.serve(hub, shutdown).await
    }
}

#[cfg(feature = "testkit")]
pub mod testkit;
