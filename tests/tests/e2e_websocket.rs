//! End-to-end tests over real WebSocket connections on loopback: the scenarios the foundation must show.

use std::sync::Arc;
use std::time::Duration;

use herald::core::HubConfig;
use herald::core::testkit::protocol::{self as suite, TestClient, TestTokens, text, unique};
use herald::websocket::testkit::{TokenPlacement, WsHarness};
use serde_json::json;

async fn harness(config: HubConfig) -> WsHarness {
    let tokens = TestTokens::default();
    let hub = herald_tests::memory_hub(&tokens, config);
    WsHarness::start(hub, tokens, TokenPlacement::Header).await
}

#[tokio::test]
async fn two_users_exchange_messages_in_a_direct_conversation() {
    suite::direct_conversation(&harness(HubConfig::default()).await).await;
}

#[tokio::test]
async fn a_group_of_three_gets_fan_out() {
    suite::group_fan_out(&harness(HubConfig::default()).await).await;
}

#[tokio::test]
async fn a_reconnecting_client_receives_exactly_the_missed_messages_then_live_ones() {
    suite::resume_after_reconnect(&harness(HubConfig::default()).await).await;
}

#[tokio::test]
async fn a_resend_with_the_same_client_id_is_stored_once_and_delivered_once() {
    suite::idempotent_send(&harness(HubConfig::default()).await).await;
}

#[tokio::test]
async fn a_non_member_is_refused_and_its_connection_stays_up() {
    suite::non_member_is_refused(&harness(HubConfig::default()).await).await;
}

#[tokio::test]
async fn malformed_frames_and_unknown_commands_get_documented_errors() {
    suite::malformed_and_unknown_frames(&harness(HubConfig::default()).await).await;
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009() {
    suite::oversize_frame_closes(&harness(HubConfig::default()).await).await;
}

#[tokio::test]
async fn bad_and_expired_tokens_close_with_4001_and_4002() {
    suite::bad_and_expired_tokens(&harness(HubConfig::default()).await).await;
}

#[tokio::test]
async fn the_whole_protocol_suite_passes_with_query_tokens() {
    let tokens = TestTokens::default();
    let hub = herald_tests::memory_hub(&tokens, HubConfig::default());
    suite::run_all(&WsHarness::start(hub, tokens, TokenPlacement::Query).await).await;
}

/// Concurrent senders in one group: every member sees 1..=N in order, with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_are_delivered_in_seq_order_to_every_member() {
    let h = Arc::new(harness(HubConfig::default()).await);
    let users: Vec<String> = (0..4).map(|i| unique(&format!("u{i}"))).collect();
    let group = format!("group:{}", unique("busy"));
    let mut owner = TestClient::connect_as(&*h, &users[0]).await;
    owner.ok(json!({"type": "create", "channel": group, "members": users[1..]})).await;
    let mut readers = Vec::new();
    for u in &users[..3] {
        let mut c = TestClient::connect_as(&*h, u).await;
        c.ok(json!({"type": "sub", "channel": group})).await;
        readers.push(c);
    }
    const PER_SENDER: usize = 40;
    let mut senders = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let (h, u, group) = (h.clone(), u.clone(), group.clone());
        senders.push(tokio::spawn(async move {
            let mut c = TestClient::connect_as(&*h, &u).await;
            for j in 0..PER_SENDER {
                c.ok(text(&group, &format!("s{i}-{j}"), "x")).await;
            }
        }));
    }
    for s in senders {
        s.await.expect("sender task");
    }
    let total = PER_SENDER * users.len();
    for r in &mut readers {
        let got = r.messages(&group, total).await;
        let seqs: Vec<u64> = got.iter().filter_map(|m| m["seq"].as_u64()).collect();
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    }
}

/// A WebSocket server for `hub` on a free loopback port, serving until `stop` is sent.
struct Stoppable {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), herald::core::transport::TransportError>>,
}

async fn serve_until_stopped(hub: &herald::core::Hub) -> Stoppable {
    let bound = herald::websocket::WebSocketTransport::new(([127, 0, 0, 1], 0).into(), Default::default())
        .bind()
        .await
        .expect("bind");
    let addr = bound.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.serve(
        hub.clone(),
        Box::pin(async move {
            let _ = stopped.await;
        }),
    ));
    Stoppable { addr, stop, server }
}

/// On shutdown every session is closed with 1001 (going away).
#[tokio::test]
async fn shutdown_closes_sessions_with_1001() {
    let tokens = TestTokens::default();
    let hub = herald_tests::memory_hub(&tokens, HubConfig::default());
    let Stoppable { addr, stop: stop_tx, server } = serve_until_stopped(&hub).await;
    let h = WsHarness { addr, tokens, max_frame: 65536, placement: TokenPlacement::Query };
    let mut a = TestClient::connect_as(&h, &unique("alice")).await;
    let mut b = TestClient::connect_as(&h, &unique("bob")).await;
    a.ok(json!({"type": "ping"})).await;
    let _ = stop_tx.send(());
    assert_eq!(a.close_code().await, Some(1001));
    assert_eq!(b.close_code().await, Some(1001));
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("server stops").expect("join").expect("serve");
    assert_eq!(hub.session_count(), 0);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
}

/// A connection still sending its upgrade request when the server shuts down is not given a working session:
/// once its upgrade completes, it is closed with 1001 like every other session.
#[tokio::test]
async fn a_connection_mid_upgrade_at_shutdown_is_closed_with_1001() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let tokens = TestTokens::default();
    let hub = herald_tests::memory_hub(&tokens, HubConfig::default());
    let Stoppable { addr, stop: stop_tx, server } = serve_until_stopped(&hub).await;
    let token = tokens.token(&unique("late"));
    let head = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (first, rest) = head.split_at(20);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(first.as_bytes()).await.expect("first part of the head");
    // Let the server accept the connection and start reading its head, then shut down.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), async {
        while !hub.is_shut_down() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the server starts shutting down");
    // The listener is closed and every session was asked to close: only now does the upgrade complete.
    tcp.write_all(rest.as_bytes()).await.expect("rest of the head");

    // Read the 101 response, then server frames (unmasked) until the close frame.
    let mut buf = Vec::new();
    let close_code = tokio::time::timeout(Duration::from_secs(5), async {
        let mut at = None;
        loop {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the connection ended without a close frame: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
            if at.is_none() {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                assert!(buf.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&buf));
                at = Some(end + 4);
            }
            let mut pos = at.unwrap_or(0);
            while buf.len() >= pos + 2 {
                let opcode = buf[pos] & 0x0f;
                let (len, header) = match buf[pos + 1] & 0x7f {
                    126 if buf.len() >= pos + 4 => (u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]) as usize, 4),
                    126 => break,
                    127 => panic!("no frame this large is expected"),
                    n => (n as usize, 2),
                };
                if buf.len() < pos + header + len {
                    break;
                }
                if opcode == 0x8 {
                    let payload = &buf[pos + header..pos + header + len];
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
                pos += header + len;
            }
            at = Some(pos);
        }
    })
    .await
    .expect("a close frame within 5 s");
    assert_eq!(close_code, 1001);
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("server stops").expect("join").expect("serve");
    assert_eq!(hub.session_count(), 0);
}

#[tokio::test]
async fn an_idle_connection_gets_keepalive_pings_and_stays_open() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    // Keep-alives every 100 ms; the idle timeout is the default (60 s), far beyond the test.
    let config = HubConfig { heartbeat_interval: Duration::from_millis(100), ..HubConfig::default() };
    let h = harness(config).await;
    let user = unique("pinged");
    let url = format!("ws://{}/ws?token={}", h.addr, h.tokens.token(&user));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    let mut hello = false;
    let mut pings = 0;
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        while pings < 3 {
            match ws.next().await.expect("the server closed the connection").expect("a frame") {
                Message::Text(t) if t.as_str().contains(r#""type":"hello""#) => hello = true,
                Message::Ping(_) => pings += 1,
                other => panic!("unexpected frame: {other:?}"),
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "3 keep-alive pings within 20 s (got {pings})");
    assert!(hello, "the hello came first");
}
