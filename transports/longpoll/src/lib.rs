//! Herald's HTTP long-poll and Server-Sent-Events transport, for clients that cannot hold a WebSocket
//! (restrictive proxies, some browsers and embedded HTTP stacks).
//!
//! Over HTTP/1.1 and HTTP/2, with TLS (ALPN `h2` and `http/1.1`) or in cleartext (HTTP/1.1 and h2c with prior
//! knowledge), on axum and hyper. The wire binding is specified in `docs/protocol.md` §21:
//!
//! | Request | Does |
//! |---|---|
//! | `POST /lp/sessions` (`Authorization: Bearer <token>` optional; `?reader=sse` optional, see below) | opens a session: `201` with its id and the first events (`hello`) |
//! | `POST /lp/sessions/{id}/commands` | one JSON command, or newline-delimited commands: `202` |
//! | `GET /lp/sessions/{id}/events?ack=N&wait=MS` | long-poll: acknowledges up to N, returns every event after N, waiting up to MS for one |
//! | `GET /lp/sessions/{id}/sse` (`Last-Event-ID: N`) | the same events as a Server-Sent-Events stream |
//! | `POST /lp/sessions/{id}/ack?ack=N` | acknowledges up to N (for SSE readers) |
//! | `DELETE /lp/sessions/{id}` | closes the session |
//!
//! Every event gets a per-session number. Events stay buffered until acknowledged, so a lost response is
//! delivered again by the next request carrying the same `ack`. **The session id is a bearer capability**: 128
//! bits from the operating system's CSPRNG, and whoever holds it can read and write the session; keep it out of
//! logs and URLs shared with third parties.
//!
//! The connection metrics of core (`herald_connections_*`) label a session `transport="longpoll"`, or
//! `transport="sse"` when it was opened with `?reader=sse` (what `client::ReadMode::Sse` sends). The label is
//! fixed when the session opens: a session opened for long-poll and then read over SSE (or the reverse) keeps it.
//!
//! Internally each session is a virtual connection ([`herald_core::driver::Connection`]) run by core's
//! [`driver::run`](herald_core::driver::run): commands POSTed are its input, its output goes to the session's
//! bounded event buffer. All protocol logic stays in core.
//!
//! Use it standalone ([`LongPollTransport`], a [`Transport`](herald_core::Transport) that binds its own
//! listener, with optional TLS) or mount [`router`] in an existing axum application:
//!
//! ```no_run
//! # use herald_core::Hub;
//! # async fn demo(hub: Hub) -> Result<(), Box<dyn std::error::Error>> {
//! use herald_longpoll::{LongPollTransport, LpConfig, TlsSettings};
//!
//! // Mounted next to other routes (the application serves it, e.g. with axum::serve: HTTP/1.1 and h2c):
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "my app" }))
//!     .merge(herald_longpoll::router(hub.clone(), LpConfig::default()));
//!
//! // Or standalone, over TLS with HTTP/2:
//! let tls = TlsSettings::from_pem_files("cert.pem", "key.pem")?;
//! let server = LongPollTransport::new("127.0.0.1:8081".parse()?, LpConfig::default()).with_tls(tls).bind().await?;
//! println!("long-poll on https://{}/lp", server.local_addr()?);
//! server.serve(hub, Box::pin(async { let _ = tokio::signal::ctrl_c().await; })).await?;
//! # Ok(()) }
//! ```
//!
//! Feature `client` adds [`client`], an HTTP client for the binding (reqwest); feature `testkit` adds harnesses
//! that run core's protocol conformance suite over long-poll and over SSE.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use herald_core::Hub;
use herald_core::driver::CloseReason;

mod http;
mod server;
mod session;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use server::{BoundLongPoll, LongPollTransport, TlsError, TlsSettings};

/// Long-poll transport settings. The HTTP server settings at the end apply to [`LongPollTransport`] only; an
/// application mounting [`router`] configures its own server.
#[derive(Debug, Clone)]
pub struct LpConfig {
    /// The path prefix of every endpoint. Default `/lp`.
    pub prefix: String,
    /// How long a session lives on without a reader (no held poll, no SSE stream, no request). After it, the
    /// session ends with close code 4000 (idle timeout). A closed session's last events stay readable for as
    /// long again. Default 30 s.
    pub linger: Duration,
    /// How long a poll is held when it gives no `wait`. Default 25 s.
    pub default_wait: Duration,
    /// The longest a poll is held (larger `wait`s are capped). Default 55 s.
    pub max_wait: Duration,
    /// Most sessions at once, closed ones still holding unread events included. Beyond: `503` with
    /// `Retry-After`. Default 10 000.
    pub max_sessions: usize,
    /// Most unacknowledged events one session buffers. When the buffer is full the session stops reading core's
    /// outbound queue; live messages then lag into a `resync` (core's slow-consumer handling). Default 1024.
    pub max_unacked_events: usize,
    /// Most unacknowledged bytes one session buffers (an event larger than this still fits an empty buffer).
    /// Default 1 MiB.
    pub max_unacked_bytes: usize,
    /// The largest request body; larger ones get `413`. `None`: 4 × the hub's `max_frame_bytes` (at least
    /// 4096), so that an oversize command still reaches core and closes the session with 1009 as on WebSocket.
    pub max_post_bytes: Option<usize>,
    /// Commands of one session waiting for the driver. Default 64.
    pub command_queue: usize,
    /// The longest a `commands` request waits for room in the command queue before answering `503`. Default 10 s.
    pub post_timeout: Duration,
    /// The longest reading one request body may take (slow senders get `408`). Default 10 s.
    pub body_timeout: Duration,
    /// Interval of SSE keep-alive comments. Default 15 s.
    pub sse_keepalive: Duration,
    /// The `retry:` reconnection delay announced to SSE clients. Default 2 s.
    pub sse_retry: Duration,
    /// Origins allowed by CORS (`https://app.example.com`); `*` allows any. Empty: no CORS headers. Default empty.
    pub cors_origins: Vec<String>,
    /// The `Retry-After` of `503` answers. Default 1 s.
    pub retry_after: Duration,
    /// HTTP server: a connection must deliver a complete request head within this time (HTTP/1.1; also the
    /// TLS handshake and the first request of any connection). Default 10 s.
    pub header_read_timeout: Duration,
    /// HTTP server: a connection with no request in flight for this long is closed. Default 60 s.
    pub idle_timeout: Duration,
    /// HTTP server: most connections at once; further ones wait in the listen backlog. Default 10 000.
    pub max_connections: usize,
    /// HTTP server: most concurrent HTTP/2 streams per connection. Default 64.
    pub h2_max_streams: u32,
    /// HTTP server: HTTP/2 ping interval (dead peers are dropped after a missed ping). Default 20 s.
    pub h2_keepalive: Duration,
    /// HTTP server: how long shutdown waits for sessions and connections to finish. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for LpConfig {
    fn default() -> Self {
        Self {
            prefix: "/lp".into(),
            linger: Duration::from_secs(30),
            default_wait: Duration::from_secs(25),
            max_wait: Duration::from_secs(55),
            max_sessions: 10_000,
            max_unacked_events: 1024,
            max_unacked_bytes: 1024 * 1024,
            max_post_bytes: None,
            command_queue: 64,
            post_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            sse_keepalive: Duration::from_secs(15),
            sse_retry: Duration::from_secs(2),
            cors_origins: Vec::new(),
            retry_after: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            h2_max_streams: 64,
            h2_keepalive: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl LpConfig {
    /// Checks the settings; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), String> {
        if !self.prefix.starts_with('/') {
            return Err(format!("prefix {:?} must start with '/'", self.prefix));
        }
        let nonzero = [
            ("linger", self.linger),
            ("max_wait", self.max_wait),
            ("post_timeout", self.post_timeout),
            ("body_timeout", self.body_timeout),
            ("sse_keepalive", self.sse_keepalive),
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("h2_keepalive", self.h2_keepalive),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be greater than 0"));
        }
        let counts = [
            ("max_sessions", self.max_sessions),
            ("max_unacked_events", self.max_unacked_events),
            ("max_unacked_bytes", self.max_unacked_bytes),
            ("command_queue", self.command_queue),
            ("max_connections", self.max_connections),
            ("h2_max_streams", self.h2_max_streams as usize),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        if self.max_post_bytes == Some(0) {
            return Err("max_post_bytes must be greater than 0".into());
        }
        for origin in &self.cors_origins {
            if origin != "*" && axum::http::HeaderValue::from_str(origin).is_err() {
                return Err(format!("cors origin {origin:?} is not a valid header value"));
            }
        }
        Ok(())
    }
}

/// The long-poll endpoints and their sessions. Cheap to clone.
///
/// [`router`](Self::router) serves them; [`shutdown`](Self::shutdown) closes every session with 1001.
#[derive(Debug, Clone)]
pub struct LongPoll {
    shared: Arc<http::Shared>,
}

impl LongPoll {
    /// Long-poll endpoints for `hub`.
    pub fn new(hub: Hub, config: LpConfig) -> Self {
        let hub_config = hub.config();
        let max_frame = hub_config.limits.max_frame_bytes;
        let max_post = config.max_post_bytes.unwrap_or_else(|| max_frame.saturating_mul(4).max(4096));
        // The driver's idle timer must not fire while the session is present: report activity well within it.
        let keep_every = (hub_config.idle_timeout / 3).max(Duration::from_millis(10));
        let settings = Arc::new(session::Settings {
            linger: config.linger,
            max_events: config.max_unacked_events.max(1),
            max_bytes: config.max_unacked_bytes.max(1),
            keep_every,
            command_queue: config.command_queue.max(1),
        });
        let open_timeout = hub_config.command_timeout + Duration::from_secs(2);
        let registry = Arc::new(session::Registry::new(config.max_sessions.max(1)));
        Self { shared: Arc::new(http::Shared { hub, config, settings, registry, max_post, open_timeout }) }
    }

    /// An axum router serving the endpoints under the configured prefix.
    pub fn router(&self) -> Router {
        http::routes(self.shared.clone())
    }

    /// Sessions held: open ones, and closed ones whose last events have not been read yet.
    pub fn session_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// Refuses new sessions (`503`), closes every session with 1001 (going away) — held polls and SSE streams
    /// are answered with the close — and waits up to `grace` for them to end. True when all ended in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.shared.registry.close_all(CloseReason::GoingAway);
        self.shared.registry.wait_empty(tokio::time::Instant::now() + grace).await
    }
}

/// An axum router serving the long-poll endpoints for `hub` under `config.prefix`. Merge it into an
/// application's router. To close its sessions on shutdown, use [`LongPoll`] instead and call
/// [`LongPoll::shutdown`].
pub fn router(hub: Hub, config: LpConfig) -> Router {
    LongPoll::new(hub, config).router()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_bad_ones_are_named() {
        LpConfig::default().validate().expect("defaults are valid");
        let bad = LpConfig { linger: Duration::ZERO, ..LpConfig::default() };
        assert!(bad.validate().expect_err("zero linger").contains("linger"));
        let bad = LpConfig { prefix: "lp".into(), ..LpConfig::default() };
        assert!(bad.validate().expect_err("relative prefix").contains("prefix"));
        let bad = LpConfig { cors_origins: vec!["bad\norigin".into()], ..LpConfig::default() };
        assert!(bad.validate().expect_err("bad origin").contains("cors"));
    }
}
