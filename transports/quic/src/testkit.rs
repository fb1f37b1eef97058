//! Protocol conformance harnesses over native QUIC and WebTransport (feature `testkit`).

use std::net::SocketAddr;
use std::time::Duration;

use herald_core::Hub;
use herald_core::testkit::protocol::{Harness, RawClient, Seen, TestTokens};

use crate::client::{ClientError, ClientOptions, FrameStream, QuicConnector, Trust, WebTransportConnector};
use crate::{BoundQuic, CertHash, QuicConfig, QuicTransport, ServerCertificate};

/// Which flavour a harness connects with, and where the connect-time token goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Native QUIC; the token in the stream header.
    Native,
    /// WebTransport; the token in the stream header.
    WebTransportHeader,
    /// WebTransport; the token in the URL (`?token=`), as browsers do.
    WebTransportQuery,
}

/// A server on loopback with a development certificate, started for tests.
#[derive(Debug)]
pub struct TestServer {
    /// The server's UDP address.
    pub addr: SocketAddr,
    /// The hash of its certificate.
    pub cert_hash: CertHash,
    /// Its counters.
    pub stats: tokio::sync::watch::Receiver<crate::QuicStats>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Serves `hub` with `config` on an ephemeral loopback port.
    pub async fn start(hub: Hub, config: QuicConfig) -> Self {
        let cert = ServerCertificate::self_signed_dev(Duration::from_secs(24 * 3600)).expect("dev certificate");
        Self::start_with_certificate(hub, config, cert).await
    }

    /// Serves `hub` with `config` and `cert` on an ephemeral loopback port.
    pub async fn start_with_certificate(hub: Hub, config: QuicConfig, cert: ServerCertificate) -> Self {
        let bound: BoundQuic = QuicTransport::new(SocketAddr::from(([127, 0, 0, 1], 0)), config, cert)
            .bind()
            .expect("bind a loopback UDP port");
        let addr = bound.local_addr().expect("local address");
        let cert_hash = bound.certificate().leaf_hash();
        let stats = bound.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            bound
                .serve(
                    hub,
                    Box::pin(async move {
                        let _ = rx.await;
                    }),
                )
                .await
                .expect("quic server");
        });
        Self { addr, cert_hash, stats, shutdown: Some(tx), task }
    }

    /// Client options trusting this server.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions::new(Trust::CertHashes(vec![self.cert_hash]))
    }

    /// The WebTransport URL at `/wt`, with `token` in the query when given.
    pub fn wt_url(&self, token: Option<&str>) -> url::Url {
        let mut url = url::Url::parse(&format!("https://{}/wt", self.addr)).expect("valid url");
        if let Some(t) = token {
            url.query_pairs_mut().append_pair("token", t);
        }
        url
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.expect("server task");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Connects real QUIC or WebTransport clients to a [`TestServer`].
#[derive(Debug)]
pub struct QuicHarness {
    /// The server.
    pub server: TestServer,
    /// Token minting matching the server's authentication.
    pub tokens: TestTokens,
    /// The server's frame limit.
    pub max_frame: usize,
    /// The flavour.
    pub flavour: Flavour,
    native: QuicConnector,
    web: WebTransportConnector,
}

impl QuicHarness {
    /// Serves `hub` (which must authenticate with `tokens.auth()`) with the default configuration and
    /// returns a harness connecting with `flavour`.
    pub async fn start(hub: Hub, tokens: TestTokens, flavour: Flavour) -> Self {
        Self::start_with(hub, tokens, flavour, QuicConfig::default()).await
    }

    /// Like [`start`](Self::start) with `config`.
    pub async fn start_with(hub: Hub, tokens: TestTokens, flavour: Flavour, config: QuicConfig) -> Self {
        let max_frame = hub.config().limits.max_frame_bytes;
        let server = TestServer::start(hub, config).await;
        let options = server.client_options();
        let native = QuicConnector::new(options.clone()).expect("native connector");
        let web = WebTransportConnector::new(options).expect("webtransport connector");
        Self { server, tokens, max_frame, flavour, native, web }
    }

    /// Opens a session with `token` at connect time.
    pub async fn open(&self, token: Option<&str>) -> QuicRaw {
        let stream = match self.flavour {
            Flavour::Native => self.native.connect(self.server.addr, token).await.map(|c| QuicRaw(c.into_stream())),
            Flavour::WebTransportHeader => {
                self.web.connect(&self.server.wt_url(None), token).await.map(|c| QuicRaw(c.into_stream()))
            }
            Flavour::WebTransportQuery => {
                self.web.connect(&self.server.wt_url(token), None).await.map(|c| QuicRaw(c.into_stream()))
            }
        };
        stream.expect("connect")
    }
}

/// A raw client of either flavour.
#[derive(Debug)]
pub struct QuicRaw(pub FrameStream);

impl RawClient for QuicRaw {
    async fn send_text(&mut self, text: String) {
        let _ = self.0.send_frame(text.as_bytes()).await;
    }

    async fn next(&mut self) -> Option<Seen> {
        match self.0.recv_frame().await {
            Ok(frame) => Some(Seen::Frame(serde_json::from_slice(&frame).expect("server frames are JSON"))),
            Err(ClientError::Closed { code, .. }) => Some(Seen::Closed(code)),
            Err(_) => None,
        }
    }
}

impl Harness for QuicHarness {
    type Client = QuicRaw;

    async fn connect(&self, token: Option<String>) -> QuicRaw {
        self.open(token.as_deref()).await
    }

    fn tokens(&self) -> &TestTokens {
        &self.tokens
    }

    fn max_frame_bytes(&self) -> usize {
        self.max_frame
    }
}
