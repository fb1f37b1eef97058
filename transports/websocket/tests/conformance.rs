//! The protocol conformance suite over real WebSocket connections on loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use herald_core::testkit::protocol::{self, Harness, RawClient, Seen, TestTokens};
use herald_core::{Hub, HubConfig};
use herald_memory::MemoryStore;
use herald_websocket::{WebSocketTransport, WsConfig};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

struct WsHarness {
    addr: SocketAddr,
    tokens: TestTokens,
    max_frame: usize,
    /// Present the token as a header (true) or as a query parameter (false).
    header: bool,
}

struct WsClient(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl RawClient for WsClient {
    async fn send_text(&mut self, text: String) {
        let _ = self.0.send(Message::text(text)).await;
    }

    async fn next(&mut self) -> Option<Seen> {
        loop {
            match self.0.next().await? {
                Ok(Message::Text(t)) => {
                    return Some(Seen::Frame(serde_json::from_str(t.as_str()).expect("server frames are JSON")));
                }
                Ok(Message::Close(frame)) => return Some(Seen::Closed(frame.map(|f| u16::from(f.code)))),
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return None,
                Err(e) => {
                    eprintln!("client read error: {e:?}");
                    return None;
                }
            }
        }
    }
}

impl Harness for WsHarness {
    type Client = WsClient;

    async fn connect(&self, token: Option<String>) -> WsClient {
        let url = match (&token, self.header) {
            (Some(t), false) => format!("ws://{}/ws?token={t}", self.addr),
            _ => format!("ws://{}/ws", self.addr),
        };
        let mut request = url.into_client_request().expect("valid url");
        if let (Some(t), true) = (&token, self.header) {
            request.headers_mut().insert("authorization", format!("Bearer {t}").parse().expect("header value"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connect");
        WsClient(ws)
    }

    fn tokens(&self) -> &TestTokens {
        &self.tokens
    }

    fn max_frame_bytes(&self) -> usize {
        self.max_frame
    }
}

async fn start(config: HubConfig) -> (SocketAddr, TestTokens, Hub) {
    let tokens = TestTokens::default();
    let hub = Hub::builder(Arc::new(MemoryStore::new()), Arc::new(tokens.auth())).config(config).build();
    let bound =
        WebSocketTransport::new("127.0.0.1:0".parse().expect("addr"), WsConfig::default()).bind().await.expect("bind");
    let addr = bound.local_addr().expect("local addr");
    let serving = hub.clone();
    tokio::spawn(async move { bound.serve(serving, Box::pin(std::future::pending())).await });
    (addr, tokens, hub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_websocket_with_header_token() {
    let (addr, tokens, hub) = start(HubConfig::default()).await;
    let max_frame = hub.config().limits.max_frame_bytes;
    protocol::run_all(&WsHarness { addr, tokens, max_frame, header: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_websocket_with_query_token() {
    let (addr, tokens, hub) = start(HubConfig::default()).await;
    let max_frame = hub.config().limits.max_frame_bytes;
    protocol::run_all(&WsHarness { addr, tokens, max_frame, header: false }).await;
}

async fn close_after_sending(h: &WsHarness, frame: String) -> (bool, Option<u16>) {
    let mut c = h.connect(Some(h.tokens.token("big-sender"))).await;
    assert!(matches!(c.next().await, Some(Seen::Frame(v)) if v["type"] == "hello"));
    c.send_text(frame).await;
    let mut error_event = false;
    while let Some(seen) = c.next().await {
        match seen {
            Seen::Frame(v) => error_event |= v["type"] == "error" && v["code"] == "too_large",
            Seen::Closed(code) => return (error_event, code),
        }
    }
    (error_event, None)
}

#[tokio::test]
async fn oversize_frames_close_with_1009_and_far_oversize_ones_are_cut_off() {
    let (addr, tokens, hub) = start(HubConfig::default()).await;
    let max_frame = hub.config().limits.max_frame_bytes;
    let h = WsHarness { addr, tokens, max_frame, header: true };
    // Up to 4x the limit: read whole, answered with an error event and a clean 1009 close.
    assert_eq!(close_after_sending(&h, "x".repeat(max_frame * 3)).await, (true, Some(1009)));
    // Far beyond: refused from the frame header; the connection ends without the payload being buffered
    // (the client sees either the 1009 close or a reset, depending on timing).
    let (_, code) = close_after_sending(&h, "x".repeat(max_frame * 20)).await;
    assert!(matches!(code, None | Some(1009)), "unexpected close code {code:?}");
    assert_eq!(hub.session_count(), 0, "the session ended");
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let (addr, tokens, _hub) = start(HubConfig::default()).await;
    let h = WsHarness { addr, tokens, max_frame: 0, header: true };
    let mut c = h.connect(Some(h.tokens.token("binary-sender"))).await;
    assert!(matches!(c.next().await, Some(Seen::Frame(v)) if v["type"] == "hello"));
    c.0.send(Message::binary(vec![1u8, 2, 3])).await.expect("send");
    let mut code = None;
    while let Some(seen) = c.next().await {
        if let Seen::Closed(c) = seen {
            code = c;
            break;
        }
    }
    assert_eq!(code, Some(1003));
}
