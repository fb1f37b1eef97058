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
//! The WebSocket protocol itself (RFC 6455, server side) is Herald's own, in this crate: the upgrade is answered
//! by the route's handler, and frames are read and written by a lean codec over hyper's upgraded stream. It
//! exists for memory: an idle connection holds no read or write buffer at all (a read goes into a stack buffer
//! first; only a partly received frame is kept on the heap, and only until it is complete), which took an idle
//! authenticated connection under 2 KiB of server memory (see `docs/benchmarks.md`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::header::{self, AUTHORIZATION};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use herald_core::auth::Credentials;
use herald_core::driver::{self, CloseReason, ConnError, Connection, Inbound};
use herald_core::trace_context::TraceParent;
use herald_core::transport::{Shutdown, Transport, TransportError};
use herald_core::{Hub, Limits};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};

mod accept;
mod frame;
mod stream;

use stream::{Received, WsError, WsStream};

/// WebSocket transport settings.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// The upgrade path. Default `/ws`.
    pub path: String,
    /// Unused since the WebSocket codec is Herald's own: a connection reads into a stack buffer and keeps no read
    /// buffer between frames. Kept so that existing configurations still build.
    pub read_buffer_size: usize,
    /// Unused since the WebSocket codec is Herald's own: each coalesced batch is written at once with a vectored
    /// write, without a write buffer. Kept so that existing configurations still build.
    pub write_buffer_size: usize,
    /// Unused since the WebSocket codec is Herald's own: it never buffers outgoing frames (the session's bounded
    /// queue is the only outbound buffer). Kept so that existing configurations still build.
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
}

#[derive(Deserialize)]
struct UpgradeQuery {
    token: Option<String>,
}

/// An axum router serving the WebSocket endpoint at `config.path`. Merge it into an application's router.
pub fn router(hub: Hub, config: WsConfig) -> Router {
    Router::new().route(&config.path, get(upgrade)).with_state(AppState { hub })
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    bearer_token(headers.get(AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer_token(value: &str) -> Option<String> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// The largest frame or message a connection reads. Frames up to 4x the protocol limit get through to the driver,
/// which answers them with an error event and close code 1009 after reading them whole (so the peer sees the close
/// rather than a reset). Larger ones are refused from the frame header alone, without buffering the payload: the
/// peer then usually sees the connection reset (1006) instead.
fn max_payload(hub: &Hub) -> usize {
    let limits: &Limits = &hub.config().limits;
    limits.max_frame_bytes.saturating_mul(4).max(4096)
}

/// The `traceparent` header (W3C Trace Context), when valid.
fn trace_parent(headers: &HeaderMap) -> Option<TraceParent> {
    TraceParent::parse(headers.get("traceparent")?.to_str().ok()?)
}

/// Whether the comma-separated header `name` lists `token` (case-insensitive).
fn header_lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn refuse(status: StatusCode, text: &'static str) -> Response {
    herald_core::metrics::handshake_failed("websocket", "bad_upgrade");
    (status, text).into_response()
}

/// Checks an upgrade request (RFC 6455 section 4.2.1) and returns the `Sec-WebSocket-Accept` value, or the
/// response refusing it.
fn check_upgrade(request: &Request) -> Result<HeaderValue, (StatusCode, &'static str)> {
    let headers = request.headers();
    if request.version() > Version::HTTP_11 {
        return Err((StatusCode::BAD_REQUEST, "WebSocket upgrades need HTTP/1.1"));
    }
    if request.method() != Method::GET {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "Request method must be `GET`"));
    }
    if !header_lists(headers, header::CONNECTION, "upgrade") {
        return Err((StatusCode::BAD_REQUEST, "Connection header did not include 'upgrade'"));
    }
    if headers.get(header::UPGRADE).is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"websocket")) {
        return Err((StatusCode::BAD_REQUEST, "`Upgrade` header did not include 'websocket'"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err((StatusCode::BAD_REQUEST, "`Sec-WebSocket-Version` header did not include '13'"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err((StatusCode::BAD_REQUEST, "`Sec-WebSocket-Key` header missing"));
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    HeaderValue::from_str(&accept).map_err(|_| (StatusCode::BAD_REQUEST, "invalid `Sec-WebSocket-Key`"))
}

async fn upgrade(State(state): State<AppState>, Query(query): Query<UpgradeQuery>, mut request: Request) -> Response {
    let accept = match check_upgrade(&request) {
        Ok(accept) => accept,
        Err((status, text)) => return refuse(status, text),
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(StatusCode::UPGRADE_REQUIRED, "the connection cannot be upgraded");
    };
    let headers = request.headers();
    let token = bearer(headers).or(query.token).filter(|t| !t.is_empty());
    let trace_parent = trace_parent(headers);
    let max_payload = max_payload(&state.hub);
    let hub = state.hub;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let conn = WsConnection {
            socket: WsStream::new(TokioIo::new(upgraded), max_payload),
            trace_parent: trace_parent.map(Box::new),
        };
        // A task of its own for the connection's life: this one's captures (the hub, the token) would otherwise
        // stay in it for good.
        tokio::spawn(driver::run(hub, conn, token.map(Credentials::Bearer)));
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// A WebSocket connection adapted to the driver: a TCP stream (upgraded by the standalone server) or hyper's
/// upgraded stream (upgraded by the route's handler).
struct WsConnection<S> {
    socket: WsStream<S>,
    /// The upgrade request's `traceparent`, handed to the driver once.
    trace_parent: Option<Box<TraceParent>>,
}

fn conn_error(e: WsError) -> ConnError {
    match e {
        WsError::TooLarge => ConnError::TooLarge,
        WsError::Protocol(m) => ConnError::Protocol(m.to_owned()),
        WsError::Io(e) => ConnError::Io(Box::new(e)),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection for WsConnection<S> {
    fn recv(&mut self) -> impl Future<Output = Option<Result<Inbound, ConnError>>> + Send {
        std::future::poll_fn(|cx| {
            self.socket.poll_recv(cx).map(|r| {
                Some(match r? {
                    Ok(Received::Text(t)) => Ok(Inbound::Frame(t)),
                    Ok(Received::Binary) => Ok(Inbound::Unsupported),
                    // Pings are answered by the codec; both count as activity.
                    Ok(Received::Ping | Received::Pong) => Ok(Inbound::Activity),
                    Ok(Received::Close(_)) => return None,
                    Err(e) => Err(conn_error(e)),
                })
            })
        })
    }

    async fn send(&mut self, frames: &[Bytes]) -> Result<(), ConnError> {
        self.socket.send_text(frames).await.map_err(conn_error)
    }

    async fn keepalive(&mut self) -> Result<(), ConnError> {
        self.socket.ping().await.map_err(conn_error)
    }

    fn transport(&self) -> &'static str {
        "websocket"
    }

    fn trace_parent(&self) -> Option<TraceParent> {
        self.trace_parent.as_deref().cloned()
    }

    // Written as a function returning a future (not `async fn`) so that the connection is held once in its state.
    #[allow(clippy::manual_async_fn)]
    fn close(mut self, reason: CloseReason) -> impl std::future::Future<Output = ()> + Send {
        async move {
            // Send the close frame and give the peer a moment to answer it; then drop the socket either way.
            self.socket.close(reason.code(), reason.text(), Duration::from_secs(1)).await;
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
        let listener = listen(self.addr).map_err(|source| TransportError::Bind { addr: self.addr, source })?;
        Ok(BoundWebSocket { listener, config: self.config, extra: self.extra })
    }
}

/// The accept queue the listener asks for (the kernel caps it at `net.core.somaxconn`). A burst of connects
/// beyond a short queue (std's and tokio's `bind` ask for 128 and 1,024) overflows it, and each dropped SYN costs
/// its client a 1 s retransmission timeout.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening socket on `addr` with `SO_REUSEADDR` (as `TcpListener::bind` does on Unix) and a
/// [`LISTEN_BACKLOG`]-long accept queue.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
        let server = Arc::new(accept::Server::new(hub.clone(), self.config.path.clone(), app));
        let graceful = GracefulShutdown::new();
        let mut shutdown = shutdown;
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                () = &mut shutdown => break,
            };
            match accepted {
                Ok((tcp, _peer)) => {
                    tokio::spawn(accept::connection(tcp, server.clone(), graceful.watcher()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(self.listener);
        hub.shut_down(CloseReason::GoingAway);
        let grace = self.config.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        // HTTP connections end gracefully; WebSocket sessions close with 1001: wait for both, up to the grace period.
        let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
        while hub.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
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
