//! The standalone server's connections. A valid WebSocket upgrade on the configured path is answered right here on
//! the TCP stream (its head parsed with `httparse`), and the connection goes to the driver as a plain
//! `TcpStream`; every other request — other routes, HTTP/2, requests this parser does not take — goes to hyper and
//! the axum router, with the bytes already read replayed in front of the stream.
//!
//! Why not hyper for the upgrades too: it costs each connection a dispatcher, an 8 KiB read buffer, the request
//! and response objects, a task for the upgrade and a boxed upgraded stream (64 bytes kept for the connection's
//! life). Answering the upgrade directly is the cheaper handshake and the smaller idle connection
//! (`docs/benchmarks.md`, scenario A).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use herald_core::Hub;
use herald_core::auth::Credentials;
use herald_core::driver;
use herald_core::trace_context::TraceParent;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::stream::WsStream;
use crate::{UpgradeQuery, WsConnection, max_payload};

/// Most bytes of a request head parsed here; a longer head goes to hyper.
const MAX_HEAD: usize = 8 * 1024;
/// Most headers parsed here; a request with more goes to hyper.
const MAX_HEADERS: usize = 32;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What every connection of one server shares.
pub(crate) struct Server {
    pub(crate) hub: Hub,
    /// The WebSocket path.
    pub(crate) path: String,
    /// Everything else.
    pub(crate) app: Router,
    pub(crate) http: auto::Builder<TokioExecutor>,
}

impl Server {
    pub(crate) fn new(hub: Hub, path: String, app: Router) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        // As `axum::serve`: WebSocket-over-HTTP/2 requests may be made (the route answers them).
        http.http2().enable_connect_protocol();
        Self { hub, path, app, http }
    }
}

/// Serves one accepted connection: answers a WebSocket upgrade and hands the connection to the driver in a task
/// of its own, or serves the connection with hyper (watched by `watcher` for a graceful shutdown).
pub(crate) async fn connection(mut tcp: TcpStream, server: Arc<Server>, watcher: Watcher) {
    let mut head = Vec::new();
    let parsed = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp, &mut head, &server.path)).await {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(e)) => {
            tracing::trace!(error = %e, "reading a request head failed");
            return;
        }
        Err(_) => {
            tracing::trace!("no request head within the timeout");
            return;
        }
    };
    match parsed {
        Head::Upgrade { upgrade, len } => {
            if let Err(e) = tcp.write_all(upgrade.response().as_bytes()).await {
                tracing::trace!(error = %e, "writing the upgrade response failed");
                return;
            }
            let leftover = &head[len..];
            let conn = WsConnection {
                socket: WsStream::with_received(tcp, max_payload(&server.hub), leftover),
                trace_parent: upgrade.trace_parent.map(Box::new),
            };
            drop(head);
            // A task of its own: this one's state (the server, the watcher, the head) is not kept for the
            // connection's life.
            tokio::spawn(driver::run(server.hub.clone(), conn, upgrade.token.map(Credentials::Bearer)));
        }
        Head::Other => {
            let io = TokioIo::new(Replay { head, at: 0, io: tcp });
            let conn = server
                .http
                .serve_connection_with_upgrades(io, TowerToHyperService::new(server.app.clone()))
                .into_owned();
            // Boxed: hyper's connection state is large, and most connections here are WebSocket upgrades.
            if let Err(e) = Box::pin(watcher.watch(conn)).await {
                tracing::trace!(error = %e, "HTTP connection failed");
            }
        }
    }
}

/// A request head, read and classified.
enum Head {
    /// A valid WebSocket upgrade on the path; the head is `len` bytes long (bytes after it are the client's first
    /// frames).
    Upgrade { upgrade: Upgrade, len: usize },
    /// Anything else: for hyper.
    Other,
}

/// Reads until the head is complete (or cannot be taken here).
async fn read_head(tcp: &mut TcpStream, head: &mut Vec<u8>, path: &str) -> io::Result<Head> {
    head.reserve(1024);
    loop {
        if tcp.read_buf(head).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(head) {
            Ok(httparse::Status::Complete(len)) => {
                return Ok(match Upgrade::of(&request, path) {
                    Some(upgrade) => Head::Upgrade { upgrade, len },
                    None => Head::Other,
                });
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
            // Too long, too many headers, not HTTP/1 (an HTTP/2 preface), malformed: hyper decides.
            Ok(httparse::Status::Partial) | Err(_) => return Ok(Head::Other),
        }
    }
}

/// A valid upgrade request on the WebSocket path.
struct Upgrade {
    accept: String,
    token: Option<String>,
    trace_parent: Option<TraceParent>,
}

impl Upgrade {
    /// The upgrade `request` asks for, when it is a valid one (RFC 6455 section 4.2.1) on `path` that the route's
    /// handler would accept too; `None` leaves the request to hyper and the router, which answer it (or refuse it,
    /// counting the refusal) the same way as before.
    fn of(request: &httparse::Request<'_, '_>, path: &str) -> Option<Self> {
        if request.method != Some("GET") || request.version != Some(1) {
            return None;
        }
        let target = request.path?;
        let (target_path, query) = match target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (target, ""),
        };
        if target_path != path {
            return None;
        }
        // The first of each header counts, as `HeaderMap::get` does in the route's handler.
        let header = |name: &str| request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
        let connection_upgrade = request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        if !connection_upgrade
            || !header("upgrade")?.eq_ignore_ascii_case(b"websocket")
            || header("sec-websocket-version")? != b"13"
        {
            return None;
        }
        let accept = tungstenite::handshake::derive_accept_key(header("sec-websocket-key")?);
        let query: UpgradeQuery = serde_urlencoded::from_str(query).ok()?;
        let bearer = header("authorization").and_then(header_str).and_then(crate::bearer_token);
        let token = bearer.or(query.token).filter(|t| !t.is_empty());
        let trace_parent = header("traceparent").and_then(header_str).and_then(TraceParent::parse);
        Some(Self { accept, token, trace_parent })
    }

    fn response(&self) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-accept: {}\r\n\r\n",
            self.accept
        )
    }
}

/// A header value as text, when it is visible ASCII (what `HeaderValue::to_str` accepts).
fn header_str(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)) { std::str::from_utf8(value).ok() } else { None }
}

/// A stream that first replays the bytes already read from it.
struct Replay {
    head: Vec<u8>,
    at: usize,
    io: TcpStream,
}

impl AsyncRead for Replay {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.at);
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Option<Upgrade> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        assert!(matches!(request.parse(head.as_bytes()), Ok(httparse::Status::Complete(_))), "{head}");
        Upgrade::of(&request, "/ws")
    }

    const VALID: &str = "GET /ws?token=a%2Bb HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\
                         Upgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn a_valid_upgrade_is_taken_with_its_token() {
        let upgrade = parse(VALID).expect("taken");
        assert_eq!(upgrade.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(upgrade.token.as_deref(), Some("a+b"));
        assert!(upgrade.response().ends_with("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
    }

    #[test]
    fn the_bearer_header_wins_over_the_query() {
        let head = VALID.replace("Host: x", "Host: x\r\nAuthorization: Bearer  tok ");
        assert_eq!(parse(&head).expect("taken").token.as_deref(), Some("tok"));
    }

    #[test]
    fn anything_else_is_left_to_the_router() {
        for head in [
            VALID.replace("GET", "POST"),
            VALID.replace("/ws?", "/other?"),
            VALID.replace("HTTP/1.1", "HTTP/1.0"),
            VALID.replace("keep-alive, Upgrade", "keep-alive"),
            VALID.replace("Upgrade: WebSocket", "Upgrade: h2c"),
            VALID.replace("Version: 13", "Version: 8"),
            VALID.replace("Sec-WebSocket-Key", "X-Key"),
            VALID.replace("token=a%2Bb", "token=1&token=2"),
        ] {
            assert!(parse(&head).is_none(), "{head}");
        }
    }
}
