//! The protocol conformance suite over real WebSocket connections on loopback.

use std::sync::Arc;

use futures_util::SinkExt;
use herald_core::testkit::protocol::{self, Harness, RawClient, Seen, TestTokens};
use herald_core::{Hub, HubConfig};
use herald_memory::MemoryStore;
use herald_websocket::testkit::{TokenPlacement, WsHarness};
use tokio_tungstenite::tungstenite::Message;

async fn start(placement: TokenPlacement) -> (WsHarness, Hub) {
    let tokens = TestTokens::default();
    let hub = Hub::builder(Arc::new(MemoryStore::new()), Arc::new(tokens.auth())).config(HubConfig::default()).build();
    (WsHarness::start(hub.clone(), tokens, placement).await, hub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_websocket_with_header_token() {
    let (h, _hub) = start(TokenPlacement::Header).await;
    protocol::run_all(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_websocket_with_query_token() {
    let (h, _hub) = start(TokenPlacement::Query).await;
    protocol::run_all(&h).await;
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
    let (h, hub) = start(TokenPlacement::Header).await;
    let max_frame = h.max_frame;
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
    let (h, _hub) = start(TokenPlacement::Header).await;
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
