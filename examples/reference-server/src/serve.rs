//! `herald-server serve`: the hub on the configured store (SQLite by default, PostgreSQL or memory), served over
//! WebSocket with a health route, over native QUIC and WebTransport when `[quic]` enables it, and over HTTP
//! long-poll / SSE when `[longpoll]` enables it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use herald::core::{Hub, Store};
use herald::longpoll::{BoundLongPoll, LongPollTransport, TlsSettings};
use herald::memory::MemoryStore;
use herald::postgres::PgStore;
use herald::quic::{BoundQuic, QuicTransport, ServerCertificate};
use herald::sqlite::{SqliteConfig, SqliteStore};
use herald::websocket::WebSocketTransport;
use tokio::sync::watch;

use crate::Error;
use crate::config::{MEMORY_STORE, POSTGRES_STORE, SQLITE_STORE, ServerConfig, Sources};
use crate::telemetry::Telemetry;

/// Lifetime of the sample token printed in development mode.
const DEV_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The health route, on the WebSocket listener.
pub(crate) const HEALTH_PATH: &str = "/healthz";

/// `GET /healthz`: `{"status":"ok","sessions":N}`.
async fn health(State(hub): State<Hub>) -> impl IntoResponse {
    let body = serde_json::json!({ "status": "ok", "sessions": hub.session_count() }).to_string();
    ([(CONTENT_TYPE, "application/json")], body)
}

/// The routes served next to the WebSocket endpoint.
fn routes(hub: Hub, demo: Option<DemoConfig>) -> Router {
    let router = Router::new().route(HEALTH_PATH, get(health)).with_state(hub);
    match demo {
        Some(demo) => router.merge(demo_routes(demo)),
        None => router,
    }
}

/// The demo page: a browser page that connects over WebSocket and WebTransport and exchanges messages.
const DEMO_HTML: &str = include_str!("../demo/index.html");

/// The demo page's path.
pub(crate) const DEMO_PATH: &str = "/demo/";

/// What the demo page learns from `GET /demo/config.json`.
#[derive(Debug, Clone, serde::Serialize)]
struct DemoConfig {
    /// The WebSocket path on this listener.
    websocket_path: String,
    /// `https://host:port/wt`, when WebTransport is served.
    webtransport_url: Option<String>,
    /// The SHA-256 of the development certificate (for `serverCertificateHashes`), when one is used.
    cert_sha256: Option<Vec<u8>>,
}

fn demo_routes(config: DemoConfig) -> Router {
    let body = serde_json::to_string(&config).unwrap_or_else(|_| "{}".to_owned());
    Router::new().route(DEMO_PATH, get(|| async { ([(CONTENT_TYPE, "text/html; charset=utf-8")], DEMO_HTML) })).route(
        "/demo/config.json",
        get(move || {
            let body = body.clone();
            async move { ([(CONTENT_TYPE, "application/json")], body) }
        }),
    )
}

/// The QUIC transport, bound, if enabled.
fn bind_quic(config: &ServerConfig) -> Result<Option<BoundQuic>, Error> {
    let section = &config.quic;
    if !section.enabled {
        return Ok(None);
    }
    let certificate = match section.cert_paths() {
        Some((cert, key)) => ServerCertificate::from_pem_files(&cert, &key)?,
        None => ServerCertificate::self_signed_dev(DEV_CERT_VALIDITY)?,
    };
    let bound = QuicTransport::new(section.listen, section.quic_config(), certificate).bind()?;
    Ok(Some(bound))
}

/// Validity of the generated development certificate (browsers accept at most 14 days for pinned hashes).
const DEV_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(13 * 24 * 3600);

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM. The handlers are installed on the call, so
/// that a signal arriving right after start-up is not lost.
fn shutdown_signal() -> Result<impl Future<Output = &'static str> + Send + 'static, Error> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
        let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

/// An address clients on this machine can connect to (loopback when listening on all interfaces).
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

/// Quotes `s` for a POSIX shell when it contains anything beyond a safe set of characters.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:@%,".contains(c);
    if !s.is_empty() && s.chars().all(safe) { s.to_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// The command that runs this binary, as the user can type it.
fn self_command() -> String {
    std::env::current_exe().ok().and_then(|p| p.to_str().map(shell_quote)).unwrap_or_else(|| "herald-server".to_owned())
}

/// The development banner: the generated secret, how to mint a token and how to connect.
fn dev_banner(secret: &str, token: &str, addr: SocketAddr, ws_path: &str, config_file: Option<&Path>) -> String {
    let exe = self_command();
    // The config file may set jwt_issuer / jwt_audience, which the token must carry.
    let config = config_file.map(|p| format!(" --config {}", shell_quote(&p.to_string_lossy()))).unwrap_or_default();
    let mint = format!("{exe} token alice --secret {secret}{config}");
    let url = format!("ws://{addr}{ws_path}");
    let rule = "-".repeat(100);
    format!(
        "{rule}
Herald development mode: no JWT key is configured (auth.jwt_hs256_secret or auth.jwt_keys), so a random HS256
secret was generated for this run only (tokens stop working when the server restarts):

    {secret}

A token for user \"alice\", valid 24 h:

    {token}

Mint tokens for any user (--ttl 1h, --device phone):

    {mint}

Connect with websocat (https://github.com/vi/websocat), then type {{\"type\":\"ping\",\"id\":1}}:

    websocat \"{url}?token=$({mint})\"

Or from a browser console / Node.js 22+:

    const ws = new WebSocket(\"{url}?token={token}\"); ws.onmessage = (e) => console.log(e.data); ws.onopen = () => ws.send(JSON.stringify({{type: \"ping\", id: 1}}));

Health: curl http://{addr}{HEALTH_PATH}
For stable tokens set auth.jwt_hs256_secret (>= 32 bytes) in a --config file or HERALD_AUTH__JWT_HS256_SECRET.
{rule}"
    )
}

/// Binds the long-poll transport when `[longpoll]` enables it.
async fn bind_longpoll(config: &ServerConfig) -> Result<Option<BoundLongPoll>, Error> {
    let section = &config.longpoll;
    if !section.enabled {
        return Ok(None);
    }
    let mut transport = LongPollTransport::new(section.listen, section.lp_config());
    if let Some((cert, key)) = section.tls_paths() {
        let tls = TlsSettings::from_pem_files(&cert, &key)
            .map_err(|e| format!("longpoll TLS ({}, {}): {e}", cert.display(), key.display()))?;
        transport = transport.with_tls(tls);
    }
    Ok(Some(transport.bind().await?))
}

/// The QUIC banner for a development certificate: its hash in the forms browsers and clients want.
fn quic_banner(addr: SocketAddr, wt_path: Option<&str>, hash: &herald::quic::CertHash) -> String {
    let rule = "-".repeat(100);
    let web = match wt_path {
        Some(path) => format!(
            "
WebTransport from a browser (Chromium 97+, Firefox 114+):

    const wt = new WebTransport(\"https://{addr}{path}?token=<token>\", {{ serverCertificateHashes: [{{ algorithm: \"sha-256\", value: new Uint8Array({js}) }}] }});
",
            js = hash.js_array()
        ),
        None => String::new(),
    };
    format!(
        "{rule}
QUIC on udp://{addr} (native ALPN herald/1) with a generated development certificate (self-signed, 13 days,
localhost / 127.0.0.1 / ::1). Clients pin it by its SHA-256:

    hex:    {hex}
    base64: {b64}
{web}{rule}",
        hex = hash.hex(),
        b64 = hash.base64(),
    )
}

/// Runs the server until SIGINT or SIGTERM. `telemetry` is installed already (before the hub is built).
pub(crate) async fn run(config: ServerConfig, sources: &Sources<'_>, telemetry: &Telemetry) -> Result<(), Error> {
    let built = crate::auth::build(&config.auth, true)?;
    let (store, closer) = open_store(&config).await?;
    let hub = Hub::builder(store, Arc::new(built.auth))
        .config(config.hub.clone())
        .trace_parent_linker(crate::telemetry::linker())
        .build();
    telemetry.spawn_upkeep();

    let shutdown = shutdown_signal()?;
    let quic = bind_quic(&config)?;
    let mut demo = None;
    if let Some(q) = &quic {
        let quic_addr = q.local_addr().map_err(|e| format!("cannot read the bound QUIC address: {e}"))?;
        let cert = q.certificate();
        let dev_hash = cert.is_self_signed_dev().then(|| cert.leaf_hash());
        let wt_path = config.quic.webtransport.then_some(config.quic.webtransport_path.as_str());
        tracing::info!(addr = %quic_addr, webtransport = ?wt_path, zero_rtt = config.quic.zero_rtt, "quic listening");
        if let Some(hash) = dev_hash {
            eprintln!("{}", quic_banner(connectable(quic_addr), wt_path, &hash));
            println!("quic certificate sha256 {hash}");
        }
        // Machine-readable, before the `listening on` line that scripts wait for.
        println!("quic listening on {quic_addr}");
        if config.quic.demo_page {
            demo = Some(DemoConfig {
                websocket_path: config.websocket.path.clone(),
                webtransport_url: wt_path.map(|p| format!("https://{}{p}", connectable(quic_addr))),
                cert_sha256: dev_hash.map(|h| h.as_bytes().to_vec()),
            });
        }
    }
    let transport = WebSocketTransport::new(config.listen, config.websocket.ws_config())
        .with_routes(routes(hub.clone(), demo).merge(telemetry.routes()));
    let bound = transport.bind().await?;
    let addr = bound.local_addr().map_err(|e| format!("cannot read the bound address: {e}"))?;
    let ws_path = &config.websocket.path;
    let metrics = telemetry.metrics_path().unwrap_or("off");
    tracing::info!(%addr, store = %config.store, ws = %ws_path, health = HEALTH_PATH, metrics, "herald-server listening");
    if let Some(secret) = &built.dev_secret {
        tracing::warn!("no JWT key configured: using a generated development secret (see below)");
        let token = crate::token::mint_with(secret.as_bytes(), "alice", None, DEV_TOKEN_TTL, &config.auth)?;
        eprintln!("{}", dev_banner(&secret.0, &token, connectable(addr), ws_path, sources.file));
    }
    if config.quic.enabled && config.quic.demo_page {
        eprintln!("Demo page: http://{}{DEMO_PATH}", connectable(addr));
    }
    // A machine-readable line on stdout (logs go to stderr): scripts and tests read the port from it.
    println!("listening on {addr}");
    let longpoll = bind_longpoll(&config).await?;
    if let Some(lp) = &longpoll {
        let lp_addr = lp.local_addr().map_err(|e| format!("cannot read the long-poll address: {e}"))?;
        let scheme = if config.longpoll.tls_paths().is_some() { "https" } else { "http" };
        tracing::info!(addr = %lp_addr, prefix = %config.longpoll.prefix, "long-poll transport listening");
        println!("longpoll listening on {scheme}://{lp_addr}{}", config.longpoll.prefix);
    }
    // One signal stops every transport.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let name = shutdown.await;
        tracing::info!(signal = name, "shutting down: no new connections, closing sessions (1001)");
        // A second signal while draining stops at once.
        if let Ok(second) = shutdown_signal() {
            tokio::spawn(async move {
                let name = second.await;
                tracing::warn!(signal = name, "second signal: exiting without waiting for sessions");
                std::process::exit(1);
            });
        }
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| -> herald::core::transport::Shutdown {
        Box::pin(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })
    };
    let longpoll = longpoll.map(|lp| tokio::spawn(lp.serve(hub.clone(), stopped(stop_rx.clone()))));
    match quic {
        Some(quic) => {
            let (ws, quic) = tokio::join!(
                bound.serve(hub.clone(), stopped(stop_rx.clone())),
                quic.serve(hub.clone(), stopped(stop_rx))
            );
            ws?;
            quic?;
        }
        None => bound.serve(hub.clone(), stopped(stop_rx)).await?,
    }
    if let Some(task) = longpoll {
        task.await.map_err(|e| format!("the long-poll transport panicked: {e}"))??;
    }
    // Commits what is queued and closes the database (the hub may still hold the store).
    closer.close().await;
    tracing::info!(sessions_left = hub.session_count(), "stopped");
    Ok(())
}

/// The opened store, kept typed so that shutdown can close it: a durable store commits what is queued and
/// closes its connections.
enum StoreCloser {
    /// Nothing to close.
    Memory,
    /// The embedded SQLite store.
    Sqlite(Arc<SqliteStore>),
    /// The PostgreSQL store.
    Postgres(Arc<PgStore>),
}

impl StoreCloser {
    async fn close(&self) {
        match self {
            Self::Memory => {}
            Self::Sqlite(store) => store.close().await,
            Self::Postgres(store) => store.close().await,
        }
    }
}

/// Opens the configured store.
///
/// SQLite: creates the data directory and the database file on first start, and takes the directory's lock (a
/// second server on the same directory refuses to start).
///
/// PostgreSQL: connects (waiting at most `postgres.acquire_timeout_ms`), creates the schema and applies the
/// migrations. If the database cannot be reached at start, the server exits with the reason instead of retrying
/// (a process supervisor restarts it). Once running, it keeps serving through database outages: sends get
/// `unavailable` meanwhile, and the store reconnects when the database is back.
async fn open_store(config: &ServerConfig) -> Result<(Arc<dyn Store>, StoreCloser), Error> {
    match config.store.as_str() {
        MEMORY_STORE => Ok((Arc::new(MemoryStore::new()), StoreCloser::Memory)),
        SQLITE_STORE => {
            let path = config.database_path();
            let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path)).await?);
            tracing::info!(database = %path.display(), "SQLite store open");
            Ok((store.clone(), StoreCloser::Sqlite(store)))
        }
        POSTGRES_STORE => {
            let store = PgStore::connect(config.postgres.pg_config())
                .await
                .map_err(|e| format!("cannot open the PostgreSQL store: {e}"))?;
            let store = Arc::new(store);
            tracing::info!(schema = %config.postgres.schema, "PostgreSQL store open");
            Ok((store.clone(), StoreCloser::Postgres(store)))
        }
        other => Err(format!("store {other:?} is not available in this build").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/herald-server"), "/usr/bin/herald-server");
        assert_eq!(shell_quote("/my dir/it's"), r"'/my dir/it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn connectable_addresses() {
        let a: SocketAddr = "0.0.0.0:80".parse().expect("addr");
        assert_eq!(connectable(a).to_string(), "127.0.0.1:80");
        let a: SocketAddr = "[::]:80".parse().expect("addr");
        assert_eq!(connectable(a).to_string(), "[::1]:80");
        let a: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        assert_eq!(connectable(a), a);
    }

    #[test]
    fn banner_has_copy_pasteable_commands() {
        let text = dev_banner("s3cr3t", "tok.en.x", "127.0.0.1:8080".parse().expect("addr"), "/ws", None);
        assert!(text.contains("token alice --secret s3cr3t"), "{text}");
        assert!(text.contains("websocat \"ws://127.0.0.1:8080/ws?token=$("), "{text}");
        assert!(text.contains("new WebSocket(\"ws://127.0.0.1:8080/ws?token=tok.en.x\")"), "{text}");
    }
}
