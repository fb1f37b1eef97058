//! The `herald-server` binary with `[quic]` enabled: native QUIC and WebTransport clients next to WebSocket,
//! the printed development certificate hash, the demo page, and shutdown with 1001.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{SECRET, Server, token};
use herald::quic::CertHash;
use herald::quic::client::{ClientError, ClientOptions, FrameStream, QuicConnector, Trust, WebTransportConnector};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// The server with QUIC, WebTransport and the demo page on, and what it printed about them.
struct Quic {
    server: Server,
    quic: SocketAddr,
    cert: CertHash,
}

impl Quic {
    fn start() -> Self {
        let server = Server::start(
            &[],
            &[
                ("HERALD_AUTH__JWT_HS256_SECRET", SECRET),
                ("HERALD_QUIC__ENABLED", "true"),
                ("HERALD_QUIC__LISTEN", "127.0.0.1:0"),
                ("HERALD_QUIC__DEMO_PAGE", "true"),
                ("RUST_LOG", "warn"),
            ],
        );
        let quic = server.stdout_line("quic listening on ").parse().expect("quic address");
        let cert = CertHash::from_hex(&server.stdout_line("quic certificate sha256 ")).expect("64 hex digits");
        Self { server, quic, cert }
    }
}

async fn next_json(s: &mut FrameStream) -> Value {
    let f = tokio::time::timeout(WAIT, s.recv_frame()).await.expect("in time").expect("a frame");
    serde_json::from_slice(&f).expect("JSON")
}

async fn reply(s: &mut FrameStream, id: u64) -> Value {
    loop {
        let v = next_json(s).await;
        if v["id"] == json!(id) {
            assert_eq!(v["type"], json!("reply"), "{v}");
            return v;
        }
    }
}

#[tokio::test]
async fn quic_and_webtransport_clients_talk_through_the_reference_server() {
    let mut server = Quic::start();
    let options = ClientOptions::new(Trust::CertHashes(vec![server.cert]));
    let native = QuicConnector::new(options.clone()).expect("connector");
    let mut alice = native.connect(server.quic, Some(&token("alice"))).await.expect("quic").into_stream();
    assert_eq!(next_json(&mut alice).await["user"], json!("alice"));
    let web = WebTransportConnector::new(options).expect("connector");
    let url = url_for(&server, &token("bob"));
    let mut bob = web.connect(&url, None).await.expect("webtransport").into_stream();
    assert_eq!(next_json(&mut bob).await["user"], json!("bob"));

    bob.send_frame(br#"{"type":"sub","id":1,"channel":"dm:alice:bob"}"#).await.expect("send");
    reply(&mut bob, 1).await;
    alice.send_frame(br#"{"type":"send","id":1,"channel":"dm:alice:bob","body":"over quic"}"#).await.expect("send");
    reply(&mut alice, 1).await;
    loop {
        let v = next_json(&mut bob).await;
        if v["type"] == "message" {
            assert_eq!((v["from"].clone(), v["body"].clone()), (json!("alice"), json!("over quic")));
            break;
        }
    }

    // The demo page and its configuration (the hash browsers pin).
    let (status, html) = server.server.get("/demo/");
    assert!(status.contains(" 200 "), "{status}");
    assert!(html.contains("WebTransport"), "{html}");
    let (_, config) = server.server.get("/demo/config.json");
    let config: Value = serde_json::from_str(&config).expect("JSON");
    assert_eq!(config["cert_sha256"], json!(server.cert.as_bytes().to_vec()));
    assert_eq!(config["webtransport_url"], json!(format!("https://{}/wt", server.quic)));

    // SIGTERM: both sessions are told 1001, the process exits cleanly.
    server.server.signal("TERM");
    for (who, s) in [("native", &mut alice), ("webtransport", &mut bob)] {
        let (code, reason) = loop {
            match tokio::time::timeout(WAIT, s.recv_frame()).await.expect("closed in time") {
                Ok(_) => continue,
                Err(ClientError::Closed { code, reason }) => break (code, reason),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(code, Some(1001), "{who}: {reason}");
    }
    let exit = server.server.exit(WAIT).await;
    assert!(exit.success(), "{exit}");
}

fn url_for(server: &Quic, token: &str) -> url::Url {
    let mut url = url::Url::parse(&format!("https://{}/wt", server.quic)).expect("url");
    url.query_pairs_mut().append_pair("token", token);
    url
}
