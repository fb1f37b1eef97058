//! The per-connection driver that every transport uses.
//!
//! A transport adapts its connection to [`Connection`] (receive a frame, send a batch of frames, send a
//! keep-alive, close with a [`CloseReason`]) and calls [`run`]. Everything else — the hello, authentication,
//! decoding, dispatch, replies, fan-out delivery, coalesced writes, resync, heartbeats, timeouts — happens here,
//! once, for all transports.
//!
//! One task per connection: the driver multiplexes reading, writing, the command in flight and the timers
//! with `select!`. Commands of one connection run one at a time, in order; while one runs (a long replay, for
//! example) reading pauses, which applies backpressure to that client alone.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use tokio::time::{Instant, sleep_until};

use crate::auth::{AuthError, Credentials};
use crate::hub::{Dispatched, Hub};
use crate::metrics::AuthStage;
use crate::protocol::{self, Hello, PROTOCOL_VERSION};
use crate::session::Session;
use crate::status::{Code, Status};
use crate::trace_context::TraceParent;

/// Why the server closes a connection. Transports map it to their own close signal (WebSocket close codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed, or the connection ended normally (1000).
    Normal,
    /// The server is shutting down; reconnect, possibly to another node (1001).
    GoingAway,
    /// The transport's own protocol was violated (bad WebSocket framing, invalid UTF-8) (1002).
    ProtocolError,
    /// The frame type is not supported (binary where text is expected) (1003).
    UnsupportedData,
    /// Too many consecutive malformed frames (1008).
    PolicyViolation,
    /// A frame exceeded the size limit (1009).
    TooLarge,
    /// A server bug (1011).
    InternalError,
    /// A dependency the connection needs (the authentication backend) is unavailable; reconnect later with the
    /// same credentials (1013).
    TryAgainLater,
    /// Nothing was received within the idle timeout (4000).
    IdleTimeout,
    /// The credentials are invalid: missing, malformed, badly signed, wrong claims. Do not retry them (4001).
    Unauthenticated,
    /// The token expired (at connect time or during the session). Get a fresh token and reconnect (4002).
    TokenExpired,
    /// No `auth` within the authentication timeout (4003).
    AuthTimeout,
}

impl CloseReason {
    /// The WebSocket close code (RFC 6455 codes below 4000, Herald's own from 4000).
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::UnsupportedData => 1003,
            Self::PolicyViolation => 1008,
            Self::TooLarge => 1009,
            Self::InternalError => 1011,
            Self::TryAgainLater => 1013,
            Self::IdleTimeout => 4000,
            Self::Unauthenticated => 4001,
            Self::TokenExpired => 4002,
            Self::AuthTimeout => 4003,
        }
    }

    /// A short reason text (at most 123 bytes, as WebSocket requires).
    pub fn text(self) -> &'static str {
        match self {
            Self::Normal => "bye",
            Self::GoingAway => "server shutting down",
            Self::ProtocolError => "protocol error",
            Self::UnsupportedData => "unsupported frame type",
            Self::PolicyViolation => "too many invalid frames",
            Self::TooLarge => "frame too large",
            Self::InternalError => "internal error",
            Self::TryAgainLater => "try again later",
            Self::IdleTimeout => "idle timeout",
            Self::Unauthenticated => "unauthenticated",
            Self::TokenExpired => "token expired",
            Self::AuthTimeout => "authentication timeout",
        }
    }

    /// The close reason for a failed authentication.
    pub fn for_auth_error(e: &AuthError) -> Self {
        match e {
            AuthError::Expired => Self::TokenExpired,
            AuthError::Unavailable => Self::TryAgainLater,
            _ => Self::Unauthenticated,
        }
    }
}

/// Something received from a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// One protocol frame (a JSON object).
    Frame(Bytes),
    /// Transport-level activity that carries no frame (a WebSocket ping or pong): resets the idle timer.
    Activity,
    /// A frame of a type the protocol does not use (a binary WebSocket message).
    Unsupported,
}

/// A transport failure while receiving or sending.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The peer sent a frame over the size limit.
    #[error("frame too large")]
    TooLarge,
    /// The peer violated the transport protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection failed (reset, broken pipe, ...).
    #[error("connection failed: {0}")]
    Io(#[source] crate::store::BoxError),
}

/// A connection as the driver sees it. Implemented by each transport.
pub trait Connection: Send {
    /// Receives the next inbound item; `None` when the peer closed. Must be cancel-safe: the driver polls it
    /// in a `select!` and may drop the future before it completes.
    fn recv(&mut self) -> impl Future<Output = Option<Result<Inbound, ConnError>>> + Send;

    /// Sends `frames` in order, flushing once at the end (coalesced write).
    fn send(&mut self, frames: &[Bytes]) -> impl Future<Output = Result<(), ConnError>> + Send;

    /// Sends a transport-level keep-alive (a WebSocket ping). Transports without one do nothing.
    fn keepalive(&mut self) -> impl Future<Output = Result<(), ConnError>> + Send;

    /// Closes the connection with `reason`.
    fn close(self, reason: CloseReason) -> impl Future<Output = ()> + Send;

    /// The transport's name, the `transport` label of the connection metrics: `"websocket"`, `"quic"`,
    /// `"webtransport"`, `"longpoll"`, `"sse"`, `"inproc"`. A short, fixed snake_case string.
    fn transport(&self) -> &'static str {
        "unknown"
    }

    /// The W3C trace context of the request that opened the connection (a `traceparent` header on the upgrade
    /// request), if any: the parent of the spans of every command that carries none of its own.
    fn trace_parent(&self) -> Option<TraceParent> {
        None
    }
}

/// A command in flight: how it went, and its reply (or error) frame.
type CommandFuture = Pin<Box<dyn Future<Output = (Dispatched, Bytes)> + Send>>;

/// Runs one connection to its end.
///
/// `credentials` are the ones presented at connect time (an `Authorization` header or a query parameter);
/// without them the client must send `auth` within the authentication timeout.
///
/// Not an `async fn` on purpose: an `async fn` keeps its arguments and the moved-in copies both in its state, so
/// the connection would be stored twice in every connection's task (measured: 513 bytes per idle connection).
#[allow(clippy::manual_async_fn)]
pub fn run<C: Connection + 'static>(
    hub: Hub,
    mut conn: C,
    credentials: Option<Credentials>,
) -> impl Future<Output = ()> + Send + 'static {
    // Boxed: the credentials are needed once, by the handshake, but whatever the future captures stays in it for
    // the connection's whole life (a pointer instead of the credentials themselves).
    let credentials = credentials.map(Box::new);
    async move {
        hub.metrics().connection_opened(conn.transport());
        let session = hub.open_session();
        if let Some(tp) = conn.trace_parent() {
            session.set_trace_parent(tp);
        }
        // The handshake runs once: boxed, its state is on the heap only while it runs. The loop's state is part of
        // every connection's task for the connection's whole life, so everything rare in it is boxed too.
        let reason = match Box::pin(handshake(&hub, &session, &mut conn, credentials)).await {
            Ok(()) => serve(&hub, &session, &mut conn).await,
            Err(reason) => reason,
        };
        hub.close_session(&session);
        tracing::debug!(session = %session.id(), code = reason.code(), "connection closed");
        hub.metrics().connection_closed(conn.transport(), reason.code());
        // Boxed: a close happens once per connection, and its state (the connection moved in, a timer) would
        // otherwise be part of every connection's task for its whole life.
        Box::pin(conn.close(reason)).await;
    }
}

/// Authenticates the connect-time credentials, if any, and sends the `hello`.
async fn handshake<C: Connection>(
    hub: &Hub,
    session: &Session,
    conn: &mut C,
    credentials: Option<Box<Credentials>>,
) -> Result<(), CloseReason> {
    let config = hub.config();
    let limits = &config.limits;
    let mut user = None;
    let mut expires_at = None;
    if let Some(credentials) = credentials {
        let checked = tokio::time::timeout(config.command_timeout, hub.authenticate(&credentials))
            .await
            .unwrap_or(Err(AuthError::Unavailable));
        match checked {
            Ok(principal) => {
                user = Some(principal.user.clone());
                expires_at = principal.expires_at;
                hub.set_principal(session, principal);
            }
            Err(e) => {
                hub.metrics().auth_failed(AuthStage::Connect, crate::metrics::auth_failure_reason(&e));
                let status = Status::from(e.clone());
                let _ = conn.send(&[protocol::encode_error(None, &status)]).await;
                return Err(CloseReason::for_auth_error(&e));
            }
        }
    }
    let hello = Hello {
        version: PROTOCOL_VERSION,
        session: session.id(),
        user,
        expires_at,
        idle_timeout_ms: u64::try_from(config.idle_timeout.as_millis()).unwrap_or(u64::MAX),
        max_frame_bytes: limits.max_frame_bytes,
        max_body_bytes: limits.max_body_bytes,
    };
    let frame = protocol::encode_hello(&hello);
    drop(hello);
    if conn.send(&[frame]).await.is_err() {
        return Err(CloseReason::Normal);
    }
    Ok(())
}

/// The connection's loop: reads commands, writes what the session queued, keeps the timers.
async fn serve<C: Connection>(hub: &Hub, session: &Arc<Session>, conn: &mut C) -> CloseReason {
    // The configuration is read through `hub` each time rather than held in a local: the loop's locals live in
    // every connection's task.
    let started = Instant::now();
    let mut last_inbound = started;
    let mut next_keepalive = started + hub.config().heartbeat_interval;
    // Until the session authenticates: when it must have. Afterwards: when its token expires, if it does.
    let mut auth_at = Some(started + hub.config().auth_timeout);
    let mut expires_at = None;
    let mut command: Option<CommandFuture> = None;
    let mut consecutive_errors = 0u32;
    let mut batch: Vec<Bytes> = Vec::new();
    // Write coalescing (`HubConfig::write_coalescing`): when the last write went out, and whether the writer holds
    // what is queued until one window after it.
    let mut last_write: Option<Instant> = None;
    let mut holding = false;
    // One timer for the connection's life, moved only when its deadline changes: creating and dropping a timer
    // on every pass of the loop (every write under fan-out) would register and deregister it each time.
    let timer = sleep_until(next_keepalive);
    tokio::pin!(timer);

    loop {
        if auth_at.is_some()
            && let Some(p) = session.principal()
        {
            auth_at = None;
            expires_at = p.expires_at.map(instant_of_millis);
        }
        // The earliest deadline among: idle (not while a command runs: reading is paused then), keep-alive,
        // authentication, token expiry. When the timer fires, one of them is due.
        let idle_at = command.is_none().then(|| last_inbound + hub.config().idle_timeout);
        let mut deadline = next_keepalive;
        // Not kept across the wait below (recomputed when the timer fires): every byte of state held across it is
        // part of every idle connection's task.
        let hold_until = last_write.filter(|_| holding).map(|t| t + hub.config().write_coalescing);
        for d in [idle_at, auth_at, expires_at, hold_until].into_iter().flatten() {
            deadline = deadline.min(d);
        }
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }

        // Unbiased: under sustained fan-out the writer is always ready, and reading must not starve.
        tokio::select! {
            () = session.writable(), if !holding => {
                // Wrote recently: a stream of frames is arriving. Wait for the rest of the window (the timer ends the
                // hold), so that what arrives meanwhile goes out in the same write.
                if coalesce(hub.config().write_coalescing, &mut last_write) {
                    holding = true;
                    continue;
                }
                let open = session.drain_into(&mut batch);
                let lagged = session.take_lagged();
                if !lagged.is_empty() {
                    hub.metrics().resyncs.increment(lagged.len() as u64);
                }
                for (channel, seq) in lagged {
                    hub.drop_subscription(&channel, session);
                    batch.push(protocol::encode_resync(&channel, seq));
                }
                if !batch.is_empty() && write_batch(conn, &mut batch, &mut last_inbound).await.is_err() {
                    return CloseReason::Normal;
                }
                if !open {
                    return session.close_reason().unwrap_or(CloseReason::Normal);
                }
            }
            (outcome, reply) = async { match command.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                command = None;
                // Reading was paused while the command ran; the client was not idle.
                last_inbound = Instant::now();
                // The client waits for this command's reply: it goes out at once, not at the end of a coalescing
                // window (a client paging through history would otherwise wait a window per page), together with
                // whatever was held.
                holding = false;
                // The reply goes out now, after whatever the command queued (replayed messages, the sender's own
                // message when it follows the channel) and in the same write. It is not queued: queueing it would
                // wake this very task, for one more pass through the loop (and the scheduler) per command.
                session.drain_into(&mut batch);
                batch.push(reply);
                let close = match outcome {
                    Dispatched::Ok | Dispatched::Failed => {
                        consecutive_errors = 0;
                        None
                    }
                    Dispatched::Malformed => {
                        consecutive_errors += 1;
                        (consecutive_errors >= hub.config().limits.max_consecutive_errors).then_some(CloseReason::PolicyViolation)
                    }
                    Dispatched::Close(reason) => Some(reason),
                };
                if let Some(reason) = close {
                    // The error reply (and what was queued before it) goes out before the close.
                    let _ = conn.send(&batch).await;
                    return reason;
                }
                if write_batch(conn, &mut batch, &mut last_inbound).await.is_err() {
                    return CloseReason::Normal;
                }
                // The reply was a write like any other: frames that follow it within a window are coalesced.
                if !hub.config().write_coalescing.is_zero() {
                    last_write = Some(Instant::now());
                }
            }
            inbound = conn.recv(), if command.is_none() => {
                last_inbound = Instant::now();
                match inbound {
                    None => return CloseReason::Normal,
                    Some(Err(ConnError::TooLarge)) => return too_large(conn, session, hub.config().limits.max_frame_bytes).await,
                    Some(Err(ConnError::Protocol(m))) => {
                        tracing::debug!(session = %session.id(), error = %m, "transport protocol error");
                        return CloseReason::ProtocolError;
                    }
                    Some(Err(ConnError::Io(_))) => return CloseReason::Normal,
                    Some(Ok(Inbound::Activity)) => {}
                    Some(Ok(Inbound::Unsupported)) => {
                        let status = Status::bad_request("only text frames carrying JSON are accepted");
                        return Box::pin(close_with_error(conn, session, CloseReason::UnsupportedData, status)).await;
                    }
                    Some(Ok(Inbound::Frame(frame))) => {
                        if frame.len() > hub.config().limits.max_frame_bytes {
                            return too_large(conn, session, hub.config().limits.max_frame_bytes).await;
                        }
                        let hub = hub.clone();
                        let session = session.clone();
                        command = Some(Box::pin(async move { hub.dispatch_frame(&session, &frame).await }));
                    }
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if holding && last_write.is_some_and(|t| now >= t + hub.config().write_coalescing) {
                    // The coalescing window is over: the writer sends what it gathered.
                    holding = false;
                }
                if auth_at.is_some_and(|t| now >= t) {
                    let text = "no `auth` command within the authentication timeout";
                    let status = Status::new(Code::Unauthenticated, text);
                    return Box::pin(close_with_error(conn, session, CloseReason::AuthTimeout, status)).await;
                }
                if expires_at.is_some_and(|t| now >= t) {
                    return Box::pin(close_with_error(conn, session, CloseReason::TokenExpired,
                        Status::new(Code::Unauthenticated, "token expired"))).await;
                }
                if idle_at.is_some_and(|t| now >= t) {
                    return CloseReason::IdleTimeout;
                }
                if now >= next_keepalive {
                    next_keepalive = now + hub.config().heartbeat_interval;
                    if Box::pin(conn.keepalive()).await.is_err() {
                        return CloseReason::Normal;
                    }
                }
            }
        }
    }
}

/// Writes `batch` in one coalesced send and clears it.
///
/// Most writes complete at once; only one that blocks is timed (two clock reads per write were the largest single
/// cost of the write path under fan-out), and that time is added to `last_inbound`: reading is paused while a
/// write blocks on a slow peer, so it is not idle time.
async fn write_batch<C: Connection>(
    conn: &mut C,
    batch: &mut Vec<Bytes>,
    last_inbound: &mut Instant,
) -> Result<(), ConnError> {
    let sent = {
        let mut send = std::pin::pin!(conn.send(batch));
        match std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
            Poll::Ready(sent) => sent,
            Poll::Pending => {
                let writing = Instant::now();
                let sent = send.await;
                *last_inbound += writing.elapsed();
                sent
            }
        }
    };
    batch.clear();
    if batch.capacity() > 64 {
        *batch = Vec::new();
    }
    sent
}

/// Whether the writer should hold its queue until `window` after `last_write`; otherwise notes this write's time.
/// One clock read per write, and only with coalescing on. Not inlined into the loop, so that none of its locals
/// becomes part of every connection's task.
#[inline(never)]
fn coalesce(window: std::time::Duration, last_write: &mut Option<Instant>) -> bool {
    if window.is_zero() {
        return false;
    }
    let now = Instant::now();
    if last_write.is_some_and(|t| now < t + window) {
        return true;
    }
    *last_write = Some(now);
    false
}

/// Closes with 1009 and an error event saying the frame limit.
async fn too_large<C: Connection>(conn: &mut C, session: &Session, max_frame_bytes: usize) -> CloseReason {
    let status = Status::new(Code::TooLarge, format!("frames are limited to {max_frame_bytes} bytes"));
    Box::pin(close_with_error(conn, session, CloseReason::TooLarge, status)).await
}

async fn close_with_error<C: Connection>(
    conn: &mut C,
    session: &Session,
    reason: CloseReason,
    status: Status,
) -> CloseReason {
    let mut batch = Vec::new();
    session.drain_into(&mut batch);
    batch.push(protocol::encode_error(None, &status));
    let _ = conn.send(&batch).await;
    reason
}

/// Converts a wall-clock deadline (ms since the epoch) to a tokio instant.
fn instant_of_millis(at: crate::model::Millis) -> Instant {
    let now_ms = crate::model::now_millis();
    let delta = at.saturating_sub(now_ms).max(0);
    Instant::now() + std::time::Duration::from_millis(u64::try_from(delta).unwrap_or(0))
}
