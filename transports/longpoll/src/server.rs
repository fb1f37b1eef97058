//! The standalone server: a TCP accept loop, optional TLS (tokio-rustls, ALPN `h2` + `http/1.1`), and hyper's
//! automatic HTTP/1.1 / HTTP/2 connection builder (h2c with prior knowledge in cleartext).
//!
//! Slow clients cannot hold resources: the TLS handshake and the first request head must arrive within
//! `header_read_timeout` (hyper enforces it for every HTTP/1.1 request head), request bodies within
//! `body_timeout` (in the handlers), and a connection with no request in flight for `idle_timeout` is closed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use bytes::Bytes;
use herald_core::Hub;
use herald_core::transport::{Shutdown, Transport, TransportError};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::{Instant, sleep_until};
use tower::ServiceExt;

use crate::{LongPoll, LpConfig};

/// A TLS certificate problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what}: {source}")]
    Pem {
        /// Which file ("the certificate chain", "the private key").
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The PEM file holds no certificate.
    #[error("the certificate file holds no certificate")]
    NoCertificate,
    /// rustls refused the certificate or key.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS server configuration for [`LongPollTransport`]. rustls with the aws-lc-rs provider; ALPN offers `h2`
/// then `http/1.1`.
#[derive(Debug, Clone)]
pub struct TlsSettings(Arc<rustls::ServerConfig>);

impl TlsSettings {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_file_iter(cert.as_ref())
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|source| TlsError::Pem { what: "the certificate chain", source })?;
        let key = PrivateKeyDer::from_pem_file(key.as_ref())
            .map_err(|source| TlsError::Pem { what: "the private key", source })?;
        Self::from_der(certs, key)
    }

    /// Like [`from_pem_files`](Self::from_pem_files), from PEM text in memory.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem { what: "the certificate chain", source })?;
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|source| TlsError::Pem { what: "the private key", source })?;
        Self::from_der(certs, key)
    }

    fn from_der(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, TlsError> {
        if certs.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Ok(Self::from_rustls(config))
    }

    /// Uses a ready rustls configuration; sets ALPN to `h2`, `http/1.1` when it has none.
    pub fn from_rustls(mut config: rustls::ServerConfig) -> Self {
        if config.alpn_protocols.is_empty() {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        Self(Arc::new(config))
    }
}

/// The long-poll transport as a standalone server.
#[derive(Debug, Clone)]
pub struct LongPollTransport {
    addr: SocketAddr,
    config: LpConfig,
    tls: Option<TlsSettings>,
    extra: Option<Router>,
}

impl LongPollTransport {
    /// A transport that will listen on `addr` (cleartext HTTP/1.1 and h2c until [`with_tls`](Self::with_tls)).
    pub fn new(addr: SocketAddr, config: LpConfig) -> Self {
        Self { addr, config, tls: None, extra: None }
    }

    /// Serves over TLS (HTTP/2 or HTTP/1.1 by ALPN).
    pub fn with_tls(mut self, tls: TlsSettings) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves `routes` (health checks, ...) on the same listener.
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.extra = Some(routes);
        self
    }

    /// Binds the listener now (to learn the port when `addr` has port 0) and returns a server to run.
    pub async fn bind(self) -> Result<BoundLongPoll, TransportError> {
        let listener =
            TcpListener::bind(self.addr).await.map_err(|source| TransportError::Bind { addr: self.addr, source })?;
        Ok(BoundLongPoll { listener, config: self.config, tls: self.tls, extra: self.extra })
    }
}

#[async_trait]
impl Transport for LongPollTransport {
    fn name(&self) -> &'static str {
        "longpoll"
    }

    async fn serve(self: Box<Self>, hub: Hub, shutdown: Shutdown) -> Result<(), TransportError> {
        let bound = (*self).bind().await?;
        let addr = bound.local_addr().map_err(|e| TransportError::Serve(Box::new(e)))?;
        tracing::info!(%addr, tls = bound.tls.is_some(), "long-poll transport listening");
        bound.serve(hub, shutdown).await
    }
}

/// A bound long-poll server, ready to [`serve`](BoundLongPoll::serve).
#[derive(Debug)]
pub struct BoundLongPoll {
    listener: TcpListener,
    config: LpConfig,
    tls: Option<TlsSettings>,
    extra: Option<Router>,
}

impl BoundLongPoll {
    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves. Then stops accepting, closes every session with 1001 (held polls and
    /// SSE streams are answered with the close), waits up to the grace period for them, and shuts connections
    /// down gracefully.
    pub async fn serve(self, hub: Hub, shutdown: Shutdown) -> Result<(), TransportError> {
        let Self { listener, config, tls, extra } = self;
        let lp = LongPoll::new(hub, config.clone());
        let mut app = lp.router();
        if let Some(extra) = extra {
            app = app.merge(extra);
        }
        let builder = Arc::new(http_builder(&config));
        let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.0));
        let (stop_tx, stop_rx) = watch::channel(false);
        let max_connections = u32::try_from(config.max_connections.max(1)).unwrap_or(u32::MAX);
        let permits = Arc::new(Semaphore::new(max_connections as usize));
        let timeouts = Timeouts { header: config.header_read_timeout, idle: config.idle_timeout };
        let mut shutdown = shutdown;
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = &mut shutdown => break,
            };
            let (tcp, _peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let app = app.clone();
            let builder = builder.clone();
            let acceptor = acceptor.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                serve_tcp(tcp, acceptor, app, builder, stop, timeouts).await;
            });
        }
        drop(listener);
        let deadline = Instant::now() + config.shutdown_grace;
        if !lp.shutdown(config.shutdown_grace).await {
            tracing::warn!(left = lp.session_count(), "long-poll sessions still open after the grace period");
        }
        let _ = stop_tx.send(true);
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        if tokio::time::timeout(remaining, permits.acquire_many(max_connections)).await.is_err() {
            tracing::warn!("long-poll connections still open after the grace period");
        }
        Ok(())
    }
}

fn http_builder(config: &LpConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.h2_max_streams)
        .keep_alive_interval(config.h2_keepalive)
        .keep_alive_timeout(config.h2_keepalive)
        .max_header_list_size(64 * 1024);
    builder
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    idle: Duration,
}

async fn serve_tcp(
    tcp: TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
    timeouts: Timeouts,
) {
    let started = Instant::now();
    match acceptor {
        None => serve_io(tcp, app, &builder, stop, timeouts, started).await,
        Some(acceptor) => match tokio::time::timeout(timeouts.header, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => serve_io(tls, app, &builder, stop, timeouts, started).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        },
    }
}

/// Serves one connection, closing it gracefully on shutdown or when it idles.
async fn serve_io<I>(
    io: I,
    app: Router,
    builder: &auto::Builder<TokioExecutor>,
    mut stop: watch::Receiver<bool>,
    timeouts: Timeouts,
    started: Instant,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let service = Tracked { app, activity: activity.clone() };
    // With upgrades, so that routes merged in with `with_routes` may serve WebSocket too.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let changed = activity.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // Before its first request a connection gets `header` to deliver one; afterwards it may idle for `idle`.
        let deadline = activity.idle_deadline(started, timeouts);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = changed => {}
            () = sleep_until(deadline.unwrap_or(started)), if !stopping && deadline.is_some() => {
                if activity.idle_deadline(started, timeouts).is_some_and(|d| d <= Instant::now()) {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Requests in flight on one connection.
#[derive(Debug, Default)]
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct ActivityState {
    in_flight: usize,
    served: bool,
    idle_since: Option<Instant>,
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        let mut st = self.lock();
        st.in_flight += 1;
        st.served = true;
        drop(st);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// When the connection should be closed for idling; `None` while a request is in flight.
    fn idle_deadline(&self, started: Instant, t: Timeouts) -> Option<Instant> {
        let st = self.lock();
        if st.in_flight > 0 {
            return None;
        }
        Some(if st.served { st.idle_since.unwrap_or(started) + t.idle } else { started + t.header })
    }
}

/// One request in flight; dropped when its response body ends (or the request is abandoned).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        st.idle_since = Some(Instant::now());
        drop(st);
        self.0.changed.notify_waiters();
    }
}

/// The router as a hyper service that counts requests in flight.
#[derive(Clone)]
struct Tracked {
    app: Router,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let app = self.app.clone();
        Box::pin(async move {
            let res = match app.oneshot(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            Ok(res.map(|inner| TrackedBody { inner, _in_flight: in_flight }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is done.
    struct TrackedBody {
        #[pin]
        inner: Body,
        _in_flight: InFlight,
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
