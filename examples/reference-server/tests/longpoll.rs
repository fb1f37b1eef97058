//! `herald-server serve` with `[longpoll]` enabled: open a long-poll session over HTTP/1.1, ping, stop on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{SECRET, Server, token};
use serde_json::Value;

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
    let server = Server::start(
        &[],
        &[
            ("HERALD_AUTH__JWT_HS256_SECRET", SECRET),
            ("HERALD_LONGPOLL__ENABLED", "true"),
            ("HERALD_LONGPOLL__LISTEN", "127.0.0.1:0"),
        ],
    );
    let url = server.stdout_line("longpoll listening on ");
    let rest = url.strip_prefix("http://").expect("cleartext by default");
    let (host, prefix) = rest.split_once('/').map(|(h, p)| (h.to_owned(), format!("/{p}"))).expect("a URL");

    let token = token("alice");
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

    server.stop();
}
