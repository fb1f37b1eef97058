//! The `herald-server` binary with `[quic]` enabled: native QUIC and WebTransport clients next to WebSocket,
//! the printed development certificate hash, the demo page, and shutdown with 1001.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use herald::quic::CertHash;
use herald::quic::client::{ClientError, ClientOptions, FrameStream, QuicConnector, Trust, WebTransportConnector};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_herald-server");
const SECRET: &str = "an-integration-test-secret-of-40-bytes!!";
const WAIT: Duration = Duration::from_secs(10);

/// A running server and what it printed on stdout.
struct Server {
    child: Child,
    http: SocketAddr,
    quic: SocketAddr,
    cert: CertHash,
}

impl Server {
    fn start() -> Self {
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HERALD_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("HERALD_AUTH__JWT_HS256_SECRET", SECRET)
            .env("HERALD_QUIC__ENABLED", "true")
            .env("HERALD_QUIC__LISTEN", "127.0.0.1:0")
            .env("HERALD_QUIC__DEMO_PAGE", "true")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn herald-server");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut quic, mut cert) = (None, None);
        let http = loop {
            let line = rx.recv_timeout(Duration::from_secs(30)).expect("the server prints its addresses");
            if let Some(a) = line.strip_prefix("quic listening on ") {
                quic = Some(a.trim().parse().expect("quic address"));
            } else if let Some(h) = line.strip_prefix("quic certificate sha256 ") {
                cert = Some(CertHash::from_hex(h).expect("64 hex digits"));
            } else if let Some(a) = line.strip_prefix("listening on ") {
                break a.trim().parse().expect("http address");
            }
        };
        Self { child, http, quic: quic.expect("quic line"), cert: cert.expect("certificate line") }
    }

    fn token(&self, user: &str) -> String {
        let out = Command::new(BIN).args(["token", user, "--secret", SECRET]).output().expect("run token");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn get(&self, path: &str) -> (String, String) {
        let mut stream = TcpStream::connect(self.http).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.http).expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
        (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let server = Server::start();
    let options = ClientOptions::new(Trust::CertHashes(vec![server.cert]));
    let native = QuicConnector::new(options.clone()).expect("connector");
    let mut alice = native.connect(server.quic, Some(&server.token("alice"))).await.expect("quic").into_stream();
    assert_eq!(next_json(&mut alice).await["user"], json!("alice"));
    let web = WebTransportConnector::new(options).expect("connector");
    let url = url_for(&server, &server.token("bob"));
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
    let (status, html) = server.get("/demo/");
    assert!(status.contains(" 200 "), "{status}");
    assert!(html.contains("WebTransport"), "{html}");
    let (_, config) = server.get("/demo/config.json");
    let config: Value = serde_json::from_str(&config).expect("JSON");
    assert_eq!(config["cert_sha256"], json!(server.cert.as_bytes().to_vec()));
    assert_eq!(config["webtransport_url"], json!(format!("https://{}/wt", server.quic)));

    // SIGTERM: both sessions are told 1001, the process exits cleanly.
    let status = Command::new("kill").arg("-TERM").arg(server.child.id().to_string()).status().expect("kill");
    assert!(status.success());
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
    let mut server = server;
    let exit = tokio::task::spawn_blocking(move || server.child.wait()).await.expect("join").expect("wait");
    assert!(exit.success(), "{exit}");
}

fn url_for(server: &Server, token: &str) -> url::Url {
    let mut url = url::Url::parse(&format!("https://{}/wt", server.quic)).expect("url");
    url.query_pairs_mut().append_pair("token", token);
    url
}
