//! An HTTP client for the long-poll binding (feature `client`), on reqwest: open a session, post commands,
//! long-poll or stream SSE, acknowledge, delete.
//!
//! ```no_run
//! # async fn demo() -> Result<(), herald_longpoll::client::ClientError> {
//! use std::time::Duration;
//! use herald_longpoll::client::LpClient;
//!
//! let client = LpClient::new("http://127.0.0.1:8081/lp")?;
//! let mut opened = client.open(Some("<token>")).await?;
//! assert_eq!(opened.events[0].event["type"], "hello");
//! opened.session.send(r#"{"type":"ping","id":1}"#).await?;
//! // Each poll acknowledges what the previous ones returned.
//! let batch = opened.session.poll(Duration::from_secs(20)).await?;
//! for e in &batch.events {
//!     println!("#{}: {}", e.n, e.event);
//! }
//! opened.session.delete().await?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Version};
use serde::Deserialize;
use serde_json::Value;

/// What a client request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not complete (connection refused, reset, timed out, TLS failure, ...).
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with an error status and a JSON error body.
    #[error("HTTP {status}: {code}: {message}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The protocol error code (`not_found`, `unauthenticated`, `too_large`, ...).
        code: String,
        /// The message.
        message: String,
        /// The whole body (it may carry `close`, `events`, `accepted`, `retry_after_ms`).
        body: Value,
    },
    /// The server's answer could not be understood.
    #[error("unexpected answer: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The protocol error code of an error answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Status { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The close reported with an error answer (a refused open, commands to a closed session).
    pub fn close(&self) -> Option<Close> {
        match self {
            Self::Status { body, .. } => serde_json::from_value(body.get("close")?.clone()).ok(),
            _ => None,
        }
    }

    /// The events carried by an error answer (a refused open carries the `error` event).
    pub fn events(&self) -> Vec<Event> {
        match self {
            Self::Status { body, .. } => {
                body.get("events").and_then(|e| serde_json::from_value(e.clone()).ok()).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }
}

/// One numbered event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    /// The per-session event number.
    pub n: u64,
    /// The protocol event (`hello`, `reply`, `message`, ...).
    pub event: Value,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Close {
    /// The close code (the WebSocket code table of `docs/protocol.md` §8).
    pub code: u16,
    /// A short reason.
    pub reason: String,
}

/// The answer to a poll.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The events after the acknowledged number, in order.
    pub events: Vec<Event>,
    /// Set when the session has closed (after the events).
    pub close: Option<Close>,
    /// The HTTP version the answer came over.
    pub version: Version,
}

#[derive(Deserialize)]
struct BatchBody {
    events: Vec<Event>,
    #[serde(default)]
    close: Option<Close>,
}

#[derive(Deserialize)]
struct OpenBody {
    session: String,
    linger_ms: u64,
    events: Vec<Event>,
    #[serde(default)]
    close: Option<Close>,
}

/// How a client means to read a session's events, announced when it opens the session
/// ([`LpClient::open_reading`]). It only chooses the `transport` label of the server's connection metrics
/// (`longpoll` or `sse`); either way of reading works on any session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Long-poll ([`ClientSession::poll`]).
    #[default]
    Poll,
    /// Server-Sent Events ([`ClientSession::sse`]).
    Sse,
}

/// A long-poll client for one server.
#[derive(Debug, Clone)]
pub struct LpClient {
    http: reqwest::Client,
    base: String,
}

impl LpClient {
    /// A client for the endpoints under `base` (e.g. `https://chat.example.com/lp`), with a default reqwest
    /// client (HTTP/2 by ALPN over TLS, HTTP/1.1 in cleartext).
    pub fn new(base: impl Into<String>) -> Result<Self, ClientError> {
        Ok(Self::with_http(reqwest::Client::builder().build()?, base))
    }

    /// A client using `http` (for HTTP/2 prior knowledge, custom roots, timeouts, ...).
    pub fn with_http(http: reqwest::Client, base: impl Into<String>) -> Self {
        Self { http, base: base.into().trim_end_matches('/').to_owned() }
    }

    /// The endpoints' base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The underlying HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Opens a session, presenting `token` as `Authorization: Bearer`. A refused token is
    /// [`ClientError::Status`] 401 whose body carries the `error` event and the close (4001, 4002).
    pub async fn open(&self, token: Option<&str>) -> Result<Opened, ClientError> {
        self.open_reading(token, ReadMode::Poll).await
    }

    /// Like [`open`](Self::open), announcing how the session will be read (`?reader=sse` for
    /// [`ReadMode::Sse`]; nothing for [`ReadMode::Poll`]).
    pub async fn open_reading(&self, token: Option<&str>, mode: ReadMode) -> Result<Opened, ClientError> {
        let url = match mode {
            ReadMode::Poll => format!("{}/sessions", self.base),
            ReadMode::Sse => format!("{}/sessions?reader=sse", self.base),
        };
        let mut req = self.http.post(url);
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let res = req.send().await?;
        let version = res.version();
        let body: OpenBody = decode(res, StatusCode::CREATED).await?;
        let received = body.events.last().map_or(0, |e| e.n);
        let session = ClientSession {
            http: self.http.clone(),
            url: format!("{}/sessions/{}", self.base, body.session),
            id: body.session,
            received,
            linger: Duration::from_millis(body.linger_ms),
        };
        Ok(Opened { session, events: body.events, close: body.close, version })
    }
}

/// A freshly opened session and its first events.
#[derive(Debug)]
pub struct Opened {
    /// The session.
    pub session: ClientSession,
    /// The first events (`hello`).
    pub events: Vec<Event>,
    /// Set if the session closed at once.
    pub close: Option<Close>,
    /// The HTTP version of the answer.
    pub version: Version,
}

/// One session, client side. It remembers the highest event number received and acknowledges it with the next
/// [`poll`](Self::poll).
#[derive(Clone)]
pub struct ClientSession {
    http: reqwest::Client,
    url: String,
    id: String,
    received: u64,
    linger: Duration,
}

impl fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The id is a capability: show only its start.
        f.debug_struct("ClientSession")
            .field("id", &format_args!("{}…", self.id.get(..4).unwrap_or("")))
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    /// The session id (a bearer capability).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The highest event number received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Records events up to `n` as received (the next [`poll`](Self::poll) acknowledges them).
    pub fn set_received(&mut self, n: u64) {
        self.received = self.received.max(n);
    }

    /// The server's linger: how long the session survives without a request.
    pub fn linger(&self) -> Duration {
        self.linger
    }

    /// Posts a body of commands: one JSON command, or one per line. Returns how many the server accepted.
    pub async fn send(&self, body: impl Into<Bytes>) -> Result<u64, ClientError> {
        let res = self
            .http
            .post(format!("{}/commands", self.url))
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(body.into())
            .send()
            .await?;
        #[derive(Deserialize)]
        struct Accepted {
            accepted: u64,
        }
        Ok(decode::<Accepted>(res, StatusCode::ACCEPTED).await?.accepted)
    }

    /// Posts several commands as newline-delimited JSON.
    pub async fn send_commands(&self, commands: &[Value]) -> Result<u64, ClientError> {
        let mut body = String::new();
        for c in commands {
            body.push_str(&c.to_string());
            body.push('\n');
        }
        self.send(body).await
    }

    /// Long-polls: acknowledges everything received so far and waits up to `wait` for newer events. The
    /// received number advances only when an answer arrives whole, so an answer lost on the way (or a dropped
    /// future) is fetched again by the next poll.
    pub async fn poll(&mut self, wait: Duration) -> Result<Batch, ClientError> {
        let batch = self.poll_with(self.received, wait).await?;
        if let Some(last) = batch.events.last() {
            self.received = self.received.max(last.n);
        }
        Ok(batch)
    }

    /// Long-polls with an explicit `ack`, without touching the received number.
    pub async fn poll_with(&self, ack: u64, wait: Duration) -> Result<Batch, ClientError> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let res = self.http.get(format!("{}/events?ack={ack}&wait={wait_ms}", self.url)).send().await?;
        let version = res.version();
        let body: BatchBody = decode(res, StatusCode::OK).await?;
        Ok(Batch { events: body.events, close: body.close, version })
    }

    /// Acknowledges every event up to `n` (for SSE readers).
    pub async fn ack(&self, n: u64) -> Result<(), ClientError> {
        let res = self.http.post(format!("{}/ack?ack={n}", self.url)).send().await?;
        expect_empty(res).await
    }

    /// Opens an SSE stream of the events after `last_event_id` (sent as `Last-Event-ID`, which also
    /// acknowledges up to it).
    pub async fn sse(&self, last_event_id: Option<u64>) -> Result<SseStream, ClientError> {
        let mut req = self.http.get(format!("{}/sse", self.url));
        if let Some(n) = last_event_id {
            req = req.header("last-event-id", n.to_string());
        }
        let res = req.send().await?;
        if res.status() != StatusCode::OK {
            return Err(error_of(res).await);
        }
        let version = res.version();
        Ok(SseStream { stream: Box::pin(res.bytes_stream()), buf: Vec::new(), pending: VecDeque::new(), version })
    }

    /// Closes the session.
    pub async fn delete(&self) -> Result<(), ClientError> {
        let res = self.http.delete(&self.url).send().await?;
        expect_empty(res).await
    }
}

async fn error_of(res: reqwest::Response) -> ClientError {
    let status = res.status().as_u16();
    match res.bytes().await {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(body) => ClientError::Status {
                status,
                code: body["error"]["code"].as_str().unwrap_or("internal").to_owned(),
                message: body["error"]["message"].as_str().unwrap_or_default().to_owned(),
                body,
            },
            Err(_) => ClientError::Status {
                status,
                code: "internal".into(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
                body: Value::Null,
            },
        },
        Err(e) => ClientError::Http(e),
    }
}

async fn decode<T: serde::de::DeserializeOwned>(res: reqwest::Response, ok: StatusCode) -> Result<T, ClientError> {
    if res.status() != ok {
        return Err(error_of(res).await);
    }
    let bytes = res.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
}

async fn expect_empty(res: reqwest::Response) -> Result<(), ClientError> {
    if res.status() == StatusCode::NO_CONTENT { Ok(()) } else { Err(error_of(res).await) }
}

/// What an SSE stream delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    /// An event (its SSE `id` is its number).
    Event(Event),
    /// The session closed; the stream ends.
    Close(Close),
    /// A newer request took over reading the session; the stream ends. Do not reconnect automatically.
    Replaced,
}

/// A Server-Sent-Events stream of one session.
pub struct SseStream {
    stream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
    pending: VecDeque<SseItem>,
    version: Version,
}

impl fmt::Debug for SseStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseStream").field("buffered", &self.buf.len()).finish_non_exhaustive()
    }
}

impl SseStream {
    /// The HTTP version the stream runs over.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The next item; `None` when the stream ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<SseItem, ClientError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(Ok(item));
            }
            match self.stream.next().await? {
                Ok(chunk) => {
                    self.buf.extend_from_slice(&chunk);
                    if let Err(e) = self.parse() {
                        return Some(Err(e));
                    }
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Moves every complete SSE event in the buffer to `pending`.
    fn parse(&mut self) -> Result<(), ClientError> {
        while let Some(end) = find_blank_line(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end.0).collect();
            self.buf.drain(..end.1 - end.0);
            let text = std::str::from_utf8(&block).map_err(|e| ClientError::Decode(e.to_string()))?;
            let (mut id, mut event, mut data) = (None, None, None::<String>);
            for line in text.lines() {
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = Some(value.to_owned()),
                    "event" => event = Some(value.to_owned()),
                    "data" => match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(value);
                        }
                        None => data = Some(value.to_owned()),
                    },
                    _ => {}
                }
            }
            let Some(data) = data else { continue };
            let item = match event.as_deref() {
                Some("close") => {
                    SseItem::Close(serde_json::from_str(&data).map_err(|e| ClientError::Decode(e.to_string()))?)
                }
                Some("replaced") => SseItem::Replaced,
                None | Some("message") => {
                    let n = id
                        .and_then(|i| i.parse().ok())
                        .ok_or_else(|| ClientError::Decode("an SSE event without a numeric id".into()))?;
                    let event = serde_json::from_str(&data).map_err(|e| ClientError::Decode(e.to_string()))?;
                    SseItem::Event(Event { n, event })
                }
                Some(_) => continue,
            };
            self.pending.push_back(item);
        }
        Ok(())
    }
}

/// The end of the first event block: (where the block ends, where the next one starts).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(chunks: &[&'static [u8]]) -> SseStream {
        let items: Vec<reqwest::Result<Bytes>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        SseStream {
            stream: Box::pin(futures_util::stream::iter(items)),
            buf: Vec::new(),
            pending: VecDeque::new(),
            version: Version::HTTP_11,
        }
    }

    #[tokio::test]
    async fn sse_parsing_handles_split_chunks_comments_and_close() {
        let mut s = stream_of(&[
            b"retry: 2000\n\n: keep-alive\n\nid: 1\nda",
            b"ta: {\"type\":\"hello\"}\n\nid: 2\r\ndata: {\"type\":\"reply\"}\r\n\r\n",
            b"event: close\ndata: {\"code\":4000,\"reason\":\"idle timeout\"}\n\n",
        ]);
        let first = s.next().await.expect("item").expect("ok");
        assert_eq!(first, SseItem::Event(Event { n: 1, event: serde_json::json!({"type": "hello"}) }));
        let second = s.next().await.expect("item").expect("ok");
        assert!(matches!(second, SseItem::Event(Event { n: 2, .. })));
        let close = s.next().await.expect("item").expect("ok");
        assert_eq!(close, SseItem::Close(Close { code: 4000, reason: "idle timeout".into() }));
        assert!(s.next().await.is_none());
    }
}
