//! `herald-server serve`: the hub on the configured store (SQLite by default, or memory), served over WebSocket,
//! with a health route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use herald::core::Hub;
use herald::core::Store;
use herald::memory::MemoryStore;
use herald::sqlite::{SqliteConfig, SqliteStore};
use herald::websocket::WebSocketTransport;

use crate::Error;
use crate::config::{MEMORY_STORE, SQLITE_STORE, ServerConfig, Sources};

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
fn routes(hub: Hub) -> Router {
    Router::new().route(HEALTH_PATH, get(health)).with_state(hub)
}

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

/// Runs the server until SIGINT or SIGTERM.
pub(crate) async fn run(sources: &Sources<'_>) -> Result<(), Error> {
    let config = ServerConfig::load(sources)?;
    let built = crate::auth::build(&config.auth, true)?;
    let (store, sqlite) = open_store(&config).await?;
    let hub = Hub::builder(store, Arc::new(built.auth)).config(config.hub.clone()).build();

    let shutdown = shutdown_signal()?;
    let transport =
        WebSocketTransport::new(config.listen, config.websocket.ws_config()).with_routes(routes(hub.clone()));
    let bound = transport.bind().await?;
    let addr = bound.local_addr().map_err(|e| format!("cannot read the bound address: {e}"))?;
    let ws_path = &config.websocket.path;
    tracing::info!(%addr, store = %config.store, ws = %ws_path, health = HEALTH_PATH, "herald-server listening");
    if let Some(secret) = &built.dev_secret {
        tracing::warn!("no JWT key configured: using a generated development secret (see below)");
        let token = crate::token::mint_with(secret.as_bytes(), "alice", None, DEV_TOKEN_TTL, &config.auth)?;
        eprintln!("{}", dev_banner(&secret.0, &token, connectable(addr), ws_path, sources.file));
    }
    // A machine-readable line on stdout (logs go to stderr): scripts and tests read the port from it.
    println!("listening on {addr}");

    let signal = async move {
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
    };
    bound.serve(hub.clone(), Box::pin(signal)).await?;
    if let Some(sqlite) = sqlite {
        // Commits what is queued and closes the database (the hub may still hold the store).
        sqlite.close().await;
    }
    tracing::info!(sessions_left = hub.session_count(), "stopped");
    Ok(())
}

/// Opens the configured store; for SQLite also returns it typed, to close it at shutdown.
async fn open_store(config: &ServerConfig) -> Result<(Arc<dyn Store>, Option<Arc<SqliteStore>>), Error> {
    match config.store.as_str() {
        MEMORY_STORE => Ok((Arc::new(MemoryStore::new()), None)),
        SQLITE_STORE => {
            let path = config.database_path();
            let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path)).await?);
            tracing::info!(database = %path.display(), "SQLite store open");
            Ok((store.clone(), Some(store)))
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
