//! Support shared by the tests that run the real `herald-server` binary: a clean command, a started server that
//! is killed on drop (or with SIGKILL on demand), its stdout lines and stderr, plain HTTP requests to it, a
//! protocol client over WebSocket, and the PostgreSQL test database (a schema of its own, dropped afterwards).

#![allow(dead_code)] // Each test file uses its own subset.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald::core::auth::{TokenClaims, mint_hs256};
use serde_json::{Value, json};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use tokio_tungstenite::tungstenite::Message;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_herald-server");
/// The HS256 secret the tests configure (`HERALD_AUTH__JWT_HS256_SECRET`) and [`token`] signs with.
pub(crate) const SECRET: &str = "an-integration-test-secret-of-40-bytes!!";
/// How long a test waits for one expected frame.
pub(crate) const WAIT: Duration = Duration::from_secs(15);
/// How long a test waits for the server to print a line (start-up on a loaded machine included).
const START_WAIT: Duration = Duration::from_secs(60);

/// A command for the binary with no inherited `HERALD_*` or `OTEL_*` variables (the developer's shell must not
/// matter), and its own fresh data directory for the SQLite store, outside the repository.
pub(crate) fn herald() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("HERALD_") || name.starts_with("OTEL_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd.env("HERALD_DATA_DIR", data_dir());
    // QUIC and long-poll are on by default, on fixed ports: tests run servers side by side.
    cmd.env("HERALD_QUIC__LISTEN", "127.0.0.1:0");
    cmd.env("HERALD_LONGPOLL__LISTEN", "127.0.0.1:0");
    cmd
}

/// A data directory no other command of this test run uses (not created: the server creates it).
pub(crate) fn data_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("herald-server-{}-data-{n}", std::process::id()))
}

/// A suffix no other test run uses: process id and time (lower case, digits and `_`).
pub(crate) fn unique() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}_{nanos}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The lines a process printed on stdout so far, and a signal for each new one.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    added: Condvar,
}

/// A running server; killed on drop.
pub(crate) struct Server {
    /// The process.
    pub(crate) child: Child,
    /// The HTTP/WebSocket listener's address.
    pub(crate) addr: SocketAddr,
    stdout: Arc<Lines>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `herald-server serve --listen 127.0.0.1:0` with `extra` arguments and environment variables and
    /// waits for its `listening on` line.
    pub(crate) fn start(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = herald();
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd)
    }

    /// Starts `cmd` (a `serve` command) with stdout and stderr captured and waits for its `listening on` line.
    pub(crate) fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn herald-server");
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
        let stdout = Arc::new(Lines::default());
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let lines = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                lines.lines.lock().expect("lock").push(line);
                lines.added.notify_all();
            }
        });
        let mut server = Self { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)), stdout, stderr };
        server.addr = server.stdout_line("listening on ").parse().expect("a socket address");
        server
    }

    /// The rest of the first stdout line that starts with `prefix`, trimmed; waits for it (and fails the test
    /// with the server's stderr when it does not come).
    pub(crate) fn stdout_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + START_WAIT;
        let mut lines = self.stdout.lines.lock().expect("lock");
        loop {
            if let Some(rest) = lines.iter().find_map(|l| l.strip_prefix(prefix)) {
                return rest.trim().to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no stdout line starting with {prefix:?}; stderr:\n{}", self.stderr());
            lines = self.stdout.added.wait_timeout(lines, left).expect("lock").0;
        }
    }

    /// Everything the server wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Sends the signal `name` (`TERM`, `INT`, ...) to the server.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status();
        assert!(status.expect("run kill").success(), "kill -{name} failed");
    }

    /// Kills the process with SIGKILL (no shutdown code runs) and reaps it.
    pub(crate) fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL herald-server");
        self.child.wait().expect("reap herald-server");
    }

    /// Waits for the process to exit.
    pub(crate) fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("herald-server did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`Server::wait`] without blocking the test's runtime (for tests that serve something on it).
    pub(crate) async fn exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "herald-server did not exit within {timeout:?}; stderr:
{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then a clean exit within 15 s.
    pub(crate) fn stop(mut self) {
        self.signal("TERM");
        let status = self.wait(Duration::from_secs(15));
        assert!(status.success(), "exit {status}; stderr:\n{}", self.stderr());
    }

    /// `GET path` over plain HTTP/1.1: (status line, body).
    pub(crate) fn get(&self, path: &str) -> (String, String) {
        let mut stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr).expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
        (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
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

/// A token for `user` signed with [`SECRET`], valid for an hour.
pub(crate) fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).expect("seconds fit i64") + 3600)
        .expect("a clock after 1970");
    mint_hs256(SECRET.as_bytes(), &TokenClaims { sub: user.to_owned(), exp: Some(exp), ..TokenClaims::default() })
        .expect("mint a token")
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protocol client over WebSocket: numbers commands, matches replies, keeps events for later.
pub(crate) struct Client {
    ws: Ws,
    next_id: u64,
    /// Events received while waiting for replies, oldest first.
    pub(crate) events: VecDeque<Value>,
}

/// What a command got back: the `reply` frame, or the `error` frame.
pub(crate) type Reply = Result<Value, Value>;

impl Client {
    /// Connects as `user` with a [`token`] (the server must have `HERALD_AUTH__JWT_HS256_SECRET` = [`SECRET`]).
    pub(crate) async fn connect(addr: SocketAddr, user: &str) -> Self {
        Self::connect_with(addr, &token(user), user).await
    }

    /// Connects with `token` and waits for `hello` naming `user`.
    pub(crate) async fn connect_with(addr: SocketAddr, token: &str, user: &str) -> Self {
        let url = format!("ws://{addr}/ws?token={token}");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket connect");
        let mut c = Self { ws, next_id: 1, events: VecDeque::new() };
        let hello = c.next_frame().await.expect("hello in time").expect("a frame");
        assert_eq!(hello["type"], "hello", "{hello}");
        assert_eq!(hello["user"], user, "{hello}");
        c
    }

    /// The next JSON frame; `Ok(None)` when the connection closed or broke.
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Value>, tokio::time::error::Elapsed> {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).expect("JSON frame")),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
    }

    /// Sends `command` with a fresh id and waits for its reply (`Ok`) or error (`Err`); `None` when the
    /// connection ended first.
    pub(crate) async fn try_cmd(&mut self, mut command: Value) -> Option<Reply> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        if self.ws.send(Message::text(command.to_string())).await.is_err() {
            return None;
        }
        loop {
            let frame = self.next_frame().await.expect("a reply in time")?;
            match (frame["type"].as_str(), frame["id"].as_u64()) {
                (Some("reply"), Some(i)) if i == id => return Some(Ok(frame)),
                (Some("error"), Some(i)) if i == id => return Some(Err(frame)),
                _ => self.events.push_back(frame),
            }
        }
    }

    /// Like [`Client::try_cmd`], but the connection must stay open.
    pub(crate) async fn cmd(&mut self, command: Value) -> Reply {
        let shown = command.to_string();
        self.try_cmd(command).await.unwrap_or_else(|| panic!("the connection ended before the answer to {shown}"))
    }

    /// Like [`Client::try_cmd`], but the command must succeed.
    pub(crate) async fn ok(&mut self, command: Value) -> Value {
        let shown = command.to_string();
        self.cmd(command).await.unwrap_or_else(|error| panic!("{shown} failed: {error}"))
    }

    /// The next event of type `ty` (earlier events of other types are kept).
    pub(crate) async fn event(&mut self, ty: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["type"] == ty) {
            return self.events.remove(i).expect("an index within the queue");
        }
        loop {
            let frame = self.next_frame().await.expect("an event in time").expect("the connection is open");
            if frame["type"] == ty {
                return frame;
            }
            self.events.push_back(frame);
        }
    }

    /// The whole log of `channel`, paging forward with `history`.
    pub(crate) async fn full_history(&mut self, channel: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.ok(json!({"type": "history", "channel": channel, "after": after, "limit": 200})).await;
            let messages = page["messages"].as_array().expect("messages").clone();
            if let Some(last) = messages.last() {
                after = last["seq"].as_u64().expect("seq");
            }
            all.extend(messages);
            if page["more"] != json!(true) {
                return all;
            }
        }
    }
}

/// The Postgres URL for tests (`HERALD_TEST_DATABASE_URL`). When it is unset the test named `test` is skipped
/// with a loud message, unless `HERALD_REQUIRE_SERVICES=1`, where a missing service fails the test.
pub(crate) fn test_database_url(test: &str) -> Option<String> {
    match std::env::var("HERALD_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let required = std::env::var("HERALD_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
            assert!(!required, "{test}: HERALD_TEST_DATABASE_URL is not set but HERALD_REQUIRE_SERVICES=1");
            eprintln!("\n*** SKIP {test}: HERALD_TEST_DATABASE_URL is not set, this PostgreSQL test did not run ***\n");
            None
        }
    }
}

/// A schema of the test database that only one test uses; dropped with its tables when the guard goes (also
/// when the test fails).
pub(crate) struct TestSchema {
    /// The test database (`HERALD_TEST_DATABASE_URL`).
    pub(crate) url: String,
    /// The schema's name (the server creates it).
    pub(crate) name: String,
}

impl TestSchema {
    /// A fresh schema name for `test`, or `None` after a loud skip (see [`test_database_url`]).
    pub(crate) fn new(test: &str) -> Option<Self> {
        let url = test_database_url(test)?;
        Some(Self { url, name: format!("herald_srv_{}", unique()) })
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Its own thread and runtime: drop runs inside and outside async tests, and during a panic.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let mut conn = PgConnectOptions::from_str(&url).expect("URL").connect().await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")))
                    .execute(&mut conn)
                    .await
                    .map(drop)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test schema {}: {dropped:?}", self.name);
        }
    }
}
