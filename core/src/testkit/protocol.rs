//! The protocol conformance suite: plain async functions that drive a server through the wire protocol.
//!
//! A transport implements [`Harness`] (open a connection, optionally with a token at connect time) and
//! [`RawClient`] (send a text frame, receive the next frame or the close code), then calls [`run_all`]. The
//! same suite runs over the in-process transport ([`InProcHarness`]) and over every network transport, so
//! transports cannot drift apart.
//!
//! The hub behind the harness must authenticate with the tokens the harness mints (see [`TestTokens`]) and
//! use the default [`MembersOnly`](crate::auth::MembersOnly) policy. Every function uses fresh, unique user
//! and channel names, so the suite can run against persistent stores.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use serde_json::{Value, json};

use super::inproc::{self, InProcClient, ServerItem};
use crate::auth::{Credentials, JwtAuth, JwtKey, TokenClaims, mint_hs256};
use crate::hub::Hub;

/// How long a test waits for an expected event before failing.
pub const WAIT: Duration = Duration::from_secs(5);

/// What a test client sees.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A JSON frame.
    Frame(Value),
    /// The server closed the connection with this code (`None`: closed without a code).
    Closed(Option<u16>),
}

/// A raw connection of the transport under test.
pub trait RawClient: Send {
    /// Sends one text frame.
    fn send_text(&mut self, text: String) -> impl Future<Output = ()> + Send;
    /// Receives what comes next; `None` when the connection vanished without a close.
    fn next(&mut self) -> impl Future<Output = Option<Seen>> + Send;
}

/// Opens connections to the server under test.
pub trait Harness: Sync {
    /// The client type.
    type Client: RawClient;
    /// Connects, presenting `token` at connect time when given.
    fn connect(&self, token: Option<String>) -> impl Future<Output = Self::Client> + Send;
    /// Token minting for the server's authentication.
    fn tokens(&self) -> &TestTokens;
    /// The server's frame size limit.
    fn max_frame_bytes(&self) -> usize;
}

/// Mints HS256 tokens for tests.
#[derive(Debug, Clone)]
pub struct TestTokens {
    secret: Vec<u8>,
}

impl Default for TestTokens {
    fn default() -> Self {
        Self { secret: b"herald-testkit-secret-0123456789abcdef".to_vec() }
    }
}

impl TestTokens {
    /// The verifier matching the minted tokens.
    pub fn auth(&self) -> JwtAuth {
        JwtAuth::new(JwtKey::Hs256(self.secret.clone())).expect("the testkit secret is long enough")
    }

    /// A token for `user`, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        self.token_expiring(user, crate::model::now_millis() / 1000 + 3600)
    }

    /// A token for `user` that expired an hour ago (well beyond any leeway).
    pub fn expired(&self, user: &str) -> String {
        self.token_expiring(user, crate::model::now_millis() / 1000 - 3600)
    }

    /// A token for `user` expiring at `exp` (seconds since the epoch).
    pub fn token_expiring(&self, user: &str, exp: i64) -> String {
        let claims = TokenClaims { sub: user.to_owned(), exp: Some(exp), ..TokenClaims::default() };
        mint_hs256(&self.secret, &claims).expect("minting a test token")
    }
}

/// A fresh name with `prefix`, unique across runs.
pub fn unique(prefix: &str) -> String {
    let u = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}-{}", &u[20..])
}

/// The direct channel id of two users.
pub fn dm(a: &str, b: &str) -> String {
    if a < b { format!("dm:{a}:{b}") } else { format!("dm:{b}:{a}") }
}

/// A protocol client on top of a [`RawClient`]: numbers commands, matches replies, buffers events.
#[derive(Debug)]
pub struct TestClient<C> {
    raw: C,
    next_id: u64,
    backlog: VecDeque<Value>,
    closed: Option<Option<u16>>,
    /// The `hello` event received at connect.
    pub hello: Value,
}

impl<C: RawClient> TestClient<C> {
    /// Connects as `user` with a token at connect time and checks the `hello`.
    pub async fn connect_as<H: Harness<Client = C>>(h: &H, user: &str) -> Self {
        let c = Self::connect(h, Some(h.tokens().token(user))).await;
        assert_eq!(c.hello["user"], json!(user), "hello names the authenticated user: {}", c.hello);
        c.hello["session"].as_u64().expect("hello carries a session id");
        assert_eq!(c.hello["version"], json!(1), "protocol version 1: {}", c.hello);
        c
    }

    /// Connects with `token` (or none) and waits for the `hello`.
    pub async fn connect<H: Harness<Client = C>>(h: &H, token: Option<String>) -> Self {
        let raw = h.connect(token).await;
        let mut c = Self { raw, next_id: 1, backlog: VecDeque::new(), closed: None, hello: Value::Null };
        c.hello = c.event("hello").await;
        c
    }

    /// Sends raw text.
    pub async fn send_raw(&mut self, text: impl Into<String>) {
        self.raw.send_text(text.into()).await;
    }

    async fn pull(&mut self) -> Option<Value> {
        if self.closed.is_some() {
            return None;
        }
        match tokio::time::timeout(WAIT, self.raw.next()).await {
            Ok(Some(Seen::Frame(v))) => Some(v),
            Ok(Some(Seen::Closed(code))) => {
                self.closed = Some(code);
                None
            }
            Ok(None) => {
                self.closed = Some(None);
                None
            }
            Err(_) => None,
        }
    }

    /// Sends `command` (an object without `id`) and returns `Ok(reply)` or `Err(error event)`.
    pub async fn cmd(&mut self, mut command: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.raw.send_text(command.to_string()).await;
        loop {
            let Some(v) = self.pull().await else {
                panic!("no reply to {command} (connection closed: {:?})", self.closed);
            };
            if v["id"] == json!(id) && (v["type"] == "reply" || v["type"] == "error") {
                return if v["type"] == "reply" { Ok(v) } else { Err(v) };
            }
            self.backlog.push_back(v);
        }
    }

    /// Like [`cmd`](Self::cmd), panicking on an error.
    pub async fn ok(&mut self, command: Value) -> Value {
        let shown = command.to_string();
        match self.cmd(command).await {
            Ok(r) => r,
            Err(e) => panic!("command {shown} failed: {e}"),
        }
    }

    /// Like [`cmd`](Self::cmd), expecting an error with `code`; returns the error event.
    pub async fn err(&mut self, command: Value, code: &str) -> Value {
        let shown = command.to_string();
        match self.cmd(command).await {
            Ok(r) => panic!("command {shown} succeeded ({r}), expected error {code}"),
            Err(e) => {
                assert_eq!(e["code"], json!(code), "error code for {shown}: {e}");
                e
            }
        }
    }

    /// The next event of type `ty` (other events stay buffered, in order).
    pub async fn event(&mut self, ty: &str) -> Value {
        if let Some(pos) = self.backlog.iter().position(|v| v["type"] == ty)
            && let Some(v) = self.backlog.remove(pos)
        {
            return v;
        }
        loop {
            match self.pull().await {
                Some(v) if v["type"] == ty => return v,
                Some(v) => self.backlog.push_back(v),
                None => panic!("no {ty:?} event (closed: {:?}; buffered: {:?})", self.closed, self.backlog),
            }
        }
    }

    /// The next `n` message events of `channel`.
    pub async fn messages(&mut self, channel: &str, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let pos = self.backlog.iter().position(|v| v["type"] == "message" && v["channel"] == channel);
            if let Some(v) = pos.and_then(|p| self.backlog.remove(p)) {
                out.push(v);
                continue;
            }
            match self.pull().await {
                Some(v) => self.backlog.push_back(v),
                None => panic!("expected {n} messages on {channel}, got {} ({:?})", out.len(), self.closed),
            }
        }
        out
    }

    /// Asserts that no event of type `ty` arrives within `within`.
    pub async fn no_event(&mut self, ty: &str, within: Duration) {
        assert!(!self.backlog.iter().any(|v| v["type"] == ty), "unexpected {ty}: {:?}", self.backlog);
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(next) = tokio::time::timeout_at(deadline, self.raw.next()).await {
            match next {
                Some(Seen::Frame(v)) => {
                    assert!(v["type"] != ty, "unexpected {ty}: {v}");
                    self.backlog.push_back(v);
                }
                other => {
                    self.closed = Some(match other {
                        Some(Seen::Closed(c)) => c,
                        _ => None,
                    });
                    return;
                }
            }
        }
    }

    /// Waits for the server to close the connection and returns the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        while self.closed.is_none() {
            match tokio::time::timeout(WAIT, self.raw.next()).await {
                Ok(Some(Seen::Frame(v))) => self.backlog.push_back(v),
                Ok(Some(Seen::Closed(c))) => self.closed = Some(c),
                Ok(None) => self.closed = Some(None),
                Err(_) => panic!("the server did not close the connection"),
            }
        }
        self.closed.flatten()
    }

    /// Buffered events not yet consumed.
    pub fn backlog(&self) -> &VecDeque<Value> {
        &self.backlog
    }
}

/// `send` helper: a text message with a client id.
pub fn text(channel: &str, cid: &str, text: &str) -> Value {
    json!({"type": "send", "channel": channel, "cid": cid, "body": {"text": text}})
}

/// Two fresh users, their direct channel, and one connection for each.
struct Pair<C> {
    a: String,
    b: String,
    ch: String,
    ca: TestClient<C>,
    cb: TestClient<C>,
}

async fn pair<H: Harness>(h: &H) -> Pair<H::Client> {
    let (a, b) = (unique("alice"), unique("bob"));
    let ch = dm(&a, &b);
    let ca = TestClient::connect_as(h, &a).await;
    let cb = TestClient::connect_as(h, &b).await;
    Pair { a, b, ch, ca, cb }
}

/// Two users exchange messages in their direct conversation; each receives the other's messages live.
pub async fn direct_conversation<H: Harness>(h: &H) {
    let Pair { a, ch, mut ca, mut cb, .. } = pair(h).await;
    let sub = ca.ok(json!({"type": "sub", "channel": ch})).await;
    assert_eq!(sub["seq"], json!(0), "a new conversation is empty: {sub}");
    cb.ok(json!({"type": "sub", "channel": ch})).await;

    let sent = ca.ok(text(&ch, "a1", "hello bob")).await;
    assert_eq!(sent["seq"], json!(1));
    assert_eq!(sent["dup"], json!(false));
    let m = cb.event("message").await;
    assert_eq!(m["channel"], json!(ch));
    assert_eq!(m["seq"], json!(1));
    assert_eq!(m["from"], json!(a));
    assert_eq!(m["cid"], json!("a1"));
    assert_eq!(m["kind"], json!("message"));
    assert_eq!(m["body"], json!({"text": "hello bob"}));
    assert_eq!(m["mid"], sent["mid"]);
    assert_eq!(m["ts"], sent["ts"]);

    let sent = cb.ok(text(&ch, "b1", "hi alice")).await;
    assert_eq!(sent["seq"], json!(2));
    // Alice sees her own message (multi-device sync) and Bob's, in order.
    let seen = ca.messages(&ch, 2).await;
    assert_eq!(seen[0]["seq"], json!(1));
    assert_eq!(seen[1]["seq"], json!(2));
    assert_eq!(seen[1]["body"]["text"], json!("hi alice"));
}

/// A group of three: every member receives every message, in seq order.
pub async fn group_fan_out<H: Harness>(h: &H) {
    let users = [unique("ann"), unique("ben"), unique("cat")];
    let group = format!("group:{}", unique("trio"));
    let mut clients = Vec::new();
    for u in &users {
        clients.push(TestClient::connect_as(h, u).await);
    }
    let created = clients[0].ok(json!({"type": "create", "channel": group, "members": [users[1], users[2]]})).await;
    assert_eq!(created["channel"], json!(group));
    clients[0].err(json!({"type": "create", "channel": group, "members": []}), "conflict").await;
    for c in &mut clients {
        c.ok(json!({"type": "sub", "channel": group})).await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.ok(text(&group, &format!("m{i}"), &format!("from {i}"))).await;
        assert_eq!(r["seq"], json!(i + 1));
    }
    for c in &mut clients {
        let got = c.messages(&group, 3).await;
        let seqs: Vec<_> = got.iter().map(|m| m["seq"].clone()).collect();
        assert_eq!(seqs, vec![json!(1), json!(2), json!(3)]);
        let senders: Vec<_> = got.iter().map(|m| m["from"].clone()).collect();
        assert_eq!(senders, users.iter().map(|u| json!(u)).collect::<Vec<_>>());
    }
}

/// A client disconnects while others keep sending, resumes with its last seq, receives exactly the missed
/// messages in order, then live ones, with no duplicate.
pub async fn resume_after_reconnect<H: Harness>(h: &H) {
    let Pair { b, ch, mut ca, mut cb, .. } = pair(h).await;
    ca.ok(json!({"type": "sub", "channel": ch})).await;
    cb.ok(json!({"type": "sub", "channel": ch})).await;
    for i in 0..3 {
        ca.ok(text(&ch, &format!("before{i}"), "x")).await;
    }
    let got = cb.messages(&ch, 3).await;
    let last = got[2]["seq"].as_u64().expect("seq");
    assert_eq!(last, 3);
    drop(cb);

    for i in 0..5 {
        ca.ok(text(&ch, &format!("missed{i}"), &format!("missed {i}"))).await;
    }
    let mut cb = TestClient::connect_as(h, &b).await;
    let sub = cb.ok(json!({"type": "sub", "channel": ch, "since": last})).await;
    assert_eq!(sub["seq"], json!(8), "the reply marks the switch to live: {sub}");
    // Everything up to the reply's seq arrived before the reply.
    let replayed: Vec<_> = cb.backlog().iter().filter(|v| v["type"] == "message").cloned().collect();
    let seqs: Vec<_> = replayed.iter().map(|m| m["seq"].as_u64().unwrap_or(0)).collect();
    assert_eq!(seqs, vec![4, 5, 6, 7, 8], "exactly the missed messages, in order");
    assert_eq!(replayed[0]["body"]["text"], json!("missed 0"));
    cb.messages(&ch, 5).await;

    ca.ok(text(&ch, "after", "live again")).await;
    let live = cb.messages(&ch, 1).await;
    assert_eq!(live[0]["seq"], json!(9));
    cb.no_event("message", Duration::from_millis(200)).await;

    // A `since` beyond the newest message is clamped: the reply says where live delivery starts.
    let mut cc = TestClient::connect_as(h, &b).await;
    let sub = cc.ok(json!({"type": "sub", "channel": ch, "since": 1000})).await;
    assert_eq!(sub["seq"], json!(9));
    ca.ok(text(&ch, "after2", "still live")).await;
    assert_eq!(cc.messages(&ch, 1).await[0]["seq"], json!(10));
}

/// A resend with the same client message id is stored once and delivered once.
pub async fn idempotent_send<H: Harness>(h: &H) {
    let Pair { ch, mut ca, mut cb, .. } = pair(h).await;
    cb.ok(json!({"type": "sub", "channel": ch})).await;
    let first = ca.ok(text(&ch, "same-id", "once")).await;
    let second = ca.ok(text(&ch, "same-id", "once")).await;
    assert_eq!(first["dup"], json!(false));
    assert_eq!(second["dup"], json!(true));
    assert_eq!(first["seq"], second["seq"]);
    assert_eq!(first["mid"], second["mid"]);
    ca.ok(text(&ch, "other-id", "next")).await;
    let got = cb.messages(&ch, 2).await;
    assert_eq!(got[0]["cid"], json!("same-id"));
    assert_eq!(got[1]["cid"], json!("other-id"), "the duplicate was not delivered again");
    assert_eq!(got[1]["seq"], json!(2), "the duplicate was not stored again");
    let hist = cb.ok(json!({"type": "history", "channel": ch})).await;
    assert_eq!(hist["messages"].as_array().map(Vec::len), Some(2));
}

/// A non-member is refused with `forbidden` and its connection stays usable.
pub async fn non_member_is_refused<H: Harness>(h: &H) {
    let (a, b, x) = (unique("alice"), unique("bob"), unique("eve"));
    let group = format!("group:{}", unique("private"));
    let mut ca = TestClient::connect_as(h, &a).await;
    ca.ok(json!({"type": "create", "channel": group, "members": [b]})).await;
    let mut cx = TestClient::connect_as(h, &x).await;
    let e = cx.err(json!({"type": "sub", "channel": group}), "forbidden").await;
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    cx.err(text(&group, "x1", "let me in"), "forbidden").await;
    cx.err(json!({"type": "history", "channel": group}), "forbidden").await;
    // Someone else's direct conversation, a topic write and someone else's user channel.
    cx.err(json!({"type": "sub", "channel": dm(&a, &b)}), "forbidden").await;
    cx.err(text(&format!("topic:{}", unique("news")), "x2", "spam"), "forbidden").await;
    cx.err(json!({"type": "sub", "channel": format!("user:{a}")}), "forbidden").await;
    // An unknown group is refused the same way (no existence oracle).
    cx.err(json!({"type": "sub", "channel": format!("group:{}", unique("nope"))}), "forbidden").await;
    cx.ok(json!({"type": "ping"})).await;
    // Nothing was stored.
    let hist = ca.ok(json!({"type": "history", "channel": group})).await;
    assert_eq!(hist["messages"], json!([]));
}

/// Malformed frames and unknown commands get error events; the connection stays up.
pub async fn malformed_and_unknown_frames<H: Harness>(h: &H) {
    let a = unique("alice");
    let mut c = TestClient::connect_as(h, &a).await;
    c.send_raw("this is not json").await;
    let e = c.event("error").await;
    assert_eq!(e["code"], json!("bad_request"));
    assert!(e.get("id").is_none(), "no id could be recovered: {e}");
    c.send_raw(r#"{"type":"sub","id":77,"channel":12}"#).await;
    let e = c.event("error").await;
    assert_eq!((e["code"].clone(), e["id"].clone()), (json!("bad_request"), json!(77)));
    c.send_raw(r#"{"type":"sub","id":78,"channel":"nowhere"}"#).await;
    let e = c.event("error").await;
    assert_eq!((e["code"].clone(), e["id"].clone()), (json!("bad_request"), json!(78)));
    let e = c.err(json!({"type": "teleport"}), "unknown_command").await;
    assert!(e["message"].as_str().is_some_and(|m| m.contains("teleport")));
    c.ok(json!({"type": "ping"})).await;
}

/// A frame over the size limit closes the connection with 1009.
pub async fn oversize_frame_closes<H: Harness>(h: &H) {
    let a = unique("alice");
    let mut c = TestClient::connect_as(h, &a).await;
    let big = "x".repeat(h.max_frame_bytes() + 1);
    c.send_raw(format!(r#"{{"type":"send","id":1,"channel":"{}","body":"{big}"}}"#, dm(&a, "zz"))).await;
    assert_eq!(c.close_code().await, Some(1009));
}

/// A body over the body limit (but within the frame limit) is refused with `too_large`.
pub async fn oversize_body_is_refused<H: Harness>(h: &H) {
    let (a, b) = (unique("alice"), unique("bob"));
    let mut c = TestClient::connect_as(h, &a).await;
    let max_body = c.hello["max_body_bytes"].as_u64().expect("hello.max_body_bytes") as usize;
    let body = "y".repeat(max_body);
    c.err(json!({"type": "send", "channel": dm(&a, &b), "body": body}), "too_large").await;
    c.ok(json!({"type": "ping"})).await;
}

/// Bad and expired tokens, at connect time or in `auth`, close with 4001 and 4002.
pub async fn bad_and_expired_tokens<H: Harness>(h: &H) {
    let a = unique("alice");
    let raw = h.connect(Some("not-a-token".into())).await;
    assert_eq!(closing(raw).await, (Some("unauthenticated".into()), Some(4001)));
    let raw = h.connect(Some(h.tokens().expired(&a))).await;
    assert_eq!(closing(raw).await, (Some("unauthenticated".into()), Some(4002)));

    let mut c = TestClient::connect(h, None).await;
    assert_eq!(c.hello["user"], Value::Null);
    c.err(json!({"type": "sub", "channel": dm(&a, "zz")}), "unauthenticated").await;
    c.err(json!({"type": "auth", "token": "garbage"}), "unauthenticated").await;
    assert_eq!(c.close_code().await, Some(4001));

    let mut c = TestClient::connect(h, None).await;
    c.err(json!({"type": "auth", "token": h.tokens().expired(&a)}), "unauthenticated").await;
    assert_eq!(c.close_code().await, Some(4002));
}

async fn closing<C: RawClient>(mut raw: C) -> (Option<String>, Option<u16>) {
    let mut code = None;
    let mut error = None;
    loop {
        match tokio::time::timeout(WAIT, raw.next()).await {
            Ok(Some(Seen::Frame(v))) if v["type"] == "error" => error = v["code"].as_str().map(str::to_owned),
            Ok(Some(Seen::Frame(_))) => {}
            Ok(Some(Seen::Closed(c))) => {
                code = c;
                break;
            }
            Ok(None) => break,
            Err(_) => panic!("connection with a bad token was not closed"),
        }
    }
    (error, code)
}

/// `auth` as the first command authenticates a connection opened without a token.
pub async fn auth_by_command<H: Harness>(h: &H) {
    let (a, b) = (unique("alice"), unique("bob"));
    let mut c = TestClient::connect(h, None).await;
    let r = c.ok(json!({"type": "auth", "token": h.tokens().token(&a)})).await;
    assert_eq!(r["user"], json!(a));
    assert_eq!(r["session"], c.hello["session"]);
    c.err(json!({"type": "auth", "token": h.tokens().token(&a)}), "bad_request").await;
    c.ok(json!({"type": "sub", "channel": dm(&a, &b)})).await;
}

/// History pages backward and forward with `more`, and `limit` is capped.
pub async fn history_paging<H: Harness>(h: &H) {
    let (a, b) = (unique("alice"), unique("bob"));
    let ch = dm(&a, &b);
    let mut c = TestClient::connect_as(h, &a).await;
    for i in 1..=7 {
        c.ok(text(&ch, &format!("h{i}"), &format!("{i}"))).await;
    }
    let seqs = |v: &Value| -> Vec<u64> {
        v["messages"].as_array().map(|a| a.iter().filter_map(|m| m["seq"].as_u64()).collect()).unwrap_or_default()
    };
    let latest = c.ok(json!({"type": "history", "channel": ch, "limit": 3})).await;
    assert_eq!(seqs(&latest), vec![5, 6, 7]);
    assert_eq!(latest["more"], json!(true));
    let older = c.ok(json!({"type": "history", "channel": ch, "before": 5, "limit": 3})).await;
    assert_eq!(seqs(&older), vec![2, 3, 4]);
    let oldest = c.ok(json!({"type": "history", "channel": ch, "before": 2, "limit": 3})).await;
    assert_eq!(seqs(&oldest), vec![1]);
    assert_eq!(oldest["more"], json!(false));
    let newer = c.ok(json!({"type": "history", "channel": ch, "after": 4, "limit": 2})).await;
    assert_eq!(seqs(&newer), vec![5, 6]);
    assert_eq!(newer["more"], json!(true));
    let capped = c.ok(json!({"type": "history", "channel": ch, "limit": 1_000_000})).await;
    assert_eq!(seqs(&capped).len(), 7);
    assert_eq!(capped["messages"][0]["body"], json!({"text": "1"}));
}

/// Edits and recalls are appended as new entries referring to the original; only its sender may make them.
pub async fn edit_and_recall<H: Harness>(h: &H) {
    let Pair { ch, mut ca, mut cb, .. } = pair(h).await;
    cb.ok(json!({"type": "sub", "channel": ch})).await;
    ca.ok(text(&ch, "orig", "helo")).await;
    let edit = ca.ok(json!({"type": "send", "channel": ch, "kind": "edit", "ref": 1, "body": {"text": "hello"}})).await;
    assert_eq!(edit["seq"], json!(2));
    let recall = ca.ok(json!({"type": "send", "channel": ch, "kind": "recall", "ref": 1})).await;
    assert_eq!(recall["seq"], json!(3));
    let got = cb.messages(&ch, 3).await;
    assert_eq!((got[1]["kind"].clone(), got[1]["ref"].clone()), (json!("edit"), json!(1)));
    assert_eq!(got[1]["body"], json!({"text": "hello"}));
    assert_eq!((got[2]["kind"].clone(), got[2]["ref"].clone()), (json!("recall"), json!(1)));
    assert_eq!(got[2]["body"], Value::Null);
    cb.err(json!({"type": "send", "channel": ch, "kind": "edit", "ref": 1, "body": 1}), "forbidden").await;
    ca.err(json!({"type": "send", "channel": ch, "kind": "edit", "ref": 99, "body": 1}), "not_found").await;
    ca.err(json!({"type": "send", "channel": ch, "kind": "recall", "ref": 2}), "bad_request").await;
}

/// Acks and reads move cursors forward only; read receipts and typing reach the other member.
pub async fn receipts_and_typing<H: Harness>(h: &H) {
    let Pair { b, ch, mut ca, mut cb, .. } = pair(h).await;
    ca.ok(json!({"type": "sub", "channel": ch})).await;
    cb.ok(json!({"type": "sub", "channel": ch})).await;
    ca.ok(text(&ch, "1", "one")).await;
    ca.ok(text(&ch, "2", "two")).await;
    cb.messages(&ch, 2).await;

    let acked = cb.ok(json!({"type": "ack", "channel": ch, "seq": 2})).await;
    assert_eq!(acked["seq"], json!(2));
    let r = ca.event("receipt").await;
    assert_eq!((r["user"].clone(), r["kind"].clone(), r["seq"].clone()), (json!(b), json!("delivered"), json!(2)));
    let back = cb.ok(json!({"type": "ack", "channel": ch, "seq": 1})).await;
    assert_eq!(back["seq"], json!(2), "cursors never move backward");
    cb.ok(json!({"type": "ack", "channel": ch, "seq": 2})).await;
    ca.no_event("receipt", Duration::from_millis(100)).await;
    // Acknowledging nothing in a conversation that has no message yet is a no-op, not an error.
    let empty = cb.ok(json!({"type": "ack", "channel": dm(&b, &unique("nobody")), "seq": 0})).await;
    assert_eq!(empty["seq"], json!(0));
    cb.err(json!({"type": "ack", "channel": ch, "seq": 3}), "bad_request").await;

    cb.ok(json!({"type": "read", "channel": ch, "seq": 2})).await;
    let r = ca.event("receipt").await;
    assert_eq!((r["user"].clone(), r["kind"].clone(), r["seq"].clone()), (json!(b), json!("read"), json!(2)));

    cb.ok(json!({"type": "typing", "channel": ch})).await;
    let t = ca.event("typing").await;
    assert_eq!((t["user"].clone(), t["active"].clone()), (json!(b), json!(true)));
    cb.no_event("typing", Duration::from_millis(100)).await;
}

/// `unsub` stops live delivery; subscribing again without `since` starts from now.
pub async fn unsubscribe_stops_delivery<H: Harness>(h: &H) {
    let Pair { ch, mut ca, mut cb, .. } = pair(h).await;
    cb.ok(json!({"type": "sub", "channel": ch})).await;
    cb.ok(json!({"type": "unsub", "channel": ch})).await;
    ca.ok(text(&ch, "u1", "unseen")).await;
    cb.no_event("message", Duration::from_millis(200)).await;
    let sub = cb.ok(json!({"type": "sub", "channel": ch})).await;
    assert_eq!(sub["seq"], json!(1));
    ca.ok(text(&ch, "u2", "seen")).await;
    let got = cb.messages(&ch, 1).await;
    assert_eq!(got[0]["seq"], json!(2));
}

/// Runs every function of the suite.
pub async fn run_all<H: Harness>(h: &H) {
    direct_conversation(h).await;
    group_fan_out(h).await;
    resume_after_reconnect(h).await;
    idempotent_send(h).await;
    non_member_is_refused(h).await;
    malformed_and_unknown_frames(h).await;
    oversize_frame_closes(h).await;
    oversize_body_is_refused(h).await;
    bad_and_expired_tokens(h).await;
    auth_by_command(h).await;
    history_paging(h).await;
    edit_and_recall(h).await;
    receipts_and_typing(h).await;
    unsubscribe_stops_delivery(h).await;
}

/// A [`Harness`] over the in-process transport.
#[derive(Debug, Clone)]
pub struct InProcHarness {
    hub: Hub,
    tokens: TestTokens,
}

impl InProcHarness {
    /// A harness for `hub`, which must authenticate with `tokens.auth()`.
    pub fn new(hub: Hub, tokens: TestTokens) -> Self {
        Self { hub, tokens }
    }
}

/// [`RawClient`] over an [`InProcClient`].
#[derive(Debug)]
pub struct InProcRaw(InProcClient);

impl RawClient for InProcRaw {
    async fn send_text(&mut self, text: String) {
        self.0.send(text).await;
    }

    async fn next(&mut self) -> Option<Seen> {
        match self.0.recv().await? {
            ServerItem::Frame(f) => Some(Seen::Frame(serde_json::from_slice(&f).expect("server frames are JSON"))),
            ServerItem::Close(reason) => Some(Seen::Closed(Some(reason.code()))),
        }
    }
}

impl Harness for InProcHarness {
    type Client = InProcRaw;

    async fn connect(&self, token: Option<String>) -> InProcRaw {
        InProcRaw(inproc::connect(&self.hub, token.map(Credentials::Bearer)))
    }

    fn tokens(&self) -> &TestTokens {
        &self.tokens
    }

    fn max_frame_bytes(&self) -> usize {
        self.hub.config().limits.max_frame_bytes
    }
}
