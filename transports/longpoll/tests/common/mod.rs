//! Shared test helpers: a hub, a server on loopback (cleartext or TLS), HTTP clients for each HTTP version.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald_core::testkit::protocol::TestTokens;
use herald_core::transport::TransportError;
use herald_core::{Hub, HubConfig};
use herald_longpoll::{LongPollTransport, LpConfig, TlsSettings};
use herald_memory::MemoryStore;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A hub on the memory store authenticating the testkit's tokens.
pub fn hub(config: HubConfig) -> (Hub, TestTokens) {
    let tokens = TestTokens::default();
    let hub = Hub::builder(Arc::new(MemoryStore::new()), Arc::new(tokens.auth())).config(config).build();
    (hub, tokens)
}

/// A self-signed certificate for 127.0.0.1 and localhost, written to PEM files: (cert path, key path, cert PEM).
pub fn certificate() -> (PathBuf, PathBuf, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("a self-signed certificate");
    let cert_pem = ck.cert.pem();
    let key_pem = ck.signing_key.serialize_pem();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "herald-lp-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &cert_pem).expect("write the certificate");
    std::fs::write(&key, key_pem).expect("write the key");
    (cert, key, cert_pem)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A running long-poll server.
pub struct Server {
    pub addr: SocketAddr,
    /// The certificate's PEM when serving TLS.
    pub cert_pem: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), TransportError>>>,
}

impl Server {
    /// Starts a server for `hub` on an ephemeral loopback port.
    pub async fn start(hub: Hub, config: LpConfig, tls: bool) -> Self {
        let mut transport = LongPollTransport::new(SocketAddr::from(([127, 0, 0, 1], 0)), config);
        let mut cert_pem = None;
        if tls {
            let (cert, key, pem) = certificate();
            transport = transport.with_tls(TlsSettings::from_pem_files(&cert, &key).expect("TLS settings"));
            cert_pem = Some(pem);
        }
        let bound = transport.bind().await.expect("bind");
        let addr = bound.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(
            hub,
            Box::pin(async move {
                let _ = rx.await;
            }),
        ));
        Self { addr, cert_pem, stop: Some(tx), task: Some(task) }
    }

    /// The endpoints' base URL.
    pub fn base(&self) -> String {
        let scheme = if self.cert_pem.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/lp", self.addr)
    }

    /// A client speaking HTTP/2: prior knowledge in cleartext, ALPN over TLS.
    pub fn h2(&self) -> reqwest::Client {
        let b = reqwest::Client::builder();
        match &self.cert_pem {
            Some(pem) => b.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem")]),
            None => b.http2_prior_knowledge(),
        }
        .build()
        .expect("client")
    }

    /// A client speaking HTTP/1.1 only.
    pub fn h1(&self) -> reqwest::Client {
        let b = reqwest::Client::builder().http1_only();
        match &self.cert_pem {
            Some(pem) => b.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem")]),
            None => b,
        }
        .build()
        .expect("client")
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(&mut self) -> Result<(), TransportError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("the server task"),
            None => Ok(()),
        }
    }
}

/// Waits (bounded) until `f` holds, checking every 10 ms.
pub async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
