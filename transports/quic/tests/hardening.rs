//! Malformed input, refused handshakes, floods, migration, 0-RTT and shutdown over real QUIC on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::testkit::protocol::TestTokens;
use herald_core::{Hub, HubConfig};
use herald_memory::MemoryStore;
use herald_quic::client::{ClientError, ClientOptions, FrameStream, QuicConnector, WebTransportConnector};
use herald_quic::testkit::TestServer;
use herald_quic::{QuicConfig, QuicStats, RetryPolicy};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn hub(tokens: &TestTokens) -> Hub {
    Hub::builder(Arc::new(MemoryStore::new()), Arc::new(tokens.auth())).config(HubConfig::default()).build()
}

async fn server(config: QuicConfig) -> (TestServer, TestTokens, Hub) {
    let tokens = TestTokens::default();
    let hub = hub(&tokens);
    (TestServer::start(hub.clone(), config).await, tokens, hub)
}

/// Reads frames until the server closes; returns the frames and the close code.
async fn until_closed(s: &mut FrameStream) -> (Vec<Value>, Option<u16>) {
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, s.recv_frame()).await.expect("the server closes in time") {
            Ok(f) => frames.push(serde_json::from_slice(&f).expect("JSON")),
            Err(ClientError::Closed { code, .. }) => return (frames, code),
            Err(e) => panic!("unexpected client error {e}"),
        }
    }
}

async fn next_json(s: &mut FrameStream) -> Value {
    let f = tokio::time::timeout(WAIT, s.recv_frame()).await.expect("a frame in time").expect("a frame");
    serde_json::from_slice(&f).expect("JSON")
}

/// Waits for a reply or error with `id`, skipping other frames.
async fn reply(s: &mut FrameStream, id: u64) -> Value {
    loop {
        let v = next_json(s).await;
        if v["id"] == json!(id) {
            return v;
        }
    }
}

async fn wait_stats(server: &TestServer, what: &str, f: impl FnMut(&QuicStats) -> bool) -> QuicStats {
    let mut rx = server.stats.clone();
    let got = tokio::time::timeout(WAIT, rx.wait_for(f)).await;
    match got {
        Ok(Ok(s)) => *s,
        _ => panic!("stats never reached: {what}; last {:?}", *server.stats.borrow()),
    }
}

async fn native(server: &TestServer, tokens: &TestTokens, user: &str) -> (QuicConnector, FrameStream) {
    let connector = QuicConnector::new(server.client_options()).expect("connector");
    let client = connector.connect(server.addr, Some(&tokens.token(user))).await.expect("connect");
    let mut s = client.into_stream();
    let hello = next_json(&mut s).await;
    assert_eq!(hello["type"], json!("hello"));
    assert_eq!(hello["user"], json!(user));
    (connector, s)
}

#[tokio::test]
async fn a_length_prefix_over_the_limit_closes_with_1009_before_the_payload_is_read() {
    let (server, tokens, hub) = server(QuicConfig::default()).await;
    let (_c, mut s) = native(&server, &tokens, "big").await;
    // 4 GiB - 1 announced; nothing of it is sent or allocated.
    s.send_raw(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])).await.expect("send");
    let (frames, code) = until_closed(&mut s).await;
    assert_eq!(code, Some(1009));
    assert!(frames.iter().any(|f| f["type"] == "error" && f["code"] == "too_large"), "{frames:?}");
    drop(s);
    wait_for_sessions(&hub, 0).await;
}

#[tokio::test]
async fn an_oversize_frame_being_sent_is_stopped_and_closed_with_1009() {
    let (server, tokens, _hub) = server(QuicConfig::default()).await;
    let (_c, mut s) = native(&server, &tokens, "big2").await;
    let max = HubConfig::default().limits.max_frame_bytes;
    let sender = tokio::spawn(async move {
        // The write fails once the server stops the stream; the frame is never read whole.
        let _ = s.send_frame(&vec![b'x'; max * 8]).await;
        until_closed(&mut s).await
    });
    let (_, code) = tokio::time::timeout(WAIT, sender).await.expect("in time").expect("task");
    assert_eq!(code, Some(1009));
}

#[tokio::test]
async fn a_stream_ending_inside_a_frame_closes_with_1002() {
    let (server, tokens, _hub) = server(QuicConfig::default()).await;
    let (_c, mut s) = native(&server, &tokens, "trunc").await;
    s.send_raw(Bytes::from_static(&[0, 0, 0, 10, b'{', b'"'])).await.expect("send");
    s.finish();
    let (_, code) = until_closed(&mut s).await;
    assert_eq!(code, Some(1002));
}

#[tokio::test]
async fn garbage_on_the_stream_is_closed_with_a_documented_code() {
    let (server, tokens, _hub) = server(QuicConfig::default()).await;
    // Text where a length prefix belongs: "GET " reads as 1.2 GB.
    let (_c, mut s) = native(&server, &tokens, "garbage1").await;
    s.send_raw(Bytes::from_static(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).await.expect("send");
    assert_eq!(until_closed(&mut s).await.1, Some(1009));

    // Well-framed garbage: every frame is answered with bad_request, then 1008 after 20 in a row.
    let (_c, mut s) = native(&server, &tokens, "garbage2").await;
    for i in 0..25u8 {
        let _ = s.send_frame(&[0x80, i, 0xfe, b'{']).await;
    }
    let (frames, code) = until_closed(&mut s).await;
    assert_eq!(code, Some(1008));
    assert_eq!(frames.iter().filter(|f| f["code"] == "bad_request").count(), 20, "{frames:?}");
}

#[tokio::test]
async fn a_bad_stream_header_closes_before_the_session_starts() {
    let (server, _tokens, hub) = server(QuicConfig::default()).await;
    let connector = QuicConnector::new(server.client_options()).expect("connector");
    // A header with a token that is not valid is still a valid header: the session starts, auth fails (4001).
    let client = connector.connect(server.addr, Some("x\"y")).await.expect("connect");
    let mut s = client.into_stream();
    let (frames, code) = until_closed(&mut s).await;
    assert_eq!(code, Some(4001), "{frames:?}");

    let header_not_json = raw_header_session(&server, b"not json").await;
    assert_eq!(header_not_json, Some(1002));
    let header_too_large = raw_header_session(&server, &vec![b' '; 70_000]).await;
    assert_eq!(header_too_large, Some(1009));
    wait_for_sessions(&hub, 0).await;
    let stats = *server.stats.borrow();
    assert!(stats.setup_failed >= 2, "{stats:?}");
}

/// Opens a native connection whose stream header is `header` (framed), returns the close code.
async fn raw_header_session(server: &TestServer, header: &[u8]) -> Option<u16> {
    let connector = QuicConnector::new(server.client_options()).expect("connector");
    let mut s = connector.connect_raw(server.addr).await.expect("connect").into_stream();
    let mut framed = Vec::with_capacity(header.len() + 4);
    framed.extend_from_slice(&u32::try_from(header.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(header);
    let _ = s.send_raw(Bytes::from(framed)).await;
    until_closed(&mut s).await.1
}

async fn wait_for_sessions(hub: &Hub, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    // The hub has no change notification for its session count; poll it briefly.
    while hub.session_count() != n {
        assert!(tokio::time::Instant::now() < deadline, "session count stayed {}", hub.session_count());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_unknown_alpn_is_refused_in_the_handshake() {
    let (server, _tokens, _hub) = server(QuicConfig::default()).await;
    let mut options = server.client_options();
    options.alpn_override = Some(vec![b"smtp".to_vec()]);
    let connector = QuicConnector::new(options).expect("connector");
    let err = connector.connect(server.addr, None).await.expect_err("refused");
    assert!(matches!(err, ClientError::Connection(_)), "{err}");

    // With WebTransport disabled, `h3` is unknown too.
    let (server, _tokens, _hub) = self::server(QuicConfig { webtransport_path: None, ..QuicConfig::default() }).await;
    let web = WebTransportConnector::new(server.client_options()).expect("connector");
    let err = web.connect(&server.wt_url(None), None).await.expect_err("refused");
    assert!(matches!(err, ClientError::WebTransport(_)), "{err}");
}

#[tokio::test]
async fn a_webtransport_session_at_another_path_is_refused_with_404() {
    let (server, _tokens, _hub) = server(QuicConfig::default()).await;
    let web = WebTransportConnector::new(server.client_options()).expect("connector");
    let mut url = server.wt_url(None);
    url.set_path("/elsewhere");
    let err = web.connect(&url, None).await.expect_err("refused");
    assert!(err.to_string().contains("404"), "{err}");
    wait_stats(&server, "one rejected request", |s| s.webtransport_rejected == 1).await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_by_the_client() {
    let (server, _tokens, _hub) = server(QuicConfig::default()).await;
    let options = ClientOptions::new(herald_quic::client::Trust::CertHashes(vec![herald_quic::CertHash([7; 32])]));
    let err = QuicConnector::new(options).expect("connector").connect(server.addr, None).await.expect_err("refused");
    assert!(matches!(err, ClientError::Connection(_)), "{err}");
}

/// Sends `n` QUIC Initial packets from one UDP socket and never answers: handshakes that never complete.
fn flood_initials(server: SocketAddr, n: usize) -> std::net::UdpSocket {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut endpoint = quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, false, None);
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    tls.alpn_protocols = vec![herald_quic::ALPN_NATIVE.to_vec()];
    let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("quic tls");
    let config = quinn_proto::ClientConfig::new(Arc::new(crypto));
    let mut buf = Vec::new();
    for _ in 0..n {
        let now = std::time::Instant::now();
        let (_, mut conn) = endpoint.connect(now, config.clone(), server, "localhost").expect("connect");
        buf.clear();
        let t = conn.poll_transmit(now, 1, &mut buf).expect("an Initial packet");
        socket.send_to(&buf[..t.size], t.destination).expect("send");
    }
    socket
}

#[tokio::test]
async fn a_handshake_flood_is_bounded_by_max_handshakes() {
    let config = QuicConfig {
        retry: RetryPolicy::Never,
        max_handshakes: 8,
        handshake_timeout: Duration::from_millis(1500),
        ..QuicConfig::default()
    };
    let (server, tokens, _hub) = server(config).await;
    let _socket = flood_initials(server.addr, 40);
    let stats = wait_stats(&server, "40 attempts handled", |s| s.incoming == 40).await;
    assert_eq!(stats.handshakes_in_progress, 8, "{stats:?}");
    assert_eq!(stats.refused, 32, "{stats:?}");
    assert_eq!(stats.retried, 0);
    // While full, a real client is refused too.
    let connector = QuicConnector::new(server.client_options()).expect("connector");
    let err = connector.connect(server.addr, None).await.expect_err("the server is full");
    assert!(matches!(err, ClientError::Connection(_)), "{err}");
    // The stalled handshakes time out, and the server takes clients again.
    wait_stats(&server, "stalled handshakes expired", |s| s.handshakes_in_progress == 0).await;
    native(&server, &tokens, "after-flood").await;
}

#[tokio::test]
async fn with_always_retry_a_flood_from_unvalidated_addresses_holds_no_handshake_state() {
    let config = QuicConfig { retry: RetryPolicy::Always, max_handshakes: 8, ..QuicConfig::default() };
    let (server, tokens, _hub) = server(config).await;
    let _socket = flood_initials(server.addr, 40);
    let stats = wait_stats(&server, "40 attempts handled", |s| s.incoming == 40).await;
    assert_eq!((stats.retried, stats.refused, stats.handshakes_in_progress), (40, 0, 0), "{stats:?}");
    // A real client answers the Retry and gets in.
    native(&server, &tokens, "validated").await;
    let stats = *server.stats.borrow();
    assert_eq!(stats.retried, 41, "the real client was asked to validate its address too: {stats:?}");
    assert_eq!(stats.native_sessions, 1);
}

#[tokio::test]
async fn retry_kicks_in_above_the_configured_number_of_handshakes() {
    let config = QuicConfig { retry: RetryPolicy::AboveHandshakes(4), max_handshakes: 100, ..QuicConfig::default() };
    let (server, _tokens, _hub) = server(config).await;
    let _socket = flood_initials(server.addr, 20);
    let stats = wait_stats(&server, "20 attempts handled", |s| s.incoming == 20).await;
    assert_eq!((stats.handshakes_in_progress, stats.retried, stats.refused), (4, 16, 0), "{stats:?}");
}

#[tokio::test]
async fn the_session_survives_a_client_address_change() {
    let (server, tokens, _hub) = server(QuicConfig::default()).await;
    let (connector, mut a) = native(&server, &tokens, "mover").await;
    let (_cb, mut b) = native(&server, &tokens, "peer").await;
    let ch = herald_core::testkit::protocol::dm("mover", "peer");
    a.send_frame(json!({"type":"sub","id":1,"channel":ch}).to_string().as_bytes()).await.expect("send");
    assert_eq!(reply(&mut a, 1).await["type"], json!("reply"));

    let before = connector.endpoint().local_addr().expect("addr");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a new port");
    connector.endpoint().rebind(socket).expect("rebind");
    let after = connector.endpoint().local_addr().expect("addr");
    assert_ne!(before.port(), after.port(), "the client moved to a new port");

    // Client -> server on the new path.
    a.send_frame(json!({"type":"ping","id":2}).to_string().as_bytes()).await.expect("send");
    assert_eq!(reply(&mut a, 2).await["type"], json!("reply"));
    // Server -> client on the new path: a live message.
    b.send_frame(json!({"type":"send","id":1,"channel":ch,"body":{"t":"moved?"}}).to_string().as_bytes())
        .await
        .expect("send");
    assert_eq!(reply(&mut b, 1).await["type"], json!("reply"));
    loop {
        let v = next_json(&mut a).await;
        if v["type"] == "message" {
            assert_eq!(v["body"], json!({"t": "moved?"}));
            break;
        }
    }
}

#[tokio::test]
async fn zero_rtt_sessions_work_and_count_as_early() {
    let (server, tokens, _hub) = server(QuicConfig { zero_rtt: true, ..QuicConfig::default() }).await;
    let mut options = server.client_options();
    options.zero_rtt = true;
    let connector = QuicConnector::new(options).expect("connector");

    // A first session gives the client a resumption ticket.
    let first = connector.connect(server.addr, Some(&tokens.token("early"))).await.expect("connect");
    assert!(!first.sent_early(), "no ticket yet");
    let mut s = first.into_stream();
    next_json(&mut s).await;
    s.send_frame(br#"{"type":"ping","id":1}"#).await.expect("send");
    reply(&mut s, 1).await;
    s.close(1000, "bye");

    // The second one sends its header and first commands as 0-RTT data.
    let mut second = connector.connect(server.addr, Some(&tokens.token("early"))).await.expect("connect");
    assert!(second.sent_early(), "resumed with 0-RTT");
    let ch = herald_core::testkit::protocol::dm("early", "other");
    second.send_frame(json!({"type":"sub","id":1,"channel":ch}).to_string().as_bytes()).await.expect("send");
    second.send_frame(json!({"type":"send","id":2,"channel":ch,"body":1}).to_string().as_bytes()).await.expect("send");
    let hello = next_json(&mut second).await;
    assert_eq!(hello["user"], json!("early"));
    assert_eq!(reply(&mut second, 1).await["type"], json!("reply"));
    let sent = reply(&mut second, 2).await;
    assert_eq!((sent["type"].clone(), sent["seq"].clone()), (json!("reply"), json!(1)), "{sent}");
    assert!(second.early_data_accepted().await, "the server accepted the 0-RTT data");
    let stats = *server.stats.borrow();
    assert_eq!(stats.early_sessions, 2, "both sessions started before the handshake completed: {stats:?}");
}

#[tokio::test]
async fn without_zero_rtt_on_the_server_clients_fall_back_to_a_full_handshake() {
    let (server, tokens, _hub) = server(QuicConfig::default()).await;
    let mut options = server.client_options();
    options.zero_rtt = true;
    let connector = QuicConnector::new(options).expect("connector");
    for _ in 0..2 {
        let client = connector.connect(server.addr, Some(&tokens.token("late"))).await.expect("connect");
        assert!(!client.sent_early(), "the server's tickets allow no early data");
        let mut s = client.into_stream();
        next_json(&mut s).await;
        s.send_frame(br#"{"type":"ping","id":1}"#).await.expect("send");
        reply(&mut s, 1).await;
    }
    assert_eq!(server.stats.borrow().early_sessions, 0);
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001() {
    let (server, tokens, hub) = server(QuicConfig::default()).await;
    let (_c, mut native_s) = native(&server, &tokens, "stay1").await;
    let web = WebTransportConnector::new(server.client_options()).expect("connector");
    let mut web_s = web.connect(&server.wt_url(Some(&tokens.token("stay2"))), None).await.expect("wt").into_stream();
    assert_eq!(next_json(&mut web_s).await["type"], json!("hello"));
    let addr = server.addr;
    server.shutdown().await;
    assert_eq!(until_closed(&mut native_s).await.1, Some(1001));
    assert_eq!(until_closed(&mut web_s).await.1, Some(1001));
    assert_eq!(hub.session_count(), 0);
    // Nothing accepts connections any more.
    let connector = QuicConnector::new(ClientOptions {
        idle_timeout: Duration::from_secs(1),
        ..ClientOptions::new(herald_quic::client::Trust::CertHashes(vec![]))
    })
    .expect("connector");
    assert!(connector.connect(addr, None).await.is_err());
}

#[tokio::test]
async fn keepalive_frames_reset_the_idle_timer_and_are_not_commands() {
    let tokens = TestTokens::default();
    let config = HubConfig { idle_timeout: Duration::from_millis(1000), ..HubConfig::default() };
    let hub = Hub::builder(Arc::new(MemoryStore::new()), Arc::new(tokens.auth())).config(config).build();
    let server = TestServer::start(hub, QuicConfig::default()).await;
    let (_c, mut s) = native(&server, &tokens, "idler").await;
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    for _ in 0..8 {
        ticks.tick().await;
        s.keepalive().await.expect("keepalive");
    }
    // 1.6 s passed with only keep-alives: still open, and no error for them.
    s.send_frame(br#"{"type":"ping","id":9}"#).await.expect("send");
    assert_eq!(reply(&mut s, 9).await["type"], json!("reply"));
    // Silence closes with 4000.
    assert_eq!(until_closed(&mut s).await.1, Some(4000));
}

#[tokio::test]
async fn a_certificate_from_pem_files_is_trusted_through_its_ca() {
    // A CA and a leaf for localhost signed by it, written as PEM files.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "herald test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let dir = std::env::temp_dir().join(format!("herald-quic-pem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_path, key_path) = (dir.join("chain.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca_cert.pem())).expect("write");
    std::fs::write(&key_path, leaf_key.serialize_pem()).expect("write");

    let cert = herald_quic::ServerCertificate::from_pem_files(&cert_path, &key_path).expect("load PEM files");
    assert_eq!(cert.chain().len(), 2);
    assert!(!cert.is_self_signed_dev());
    let tokens = TestTokens::default();
    let server = TestServer::start_with_certificate(hub(&tokens), QuicConfig::default(), cert).await;
    let trust = herald_quic::client::Trust::Roots(vec![ca_cert.der().clone()]);
    let connector = QuicConnector::new(ClientOptions::new(trust.clone())).expect("connector");
    let mut s = connector.connect(server.addr, Some(&tokens.token("ca-user"))).await.expect("trusted").into_stream();
    assert_eq!(next_json(&mut s).await["user"], json!("ca-user"));
    // The wrong name is refused.
    let wrong = ClientOptions { server_name: "example.com".into(), ..ClientOptions::new(trust) };
    let err = QuicConnector::new(wrong).expect("connector").connect(server.addr, None).await.expect_err("bad name");
    assert!(matches!(err, ClientError::Connection(_)), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
