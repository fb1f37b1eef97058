//! Long-poll and SSE harnesses for the protocol conformance suite (feature `testkit`).
//!
//! [`LpHarness`] opens real HTTP sessions and reads their events by long-polling or over SSE, as chosen by
//! [`Reading`]; `herald_core::testkit::protocol::run_all` then runs unchanged. Close codes reach the suite as
//! the binding reports them: a refused open (401, 503) carries the `error` event and the close; a session that
//! closes reports its close after its last events.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use herald_core::Hub;
use herald_core::testkit::protocol::{Harness, RawClient, Seen, TestTokens};

use crate::client::{ClientSession, LpClient, ReadMode, SseItem, SseStream};
use crate::{LongPollTransport, LpConfig};

/// How a harness reads events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// `GET …/events?ack=N&wait=MS`.
    Poll,
    /// `GET …/sse`, acknowledging with `POST …/ack`.
    Sse,
}

/// SSE readers acknowledge after this many events.
const SSE_ACK_EVERY: u64 = 16;

/// How long one poll of the harness waits at most (the suite cancels it earlier when it expects nothing).
const POLL_WAIT: Duration = Duration::from_secs(20);

/// Opens long-poll sessions on a server.
#[derive(Debug, Clone)]
pub struct LpHarness {
    /// The client.
    pub client: LpClient,
    /// Token minting matching the server's authentication.
    pub tokens: TestTokens,
    /// The server's frame limit.
    pub max_frame: usize,
    /// How events are read.
    pub reading: Reading,
}

impl LpHarness {
    /// A harness for a server already running behind `client`.
    pub fn new(client: LpClient, tokens: TestTokens, max_frame: usize, reading: Reading) -> Self {
        Self { client, tokens, max_frame, reading }
    }

    /// Serves `hub` over cleartext HTTP on an ephemeral loopback port (until the runtime ends) and returns a
    /// harness whose client speaks HTTP/2 with prior knowledge (h2c). `hub` must authenticate with
    /// `tokens.auth()`.
    pub async fn start_h2c(hub: Hub, tokens: TestTokens, reading: Reading) -> Self {
        let bound = LongPollTransport::new(SocketAddr::from(([127, 0, 0, 1], 0)), LpConfig::default())
            .bind()
            .await
            .expect("bind a loopback port");
        let addr = bound.local_addr().expect("local address");
        let max_frame = hub.config().limits.max_frame_bytes;
        tokio::spawn(async move { bound.serve(hub, Box::pin(std::future::pending())).await });
        let http = reqwest::Client::builder().http2_prior_knowledge().build().expect("an HTTP client");
        Self::new(LpClient::with_http(http, format!("http://{addr}/lp")), tokens, max_frame, reading)
    }
}

/// One session as the conformance suite sees it.
#[derive(Debug)]
pub struct LpRaw {
    session: Option<ClientSession>,
    reading: Reading,
    queue: VecDeque<Seen>,
    sse: Option<SseStream>,
    acked: u64,
    finished: bool,
}

impl LpRaw {
    /// The session (`None` when the open was refused).
    pub fn session(&self) -> Option<&ClientSession> {
        self.session.as_ref()
    }

    fn frame(&mut self, event: serde_json::Value) {
        self.queue.push_back(Seen::Frame(event));
    }

    /// Queues the close and releases the server's copy of the session (best effort).
    async fn closed(&mut self, code: u16) {
        self.queue.push_back(Seen::Closed(Some(code)));
        self.finished = true;
        if let Some(s) = &self.session {
            let _ = match self.reading {
                Reading::Poll => s.poll_with(s.received(), Duration::ZERO).await.map(|_| ()),
                Reading::Sse => s.ack(s.received()).await,
            };
        }
    }
}

impl RawClient for LpRaw {
    async fn send_text(&mut self, text: String) {
        if let Some(s) = &self.session {
            let _ = s.send(text).await;
        }
    }

    async fn next(&mut self) -> Option<Seen> {
        loop {
            if let Some(seen) = self.queue.pop_front() {
                return Some(seen);
            }
            if self.finished {
                return None;
            }
            let session = self.session.as_mut()?;
            match self.reading {
                Reading::Poll => match session.poll(POLL_WAIT).await {
                    Ok(batch) => {
                        for e in batch.events {
                            self.frame(e.event);
                        }
                        if let Some(close) = batch.close {
                            self.closed(close.code).await;
                        }
                    }
                    Err(_) => self.finished = true,
                },
                Reading::Sse => {
                    if self.sse.is_none() {
                        match session.sse(Some(session.received())).await {
                            Ok(stream) => self.sse = Some(stream),
                            Err(_) => {
                                self.finished = true;
                                continue;
                            }
                        }
                    }
                    let Some(stream) = self.sse.as_mut() else { continue };
                    match stream.next().await {
                        Some(Ok(SseItem::Event(e))) => {
                            session.set_received(e.n);
                            self.queue.push_back(Seen::Frame(e.event));
                            if e.n >= self.acked + SSE_ACK_EVERY && session.ack(e.n).await.is_ok() {
                                self.acked = e.n;
                            }
                        }
                        Some(Ok(SseItem::Close(close))) => self.closed(close.code).await,
                        // The stream broke or was replaced: reconnect with Last-Event-ID on the next turn.
                        Some(Ok(SseItem::Replaced)) | Some(Err(_)) | None => self.sse = None,
                    }
                }
            }
        }
    }
}

impl Harness for LpHarness {
    type Client = LpRaw;

    async fn connect(&self, token: Option<String>) -> LpRaw {
        let mut raw = LpRaw {
            session: None,
            reading: self.reading,
            queue: VecDeque::new(),
            sse: None,
            acked: 0,
            finished: false,
        };
        let mode = match self.reading {
            Reading::Poll => ReadMode::Poll,
            Reading::Sse => ReadMode::Sse,
        };
        match self.client.open_reading(token.as_deref(), mode).await {
            Ok(opened) => {
                for e in opened.events {
                    raw.frame(e.event);
                }
                raw.session = Some(opened.session);
                if let Some(close) = opened.close {
                    raw.closed(close.code).await;
                }
            }
            Err(e) => {
                let close = e.close().unwrap_or_else(|| panic!("opening a session failed without a close: {e}"));
                for ev in e.events() {
                    raw.frame(ev.event);
                }
                raw.closed(close.code).await;
            }
        }
        raw
    }

    fn tokens(&self) -> &TestTokens {
        &self.tokens
    }

    fn max_frame_bytes(&self) -> usize {
        self.max_frame
    }
}
