//! Herald client connections over every transport (`--transport`): one [`Link`] type that sends a protocol
//! frame and receives the next one, whatever carries them, and the client-side state a worker shares between
//! its connections ([`Clients`]) so that thousands of them stay cheap:
//!
//! - native QUIC and WebTransport: one quinn endpoint (one UDP socket) per [`CONNS_PER_UDP_SOCKET`]
//!   connections;
//! - long-poll and SSE: one HTTP/2 client (h2c with prior knowledge: one TCP connection, multiplexed) per
//!   [`SESSIONS_PER_HTTP2`] sessions, below the server's 64 concurrent streams per connection so that each
//!   session's held poll (or SSE stream) and its command POSTs fit.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::longpoll::client::{ClientSession, LpClient, SseItem, SseStream};
use herald::quic::CertHash;
use herald::quic::client::{ClientOptions, FrameStream, QuicConnector, Trust, WebTransportConnector};
use herald_bench::net::{Error, Ws};
use tokio_tungstenite::tungstenite::Message;

use crate::TransportKind;

/// QUIC connections per client endpoint (UDP socket).
pub(crate) const CONNS_PER_UDP_SOCKET: usize = 1_000;
/// Most QUIC / WebTransport connections a worker opens at once: a quarter of the server's
/// `QuicConfig::max_handshakes` (256), which refuses attempts above it (the count includes sessions whose
/// stream header is not in yet, so the client cannot get close to it).
pub(crate) const QUIC_OPEN_CONCURRENCY: usize = 64;
/// Long-poll / SSE sessions per HTTP/2 connection.
pub(crate) const SESSIONS_PER_HTTP2: usize = 25;
/// How long one poll is held (the server caps it at `LpConfig::max_wait`, 55 s by default).
const POLL_WAIT: Duration = Duration::from_secs(55);
/// An SSE reader acknowledges once this many events arrived since its last acknowledgement.
const SSE_ACK_EVERY: u64 = 32;

/// The number of connections a worker opens at once over `via` when asked for `asked`.
pub(crate) fn open_concurrency(via: TransportKind, asked: usize) -> usize {
    match via {
        TransportKind::Quic | TransportKind::Webtransport => asked.min(QUIC_OPEN_CONCURRENCY),
        _ => asked,
    }
    .max(1)
}

/// The number of shared clients `count` connections over `via` need.
pub(crate) fn clients_needed(via: TransportKind, count: usize) -> usize {
    match via {
        TransportKind::Ws => 0,
        TransportKind::Quic | TransportKind::Webtransport => count.div_ceil(CONNS_PER_UDP_SOCKET).max(1),
        TransportKind::Longpoll | TransportKind::Sse => count.div_ceil(SESSIONS_PER_HTTP2).max(1),
    }
}

/// Client-side transport state shared by a worker's connections, handed out round-robin.
#[derive(Default)]
pub(crate) struct Clients {
    quic: Vec<QuicConnector>,
    wt: Vec<WebTransportConnector>,
    http: Vec<LpClient>,
    next: AtomicUsize,
}

impl Clients {
    /// The clients for `count` connections over `via` to `addr` (QUIC: trusting the certificate hash `cert`).
    pub(crate) fn new(via: TransportKind, addr: SocketAddr, cert: [u8; 32], count: usize) -> Result<Self, Error> {
        let options = || {
            let mut o = ClientOptions::new(Trust::CertHashes(vec![CertHash(cert)]));
            o.bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            o
        };
        let mut c = Self::default();
        for _ in 0..clients_needed(via, count) {
            match via {
                TransportKind::Ws => {}
                TransportKind::Quic => c.quic.push(QuicConnector::new(options())?),
                TransportKind::Webtransport => c.wt.push(WebTransportConnector::new(options())?),
                TransportKind::Longpoll | TransportKind::Sse => {
                    let http = reqwest::Client::builder().http2_prior_knowledge().tcp_nodelay(true).build()?;
                    c.http.push(LpClient::with_http(http, format!("http://{addr}/lp")));
                }
            }
        }
        Ok(c)
    }

    fn pick<'a, T>(&self, v: &'a [T]) -> Result<&'a T, Error> {
        if v.is_empty() {
            return Err("no client for this transport".into());
        }
        Ok(&v[self.next.fetch_add(1, Ordering::Relaxed) % v.len()])
    }
}

/// A long-poll session and the events of its last answer not yet handed out.
pub(crate) struct PollLink {
    session: ClientSession,
    pending: VecDeque<String>,
}

/// An SSE session: its stream, and what it has acknowledged.
pub(crate) struct SseLink {
    session: ClientSession,
    stream: SseStream,
    pending: VecDeque<String>,
    last: u64,
    acked: u64,
}

/// One Herald connection over any transport.
pub(crate) enum Link {
    /// WebSocket.
    Ws(Box<Ws>),
    /// Native QUIC or WebTransport: the session's frame stream.
    Quic(Box<FrameStream>),
    /// Long-poll.
    Poll(Box<PollLink>),
    /// Server-Sent Events (commands POSTed).
    Sse(Box<SseLink>),
}

fn close_error(code: u16, reason: &str) -> Error {
    format!("session closed ({code}): {reason}").into()
}

impl Link {
    /// Opens a connection over `via` as the holder of `token` (its first frames, `hello`, are then received
    /// with [`recv`](Self::recv)). 30 s at most.
    pub(crate) async fn open(
        via: TransportKind,
        addr: SocketAddr,
        clients: &Clients,
        token: &str,
    ) -> Result<Self, Error> {
        let open = async {
            Ok::<_, Error>(match via {
                TransportKind::Ws => return Err("WebSocket links are opened by herald_bench::net".into()),
                TransportKind::Quic => {
                    Link::Quic(Box::new(clients.pick(&clients.quic)?.connect(addr, Some(token)).await?.into_stream()))
                }
                TransportKind::Webtransport => {
                    let url = url::Url::parse(&format!("https://{addr}/wt"))?;
                    Link::Quic(Box::new(clients.pick(&clients.wt)?.connect(&url, Some(token)).await?.into_stream()))
                }
                TransportKind::Longpoll | TransportKind::Sse => {
                    let opened = clients.pick(&clients.http)?.open(Some(token)).await?;
                    if let Some(c) = opened.close {
                        return Err(close_error(c.code, &c.reason));
                    }
                    let pending: VecDeque<String> = opened.events.iter().map(|e| e.event.to_string()).collect();
                    let session = opened.session;
                    if via == TransportKind::Sse {
                        let last = session.received();
                        let stream = session.sse(Some(last)).await?;
                        Link::Sse(Box::new(SseLink { session, stream, pending, last, acked: last }))
                    } else {
                        Link::Poll(Box::new(PollLink { session, pending }))
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(30), open).await.map_err(|_| format!("{via:?} connect timed out"))?
    }

    /// Sends one frame (long-poll, SSE: one `POST …/commands`).
    pub(crate) async fn send(&mut self, text: String) -> Result<(), Error> {
        match self {
            Link::Ws(ws) => ws.send(Message::text(text)).await?,
            Link::Quic(s) => s.send_frame(text.as_bytes()).await?,
            Link::Poll(p) => {
                p.session.send(text).await?;
            }
            Link::Sse(s) => {
                s.session.send(text).await?;
            }
        }
        Ok(())
    }

    /// The next frame from the server (an error once the connection or session ended).
    pub(crate) async fn recv(&mut self) -> Result<String, Error> {
        match self {
            Link::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                    Some(Ok(Message::Close(_))) | None => return Err("connection closed".into()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(_)) => {}
                }
            },
            Link::Quic(s) => Ok(String::from_utf8(s.recv_frame().await?.to_vec())?),
            Link::Poll(p) => loop {
                if let Some(e) = p.pending.pop_front() {
                    return Ok(e);
                }
                let batch = p.session.poll(POLL_WAIT).await?;
                p.pending.extend(batch.events.iter().map(|e| e.event.to_string()));
                if let Some(c) = batch.close
                    && p.pending.is_empty()
                {
                    return Err(close_error(c.code, &c.reason));
                }
            },
            Link::Sse(s) => {
                if let Some(e) = s.pending.pop_front() {
                    return Ok(e);
                }
                match s.stream.next().await {
                    Some(Ok(SseItem::Event(e))) => {
                        s.last = s.last.max(e.n);
                        if s.last - s.acked >= SSE_ACK_EVERY {
                            // Acknowledge in the background: the next event need not wait for it.
                            let (session, n) = (s.session.clone(), s.last);
                            tokio::spawn(async move { session.ack(n).await });
                            s.acked = s.last;
                        }
                        Ok(e.event.to_string())
                    }
                    Some(Ok(SseItem::Close(c))) => Err(close_error(c.code, &c.reason)),
                    Some(Ok(SseItem::Replaced)) => Err("SSE stream replaced".into()),
                    Some(Err(e)) => Err(e.into()),
                    None => Err("SSE stream ended".into()),
                }
            }
        }
    }

    /// The HTTP session behind a long-poll or SSE link (a clone: it can post commands while the link reads).
    pub(crate) fn session(&self) -> Option<ClientSession> {
        match self {
            Link::Poll(p) => Some(p.session.clone()),
            Link::Sse(s) => Some(s.session.clone()),
            _ => None,
        }
    }

    /// Closes the connection (5 s at most).
    pub(crate) async fn close(self) {
        let close = async {
            match self {
                Link::Ws(ws) => {
                    let mut ws = *ws;
                    let _ = ws.close(None).await;
                }
                Link::Quic(mut s) => s.close(1000, "done"),
                Link::Poll(p) => {
                    let _ = p.session.delete().await;
                }
                Link::Sse(s) => {
                    let _ = s.session.delete().await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_clients_per_transport() {
        assert_eq!(clients_needed(TransportKind::Ws, 10_000), 0);
        assert_eq!(clients_needed(TransportKind::Quic, 10_000), 10);
        assert_eq!(clients_needed(TransportKind::Webtransport, 1), 1);
        assert_eq!(clients_needed(TransportKind::Longpoll, 10_000), 400);
        assert_eq!(clients_needed(TransportKind::Sse, 26), 2);
        assert_eq!(clients_needed(TransportKind::Sse, 0), 1);
        assert_eq!(open_concurrency(TransportKind::Quic, 200), QUIC_OPEN_CONCURRENCY);
        assert_eq!(open_concurrency(TransportKind::Webtransport, 10), 10);
        assert_eq!(open_concurrency(TransportKind::Ws, 200), 200);
        assert_eq!(open_concurrency(TransportKind::Sse, 0), 1);
    }
}
