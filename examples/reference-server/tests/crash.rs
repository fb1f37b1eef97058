//! Crash safety with real processes: the server takes a stream of sends from several clients, is killed with
//! SIGKILL mid-stream and restarted on the same store. Every send that was acknowledged is in the history
//! afterwards, at the seq its acknowledgement named, in order, exactly once; sends that were in flight are
//! retried with their client id and end up stored exactly once; a subscriber resumes with `since` and gets
//! exactly what it missed, then live messages again.
//!
//! Runs on SQLite (always) and on Postgres (`HERALD_TEST_DATABASE_URL`; skipped loudly when unset unless
//! `HERALD_REQUIRE_SERVICES=1`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Client, Server, TestSchema};
use serde_json::{Value, json};

/// Sending clients, each with its own connection (commands of one connection run one at a time, so several
/// connections keep several appends in flight for group commit).
const SENDERS: usize = 8;
/// Acknowledged sends after which the server is killed (the senders are still sending then).
const KILL_AFTER_ACKS: usize = 600;

/// What one sender saw before the crash.
#[derive(Debug, Default)]
struct SenderLog {
    /// cid -> seq of every acknowledged send.
    acked: BTreeMap<String, u64>,
    /// The send in flight when the connection broke (sent, no reply): its cid and body.
    in_flight: Option<(String, Value)>,
}

fn body(user: &str, i: usize) -> Value {
    // About 200 bytes, like the benchmarks' bodies.
    json!({ "from": user, "n": i, "text": "x".repeat(160) })
}

fn send(channel: &str, cid: &str, body: &Value) -> Value {
    json!({ "type": "send", "channel": channel, "cid": cid, "body": body })
}

async fn sender(addr: std::net::SocketAddr, user: String, channel: String, acks: Arc<AtomicUsize>) -> SenderLog {
    let mut client = Client::connect(addr, &user).await;
    let mut log = SenderLog::default();
    // Sends until the connection breaks (the kill).
    for i in 0_usize.. {
        let cid = format!("{user}-{i:06}");
        let body = body(&user, i);
        match client.try_cmd(send(&channel, &cid, &body)).await {
            Some(Ok(reply)) => {
                assert_eq!(reply["dup"], json!(false), "a first send is never a duplicate: {reply}");
                let seq = reply["seq"].as_u64().expect("an ack carries the seq");
                log.acked.insert(cid, seq);
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(error)) => panic!("send {cid} failed before the crash: {error}"),
            None => {
                log.in_flight = Some((cid, body));
                break;
            }
        }
    }
    log
}

/// The whole scenario against a server started by `start` (called once before and once after the crash,
/// on the same durable store).
async fn crash_and_recover(start: impl Fn() -> Server) {
    let mut server = start();
    let addr = server.addr;
    let channel = format!("group:crash-{}", common::unique());
    let users: Vec<String> = (0..SENDERS).map(|i| format!("sender{i}")).collect();
    let mut owner = Client::connect(addr, "owner").await;
    let mut members: Vec<&str> = users.iter().map(String::as_str).collect();
    members.push("reader");
    owner.ok(json!({"type": "create", "channel": channel, "members": members})).await;

    // A subscriber that follows live until the crash.
    let mut reader = Client::connect(addr, "reader").await;
    reader.ok(json!({"type": "sub", "channel": channel, "since": 0})).await;

    let acks = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> =
        users.iter().map(|u| tokio::spawn(sender(addr, u.clone(), channel.clone(), Arc::clone(&acks)))).collect();
    // Let the reader consume while the senders run, and kill the server once enough sends were acknowledged.
    let mut seen_live = Vec::new();
    while acks.load(Ordering::Relaxed) < KILL_AFTER_ACKS {
        match tokio::time::timeout(Duration::from_millis(50), reader.event("message")).await {
            Ok(m) => seen_live.push(m["seq"].as_u64().expect("seq")),
            Err(_) => assert!(tasks.iter().any(|t| !t.is_finished()), "every sender stopped before the crash"),
        }
    }
    server.kill9();
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await.expect("a sender panicked"));
    }
    // The reader drains what reached it before the crash.
    while let Ok(Some(frame)) = reader.next_frame().await {
        if frame["type"] == "message" {
            seen_live.push(frame["seq"].as_u64().expect("seq"));
        }
    }
    let expected_live: Vec<u64> = (1..=seen_live.len() as u64).collect();
    assert_eq!(seen_live, expected_live, "live delivery before the crash is gap-free and in order");
    let acked_total: usize = logs.iter().map(|l| l.acked.len()).sum();
    assert!(acked_total >= KILL_AFTER_ACKS, "{acked_total} sends acknowledged before the kill");
    let in_flight = logs.iter().filter(|l| l.in_flight.is_some()).count();
    eprintln!("crash: {acked_total} acknowledged, {in_flight} in flight at SIGKILL, reader saw {}", seen_live.len());

    // Restart on the same store.
    let server = start();
    let addr = server.addr;
    let mut auditor = Client::connect(addr, "owner").await;
    let before_retry = auditor.full_history(&channel).await;
    check_log(&before_retry, &logs, false);

    // Retry every in-flight send with its client id: stored exactly once whether or not it made it before the kill.
    let mut stored_before_kill = 0;
    for (user, log) in users.iter().zip(&logs) {
        let Some((cid, body)) = &log.in_flight else { continue };
        let mut client = Client::connect(addr, user).await;
        let reply = client.ok(send(&channel, cid, body)).await;
        let stored_before = before_retry.iter().find(|m| m["cid"] == json!(cid));
        match stored_before {
            Some(m) => {
                stored_before_kill += 1;
                assert_eq!(reply["dup"], json!(true), "{cid} was stored before the crash: the retry is a duplicate");
                assert_eq!(reply["seq"], m["seq"], "the duplicate reply names the stored seq");
            }
            None => assert_eq!(reply["dup"], json!(false), "{cid} was lost with the crash: the retry stores it"),
        }
    }
    eprintln!("crash: of {in_flight} in-flight sends, {stored_before_kill} were stored before the kill (retry: dup)");
    let after_retry = auditor.full_history(&channel).await;
    check_log(&after_retry, &logs, true);

    // The reader resumes from the last seq it saw and gets exactly the rest, then live messages.
    let mut reader = Client::connect(addr, "reader").await;
    let last_seen = seen_live.last().copied().unwrap_or(0);
    reader.ok(json!({"type": "sub", "channel": channel, "since": last_seen})).await;
    let head = after_retry.len() as u64;
    let mut resumed = Vec::new();
    while resumed.len() < (head - last_seen) as usize {
        resumed.push(reader.event("message").await["seq"].as_u64().expect("seq"));
    }
    assert_eq!(resumed, ((last_seen + 1)..=head).collect::<Vec<_>>(), "resume delivers exactly the missed seqs");
    let live = auditor.ok(send(&channel, "after-restart", &json!({"text": "live again"}))).await;
    assert_eq!(live["seq"], json!(head + 1), "seqs continue after the restart");
    assert_eq!(reader.event("message").await["seq"], json!(head + 1), "live delivery resumes after the replay");
}

/// Checks the stored log against what the senders saw: seqs 1..=n without gaps, every acknowledged cid at its
/// acknowledged seq exactly once, each sender's messages in its send order, nothing that was never sent; with
/// `retried`, the in-flight sends are stored too.
fn check_log(log: &[Value], senders: &[SenderLog], retried: bool) {
    let seqs: Vec<u64> = log.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (1..=log.len() as u64).collect::<Vec<_>>(), "the stored log is gap-free and ordered");
    let mut by_cid: BTreeMap<&str, u64> = BTreeMap::new();
    for m in log {
        let cid = m["cid"].as_str().expect("every test message has a cid");
        let seq = m["seq"].as_u64().expect("seq");
        assert!(by_cid.insert(cid, seq).is_none(), "cid {cid} is stored twice");
    }
    let mut known: BTreeSet<&str> = BTreeSet::new();
    for s in senders {
        for (cid, seq) in &s.acked {
            assert_eq!(by_cid.get(cid.as_str()), Some(seq), "acknowledged send {cid} must be stored at seq {seq}");
            known.insert(cid);
        }
        // One sender's sends are acknowledged in order, so their seqs increase.
        let seqs: Vec<u64> = s.acked.values().copied().collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one sender's messages are stored in send order");
        if let Some((cid, _)) = &s.in_flight {
            known.insert(cid);
            if retried {
                assert!(by_cid.contains_key(cid.as_str()), "the retried in-flight send {cid} is stored");
            }
        }
    }
    for cid in by_cid.keys() {
        assert!(known.contains(cid), "the log holds {cid}, which no sender sent");
    }
}

/// The environment every run shares: the tests' JWT secret, and a per-user rate limit far above what the senders
/// reach (they send as fast as acks come back; the default 50/s would throttle them).
const ENV: [(&str, &str); 3] = [
    ("HERALD_AUTH__JWT_HS256_SECRET", common::SECRET),
    ("HERALD_HUB__RATE_LIMIT__PER_SECOND", "1000000"),
    ("HERALD_HUB__RATE_LIMIT__BURST", "1000000"),
];

/// Starts the server with `store_env` on top of [`ENV`].
fn start(store_env: &[(&str, &str)]) -> Server {
    let env: Vec<(&str, &str)> = ENV.iter().chain(store_env).copied().collect();
    Server::start(&[], &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_on_sqlite_loses_no_acknowledged_message() {
    let dir = common::data_dir();
    let data_dir = dir.to_str().expect("a UTF-8 path").to_owned();
    crash_and_recover(|| start(&[("HERALD_STORE", "sqlite"), ("HERALD_DATA_DIR", &data_dir)])).await;
    std::fs::remove_dir_all(&dir).expect("remove the test's data directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_on_postgres_loses_no_acknowledged_message() {
    let Some(schema) = TestSchema::new("sigkill_on_postgres_loses_no_acknowledged_message") else { return };
    crash_and_recover(|| {
        start(&[
            ("HERALD_STORE", "postgres"),
            ("HERALD_POSTGRES__URL", &schema.url),
            ("HERALD_POSTGRES__SCHEMA", &schema.name),
        ])
    })
    .await;
}
