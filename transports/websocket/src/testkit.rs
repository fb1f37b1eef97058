//! A WebSocket client harness for the protocol conformance suite (feature `testkit`).

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use herald_core::Hub;
use herald_core::testkit::protocol::{Harness, RawClient, Seen, TestTokens};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{WebSocketTransport, WsConfig};

/// Where a harness presents the token at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPlacement {
    /// `Authorization: Bearer <token>`.
    Header,
    /// `?token=<token>`.
    Query,
}

/// Connects real WebSocket clients to a server on loopback.
#[derive(Debug, Clone)]
pub struct WsHarness {
    /// The server's address.
    pub addr: SocketAddr,
    /// Token minting matching the server's authentication.
    pub tokens: TestTokens,
    /// The server's frame limit.
    pub max_frame: usize,
    /// Where tokens go.
    pub placement: TokenPlacement,
}

impl WsHarness {
    /// Serves `hub` over WebSocket on an ephemeral loopback port (until the runtime ends) and returns a harness.
    /// `hub` must authenticate with `tokens.auth()`.
    pub async fn start(hub: Hub, tokens: TestTokens, placement: TokenPlacement) -> Self {
        let bound = WebSocketTransport::new(SocketAddr::from(([127, 0, 0, 1], 0)), WsConfig::default())
            .bind()
            .await
            .expect("bind a loopback port");
        let addr = bound.local_addr().expect("local address");
        let max_frame = hub.config().limits.max_frame_bytes;
        tokio::spawn(async move { bound.serve(hub, Box::pin(std::future::pending())).await });
        Self { addr, tokens, max_frame, placement }
    }
}

/// A raw WebSocket client.
#[derive(Debug)]
pub struct WsClient(pub WebSocketStream<MaybeTlsStream<TcpStream>>);

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
                Err(_) => return None,
            }
        }
    }
}

impl Harness for WsHarness {
    type Client = WsClient;

    async fn connect(&self, token: Option<String>) -> WsClient {
        let url = match (&token, self.placement) {
            (Some(t), TokenPlacement::Query) => format!("ws://{}/ws?token={t}", self.addr),
            _ => format!("ws://{}/ws", self.addr),
        };
        let mut request = url.into_client_request().expect("valid url");
        if let (Some(t), TokenPlacement::Header) = (&token, self.placement) {
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
