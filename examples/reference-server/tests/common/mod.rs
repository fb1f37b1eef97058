//! Support shared by the tests that run the real `herald-server` binary: start it, wait until it listens, kill
//! it, and talk the protocol over WebSocket.

#![allow(dead_code, unreachable_pub)] // Each test file uses its own subset.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald::core::auth::{TokenClaims, mint_hs256};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_herald-server");
/// The HS256 secret the tests configure.
pub const SECRET: &str = "an-integration-test-secret-of-40-bytes!!";
/// How long a test waits for one expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// A command for the binary with no inherited `HERALD_*` variables (the developer's shell must not matter).
pub fn herald() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// A running server process.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub child: Child,
    /// The WebSocket listener's address.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `herald-server serve --listen 127.0.0.1:0` with `extra` arguments and environment variables
    /// and waits for its `listening on` line.
    pub fn start(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on("127.0.0.1:0", extra, env)
    }

    /// Like [`Server::start`] on a given listen address.
    pub fn start_on(listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = herald();
        cmd.args(["serve", "--listen", listen]).args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn herald-server");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let sink = stderr.clone();
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
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().expect("a socket address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no `listening on` line; stderr:\n{}", stderr.lock().expect("lock"));
            }
        };
        Self { child, addr, stderr }
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Kills the process with SIGKILL (no shutdown code runs) and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL herald-server");
        self.child.wait().expect("reap herald-server");
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
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
pub fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64 + 3600)
        .expect("a clock after 1970");
    mint_hs256(SECRET.as_bytes(), &TokenClaims { sub: user.to_owned(), exp: Some(exp), ..TokenClaims::default() })
        .expect("mint a token")
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protocol client over WebSocket: numbers commands, matches replies, keeps events for later.
#[derive(Debug)]
pub struct Client {
    ws: Ws,
    next_id: u64,
    /// Events received while waiting for replies, oldest first.
    pub events: std::collections::VecDeque<Value>,
}

/// What a command got back.
pub type Reply = Result<Value, Value>;

impl Client {
    /// Connects as `user` and waits for `hello`.
    pub async fn connect(addr: SocketAddr, user: &str) -> Self {
        let url = format!("ws://{addr}/ws?token={}", token(user));
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket connect");
        let mut c = Self { ws, next_id: 1, events: Default::default() };
        let hello = c.next_frame().await.expect("hello").expect("a frame");
        assert_eq!(hello["type"], "hello", "{hello}");
        assert_eq!(hello["user"], user, "{hello}");
        c
    }

    /// The next JSON frame; `Ok(None)` when the connection closed or broke.
    pub async fn next_frame(&mut self) -> Result<Option<Value>, tokio::time::error::Elapsed> {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).expect("JSON frame")),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
    }

    /// Sends `command` with a fresh id and waits for its reply (`Ok`) or error (`Err`); `None` when the
    /// connection ended first.
    pub async fn try_cmd(&mut self, mut command: Value) -> Option<Reply> {
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

    /// Like [`Client::try_cmd`], but the command must succeed.
    pub async fn ok(&mut self, command: Value) -> Value {
        match self.try_cmd(command.clone()).await {
            Some(Ok(reply)) => reply,
            Some(Err(error)) => panic!("{command} failed: {error}"),
            None => panic!("the connection ended before the reply to {command}"),
        }
    }

    /// The next event of type `ty` (earlier events of other types are kept).
    pub async fn event(&mut self, ty: &str) -> Value {
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
    pub async fn full_history(&mut self, channel: &str) -> Vec<Value> {
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
pub fn test_database_url(test: &str) -> Option<String> {
    match std::env::var("HERALD_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let required = std::env::var("HERALD_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
            assert!(!required, "{test}: HERALD_TEST_DATABASE_URL is not set and HERALD_REQUIRE_SERVICES=1");
            eprintln!("SKIPPED {test}: set HERALD_TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test)");
            None
        }
    }
}
