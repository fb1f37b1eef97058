//! Clients: [`QuicConnector`] for native QUIC and [`WebTransportConnector`] for WebTransport. Both give a
//! [`FrameStream`] (inside [`QuicClient`] / [`WebTransportClient`]) that sends and receives protocol frames.
//!
//! They are plain: no reconnection, no automatic keep-alive frames (call [`FrameStream::keepalive`] or send
//! `ping` at least once per the `idle_timeout_ms` announced in `hello`).
//!
//! ```no_run
//! # async fn demo(hash: herald_quic::CertHash) -> Result<(), herald_quic::client::ClientError> {
//! use herald_quic::client::{ClientOptions, QuicConnector, Trust};
//!
//! let connector = QuicConnector::new(ClientOptions::new(Trust::CertHashes(vec![hash])))?;
//! let mut client = connector.connect("127.0.0.1:8443".parse().expect("addr"), Some("<token>")).await?;
//! let hello = client.recv_frame().await?;
//! client.send_frame(br#"{"type":"ping","id":1}"#).await?;
//! # Ok(()) }
//! ```

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::cert::CertHash;
use crate::framing::{self, FrameError, FrameReader};
use crate::stream::{RecvHalf, SendHalf};
use crate::{ALPN_H3, ALPN_NATIVE, install_crypto_provider};

/// How the client decides to trust the server's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates chaining to these roots, valid for the server name.
    Roots(Vec<CertificateDer<'static>>),
    /// A leaf certificate with one of these SHA-256 hashes (certificate pinning, as browsers'
    /// `serverCertificateHashes`); name and chain are not checked.
    CertHashes(Vec<CertHash>),
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Certificate trust.
    pub trust: Trust,
    /// The name the certificate must be valid for (with [`Trust::Roots`]). Default `localhost`.
    pub server_name: String,
    /// Local address to bind; `None` picks an ephemeral port on the wildcard address of the server's family.
    pub bind: Option<SocketAddr>,
    /// Resume sessions and send 0-RTT data when possible (native only). Default `false`.
    pub zero_rtt: bool,
    /// Largest frame accepted from the server. Default 16 MiB (history pages can be large).
    pub max_frame_bytes: usize,
    /// QUIC keep-alive interval (keeps NAT bindings and the QUIC idle timer alive; it is not a protocol
    /// frame). Default 20 s.
    pub keep_alive: Option<Duration>,
    /// QUIC idle timeout. Default 90 s.
    pub idle_timeout: Duration,
    /// ALPN protocols offered instead of the flavour's own (for tests of negotiation).
    pub alpn_override: Option<Vec<Vec<u8>>>,
}

impl ClientOptions {
    /// Defaults with `trust`.
    pub fn new(trust: Trust) -> Self {
        Self {
            trust,
            server_name: "localhost".into(),
            bind: None,
            zero_rtt: false,
            max_frame_bytes: 16 * 1024 * 1024,
            keep_alive: Some(Duration::from_secs(20)),
            idle_timeout: Duration::from_secs(90),
            alpn_override: None,
        }
    }
}

/// What a client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The options are unusable (no usable root, bad timeout, ...).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The local socket could not be bound.
    #[error("cannot bind the client socket: {0}")]
    Bind(#[source] std::io::Error),
    /// The connection could not be started.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed (handshake refused, timed out, lost).
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The WebTransport session could not be established.
    #[error("webtransport: {0}")]
    WebTransport(#[from] web_transport_quinn::ClientError),
    /// The server closed the session with `code` (a Herald close code) and `reason`. `code` is `None` when
    /// the connection ended without one.
    #[error("closed by the server ({code:?}): {reason}")]
    Closed {
        /// The close code.
        code: Option<u16>,
        /// The reason text.
        reason: String,
    },
    /// The server sent a frame above [`ClientOptions::max_frame_bytes`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream failed (reset, stopped, ...).
    #[error("stream failed: {0}")]
    Stream(String),
}

/// Verifies a server certificate by its SHA-256 hash.
#[derive(Debug)]
struct PinnedHashes {
    hashes: Vec<CertHash>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedHashes {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.hashes.contains(&CertHash::of(end_entity)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A quinn client configuration for `alpn` with `options`' trust and timers.
fn client_config(options: &ClientOptions, alpn: &[u8]) -> Result<quinn::ClientConfig, ClientError> {
    install_crypto_provider();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut tls = match &options.trust {
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for root in roots {
                store.add(root.clone()).map_err(|e| ClientError::Config(format!("root certificate: {e}")))?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        Trust::CertHashes(hashes) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedHashes { hashes: hashes.clone(), provider }))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = options.alpn_override.clone().unwrap_or_else(|| vec![alpn.to_vec()]);
    tls.enable_early_data = options.zero_rtt;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(options.keep_alive).max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(options.idle_timeout).map_err(|e| ClientError::Config(e.to_string()))?,
    ));
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn client_endpoint(options: &ClientOptions, ipv6: bool) -> Result<quinn::Endpoint, ClientError> {
    let bind = options.bind.unwrap_or(if ipv6 {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    });
    quinn::Endpoint::client(bind).map_err(ClientError::Bind)
}

/// Encodes the stream header for `token`.
fn stream_header(token: Option<&str>) -> Bytes {
    let payload = match token {
        Some(t) => serde_json::json!({ "token": t }).to_string().into_bytes(),
        None => Vec::new(),
    };
    let mut out = BytesMut::new();
    framing::put_frame(&mut out, &payload);
    out.freeze()
}

/// The session under a [`FrameStream`].
#[derive(Debug)]
enum ClientLink {
    Native(quinn::Connection),
    Web(Box<web_transport_quinn::Session>),
}

/// One session's stream: send and receive protocol frames.
#[derive(Debug)]
pub struct FrameStream {
    link: ClientLink,
    send: SendHalf,
    recv: RecvHalf,
    reader: FrameReader,
}

impl FrameStream {
    /// Sends one frame.
    ///
    /// # Errors
    /// [`ClientError::Stream`] when the stream failed; [`ClientError::TooLarge`] above 4 GiB.
    pub async fn send_frame(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        if u32::try_from(frame.len()).is_err() {
            return Err(ClientError::TooLarge { len: frame.len() as u64, max: u32::MAX as usize });
        }
        let mut out = BytesMut::with_capacity(frame.len() + framing::LENGTH_PREFIX);
        framing::put_frame(&mut out, frame);
        self.send_raw(out.freeze()).await
    }

    /// Sends a keep-alive (an empty frame), which resets the server's idle timer.
    ///
    /// # Errors
    /// [`ClientError::Stream`] when the stream failed.
    pub async fn keepalive(&mut self) -> Result<(), ClientError> {
        self.send_raw(Bytes::from_static(&[0, 0, 0, 0])).await
    }

    /// Writes `bytes` to the stream as they are, without framing (for tests of malformed input).
    ///
    /// # Errors
    /// [`ClientError::Stream`] when the stream failed.
    pub async fn send_raw(&mut self, bytes: Bytes) -> Result<(), ClientError> {
        self.send.write(bytes).await.map_err(|e| ClientError::Stream(e.to_string()))
    }

    /// Ends the client's side of the stream (FIN): the server sees the end of input.
    pub fn finish(&mut self) {
        self.send.finish();
    }

    /// Receives the next frame, skipping keep-alives. Cancel-safe.
    ///
    /// # Errors
    /// [`ClientError::Closed`] once the server ended the session, with its close code.
    pub async fn recv_frame(&mut self) -> Result<Bytes, ClientError> {
        loop {
            match self.reader.next(&mut self.recv).await {
                Ok(Some(frame)) if frame.is_empty() => continue,
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) | Err(FrameError::Stream(_) | FrameError::Truncated) => return Err(self.close_info().await),
                Err(FrameError::TooLarge { len, max }) => return Err(ClientError::TooLarge { len, max }),
            }
        }
    }

    /// The server's close, once the stream ended (waits briefly for the connection close to arrive).
    async fn close_info(&self) -> ClientError {
        let wait = Duration::from_secs(3);
        let closed = match &self.link {
            ClientLink::Native(c) => match tokio::time::timeout(wait, c.closed()).await {
                Ok(e) => native_close(&e),
                Err(_) => None,
            },
            ClientLink::Web(s) => match tokio::time::timeout(wait, s.closed()).await {
                Ok(e) => web_close(&e),
                Err(_) => None,
            },
        };
        let (code, reason) = closed.unwrap_or((None, "the stream ended without a close code".into()));
        ClientError::Closed { code, reason }
    }

    /// Closes the session from the client side with `code`.
    pub fn close(&mut self, code: u16, reason: &str) {
        self.send.finish();
        match &self.link {
            ClientLink::Native(c) => c.close(quinn::VarInt::from_u32(u32::from(code)), reason.as_bytes()),
            ClientLink::Web(s) => s.close(u32::from(code), reason.as_bytes()),
        }
    }
}

fn native_close(e: &quinn::ConnectionError) -> Option<(Option<u16>, String)> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            Some((u16::try_from(c.error_code.into_inner()).ok(), String::from_utf8_lossy(&c.reason).into_owned()))
        }
        other => Some((None, other.to_string())),
    }
}

fn web_close(e: &web_transport_quinn::SessionError) -> Option<(Option<u16>, String)> {
    match e {
        web_transport_quinn::SessionError::WebTransportError(web_transport_quinn::WebTransportError::Closed(
            code,
            reason,
        )) => Some((u16::try_from(*code).ok(), reason.clone())),
        web_transport_quinn::SessionError::ConnectionError(c) => native_close(c),
        other => Some((None, other.to_string())),
    }
}

/// Connects native QUIC clients (ALPN `herald/1`). One connector holds one UDP socket and a TLS session
/// cache (for resumption and 0-RTT); it can open many sessions.
#[derive(Debug, Clone)]
pub struct QuicConnector {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    options: ClientOptions,
}

impl QuicConnector {
    /// A connector with `options`, bound to an ephemeral IPv4 port unless [`ClientOptions::bind`] says
    /// otherwise.
    ///
    /// # Errors
    /// [`ClientError::Config`] or [`ClientError::Bind`].
    pub fn new(options: ClientOptions) -> Result<Self, ClientError> {
        let config = client_config(&options, ALPN_NATIVE)?;
        let endpoint = client_endpoint(&options, false)?;
        Ok(Self { endpoint, config, options })
    }

    /// The client endpoint (to [`rebind`](quinn::Endpoint::rebind) it, for example).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Opens a session to `addr`, presenting `token` in the stream header when given.
    ///
    /// With [`ClientOptions::zero_rtt`] and a resumable session, this returns before the handshake
    /// completes: the header and the first frames travel as 0-RTT data.
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::Connection`] (handshake refused: unknown ALPN, untrusted
    /// certificate, server full), or [`ClientError::Stream`].
    pub async fn connect(&self, addr: SocketAddr, token: Option<&str>) -> Result<QuicClient, ClientError> {
        let mut client = self.connect_raw(addr).await?;
        client.stream.send_raw(stream_header(token)).await?;
        Ok(client)
    }

    /// Opens a session's stream without sending the stream header (for tests of malformed headers): the
    /// first unit written must be the header.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_raw(&self, addr: SocketAddr) -> Result<QuicClient, ClientError> {
        let connecting = self.endpoint.connect_with(self.config.clone(), addr, &self.options.server_name)?;
        let (conn, accepted) = if self.options.zero_rtt {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => (conn, Some(accepted)),
                Err(connecting) => (connecting.await?, None),
            }
        } else {
            (connecting.await?, None)
        };
        let (send, recv) = conn.open_bi().await?;
        let stream = FrameStream {
            link: ClientLink::Native(conn.clone()),
            send: SendHalf::Native(send),
            recv: RecvHalf::Native(recv),
            reader: FrameReader::new(self.options.max_frame_bytes),
        };
        Ok(QuicClient { stream, conn, accepted })
    }
}

/// A native QUIC session.
pub struct QuicClient {
    stream: FrameStream,
    conn: quinn::Connection,
    accepted: Option<quinn::ZeroRttAccepted>,
}

impl std::fmt::Debug for QuicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicClient")
            .field("remote", &self.conn.remote_address())
            .field("early", &self.accepted.is_some())
            .finish_non_exhaustive()
    }
}

impl QuicClient {
    /// The QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Whether the session started with 0-RTT data (before the handshake completed).
    pub fn sent_early(&self) -> bool {
        self.accepted.is_some()
    }

    /// Waits for the handshake; `true` if the 0-RTT data was accepted (`false` if the session did not start
    /// early, or the server refused the early data, in which case the session is unusable: reconnect).
    pub async fn early_data_accepted(&mut self) -> bool {
        match self.accepted.take() {
            Some(accepted) => accepted.await,
            None => false,
        }
    }

    /// Changes the limit on frames from the server.
    pub fn set_max_frame_bytes(&mut self, max: usize) {
        self.stream.reader.set_max(max);
    }

    /// The frame stream alone (it keeps the connection open).
    pub fn into_stream(self) -> FrameStream {
        self.stream
    }
}

impl Deref for QuicClient {
    type Target = FrameStream;
    fn deref(&self) -> &FrameStream {
        &self.stream
    }
}

impl DerefMut for QuicClient {
    fn deref_mut(&mut self) -> &mut FrameStream {
        &mut self.stream
    }
}

/// Connects WebTransport clients (ALPN `h3`), as a browser would.
#[derive(Debug, Clone)]
pub struct WebTransportConnector {
    client: web_transport_quinn::Client,
    max_frame_bytes: usize,
}

impl WebTransportConnector {
    /// A connector with `options` (`zero_rtt` is ignored: WebTransport sessions here always complete the
    /// handshake first).
    ///
    /// # Errors
    /// [`ClientError::Config`] or [`ClientError::Bind`].
    pub fn new(options: ClientOptions) -> Result<Self, ClientError> {
        let options = ClientOptions { zero_rtt: false, ..options };
        let config = client_config(&options, ALPN_H3)?;
        let endpoint = client_endpoint(&options, false)?;
        Ok(Self {
            client: web_transport_quinn::Client::new(endpoint, config),
            max_frame_bytes: options.max_frame_bytes,
        })
    }

    /// Opens a WebTransport session at `url` (`https://host:port/wt`, optionally with `?token=`), then its
    /// stream, presenting `token` in the stream header when given.
    ///
    /// # Errors
    /// [`ClientError::WebTransport`] when the session is refused (wrong path: 404), or
    /// [`ClientError::Stream`].
    pub async fn connect(&self, url: &url::Url, token: Option<&str>) -> Result<WebTransportClient, ClientError> {
        let session = self.client.connect(url.clone()).await?;
        let (send, recv) = session.open_bi().await.map_err(|e| ClientError::Stream(e.to_string()))?;
        let mut stream = FrameStream {
            link: ClientLink::Web(Box::new(session.clone())),
            send: SendHalf::Web(send),
            recv: RecvHalf::Web(recv),
            reader: FrameReader::new(self.max_frame_bytes),
        };
        stream.send_raw(stream_header(token)).await?;
        Ok(WebTransportClient { stream, session })
    }
}

/// A WebTransport session.
#[derive(Debug)]
pub struct WebTransportClient {
    stream: FrameStream,
    session: web_transport_quinn::Session,
}

impl WebTransportClient {
    /// The WebTransport session.
    pub fn session(&self) -> &web_transport_quinn::Session {
        &self.session
    }

    /// The frame stream alone (it keeps the session open).
    pub fn into_stream(self) -> FrameStream {
        self.stream
    }
}

impl Deref for WebTransportClient {
    type Target = FrameStream;
    fn deref(&self) -> &FrameStream {
        &self.stream
    }
}

impl DerefMut for WebTransportClient {
    fn deref_mut(&mut self) -> &mut FrameStream {
        &mut self.stream
    }
}
