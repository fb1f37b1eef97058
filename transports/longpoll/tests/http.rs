//! The long-poll binding end to end over real HTTP: redelivery, linger, errors, limits, CORS, slow clients,
//! HTTP versions, reader replacement, SSE resume, backpressure and shutdown.

mod common;

use std::time::Duration;

use common::{Server, eventually};
use futures_util::StreamExt;
use herald_core::HubConfig;
use herald_longpoll::LpConfig;
use herald_longpoll::client::{Close, LpClient, SseItem};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(5);

fn ping(id: u64) -> String {
    json!({"type": "ping", "id": id}).to_string()
}

#[tokio::test]
async fn a_lost_response_is_delivered_again_until_acknowledged() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let server = Server::start(hub, LpConfig::default(), false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let opened = client.open(Some(&tokens.token("alice"))).await.expect("open");
    assert_eq!(opened.events.len(), 1);
    assert_eq!((opened.events[0].n, opened.events[0].event["type"].clone()), (1, json!("hello")));
    let s = opened.session;

    s.send(ping(7)).await.expect("post");
    let first = s.poll_with(1, WAIT).await.expect("poll");
    assert_eq!(first.events.len(), 1, "{:?}", first.events);
    assert_eq!(first.events[0].n, 2);
    assert_eq!(first.events[0].event, json!({"type": "reply", "id": 7}));

    // The response was lost: the client asks again with the same ack and gets the same events.
    let again = s.poll_with(1, WAIT).await.expect("poll again");
    assert_eq!(again.events, first.events);
    // Acks are cumulative: the hello (1) was acknowledged by the first poll and is not sent again.
    let all = s.poll_with(0, WAIT).await.expect("poll from 0");
    assert_eq!(all.events.iter().map(|e| e.n).collect::<Vec<_>>(), vec![2]);

    // Acknowledged: gone for good, even for a later request with an older ack.
    let acked = s.poll_with(2, Duration::ZERO).await.expect("ack");
    assert!(acked.events.is_empty(), "{:?}", acked.events);
    let older = s.poll_with(1, Duration::ZERO).await.expect("older ack");
    assert!(older.events.is_empty(), "{:?}", older.events);

    // An ack beyond the last event is refused.
    let e = s.poll_with(99, Duration::ZERO).await.expect_err("ack beyond");
    assert_eq!((e.status(), e.code()), (Some(400), Some("bad_request")));
}

#[tokio::test]
async fn an_unread_session_ends_after_the_linger_with_4000() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let linger = Duration::from_millis(800);
    let server = Server::start(hub.clone(), LpConfig { linger, ..LpConfig::default() }, false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let opened_at = Instant::now();
    let s = client.open(Some(&tokens.token("alice"))).await.expect("open").session;
    assert_eq!(s.linger(), linger);
    assert_eq!(hub.session_count(), 1);
    // Nobody reads: the driver closes the session once the linger has passed.
    eventually("the session to end", WAIT, || hub.session_count() == 0).await;
    assert!(opened_at.elapsed() >= linger, "closed after {:?}, before the linger", opened_at.elapsed());
    // For another linger the close can still be read; this answer is the last one. (The poll may arrive a moment
    // before the close is recorded: it is then held until it is.)
    let last = s.poll_with(1, WAIT).await.expect("the close");
    assert!(last.events.is_empty());
    assert_eq!(last.close, Some(Close { code: 4000, reason: "idle timeout".into() }));
    let gone = s.poll_with(1, Duration::ZERO).await.expect_err("gone");
    assert_eq!((gone.status(), gone.code()), (Some(404), Some("not_found")));
}

#[tokio::test]
async fn an_abandoned_unauthenticated_session_is_forgotten_at_its_auth_timeout() {
    let config = HubConfig { auth_timeout: Duration::from_millis(200), ..HubConfig::default() };
    let (hub, _) = common::hub(config);
    let server = Server::start(hub.clone(), LpConfig::default(), false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let opened = client.open(None).await.expect("open without a token");
    assert_eq!(opened.events[0].event["user"], Value::Null);
    // (This runtime has one thread: the driver ends the core session and records the close in one step.)
    eventually("the auth timeout", WAIT, || hub.session_count() == 0).await;
    // No reader was attached: nothing is kept for it (the linger, 30 s, does not apply).
    let e = opened.session.poll_with(1, Duration::ZERO).await.expect_err("forgotten");
    assert_eq!(e.status(), Some(404));
}

#[tokio::test]
async fn a_polling_session_outlives_the_linger_and_the_idle_timeout() {
    let config = HubConfig { idle_timeout: Duration::from_millis(300), ..HubConfig::default() };
    let (hub, tokens) = common::hub(config);
    let linger = Duration::from_millis(300);
    let server = Server::start(hub.clone(), LpConfig { linger, ..LpConfig::default() }, false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let mut s = client.open(Some(&tokens.token("alice"))).await.expect("open").session;
    // Held polls keep it alive well past both timeouts.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let batch = s.poll(Duration::from_millis(400)).await.expect("poll");
        assert_eq!(batch.close, None);
    }
    s.send(ping(1)).await.expect("still open");
    let batch = s.poll(WAIT).await.expect("reply");
    assert_eq!(batch.events[0].event, json!({"type": "reply", "id": 1}));
}

#[tokio::test]
async fn unknown_sessions_get_404_with_a_json_error() {
    let (hub, _) = common::hub(HubConfig::default());
    let server = Server::start(hub, LpConfig::default(), false).await;
    let http = server.h2();
    let base = server.base();
    let unknown = "0123456789abcdef0123456789abcdef";
    for (method, path) in [
        ("GET", format!("{base}/sessions/{unknown}/events?wait=0")),
        ("GET", format!("{base}/sessions/{unknown}/sse")),
        ("POST", format!("{base}/sessions/{unknown}/commands")),
        ("POST", format!("{base}/sessions/{unknown}/ack?ack=1")),
        ("DELETE", format!("{base}/sessions/{unknown}")),
        ("GET", format!("{base}/sessions/not-a-session-id/events")),
    ] {
        let req = match method {
            "GET" => http.get(&path),
            "POST" => http.post(&path).body(ping(1)),
            _ => http.delete(&path),
        };
        let res = req.send().await.expect("request");
        assert_eq!(res.status(), 404, "{method} {path}");
        assert_eq!(res.headers()["content-type"], "application/json");
        let body: Value = res.json().await.expect("a JSON body");
        assert_eq!(body["error"]["code"], "not_found", "{method} {path}: {body}");
    }
}

#[tokio::test]
async fn oversize_posts_get_413_and_the_session_stays_usable() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let max_post = 8192;
    let server = Server::start(hub, LpConfig { max_post_bytes: Some(max_post), ..LpConfig::default() }, false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let mut s = client.open(Some(&tokens.token("alice"))).await.expect("open").session;

    // Declared by Content-Length: refused before reading.
    let e = s.send("x".repeat(max_post + 1)).await.expect_err("too large");
    assert_eq!((e.status(), e.code()), (Some(413), Some("too_large")));
    // Streamed without a length: refused once the limit is crossed.
    let chunks = (0..4).map(move |_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; max_post / 2])));
    let res = client
        .http()
        .post(format!("{}/sessions/{}/commands", server.base(), s.id()))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "too_large");

    // Nothing of it reached the session, which still works.
    assert_eq!(s.send(ping(2)).await.expect("post"), 1);
    let batch = s.poll(WAIT).await.expect("poll");
    assert_eq!(batch.events.len(), 1, "the ping reply only: {:?}", batch.events);
    assert_eq!((batch.events[0].n, batch.events[0].event.clone()), (2, json!({"type": "reply", "id": 2})));
}

#[tokio::test]
async fn commands_are_posted_as_ndjson_and_malformed_ones_get_error_events() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let server = Server::start(hub, LpConfig::default(), false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let mut s = client.open(Some(&tokens.token("alice"))).await.expect("open").session;
    let accepted = s.send(format!("{}\nnot json\r\n\n{}\n", ping(1), ping(2))).await.expect("post");
    assert_eq!(accepted, 3);
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(s.poll(WAIT).await.expect("poll").events.into_iter().map(|e| e.event));
    }
    assert_eq!(got[0], json!({"type": "reply", "id": 1}));
    assert_eq!(got[1]["type"], "error");
    assert_eq!(got[1]["code"], "bad_request");
    assert_eq!(got[2], json!({"type": "reply", "id": 2}));
    let e = s.send("  \n").await.expect_err("empty");
    assert_eq!((e.status(), e.code()), (Some(400), Some("bad_request")));
}

#[tokio::test]
async fn a_refused_token_gets_401_with_the_close_code() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let server = Server::start(hub.clone(), LpConfig::default(), false).await;
    let http = server.h2();
    let res = http
        .post(format!("{}/sessions", server.base()))
        .header("authorization", "Bearer not-a-token")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("www-authenticate"));
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert_eq!(body["close"], json!({"code": 4001, "reason": "unauthenticated"}));
    assert_eq!(body["events"][0]["event"]["type"], "error");
    let expired = LpClient::with_http(http, server.base()).open(Some(&tokens.expired("alice"))).await;
    let e = expired.expect_err("expired");
    assert_eq!((e.status(), e.close().map(|c| c.code)), (Some(401), Some(4002)));
    eventually("no session left", WAIT, || hub.session_count() == 0).await;
}

#[tokio::test]
async fn cors_preflights_are_answered_for_allowed_origins_only() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let config = LpConfig { cors_origins: vec!["https://app.example".into()], ..LpConfig::default() };
    let server = Server::start(hub, config, false).await;
    let http = server.h1();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{}/sessions", server.base()))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let res = preflight("https://app.example").await.expect("preflight");
    assert!(res.status().is_success(), "{}", res.status());
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let methods = h["access-control-allow-methods"].to_str().expect("ascii").to_lowercase();
    assert!(methods.contains("post") && methods.contains("get") && methods.contains("delete"), "{methods}");
    let headers = h["access-control-allow-headers"].to_str().expect("ascii").to_lowercase();
    assert!(headers.contains("authorization") && headers.contains("last-event-id"), "{headers}");

    let res = preflight("https://evil.example").await.expect("preflight");
    assert!(!res.headers().contains_key("access-control-allow-origin"), "{:?}", res.headers());

    // Actual requests carry the CORS headers, exposing Retry-After and Location.
    let res = http
        .post(format!("{}/sessions", server.base()))
        .header("origin", "https://app.example")
        .header("authorization", format!("Bearer {}", tokens.token("alice")))
        .send()
        .await
        .expect("open");
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["access-control-allow-origin"], "https://app.example");
    let exposed = res.headers()["access-control-expose-headers"].to_str().expect("ascii").to_lowercase();
    assert!(exposed.contains("retry-after") && exposed.contains("location"), "{exposed}");
}

/// Reads until the server closes the connection; returns what was read and when it closed.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await.expect("the server closes the connection") {
            Ok(0) | Err(_) => return (got, Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_clients_are_disconnected_after_the_header_timeout() {
    let (hub, _) = common::hub(HubConfig::default());
    let timeout = Duration::from_millis(400);
    let server = Server::start(hub, LpConfig { header_read_timeout: timeout, ..LpConfig::default() }, false).await;

    // Half a request head, then silence.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    tcp.write_all(b"GET /lp/sessions/0123/events HTTP/1.1\r\nHost: test\r\n").await.expect("write");
    let (got, closed_at) = read_until_closed(&mut tcp).await;
    let after = closed_at - started;
    assert!(after >= timeout - Duration::from_millis(50), "closed after {after:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "unexpected answer: {text}");

    // A connection that sends nothing at all.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    let (got, closed_at) = read_until_closed(&mut tcp).await;
    assert!(got.is_empty());
    assert!(closed_at - started >= timeout - Duration::from_millis(50), "closed after {:?}", closed_at - started);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let (hub, _) = common::hub(HubConfig::default());
    let idle = Duration::from_millis(400);
    let server = Server::start(hub, LpConfig { idle_timeout: idle, ..LpConfig::default() }, false).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    // One complete request on a keep-alive connection; then the connection idles.
    tcp.write_all(b"GET /lp/sessions/0123/events HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("write");
    let answered = Instant::now();
    let (got, closed_at) = read_until_closed(&mut tcp).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    let after = closed_at - answered;
    assert!(after >= idle - Duration::from_millis(50), "closed after {after:?}");
    assert!(after < Duration::from_secs(3), "the header timeout (10 s) did not do it: {after:?}");
}

#[tokio::test]
async fn slow_request_bodies_get_408() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let config = LpConfig { body_timeout: Duration::from_millis(300), ..LpConfig::default() };
    let server = Server::start(hub, config, false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let s = client.open(Some(&tokens.token("alice"))).await.expect("open").session;
    // A body that never completes.
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"type\""))])
        .chain(futures_util::stream::pending());
    let res = client
        .http()
        .post(format!("{}/sessions/{}/commands", server.base(), s.id()))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 408);
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "timeout");
}

#[tokio::test]
async fn the_session_limit_answers_503_with_retry_after() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let server = Server::start(hub, LpConfig { max_sessions: 2, ..LpConfig::default() }, false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let a = client.open(Some(&tokens.token("a"))).await.expect("first");
    let _b = client.open(Some(&tokens.token("b"))).await.expect("second");
    let res = client
        .http()
        .post(format!("{}/sessions", server.base()))
        .header("authorization", format!("Bearer {}", tokens.token("c")))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(body["retry_after_ms"], 1000);
    // Closing one makes room.
    a.session.delete().await.expect("delete");
    client.open(Some(&tokens.token("c"))).await.expect("room again");
}

#[tokio::test]
async fn http1_and_http2_both_work_in_cleartext_and_over_tls() {
    for tls in [false, true] {
        let (hub, tokens) = common::hub(HubConfig::default());
        let server = Server::start(hub, LpConfig::default(), tls).await;
        for (http, version) in [(server.h1(), reqwest::Version::HTTP_11), (server.h2(), reqwest::Version::HTTP_2)] {
            let client = LpClient::with_http(http, server.base());
            let opened = client.open(Some(&tokens.token("alice"))).await.expect("open");
            assert_eq!(opened.version, version, "tls: {tls}");
            let mut s = opened.session;
            s.send(ping(3)).await.expect("post");
            let batch = s.poll(WAIT).await.expect("poll");
            assert_eq!(batch.version, version);
            assert_eq!(batch.events.last().map(|e| e.event.clone()), Some(json!({"type": "reply", "id": 3})));
            let mut sse = s.sse(Some(s.received())).await.expect("sse");
            assert_eq!(sse.version(), version);
            s.send(ping(4)).await.expect("post");
            match sse.next().await {
                Some(Ok(SseItem::Event(e))) => assert_eq!(e.event, json!({"type": "reply", "id": 4})),
                other => panic!("expected the reply over SSE, got {other:?}"),
            }
            s.delete().await.expect("delete");
        }
    }
}

#[tokio::test]
async fn a_newer_reader_replaces_the_older_one() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let server = Server::start(hub, LpConfig::default(), false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let s = client.open(Some(&tokens.token("alice"))).await.expect("open").session;

    // An SSE stream is attached once its first chunk arrives; a poll then replaces it.
    let mut sse = s.sse(Some(1)).await.expect("sse");
    let poll = {
        let s = s.clone();
        tokio::spawn(async move { s.poll_with(1, Duration::from_millis(300)).await })
    };
    match tokio::time::timeout(WAIT, sse.next()).await.expect("replaced in time") {
        Some(Ok(SseItem::Replaced)) => {}
        other => panic!("expected `replaced`, got {other:?}"),
    }
    assert!(sse.next().await.is_none(), "the replaced stream ends");
    let batch = poll.await.expect("task").expect("the newer poll is answered");
    assert!(batch.events.is_empty());

    // Two concurrent polls: exactly one, the older, is refused with 409.
    let (a, b) = tokio::join!(s.poll_with(1, Duration::from_millis(1500)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.poll_with(1, Duration::from_millis(1500)).await
    });
    let refused = [&a, &b].iter().filter(|r| matches!(r, Err(e) if e.status() == Some(409))).count();
    assert_eq!(refused, 1, "a: {a:?}, b: {b:?}");
}

#[tokio::test]
async fn sse_resumes_after_a_dropped_stream_with_last_event_id() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let config = LpConfig { sse_keepalive: Duration::from_millis(200), ..LpConfig::default() };
    let server = Server::start(hub, config, false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let s = client.open(Some(&tokens.token("alice"))).await.expect("open").session;

    let res = client.http().get(format!("{}/sessions/{}/sse", server.base(), s.id())).send().await.expect("sse");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let mut raw = res.bytes_stream();
    let mut text = String::new();
    // The unacknowledged hello comes first, then keep-alive comments.
    while !text.contains(": keep-alive") {
        let chunk = tokio::time::timeout(WAIT, raw.next()).await.expect("chunk").expect("open").expect("ok");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    assert!(text.starts_with("retry: 2000\n\n"), "{text}");
    assert!(text.contains("id: 1\ndata: {\"type\":\"hello\""), "{text}");
    drop(raw);

    let mut sse = s.sse(Some(1)).await.expect("sse");
    s.send(ping(1)).await.expect("post");
    let first = match sse.next().await {
        Some(Ok(SseItem::Event(e))) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!((first.n, first.event.clone()), (2, json!({"type": "reply", "id": 1})));
    // The stream drops before anything was acknowledged; more happens meanwhile.
    drop(sse);
    s.send(ping(2)).await.expect("post");
    // Reconnecting with the last id acknowledged (1) re-delivers everything after it.
    let mut sse = s.sse(Some(1)).await.expect("sse again");
    let mut got = Vec::new();
    while got.len() < 2 {
        match sse.next().await {
            Some(Ok(SseItem::Event(e))) => got.push(e),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got[0], first);
    assert_eq!((got[1].n, got[1].event.clone()), (3, json!({"type": "reply", "id": 2})));
    drop(sse);
    // Acknowledged through the ack endpoint: nothing is re-delivered.
    s.ack(3).await.expect("ack");
    let batch = s.poll_with(3, Duration::ZERO).await.expect("poll");
    assert!(batch.events.is_empty());
    let e = s.ack(10).await.expect_err("beyond");
    assert_eq!(e.status(), Some(400));
}

#[tokio::test]
async fn delete_closes_the_session() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let server = Server::start(hub.clone(), LpConfig::default(), false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let s = client.open(Some(&tokens.token("alice"))).await.expect("open").session;
    s.delete().await.expect("delete");
    eventually("the driver to end", WAIT, || hub.session_count() == 0).await;
    assert_eq!(s.poll_with(1, Duration::ZERO).await.expect_err("gone").status(), Some(404));
    assert_eq!(s.send(ping(1)).await.expect_err("gone").status(), Some(404));
    assert_eq!(s.delete().await.expect_err("gone").status(), Some(404));
}

#[tokio::test]
async fn a_session_that_does_not_ack_falls_back_to_resync() {
    let mut config = HubConfig::default();
    config.limits.outbound_max_frames = 8;
    config.rate_limit = None;
    let (hub, tokens) = common::hub(config);
    let lp = LpConfig { max_unacked_events: 4, ..LpConfig::default() };
    let server = Server::start(hub, lp, false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let (a, b) = ("alice-slow", "bob-fast");
    let ch = format!("dm:{a}:{b}");
    let mut slow = client.open(Some(&tokens.token(a))).await.expect("open").session;
    slow.send(json!({"type": "sub", "channel": ch, "id": 1}).to_string()).await.expect("sub");
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Value| e["type"] == "reply") {
        let batch = slow.poll(WAIT).await.expect("poll");
        assert!(!batch.events.is_empty(), "no reply to sub");
        seen.extend(batch.events.into_iter().map(|e| e.event));
    }
    assert!(!seen.iter().any(|e| e["type"] == "error"), "{seen:?}");
    let mut fast = client.open(Some(&tokens.token(b))).await.expect("open").session;
    let sends: Vec<Value> =
        (0..40).map(|i| json!({"type": "send", "id": i, "channel": ch, "cid": format!("m{i}"), "body": i})).collect();
    fast.send_commands(&sends).await.expect("send");
    let mut replies = 0;
    while replies < 40 {
        let batch = fast.poll(WAIT).await.expect("poll");
        assert!(!batch.events.is_empty(), "replies stalled after {replies}");
        replies += batch.events.iter().filter(|e| e.event["type"] == "reply").count();
    }
    // The slow reader never held more than 4 unacknowledged events, and is told to resync.
    let mut messages = Vec::new();
    loop {
        let batch = slow.poll(WAIT).await.expect("poll");
        assert!(batch.events.len() <= 4, "{} events in one batch", batch.events.len());
        assert!(!batch.events.is_empty(), "the resync never came");
        let mut resync = None;
        for e in batch.events {
            match e.event["type"].as_str() {
                Some("message") => messages.push(e.event["seq"].as_u64().expect("seq")),
                Some("resync") => resync = Some(e.event),
                _ => {}
            }
        }
        if let Some(r) = resync {
            assert_eq!(r["channel"], json!(ch));
            assert_eq!(r["seq"], json!(messages.len()), "resync names the last seq delivered");
            break;
        }
    }
    assert!(messages.len() < 40, "some messages were dropped from live delivery");
    assert_eq!(messages, (1..=messages.len() as u64).collect::<Vec<_>>(), "in order, without gaps");
}

#[tokio::test]
async fn shutdown_answers_readers_with_1001_and_serve_returns() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let mut server = Server::start(hub.clone(), LpConfig::default(), false).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let with_sse = client.open(Some(&tokens.token("alice"))).await.expect("open").session;
    let mut with_poll = client.open(Some(&tokens.token("bob"))).await.expect("open").session;
    let mut sse = with_sse.sse(Some(1)).await.expect("sse");
    let poll = tokio::spawn(async move { with_poll.poll(Duration::from_secs(30)).await });

    let started = Instant::now();
    server.stop().await.expect("serve returns Ok");
    assert!(started.elapsed() < Duration::from_secs(4), "shutdown took {:?}", started.elapsed());
    match sse.next().await {
        Some(Ok(SseItem::Close(c))) => assert_eq!(c.code, 1001),
        other => panic!("expected the close, got {other:?}"),
    }
    // The held poll was answered at once, with the close (or, had it not been held yet, refused).
    match poll.await.expect("task") {
        Ok(batch) => assert_eq!(batch.close.map(|c| c.code), Some(1001)),
        Err(e) => assert!(e.status().is_none() || e.status() == Some(404), "{e}"),
    }
    assert_eq!(hub.session_count(), 0);
}
