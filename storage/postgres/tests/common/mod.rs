//! Shared test helpers: the test database, one fresh schema per test, and a TCP proxy that can be cut.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_postgres::PgConfig;
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// The variable naming the test database.
pub const TEST_URL_ENV: &str = "HERALD_TEST_DATABASE_URL";

/// The test database's URL, or `None` after a loud SKIP message when it is unset (a panic instead when
/// `HERALD_REQUIRE_SERVICES=1`).
pub fn database_url(test: &str) -> Option<String> {
    match std::env::var(TEST_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("HERALD_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("{TEST_URL_ENV} is not set but HERALD_REQUIRE_SERVICES=1: test {test} needs PostgreSQL");
            }
            eprintln!(
                "\n*** SKIP {test}: {TEST_URL_ENV} is not set, so this PostgreSQL test did not run. ***\n\
                 *** Set it, e.g. {TEST_URL_ENV}=postgres://postgres@127.0.0.1:5432/test ***\n"
            );
            None
        }
    }
}

/// A schema of its own for one test: created by the first store that connects, dropped (with everything in it)
/// when this guard is dropped, also when the test panics.
pub struct TestSchema {
    pub url: String,
    pub name: String,
}

impl TestSchema {
    /// A fresh schema name on the test database; `None` (after SKIP) without one.
    pub fn new(test: &str) -> Option<Self> {
        let url = database_url(test)?;
        let name = format!("herald_test_{}", uuid::Uuid::now_v7().simple());
        Some(Self { url, name })
    }

    /// A configuration for this schema with small pools and short timeouts.
    pub fn config(&self) -> PgConfig {
        PgConfig {
            pool_size: 4,
            writers: 2,
            acquire_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
            ..PgConfig::new(&self.url).with_schema(&self.name)
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop may run inside a runtime (or while unwinding): do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let mut conn = PgConnectOptions::from_str(&url).expect("a valid URL").connect().await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")))
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test schema {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test schema {} panicked", self.name),
        }
    }
}

/// `url` with its host and port replaced by `addr`.
pub fn with_addr(url: &str, addr: SocketAddr) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("{}{userinfo}{addr}{}", &url[..scheme_end], &rest[authority_end..])
}

/// `url` with TLS turned off (`sslmode=disable`), so that the proxy sees the protocol's messages.
pub fn plaintext(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=disable")
}

/// The host and port of `url`.
pub fn upstream(url: &str) -> String {
    let options = PgConnectOptions::from_str(url).expect("a valid URL");
    format!("{}:{}", options.get_host(), options.get_port())
}

/// A TCP proxy in front of PostgreSQL that a test can cut (every connection closed, new ones refused) and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    upstream: String,
    state: Arc<Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    accept: Option<JoinHandle<()>>,
    connections: Vec<AbortHandle>,
    /// A fault for the next `COMMIT` any connection sends.
    commit_fault: Option<CommitFault>,
}

/// How the proxy breaks the next `COMMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitFault {
    /// The connection closes before the `COMMIT` reaches the server: the transaction rolls back.
    DropBeforeCommit,
    /// The `COMMIT` reaches the server and commits, but the connection closes before the reply reaches the
    /// client.
    DropReply,
}

impl Proxy {
    /// Starts a proxy on a free local port forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let proxy = Self { addr, upstream, state: Arc::new(Mutex::new(ProxyState::default())) };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (state, upstream) = (Arc::clone(&self.state), self.upstream.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let upstream = upstream.clone();
                let conn_state = Arc::clone(&state);
                let task = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    forward(client, server, conn_state).await;
                });
                state.lock().expect("proxy state").connections.push(task.abort_handle());
            }
        });
        self.state.lock().expect("proxy state").accept = Some(accept);
    }

    /// Breaks the next `COMMIT` any connection sends (once).
    pub fn fail_next_commit(&self, fault: CommitFault) {
        self.state.lock().expect("proxy state").commit_fault = Some(fault);
    }

    /// Whether the fault set with [`Self::fail_next_commit`] has struck.
    pub fn commit_fault_pending(&self) -> bool {
        self.state.lock().expect("proxy state").commit_fault.is_some()
    }

    /// Closes every connection and stops listening (new connections are refused).
    pub async fn cut(&self) {
        let (accept, connections) = {
            let mut state = self.state.lock().expect("proxy state");
            (state.accept.take(), std::mem::take(&mut state.connections))
        };
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        for c in connections {
            c.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(self.addr).expect("re-bind the proxy's port");
        let listener = socket.listen(128).expect("listen");
        self.serve(listener);
    }
}

/// Copies bytes both ways until either side closes, applying a pending commit fault.
async fn forward(client: TcpStream, server: TcpStream, state: Arc<Mutex<ProxyState>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    // Set when this connection forwarded a COMMIT whose reply must be swallowed.
    let swallow_reply = Arc::new(AtomicBool::new(false));
    let swallow = Arc::clone(&swallow_reply);
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if chunk.windows(6).any(|w| w == b"COMMIT") {
                let fault = state.lock().expect("proxy state").commit_fault.take();
                match fault {
                    Some(CommitFault::DropBeforeCommit) => return,
                    Some(CommitFault::DropReply) => swallow.store(true, Ordering::SeqCst),
                    None => {}
                }
            }
            if server_tx.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if swallow_reply.load(Ordering::SeqCst) {
                // The server answered the COMMIT: drop the answer and the connection.
                return;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}
