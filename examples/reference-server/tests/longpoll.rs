//! `herald-server serve` with `[longpoll]` enabled: open a long-poll session over HTTP/1.1, ping, stop on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_herald-server");
const SECRET: &str = "an-integration-test-secret-of-40-bytes!!";

fn herald() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HERALD_AUTH__JWT_HS256_SECRET", SECRET);
    cmd
}

/// One HTTP/1.1 request on its own connection: (status code, JSON body or `Null`).
fn request(host: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(host).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn serves_long_poll_next_to_websocket() {
    let mut child = herald()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HERALD_LONGPOLL__ENABLED", "true")
        .env("HERALD_LONGPOLL__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn herald-server");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("longpoll listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("no `longpoll listening on` line");
    });
    let rest = url.strip_prefix("http://").expect("cleartext by default");
    let (host, prefix) = rest.split_once('/').map(|(h, p)| (h.to_owned(), format!("/{p}"))).expect("a URL");

    let token = herald().args(["token", "alice"]).output().expect("mint");
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let (status, opened) = request(&host, "POST", &format!("{prefix}/sessions"), Some(&token), "");
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["events"][0]["event"]["type"], "hello", "{opened}");
    assert_eq!(opened["events"][0]["event"]["user"], "alice", "{opened}");
    let session = opened["session"].as_str().expect("a session id").to_owned();
    let (status, _) =
        request(&host, "POST", &format!("{prefix}/sessions/{session}/commands"), None, r#"{"type":"ping","id":1}"#);
    assert_eq!(status, 202);
    let (status, batch) =
        request(&host, "GET", &format!("{prefix}/sessions/{session}/events?ack=1&wait=5000"), None, "");
    assert_eq!(status, 200);
    assert_eq!(batch["events"][0]["event"], serde_json::json!({"type": "reply", "id": 1}), "{batch}");

    let killed = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("herald-server did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
