//! `herald-server` with `store = "postgres"`: messages survive a restart, an unreachable database is a clear
//! start-up error, and a database outage while serving turns sends into `unavailable` until it is back.
//!
//! The tests that need PostgreSQL read `HERALD_TEST_DATABASE_URL`; without it they print a loud SKIP and pass,
//! unless `HERALD_REQUIRE_SERVICES=1`. Each uses a fresh schema and drops it at the end.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_herald-server");
const TOKENS: &str = "{tok-alice = \"alice\", tok-bob = \"bob\"}";

/// The test database's URL, or `None` after a loud SKIP (a panic with `HERALD_REQUIRE_SERVICES=1`).
fn database_url(test: &str) -> Option<String> {
    match std::env::var("HERALD_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("HERALD_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("HERALD_TEST_DATABASE_URL is not set but HERALD_REQUIRE_SERVICES=1: {test} needs PostgreSQL");
            }
            eprintln!("\n*** SKIP {test}: HERALD_TEST_DATABASE_URL is not set, this PostgreSQL test did not run ***\n");
            None
        }
    }
}

/// A fresh schema name, dropped with its tables when the guard goes.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(test: &str) -> Option<Self> {
        let url = database_url(test)?;
        Some(Self { url, name: format!("herald_srv_{}", uuid_like()) })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let mut conn = PgConnectOptions::from_str(&url).expect("URL").connect().await.expect("connect");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")))
                    .execute(&mut conn)
                    .await
                    .expect("drop the test schema");
            });
        })
        .join();
    }
}

/// A unique lower-case suffix (process id and time).
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}_{nanos}", std::process::id())
}

/// A running server (killed on drop).
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

/// The binary with no inherited `HERALD_*` variables, on a free port, with `env`.
fn command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).env("RUST_LOG", "info").env("HERALD_AUTH__STATIC_TOKENS", TOKENS);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Server {
    fn start(env: &[(&str, &str)]) -> Self {
        let mut child =
            command(env).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn herald-server");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(err.read_line(&mut line), Ok(n) if n > 0) {
                sink.lock().expect("lock").push_str(&line);
                line.clear();
            }
        });
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().expect("a socket address"),
            Err(_) => {
                let _ = child.kill();
                panic!("no `listening on` line; stderr:\n{}", stderr.lock().expect("lock"));
            }
        };
        Self { child, addr, stderr }
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        assert!(status.expect("run kill").success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "exit {status}; stderr:\n{}", self.stderr.lock().expect("lock"));
                return;
            }
            assert!(Instant::now() < deadline, "herald-server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects as the static token's user and reads `hello`.
async fn connect(addr: SocketAddr, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}")).await.expect("connect");
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    ws
}

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
    tokio::time::timeout(Duration::from_secs(15), read).await.expect("a frame in time")
}

/// Sends a command and returns the answer with the same id (skipping other events).
async fn request(ws: &mut Ws, id: u64, frame: Value) -> Value {
    ws.send(Message::text(frame.to_string())).await.expect("send");
    loop {
        let event = next_json(ws).await;
        if event["id"].as_u64() == Some(id) {
            return event;
        }
    }
}

async fn send(ws: &mut Ws, id: u64, text: &str) -> Value {
    let frame = serde_json::json!({"type": "send", "id": id, "channel": "dm:alice:bob", "cid": format!("c{id}"),
        "body": {"text": text}});
    request(ws, id, frame).await
}

#[tokio::test]
async fn messages_survive_a_restart() {
    let Some(schema) = Schema::new("messages_survive_a_restart") else { return };
    let env =
        [("HERALD_STORE", "postgres"), ("HERALD_DATABASE_URL", &schema.url), ("HERALD_POSTGRES__SCHEMA", &schema.name)];
    let server = Server::start(&env);
    let mut bob = connect(server.addr, "tok-bob").await;
    let reply = send(&mut bob, 1, "before the restart").await;
    assert_eq!((reply["type"].as_str(), reply["seq"].as_u64()), (Some("reply"), Some(1)), "{reply}");
    server.stop();

    let server = Server::start(&env);
    let mut alice = connect(server.addr, "tok-alice").await;
    alice.send(Message::text(r#"{"type":"history","id":7,"channel":"dm:alice:bob","limit":10}"#)).await.expect("send");
    let history = loop {
        let event = next_json(&mut alice).await;
        if event["id"].as_u64() == Some(7) {
            break event;
        }
    };
    let text = history.to_string();
    assert!(text.contains("before the restart"), "the message is in the history after a restart: {text}");
    let mut bob = connect(server.addr, "tok-bob").await;
    // The same client id again is recognised as a duplicate across the restart.
    let dup = send(&mut bob, 1, "before the restart").await;
    assert_eq!((dup["seq"].as_u64(), dup["dup"].as_bool()), (Some(1), Some(true)), "{dup}");
    let reply = send(&mut bob, 2, "after the restart").await;
    assert_eq!(reply["seq"].as_u64(), Some(2), "seqs continue after a restart: {reply}");
    server.stop();
}

#[test]
fn an_unreachable_database_is_a_clear_start_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("postgres://herald:hunter2@127.0.0.1:{port}/herald");
    let out = command(&[
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

    let out = command(&[("HERALD_STORE", "postgres")]).output().expect("run herald-server");
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
    let Some(schema) = Schema::new("a_database_outage_makes_sends_unavailable_until_it_is_back") else { return };
    let options = PgConnectOptions::from_str(&schema.url).expect("URL");
    let proxy = Proxy::start(format!("{}:{}", options.get_host(), options.get_port())).await;
    let database = options.get_database().unwrap_or("postgres");
    let url = format!("postgres://{}@{}/{database}", options.get_username(), proxy.addr);
    let server = Server::start(&[
        ("HERALD_STORE", "postgres"),
        ("HERALD_POSTGRES__URL", &url),
        ("HERALD_POSTGRES__SCHEMA", &schema.name),
        ("HERALD_POSTGRES__ACQUIRE_TIMEOUT_MS", "500"),
    ]);
    let mut bob = connect(server.addr, "tok-bob").await;
    assert_eq!(send(&mut bob, 1, "one").await["seq"].as_u64(), Some(1));

    proxy.cut();
    let failed = send(&mut bob, 2, "during the outage").await;
    assert_eq!((failed["type"].as_str(), failed["code"].as_str()), (Some("error"), Some("unavailable")), "{failed}");
    assert!(failed["retry_after_ms"].as_u64().is_some(), "{failed}");
    // The server keeps serving meanwhile.
    let pong = request(&mut bob, 3, serde_json::json!({"type": "ping", "id": 3})).await;
    assert_eq!(pong["type"], "reply", "{pong}");

    proxy.restore();
    // The client retries the same send (same cid) until the store is back.
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        let reply = send(&mut bob, 2, "during the outage").await;
        if reply["type"] == "reply" {
            break reply;
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(Instant::now() < deadline, "the store did not come back: {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(reply["seq"].as_u64(), Some(2), "the retried send gets the next seq, nothing was lost: {reply}");
    server.stop();
}
