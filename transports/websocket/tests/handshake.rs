//! The WebSocket upgrade (RFC 6455 section 4) and framing rules, spoken byte by byte over raw TCP to the server.

use std::sync::Arc;
use std::time::Duration;

use herald_core::testkit::protocol::TestTokens;
use herald_core::{Hub, HubConfig};
use herald_memory::MemoryStore;
use herald_websocket::testkit::{TokenPlacement, WsHarness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server() -> WsHarness {
    let tokens = TestTokens::default();
    let hub = Hub::builder(Arc::new(MemoryStore::new()), Arc::new(tokens.auth())).config(HubConfig::default()).build();
    WsHarness::start(hub, tokens, TokenPlacement::Query).await
}

/// Sends `request` and reads the response head (up to the blank line).
async fn request(h: &WsHarness, request: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(h.addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n =
            tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte)).await.expect("response").expect("read");
        assert_eq!(n, 1, "connection closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    (tcp, String::from_utf8(head).expect("ASCII head"))
}

fn upgrade_request(token: &str, extra: &str) -> String {
    format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// A masked client frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9u8, 8, 7, 6];
    assert!(payload.len() < 126);
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one unmasked server frame: (opcode, payload).
async fn server_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await.expect("frame header");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7F {
        126 => usize::from(tcp.read_u16().await.expect("length")),
        127 => usize::try_from(tcp.read_u64().await.expect("length")).expect("fits"),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.expect("payload");
    (head[0], payload)
}

#[tokio::test]
async fn the_upgrade_answers_with_the_accept_key_and_the_hello_follows() {
    let h = server().await;
    let token = h.tokens.token("alice");
    let (mut tcp, head) = request(&h, &upgrade_request(&token, "Sec-WebSocket-Version: 13\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455 section 1.3's example key and answer.
    assert!(head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    let (opcode, hello) = server_frame(&mut tcp).await;
    assert_eq!(opcode, 0x81, "a final text frame");
    let hello: serde_json::Value = serde_json::from_slice(&hello).expect("JSON");
    assert_eq!(hello["type"], "hello");

    // A ping is answered with a pong carrying its payload.
    tcp.write_all(&client_frame(0x9, b"are you there")).await.expect("ping");
    assert_eq!(server_frame(&mut tcp).await, (0x8A, b"are you there".to_vec()));

    // The client closes: the server echoes the code, then closes the TCP connection.
    tcp.write_all(&client_frame(0x8, &1000u16.to_be_bytes())).await.expect("close");
    assert_eq!(server_frame(&mut tcp).await, (0x88, 1000u16.to_be_bytes().to_vec()));
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await.expect("end of stream");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn requests_that_are_not_valid_upgrades_are_refused() {
    let h = server().await;
    let token = h.tokens.token("alice");
    let cases = [
        (upgrade_request(&token, "Sec-WebSocket-Version: 8\r\n"), "400"),
        (upgrade_request(&token, ""), "400"),
        ("GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned(), "400"),
        (
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
                .to_owned(),
            "400",
        ),
    ];
    for (req, status) in cases {
        let (_, head) = request(&h, &req).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{req:?} -> {head}");
    }
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let h = server().await;
    let token = h.tokens.token("alice");
    let (mut tcp, head) = request(&h, &upgrade_request(&token, "Sec-WebSocket-Version: 13\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(server_frame(&mut tcp).await.0, 0x81, "the hello");
    tcp.write_all(&[0x81, 0x02, b'{', b'}']).await.expect("unmasked frame");
    let (opcode, payload) = server_frame(&mut tcp).await;
    assert_eq!(opcode, 0x88);
    assert_eq!(payload[..2], 1002u16.to_be_bytes());
}
