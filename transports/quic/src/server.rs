//! The server: one quinn endpoint, connections split by ALPN into native QUIC and WebTransport sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::Hub;
use herald_core::auth::Credentials;
use herald_core::driver::{self, CloseReason, ConnError, Connection, Inbound};
use herald_core::transport::{Shutdown, Transport, TransportError};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

use crate::cert::ServerCertificate;
use crate::early::EarlyGate;
use crate::framing::{self, FrameError, FrameReader};
use crate::stream::{RecvHalf, SendHalf};
use crate::{ALPN_H3, ALPN_NATIVE, QuicConfig, RetryPolicy, install_crypto_provider};

/// The metrics label of attempts refused before a session opened (native or WebTransport is not known yet).
const LABEL_QUIC: &str = "quic";

/// Counters of a running server, published through a [`watch`] channel ([`BoundQuic::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuicStats {
    /// Connection attempts seen (each QUIC Initial that starts a new connection).
    pub incoming: u64,
    /// Attempts refused because [`QuicConfig::max_handshakes`] handshakes were in progress.
    pub refused: u64,
    /// Attempts answered with a Retry packet (address validation) instead of a handshake.
    pub retried: u64,
    /// Handshakes accepted and not yet complete.
    pub handshakes_in_progress: u64,
    /// Connections that failed or timed out before their session started (handshake, stream, header).
    pub setup_failed: u64,
    /// Native QUIC sessions started.
    pub native_sessions: u64,
    /// WebTransport sessions started.
    pub webtransport_sessions: u64,
    /// WebTransport requests refused (wrong path).
    pub webtransport_rejected: u64,
    /// Native sessions accepted before their handshake completed. With [`QuicConfig::zero_rtt`] that is every
    /// native session: the server cannot tell whether a client actually sent 0-RTT data.
    pub early_sessions: u64,
    /// Frames held back until the handshake completed (0-RTT policy).
    pub early_frames_deferred: u64,
    /// Connection tasks alive (handshaking or in session).
    pub active_connections: u64,
}

/// The QUIC transport as a standalone server: native QUIC (ALPN `herald/1`) and WebTransport (ALPN `h3`)
/// on one UDP port.
#[derive(Debug, Clone)]
pub struct QuicTransport {
    addr: SocketAddr,
    config: QuicConfig,
    certificate: ServerCertificate,
}

impl QuicTransport {
    /// A transport that will listen on UDP `addr` with `certificate`.
    pub fn new(addr: SocketAddr, config: QuicConfig, certificate: ServerCertificate) -> Self {
        Self { addr, config, certificate }
    }

    /// The certificate served.
    pub fn certificate(&self) -> &ServerCertificate {
        &self.certificate
    }

    /// Binds the UDP socket now (to learn the port when `addr` has port 0) and returns a server to run.
    ///
    /// # Errors
    /// [`TransportError::Bind`] when the socket cannot be bound; [`TransportError::Serve`] when the
    /// certificate or configuration is unusable.
    pub fn bind(self) -> Result<BoundQuic, TransportError> {
        install_crypto_provider();
        let server_config = server_config(&self.config, &self.certificate)?;
        let socket = udp_socket(self.addr, self.config.socket_buffer_bytes)
            .map_err(|source| TransportError::Bind { addr: self.addr, source })?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| TransportError::Serve("no async runtime (bind inside a tokio runtime)".into()))?;
        let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server_config), socket, runtime)
            .map_err(|source| TransportError::Bind { addr: self.addr, source })?;
        let (stats, _) = watch::channel(QuicStats::default());
        Ok(BoundQuic { endpoint, config: self.config, certificate: self.certificate, stats: Arc::new(stats) })
    }
}

/// Binds the UDP socket with `buffer_bytes` of kernel receive and send buffer (capped by the kernel; a refused
/// size keeps the default, with a warning).
fn udp_socket(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack like std's bind on `[::]`, where the platform allows it.
        let _ = socket.set_only_v6(false);
    }
    for (what, set) in [
        ("receive", Socket::set_recv_buffer_size as fn(&Socket, usize) -> std::io::Result<()>),
        ("send", Socket::set_send_buffer_size),
    ] {
        if let Err(e) = set(&socket, buffer_bytes) {
            tracing::warn!(error = %e, buffer_bytes, "cannot set the QUIC socket's {what} buffer");
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Builds quinn's server configuration: TLS 1.3 with the two ALPNs, bounded windows and handshakes.
fn server_config(config: &QuicConfig, certificate: &ServerCertificate) -> Result<quinn::ServerConfig, TransportError> {
    let serve_err = |e: String| TransportError::Serve(e.into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| serve_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certificate.chain().to_vec(), certificate.key())
        .map_err(|e| serve_err(format!("certificate: {e}")))?;
    tls.alpn_protocols = vec![ALPN_NATIVE.to_vec()];
    if config.webtransport_path.is_some() {
        tls.alpn_protocols.push(ALPN_H3.to_vec());
    }
    // QUIC allows only 0 (no early data) or u32::MAX.
    tls.max_early_data_size = if config.zero_rtt { u32::MAX } else { 0 };
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| serve_err(e.to_string()))?;

    let mut transport = quinn::TransportConfig::default();
    let web = config.webtransport_path.is_some();
    // Native: one bidirectional stream. WebTransport adds the CONNECT stream and HTTP/3's three
    // unidirectional streams (control, QPACK encoder, QPACK decoder).
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(if web { 2 } else { 1 }))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(if web { 3 } else { 0 }))
        .stream_receive_window(quinn::VarInt::from_u32(config.stream_receive_window))
        .receive_window(quinn::VarInt::from_u32(config.receive_window))
        .send_window(config.send_window)
        .datagram_receive_buffer_size(web.then_some(4096))
        .datagram_send_buffer_size(if web { 4096 } else { 0 })
        .keep_alive_interval(None)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(config.idle_timeout).map_err(|e| serve_err(e.to_string()))?,
        ));
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server
        .transport_config(Arc::new(transport))
        .max_incoming(config.max_incoming)
        .incoming_buffer_size(config.incoming_buffer_bytes)
        .incoming_buffer_size_total(config.incoming_buffer_bytes.saturating_mul(64))
        .migration(true);
    Ok(server)
}

/// A bound QUIC server, ready to [`serve`](BoundQuic::serve).
#[derive(Debug)]
pub struct BoundQuic {
    endpoint: quinn::Endpoint,
    config: QuicConfig,
    certificate: ServerCertificate,
    stats: Arc<watch::Sender<QuicStats>>,
}

impl BoundQuic {
    /// The UDP address actually bound.
    ///
    /// # Errors
    /// When the socket cannot report it.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The certificate served (its [`leaf_hash`](ServerCertificate::leaf_hash) is what browsers pin).
    pub fn certificate(&self) -> &ServerCertificate {
        &self.certificate
    }

    /// Live counters; `wait_for` on the receiver to await a condition.
    pub fn stats(&self) -> watch::Receiver<QuicStats> {
        self.stats.subscribe()
    }

    /// Serves until `shutdown` resolves; then stops accepting, asks every session of `hub` to close with 1001
    /// (as the WebSocket transport does), waits up to [`QuicConfig::shutdown_grace`] for this transport's
    /// connections to end, and closes what is left with 1001.
    ///
    /// # Errors
    /// None at present; the signature leaves room for fatal endpoint errors.
    pub async fn serve(self, hub: Hub, mut shutdown: Shutdown) -> Result<(), TransportError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            hub,
            config: self.config,
            stats: self.stats,
            handshaking: AtomicUsize::new(0),
            stop: stop_rx,
        });
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => admit(&ctx, incoming),
                    None => break,
                },
            }
        }
        // New connection attempts are refused from now on.
        self.endpoint.set_server_config(None);
        let _ = stop_tx.send(true);
        ctx.hub.shut_down(CloseReason::GoingAway);
        let mut stats = ctx.stats.subscribe();
        let grace = ctx.config.shutdown_grace;
        if tokio::time::timeout(grace, stats.wait_for(|s| s.active_connections == 0)).await.is_err() {
            tracing::warn!(?grace, "quic connections still open after the grace period; closing them");
        }
        self.endpoint.close(quinn::VarInt::from_u32(1001), CloseReason::GoingAway.text().as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        Ok(())
    }
}

#[async_trait]
impl Transport for QuicTransport {
    fn name(&self) -> &'static str {
        "quic"
    }

    async fn serve(self: Box<Self>, hub: Hub, shutdown: Shutdown) -> Result<(), TransportError> {
        let bound = (*self).bind()?;
        let addr = bound.local_addr().map_err(|e| TransportError::Serve(Box::new(e)))?;
        tracing::info!(%addr, "quic transport listening");
        bound.serve(hub, shutdown).await
    }
}

/// Shared by the accept loop and every connection task.
struct Ctx {
    hub: Hub,
    config: QuicConfig,
    stats: Arc<watch::Sender<QuicStats>>,
    handshaking: AtomicUsize,
    stop: watch::Receiver<bool>,
}

impl Ctx {
    fn bump(&self, f: impl FnOnce(&mut QuicStats)) {
        self.stats.send_modify(f);
    }
}

/// Counts a connection task while it lives.
struct TaskGuard(Arc<Ctx>);

impl TaskGuard {
    fn new(ctx: &Arc<Ctx>) -> Self {
        ctx.bump(|s| s.active_connections += 1);
        Self(ctx.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.bump(|s| s.active_connections -= 1);
    }
}

/// Counts a handshake in progress until dropped.
struct HandshakeGuard(Arc<Ctx>);

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        let now = self.0.handshaking.fetch_sub(1, Ordering::AcqRel) - 1;
        self.0.bump(|s| s.handshakes_in_progress = now as u64);
    }
}

/// Decides what to do with a connection attempt: refuse it, ask for address validation, or handshake.
fn admit(ctx: &Arc<Ctx>, incoming: quinn::Incoming) {
    ctx.bump(|s| s.incoming += 1);
    let in_progress = ctx.handshaking.load(Ordering::Acquire);
    if in_progress >= ctx.config.max_handshakes {
        incoming.refuse();
        ctx.bump(|s| s.refused += 1);
        herald_core::metrics::handshake_failed(LABEL_QUIC, "handshake_limit");
        return;
    }
    let retry = match ctx.config.retry {
        RetryPolicy::Never => false,
        RetryPolicy::Always => true,
        RetryPolicy::AboveHandshakes(n) => in_progress >= n,
    };
    if retry && !incoming.remote_address_validated() && incoming.may_retry() {
        match incoming.retry() {
            Ok(()) => ctx.bump(|s| s.retried += 1),
            Err(e) => {
                e.into_incoming().refuse();
                ctx.bump(|s| s.refused += 1);
                herald_core::metrics::handshake_failed(LABEL_QUIC, "retry_failed");
            }
        }
        return;
    }
    let now = ctx.handshaking.fetch_add(1, Ordering::AcqRel) + 1;
    ctx.bump(|s| s.handshakes_in_progress = now as u64);
    let handshake = HandshakeGuard(ctx.clone());
    let task = TaskGuard::new(ctx);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let _task = task;
        let mut stop = ctx.stop.clone();
        let deadline = Instant::now() + ctx.config.handshake_timeout;
        let established = tokio::select! {
            r = establish(&ctx, incoming, handshake, deadline) => r,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some((conn, credentials)) = established else {
            ctx.bump(|s| s.setup_failed += 1);
            herald_core::metrics::handshake_failed(LABEL_QUIC, "setup_failed");
            return;
        };
        driver::run(ctx.hub.clone(), conn, credentials).await;
    });
}

/// The QUIC connection or WebTransport session under a stream.
#[derive(Debug)]
enum Link {
    Native(quinn::Connection),
    Web(Box<web_transport_quinn::Session>),
}

impl Link {
    fn close(&self, code: u16, reason: &str) {
        match self {
            Self::Native(c) => c.close(quinn::VarInt::from_u32(u32::from(code)), reason.as_bytes()),
            Self::Web(s) => s.close(u32::from(code), reason.as_bytes()),
        }
    }

    /// Waits, at most `limit`, until the close has reached the peer. A native close is queued on the connection
    /// at once; a WebTransport close first writes the `CLOSE_WEBTRANSPORT_SESSION` capsule from a task of its
    /// own, and closing the endpoint before that task ran would end the session without its code.
    async fn closed(&self, limit: Duration) {
        if let Self::Web(s) = self {
            let _ = tokio::time::timeout(limit, s.closed()).await;
        }
    }
}

/// The stream header: the first length-prefixed unit the client sends on its stream.
#[derive(Deserialize)]
struct StreamHeader {
    token: Option<String>,
}

fn alpn_of(data: Box<dyn std::any::Any>) -> Option<Vec<u8>> {
    data.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

/// Handshake, stream and header, all before `deadline`. `None` if the connection did not get there (it is
/// closed with a code where one applies).
async fn establish(
    ctx: &Arc<Ctx>,
    incoming: quinn::Incoming,
    handshake: HandshakeGuard,
    deadline: Instant,
) -> Option<(QuicConnection, Option<Credentials>)> {
    let mut connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "quic connection attempt failed");
            return None;
        }
    };
    let alpn = match timeout_at(deadline, connecting.handshake_data()).await {
        Ok(Ok(data)) => alpn_of(data),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "quic handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!("quic handshake timed out");
            return None;
        }
    };
    if alpn.as_deref() == Some(ALPN_NATIVE) {
        let (conn, gate) = if ctx.config.zero_rtt {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => {
                    ctx.bump(|s| s.early_sessions += 1);
                    let gate = EarlyGate::pending(Box::pin(async move {
                        let _ = accepted.await;
                        drop(handshake);
                    }));
                    (conn, gate)
                }
                Err(connecting) => (complete(connecting, handshake, deadline).await?, EarlyGate::open()),
            }
        } else {
            (complete(connecting, handshake, deadline).await?, EarlyGate::open())
        };
        // Only the one bidirectional stream from here on.
        conn.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
        let link = Link::Native(conn.clone());
        let streams = match timeout_at(deadline, conn.accept_bi()).await {
            Ok(Ok((send, recv))) => (SendHalf::Native(send), RecvHalf::Native(recv)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "quic connection ended before its stream");
                return None;
            }
            Err(_) => {
                link.close(CloseReason::AuthTimeout.code(), "no stream opened in time");
                return None;
            }
        };
        let connected = session_start(ctx, link, streams, gate, None, deadline).await?;
        ctx.bump(|s| s.native_sessions += 1);
        Some(connected)
    } else if alpn.as_deref() == Some(ALPN_H3)
        && let Some(path) = ctx.config.webtransport_path.as_deref()
    {
        let conn = complete(connecting, handshake, deadline).await?;
        let request = match timeout_at(deadline, web_transport_quinn::Request::accept(conn.clone())).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "webtransport request failed");
                return None;
            }
            Err(_) => {
                conn.close(quinn::VarInt::from_u32(0x100), b"no webtransport request in time");
                return None;
            }
        };
        if request.url.path() != path {
            ctx.bump(|s| s.webtransport_rejected += 1);
            let conn = request.conn().clone();
            let _ = timeout_at(deadline, request.reject(web_transport_quinn::http::StatusCode::NOT_FOUND)).await;
            // Let the client read the response before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
            conn.close(quinn::VarInt::from_u32(0x100), b"not found");
            return None;
        }
        let query_token = request.url.query_pairs().find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
        let session = match timeout_at(deadline, request.ok()).await {
            Ok(Ok(s)) => s,
            _ => return None,
        };
        let link = Link::Web(Box::new(session.clone()));
        let streams = match timeout_at(deadline, session.accept_bi()).await {
            Ok(Ok((send, recv))) => (SendHalf::Web(send), RecvHalf::Web(recv)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "webtransport session ended before its stream");
                return None;
            }
            Err(_) => {
                link.close(CloseReason::AuthTimeout.code(), "no stream opened in time");
                return None;
            }
        };
        let connected = session_start(ctx, link, streams, EarlyGate::open(), query_token, deadline).await?;
        ctx.bump(|s| s.webtransport_sessions += 1);
        Some(connected)
    } else {
        // TLS refuses ALPNs it was not configured with; this is a safety net.
        if let Ok(conn) = timeout_at(deadline, connecting).await.unwrap_or(Err(quinn::ConnectionError::TimedOut)) {
            conn.close(quinn::VarInt::from_u32(u32::from(CloseReason::ProtocolError.code())), b"unsupported ALPN");
        }
        None
    }
}

/// Waits for the handshake to complete.
async fn complete(
    connecting: quinn::Connecting,
    handshake: HandshakeGuard,
    deadline: Instant,
) -> Option<quinn::Connection> {
    let done = timeout_at(deadline, connecting).await;
    drop(handshake);
    match done {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "quic handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Reads the stream header and builds the connection for the driver.
async fn session_start(
    ctx: &Arc<Ctx>,
    link: Link,
    (send, mut recv): (SendHalf, RecvHalf),
    gate: EarlyGate,
    query_token: Option<String>,
    deadline: Instant,
) -> Option<(QuicConnection, Option<Credentials>)> {
    let max_frame = ctx.hub.config().limits.max_frame_bytes;
    let mut reader = FrameReader::new(max_frame);
    let header = match timeout_at(deadline, reader.next(&mut recv)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            link.close(CloseReason::Normal.code(), CloseReason::Normal.text());
            return None;
        }
        Ok(Err(FrameError::TooLarge { .. })) => {
            link.close(CloseReason::TooLarge.code(), "stream header too large");
            return None;
        }
        Ok(Err(FrameError::Truncated)) => {
            link.close(CloseReason::ProtocolError.code(), "stream ended inside the header");
            return None;
        }
        Ok(Err(FrameError::Stream(e))) => {
            tracing::debug!(error = %e, "stream failed before its header");
            return None;
        }
        Err(_) => {
            link.close(CloseReason::AuthTimeout.code(), "no stream header in time");
            return None;
        }
    };
    let header_token = if header.is_empty() {
        None
    } else {
        match serde_json::from_slice::<StreamHeader>(&header) {
            Ok(h) => h.token,
            Err(_) => {
                link.close(CloseReason::ProtocolError.code(), "invalid stream header");
                return None;
            }
        }
    };
    let token = header_token.or(query_token).filter(|t| !t.is_empty());
    let conn = QuicConnection { link, send, recv, reader, gate, stats: ctx.stats.clone() };
    Some((conn, token.map(Credentials::Bearer)))
}

/// One session's stream adapted to the driver.
#[derive(Debug)]
struct QuicConnection {
    link: Link,
    send: SendHalf,
    recv: RecvHalf,
    reader: FrameReader,
    gate: EarlyGate,
    stats: Arc<watch::Sender<QuicStats>>,
}

impl Connection for QuicConnection {
    async fn recv(&mut self) -> Option<Result<Inbound, ConnError>> {
        loop {
            if self.gate.has_held() {
                // A frame that is not replay-safe waits for the handshake; reading pauses meanwhile.
                if let Some(frame) = self.gate.release().await {
                    return Some(Ok(Inbound::Frame(frame)));
                }
                continue;
            }
            let read = {
                let Self { gate, reader, recv, .. } = self;
                tokio::select! {
                    () = std::future::poll_fn(|cx| gate.poll_handshake(cx)), if gate.is_pending() => continue,
                    r = reader.next(recv) => r,
                }
            };
            return match read {
                Ok(Some(frame)) if frame.is_empty() => Some(Ok(Inbound::Activity)),
                Ok(Some(frame)) => match self.gate.offer(frame) {
                    Some(frame) => Some(Ok(Inbound::Frame(frame))),
                    None => {
                        self.stats.send_modify(|s| s.early_frames_deferred += 1);
                        continue;
                    }
                },
                Ok(None) => None,
                Err(FrameError::TooLarge { .. }) => Some(Err(ConnError::TooLarge)),
                Err(FrameError::Truncated) => Some(Err(ConnError::Protocol("stream ended inside a frame".into()))),
                Err(FrameError::Stream(e)) => Some(Err(ConnError::Io(e.0))),
            };
        }
    }

    async fn send(&mut self, frames: &[Bytes]) -> Result<(), ConnError> {
        if frames.is_empty() {
            return Ok(());
        }
        self.send.write(framing::encode(frames)).await.map_err(|e| ConnError::Io(e.0))
    }

    async fn keepalive(&mut self) -> Result<(), ConnError> {
        // QUIC has its own keep-alive; the client keeps the session alive by sending frames (docs/protocol.md).
        Ok(())
    }

    /// `quic` for native sessions, `webtransport` for WebTransport sessions: one label per flavour, fixed when
    /// the session starts (the ALPN decides it).
    fn transport(&self) -> &'static str {
        match self.link {
            Link::Native(_) => "quic",
            Link::Web(_) => "webtransport",
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn close(mut self, reason: CloseReason) -> impl std::future::Future<Output = ()> + Send {
        async move {
            // The client may be blocked sending (an oversize frame): tell it to stop.
            self.recv.stop(u32::from(reason.code()));
            // Deliver what was written (the final error event) before the connection closes.
            self.send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.send.acknowledged()).await;
            self.link.close(reason.code(), reason.text());
            self.link.closed(Duration::from_secs(1)).await;
        }
    }
}
