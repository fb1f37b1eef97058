//! `herald-server` with `store = "postgres"`: messages survive a restart, an unreachable database is a clear
//! start-up error, and a database outage while serving turns sends into `unavailable` until it is back.
//!
//! The tests that need PostgreSQL read `HERALD_TEST_DATABASE_URL`; without it they print a loud SKIP and pass,
//! unless `HERALD_REQUIRE_SERVICES=1`. Each uses a fresh schema and drops it at the end.

mod common;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Server, TestSchema, herald};
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const TOKENS: &str = "{tok-alice = \"alice\", tok-bob = \"bob\"}";

/// The server with the tests' static tokens and `env`.
fn start(env: &[(&str, &str)]) -> Server {
    let env: Vec<(&str, &str)> = [("HERALD_AUTH__STATIC_TOKENS", TOKENS)].iter().chain(env).copied().collect();
    Server::start(&[], &env)
}

/// A send from bob to alice with client id `c<n>`.
fn send(n: u64, text: &str) -> Value {
    json!({"type": "send", "channel": "dm:alice:bob", "cid": format!("c{n}"), "body": {"text": text}})
}

#[tokio::test]
async fn messages_survive_a_restart() {
    let Some(schema) = TestSchema::new("messages_survive_a_restart") else { return };
    let env =
        [("HERALD_STORE", "postgres"), ("HERALD_DATABASE_URL", &schema.url), ("HERALD_POSTGRES__SCHEMA", &schema.name)];
    let server = start(&env);
    let mut bob = Client::connect_with(server.addr, "tok-bob", "bob").await;
    let reply = bob.ok(send(1, "before the restart")).await;
    assert_eq!(reply["seq"].as_u64(), Some(1), "{reply}");
    server.stop();

    let server = start(&env);
    let mut alice = Client::connect_with(server.addr, "tok-alice", "alice").await;
    let history = alice.ok(json!({"type": "history", "channel": "dm:alice:bob", "limit": 10})).await;
    let text = history.to_string();
    assert!(text.contains("before the restart"), "the message is in the history after a restart: {text}");
    let mut bob = Client::connect_with(server.addr, "tok-bob", "bob").await;
    // The same client id again is recognised as a duplicate across the restart.
    let dup = bob.ok(send(1, "before the restart")).await;
    assert_eq!((dup["seq"].as_u64(), dup["dup"].as_bool()), (Some(1), Some(true)), "{dup}");
    let reply = bob.ok(send(2, "after the restart")).await;
    assert_eq!(reply["seq"].as_u64(), Some(2), "seqs continue after a restart: {reply}");
    server.stop();
}

#[test]
fn an_unreachable_database_is_a_clear_start_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("postgres://herald:hunter2@127.0.0.1:{port}/herald");
    let out = herald()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .envs([
            ("HERALD_STORE", "postgres"),
            ("HERALD_DATABASE_URL", &url),
            ("HERALD_POSTGRES__ACQUIRE_TIMEOUT_MS", "300"),
        ])
        .output()
        .expect("run herald-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server must not start without its database");
    assert!(stderr.contains("cannot open the PostgreSQL store"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")) && !stderr.contains("hunter2"), "{stderr}");

    let out = herald()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HERALD_STORE", "postgres")
        .output()
        .expect("run herald-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("HERALD_DATABASE_URL"), "{stderr}");
}

/// A TCP proxy that can be cut (connections closed, new ones refused by an immediate close) and restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<Mutex<bool>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (up, connections) = (Arc::new(Mutex::new(true)), Arc::new(Mutex::new(Vec::new())));
        let (up2, connections2) = (Arc::clone(&up), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*up2.lock().expect("lock") {
                    continue; // dropped: closed at once
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections2.lock().expect("lock").push(task.abort_handle());
            }
        });
        Self { addr, up, connections }
    }

    fn cut(&self) {
        *self.up.lock().expect("lock") = false;
        for c in self.connections.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        *self.up.lock().expect("lock") = true;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_makes_sends_unavailable_until_it_is_back() {
    let Some(schema) = TestSchema::new("a_database_outage_makes_sends_unavailable_until_it_is_back") else {
        return;
    };
    let options = PgConnectOptions::from_str(&schema.url).expect("URL");
    let proxy = Proxy::start(format!("{}:{}", options.get_host(), options.get_port())).await;
    let database = options.get_database().unwrap_or("postgres");
    let url = format!("postgres://{}@{}/{database}", options.get_username(), proxy.addr);
    let server = start(&[
        ("HERALD_STORE", "postgres"),
        ("HERALD_POSTGRES__URL", &url),
        ("HERALD_POSTGRES__SCHEMA", &schema.name),
        ("HERALD_POSTGRES__ACQUIRE_TIMEOUT_MS", "500"),
    ]);
    let mut bob = Client::connect_with(server.addr, "tok-bob", "bob").await;
    assert_eq!(bob.ok(send(1, "one")).await["seq"].as_u64(), Some(1));

    proxy.cut();
    let failed = bob.cmd(send(2, "during the outage")).await.expect_err("a send during the outage fails");
    assert_eq!(failed["code"], "unavailable", "{failed}");
    assert!(failed["retry_after_ms"].as_u64().is_some(), "{failed}");
    // The server keeps serving meanwhile.
    bob.ok(json!({"type": "ping"})).await;

    proxy.restore();
    // The client retries the same send (same cid) until the store is back.
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        match bob.cmd(send(2, "during the outage")).await {
            Ok(reply) => break reply,
            Err(error) => {
                assert_eq!(error["code"], "unavailable", "{error}");
                assert!(Instant::now() < deadline, "the store did not come back: {error}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(reply["seq"].as_u64(), Some(2), "the retried send gets the next seq, nothing was lost: {reply}");
    server.stop();
}
