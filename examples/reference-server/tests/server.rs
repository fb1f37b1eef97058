//! End-to-end tests of the `herald-server` binary: start it on a free port, check `/healthz`, mint a token,
//! talk WebSocket, stop it with a signal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

use common::{SECRET, Server, data_dir, herald};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Runs the binary to completion.
fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run herald-server")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A file in this test target's scratch directory.
fn scratch(name: &str, contents: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("herald-server-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write scratch file");
    path
}

impl Server {
    /// Waits until stderr contains `needle` and returns all of it.
    fn wait_for_stderr(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stderr = self.stderr();
            if stderr.contains(needle) {
                return stderr;
            }
            assert!(Instant::now() < deadline, "{needle:?} never appeared on stderr:\n{stderr}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn health(&self) -> Value {
        let (status, body) = self.get("/healthz");
        assert!(status.contains(" 200 "), "{status}");
        serde_json::from_str(&body).expect("health is JSON")
    }
}

/// `herald-server token ...`
fn mint(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = herald();
    cmd.arg("token").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "token failed: {}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    token
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, token: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}")).await.expect("connect");
    ws
}

/// The next text frame, as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    let read = async {
        loop {
            match ws.next().await.expect("open").expect("read") {
                Message::Text(t) => return serde_json::from_str::<Value>(t.as_str()).expect("JSON"),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("a frame in time")
}

/// Reads until the close frame and returns its code.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    let read = async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(c)) => return c.map(|c| c.code),
                Ok(_) => {}
                Err(e) => panic!("read error before the close frame: {e}"),
            }
        }
        panic!("the connection ended without a close frame");
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("a close frame in time")
}

/// hello with `user`, then ping -> reply.
async fn hello_and_ping(ws: &mut Ws, user: &str) {
    let hello = next_json(ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    assert_eq!(hello["user"], user, "{hello}");
    ws.send(Message::text(r#"{"type":"ping","id":1}"#)).await.expect("send");
    let reply = next_json(ws).await;
    assert_eq!((reply["type"].as_str(), reply["id"].as_u64()), (Some("reply"), Some(1)), "{reply}");
}

#[tokio::test]
async fn serves_health_and_websocket_and_stops_on_sigterm() {
    let config = scratch(
        "e2e.toml",
        &format!(
            "[auth]\njwt_hs256_secret = \"{SECRET}\"\njwt_issuer = \"https://id.example\"\n\
             jwt_audience = \"herald\"\n[auth.static_tokens]\n\"dev-token-bob\" = \"bob\"\n"
        ),
    );
    let config = config.to_str().expect("utf-8 path");
    // HERALD_REQUIRE_SERVICES belongs to the test harness, not to the config: it must be ignored.
    let mut server = Server::start(&["--config", config], &[("HERALD_REQUIRE_SERVICES", "1")]);
    assert_eq!(server.health(), serde_json::json!({ "status": "ok", "sessions": 0 }));
    let (status, _) = server.get("/nope");
    assert!(status.contains(" 404 "), "{status}");

    // The token carries the config file's issuer and audience.
    let token = mint(&["alice", "--config", config, "--ttl", "1h"], &[]);
    let mut alice = connect(server.addr, &token).await;
    hello_and_ping(&mut alice, "alice").await;
    // The secret from the environment, issuer and audience from the file.
    let token = mint(&["carol", "--config", config], &[("HERALD_AUTH__JWT_HS256_SECRET", SECRET)]);
    let mut carol = connect(server.addr, &token).await;
    hello_and_ping(&mut carol, "carol").await;
    // A static development token.
    let mut bob = connect(server.addr, "dev-token-bob").await;
    hello_and_ping(&mut bob, "bob").await;
    assert_eq!(server.health()["sessions"], 3);

    // The README's example: bob writes to the direct channel, alice subscribes from the start and gets it.
    bob.send(Message::text(r#"{"type":"send","id":2,"channel":"dm:alice:bob","body":{"text":"hi"}}"#))
        .await
        .expect("send");
    let sent = next_json(&mut bob).await;
    assert_eq!((sent["type"].as_str(), sent["id"].as_u64(), sent["seq"].as_u64()), (Some("reply"), Some(2), Some(1)));
    alice.send(Message::text(r#"{"type":"sub","id":2,"channel":"dm:alice:bob","since":0}"#)).await.expect("send");
    let (a, b) = (next_json(&mut alice).await, next_json(&mut alice).await);
    let msg = if a["type"] == "message" { &a } else { &b };
    assert_eq!(msg["body"]["text"], "hi", "{a} {b}");

    // A token without the configured issuer is refused at connect time (4001).
    let bad = mint(&["mallory", "--secret", SECRET], &[]);
    let mut mallory = connect(server.addr, &bad).await;
    let error = next_json(&mut mallory).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(close_code(&mut mallory).await, Some(CloseCode::Library(4001)));

    server.signal("TERM");
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(close_code(ws).await, Some(CloseCode::Away));
    }
    let status = server.wait(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}; stderr:\n{}", server.stderr());
    server.wait_for_stderr("SIGTERM");
    let stderr = server.wait_for_stderr("stopped");
    assert!(!stderr.contains("development mode"), "{stderr}");
}

#[tokio::test]
async fn without_a_secret_it_generates_one_and_explains_how_to_connect() {
    let mut server = Server::start(&["--log-format", "json"], &[]);
    let stderr = server.wait_for_stderr("Health: curl");
    let secret = stderr
        .lines()
        .find_map(|l| l.split_once(" token alice --secret ").map(|(_, s)| s.trim().to_owned()))
        .unwrap_or_else(|| panic!("no mint command in:\n{stderr}"));
    assert_eq!(secret.len(), 64, "{secret}");
    assert!(stderr.contains(&format!("websocat \"ws://{}/ws?token=$(", server.addr)), "{stderr}");
    // The JS line carries a ready token for alice.
    let sample = stderr
        .lines()
        .find_map(|l| l.split_once("/ws?token=").filter(|_| l.contains("new WebSocket(")))
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(token, _)| token.to_owned())
        .unwrap_or_else(|| panic!("no JS line in:\n{stderr}"));
    // JSON logs.
    assert!(stderr.lines().any(|l| l.starts_with('{') && l.contains("\"level\":\"INFO\"")), "{stderr}");

    let token = mint(&["alice", "--secret", &secret, "--device", "laptop"], &[]);
    let mut ws = connect(server.addr, &token).await;
    hello_and_ping(&mut ws, "alice").await;

    let mut ws2 = connect(server.addr, &sample).await;
    hello_and_ping(&mut ws2, "alice").await;

    server.signal("INT");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
    assert_eq!(close_code(&mut ws2).await, Some(CloseCode::Away));
    let status = server.wait(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}; stderr:\n{}", server.stderr());
}

/// The default SQLite store: a second server on the same data directory is refused with a clear error, and the
/// history survives a restart.
#[tokio::test]
async fn sqlite_keeps_history_across_restarts_and_refuses_a_second_server() {
    let config = scratch(
        "sqlite.toml",
        &format!(
            "[auth]\njwt_hs256_secret = \"{SECRET}\"\n[auth.static_tokens]\n\"dev-token-alice\" = \"alice\"\n\
             \"dev-token-bob\" = \"bob\"\n"
        ),
    );
    let config = config.to_str().expect("utf-8 path");
    let dir = data_dir();
    let dir_str = dir.to_str().expect("utf-8 path");
    let mut first = Server::start(&["--config", config], &[("HERALD_DATA_DIR", dir_str)]);
    assert!(dir.join("herald.db").is_file(), "the data directory and database are created on first start");
    first.wait_for_stderr("SQLite store open");
    let mut bob = connect(first.addr, "dev-token-bob").await;
    hello_and_ping(&mut bob, "bob").await;
    bob.send(Message::text(r#"{"type":"send","id":2,"channel":"dm:alice:bob","body":{"text":"kept"}}"#))
        .await
        .expect("send");
    let sent = next_json(&mut bob).await;
    assert_eq!((sent["type"].as_str(), sent["seq"].as_u64()), (Some("reply"), Some(1)), "{sent}");

    let second =
        run(herald().args(["serve", "--listen", "127.0.0.1:0", "--config", config]).env("HERALD_DATA_DIR", &dir));
    assert!(!second.status.success(), "a second server on the same data directory must not start");
    let err = text(&second.stderr);
    assert!(err.contains("already open") && err.contains("herald.db"), "{err}");

    first.signal("TERM");
    assert_eq!(close_code(&mut bob).await, Some(CloseCode::Away));
    let status = first.wait(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}; stderr:\n{}", first.stderr());

    let third = Server::start(&["--config", config], &[("HERALD_DATA_DIR", dir_str)]);
    let mut alice = connect(third.addr, "dev-token-alice").await;
    hello_and_ping(&mut alice, "alice").await;
    alice.send(Message::text(r#"{"type":"sub","id":2,"channel":"dm:alice:bob","since":0}"#)).await.expect("send");
    let (a, b) = (next_json(&mut alice).await, next_json(&mut alice).await);
    let msg = if a["type"] == "message" { &a } else { &b };
    assert_eq!((msg["body"]["text"].as_str(), msg["seq"].as_u64()), (Some("kept"), Some(1)), "{a} {b}");
}

#[test]
fn check_config_rejects_unknown_keys_clearly() {
    let file = scratch("unknown-key.toml", "[hub.limits]\nmax_frame_bytez = 10\n");
    let out = run(herald().arg("check-config").arg("--config").arg(&file));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("unknown field") && err.contains("max_frame_bytez"), "{err}");
    assert!(err.contains("hub.limits.max_frame_bytez"), "{err}");

    let out = run(herald().arg("check-config").env("HERALD_HUB__BOGUS", "1"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("HERALD_HUB__BOGUS"), "{}", text(&out.stderr));

    let out = run(herald().arg("check-config").arg("--config").arg("/nonexistent/herald.toml"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
}

#[test]
fn check_config_refuses_other_stores_and_short_secrets() {
    let out = run(herald().arg("check-config").env("HERALD_STORE", "cassandra"));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("\"cassandra\"") && err.contains("store = \"memory\"") && err.contains("store = \"sqlite\""),
        "{err}"
    );

    let out = run(herald().arg("check-config").env("HERALD_AUTH__JWT_HS256_SECRET", "short"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("at least 32"), "{}", text(&out.stderr));

    let file = scratch("missing-pem.toml", "[[auth.jwt_keys]]\nalg = \"ES256\"\npem_file = \"no-such-key.pem\"\n");
    let out = run(herald().arg("check-config").arg("--config").arg(&file));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("auth.jwt_keys[0]") && err.contains("no-such-key.pem"), "{err}");
}

#[test]
fn env_overrides_the_file_and_secrets_are_redacted() {
    let file = scratch("env.toml", "listen = \"127.0.0.1:9000\"\n[hub.limits]\nmax_frame_bytes = 1000\n");
    let out = run(herald()
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .env("HERALD_HUB__LIMITS__MAX_FRAME_BYTES", "12345")
        .env("HERALD_AUTH__JWT_HS256_SECRET", SECRET)
        .env("HERALD_AUTH__STATIC_TOKENS", "{dev-token-zed = \"zed\"}")
        .env("HERALD_REQUIRE_SERVICES", "1"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    assert!(toml.contains("listen = \"127.0.0.1:9000\""), "{toml}");
    assert!(toml.contains("max_frame_bytes = 12345"), "{toml}");
    assert!(toml.contains("\"<redacted #1>\" = \"zed\""), "{toml}");
    assert!(!toml.contains(SECRET) && !toml.contains("dev-token-zed"), "{toml}");
    assert!(toml.contains("jwt_hs256_secret = \"<redacted>\""), "{toml}");

    let out = run(herald().arg("check-config").env("HERALD_LISTEN", "0.0.0.0:7000"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("listen = \"0.0.0.0:7000\""));
    assert!(text(&out.stderr).contains("development secret"));
}

#[test]
fn the_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../herald.example.toml");
    let out = run(herald().arg("check-config").arg("--config").arg(&example));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn token_needs_a_secret_and_valid_ids() {
    let out = run(herald().args(["token", "alice"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--secret"), "{}", text(&out.stderr));

    let out = run(herald().args(["token", "not a user", "--secret", SECRET]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("invalid user id"), "{}", text(&out.stderr));

    let out = run(herald().args(["token", "alice", "--secret", "too-short"]));
    assert!(!out.status.success());

    let out = run(herald().args(["token", "alice", "--secret", SECRET, "--ttl", "soon"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("invalid TTL"), "{}", text(&out.stderr));

    // The secret from a config file.
    let file = scratch("token.toml", &format!("[auth]\njwt_hs256_secret = \"{SECRET}\"\n"));
    let file = file.to_str().expect("utf-8 path");
    let a = mint(&["alice", "--config", file, "--ttl", "3600s"], &[]);
    let b = mint(&["alice", "--secret", SECRET, "--ttl", "3600s"], &[]);
    // Same claims (unless a second boundary passed between the two), same signature.
    assert_eq!(a.split('.').next(), b.split('.').next());
}
