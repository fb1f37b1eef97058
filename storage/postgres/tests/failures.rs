//! Failure behaviour: the database going away mid-run (through a TCP proxy the test cuts and restores), two
//! stores as two nodes on one database, and start-up errors.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{CommitFault, Proxy, TestSchema, plaintext, upstream, with_addr};
use herald_core::id::{ChannelId, ChannelName, ClientMsgId, MessageId, UserId};
use herald_core::model::{Appended, Channel, Message, MessageKind, NewMessage, now_millis};
use herald_core::store::{ReadRange, Store, StoreError};
use herald_postgres::{ConnectError, PgConfig, PgStore};
use serde_json::value::RawValue;
use sqlx::Connection;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

fn user(name: &str) -> UserId {
    UserId::new(name).expect("a valid user id")
}

fn channel_id(name: &str) -> ChannelId {
    ChannelId::group(&ChannelName::new(name).expect("a valid channel name"))
}

async fn create(store: &dyn Store, name: &str) -> ChannelId {
    let id = channel_id(name);
    let meta = Channel { id: id.clone(), created_by: user("owner"), created_at: now_millis() };
    store.create_channel(meta, &[]).await.expect("create_channel");
    id
}

fn message(ch: &ChannelId, sender: &str, client_id: Option<&str>, json: &str) -> NewMessage {
    NewMessage {
        channel: ch.clone(),
        id: MessageId::generate(),
        sender: user(sender),
        client_id: client_id.map(|c| ClientMsgId::new(c).expect("a valid client id")),
        kind: MessageKind::Message,
        refers: None,
        ts: now_millis(),
        body: Arc::from(RawValue::from_string(json.to_owned()).expect("valid JSON")),
    }
}

/// Reads a channel's whole log and checks that its seqs are exactly 1..=last_seq.
async fn whole_log(store: &dyn Store, ch: &ChannelId) -> Vec<Message> {
    let last = store.last_seq(ch).await.expect("last_seq");
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read(ch, ReadRange::After(after), 500).await.expect("read");
        all.extend(page.messages.iter().cloned());
        match page.messages.last() {
            Some(m) if page.more => after = m.seq,
            _ => break,
        }
    }
    let seqs: Vec<u64> = all.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "channel {ch}: the log must hold exactly the seqs 1..={last}");
    all
}

/// What one append of the outage test ended with.
#[derive(Debug)]
enum Outcome {
    Stored(Appended),
    Unavailable,
    Internal,
}

/// The database goes away mid-run and comes back: appends during the outage fail with `Unavailable` (never a
/// false success), nothing is half-written, and after the restore appends succeed again with seqs continuing
/// without gaps; acknowledged messages are all there, refused ones are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_and_recovery() {
    let Some(schema) = TestSchema::new("database_outage_and_recovery") else { return };
    let proxy = Proxy::start(upstream(&schema.url)).await;
    let config = PgConfig {
        url: Some(with_addr(&schema.url, proxy.addr)),
        acquire_timeout: Duration::from_millis(500),
        write_timeout: Duration::from_secs(2),
        ..schema.config()
    };
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(config).await.expect("connect through the proxy"));
    let channels = [create(&*store, "outage-a").await, create(&*store, "outage-b").await];

    // Appenders run through the whole test and report every outcome.
    let stop = Arc::new(AtomicBool::new(false));
    let (report, mut reports) = mpsc::unbounded_channel::<(NewMessage, Outcome)>();
    let mut appenders = Vec::new();
    for task in 0..6 {
        let (store, stop, report, ch) =
            (Arc::clone(&store), Arc::clone(&stop), report.clone(), channels[task % 2].clone());
        appenders.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let client_id = format!("t{task}-{i}");
                let msg = message(&ch, &format!("w{task}"), Some(&client_id), &format!(r#"{{"t":{task},"i":{i}}}"#));
                let outcome = match store.append(msg.clone()).await {
                    Ok(a) => Outcome::Stored(a),
                    Err(StoreError::Unavailable(_)) => Outcome::Unavailable,
                    Err(StoreError::Internal(_)) => Outcome::Internal,
                    Err(e) => panic!("unexpected append error: {e:?}"),
                };
                let failed = !matches!(outcome, Outcome::Stored(_));
                if report.send((msg, outcome)).is_err() {
                    return;
                }
                if failed {
                    // Do not spin while the database is away.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    drop(report);
    let mut outcomes = Vec::new();
    let mut wait_for = async |what: &str, pred: &dyn Fn(&Outcome) -> bool, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        while seen < count {
            let (msg, outcome) = tokio::time::timeout_at(deadline, reports.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .expect("appenders running");
            if pred(&outcome) {
                seen += 1;
            }
            outcomes.push((msg, outcome));
        }
    };

    wait_for("successes before the outage", &|o| matches!(o, Outcome::Stored(_)), 200).await;
    proxy.cut().await;
    wait_for("failures during the outage", &|o| matches!(o, Outcome::Unavailable), 20).await;

    // With the database away, a fresh append fails with Unavailable and stores nothing.
    let during = message(&channels[0], "probe", Some("during-outage"), r#"{"probe":1}"#);
    match store.append(during.clone()).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("an append during the outage must fail with Unavailable, got {other:?}"),
    }
    match store.read(&channels[0], ReadRange::After(0), 10).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a read during the outage must fail with Unavailable, got {other:?}"),
    }

    proxy.restore().await;
    wait_for("successes after the restore", &|o| matches!(o, Outcome::Stored(_)), 200).await;
    stop.store(true, Ordering::Relaxed);
    for a in appenders {
        a.await.expect("appender");
    }
    while let Some(o) = reports.recv().await {
        outcomes.push(o);
    }

    // Every channel's log is gap-free; acknowledged messages are in it as acknowledged, refused ones are not.
    let mut logs: HashMap<ChannelId, HashMap<MessageId, Message>> = HashMap::new();
    for ch in &channels {
        logs.insert(ch.clone(), whole_log(&*store, ch).await.into_iter().map(|m| (m.id, m)).collect());
    }
    let (mut stored, mut unavailable, mut internal) = (0, 0, 0);
    for (msg, outcome) in &outcomes {
        let log = &logs[&msg.channel];
        match outcome {
            Outcome::Stored(a) => {
                stored += 1;
                assert!(!a.duplicate, "fresh client ids are never duplicates");
                assert_eq!(
                    log.get(&msg.id),
                    Some(&a.message),
                    "an acknowledged message must be stored as acknowledged"
                );
            }
            Outcome::Unavailable => {
                unavailable += 1;
                assert!(!log.contains_key(&msg.id), "a message refused with Unavailable must not be stored");
            }
            Outcome::Internal => internal += 1,
        }
    }
    let logged: usize = logs.values().map(HashMap::len).sum();
    assert!(logged >= stored && logged <= stored + internal, "log {logged}, stored {stored}, unknown {internal}");
    assert!(!logs[&channels[0]].values().any(|m| m.id == during.id), "the probe must not be stored");
    eprintln!("outage test: {stored} stored, {unavailable} unavailable, {internal} outcome unknown");

    // The duplicate index is intact: every acknowledged client id is recognised.
    for (msg, outcome) in outcomes.iter().take(50) {
        if let Outcome::Stored(a) = outcome {
            let again = store.append(NewMessage { id: MessageId::generate(), ..msg.clone() }).await.expect("retry");
            assert!(again.duplicate && again.message == a.message, "a retry returns the acknowledged original");
        }
    }
}

/// A commit whose reply is lost is ambiguous: the store looks up the transaction's fate and answers success only
/// when it committed; when it rolled back, the append fails with `Unavailable` and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_commit_is_resolved() {
    let Some(schema) = TestSchema::new("ambiguous_commit_is_resolved") else { return };
    let proxy = Proxy::start(upstream(&schema.url)).await;
    // Plain text, so that the proxy can spot the COMMIT.
    let url = plaintext(&with_addr(&schema.url, proxy.addr));
    let config = PgConfig { url: Some(url), writers: 1, ..schema.config() };
    let store = PgStore::connect(config).await.expect("connect through the proxy");
    let ch = create(&store, "ambiguous").await;
    let first = store.append(message(&ch, "alice", Some("m1"), "1")).await.expect("a normal append");
    assert_eq!(first.message.seq, 1);

    // The COMMIT succeeds on the server but its reply is lost.
    proxy.fail_next_commit(CommitFault::DropReply);
    let msg = message(&ch, "alice", Some("m2"), r#"{"lost":"reply"}"#);
    let appended = store.append(msg.clone()).await.expect("a committed batch whose reply was lost is a success");
    assert!(!proxy.commit_fault_pending(), "the fault struck");
    assert_eq!(appended.message, msg.clone().into_message(2), "the committed message at seq 2");
    assert_eq!(store.get(&ch, 2).await.expect("get"), Some(appended.message.clone()));

    // The connection closes before the COMMIT reaches the server: nothing is stored.
    proxy.fail_next_commit(CommitFault::DropBeforeCommit);
    let msg = message(&ch, "alice", Some("m3"), r#"{"lost":"commit"}"#);
    match store.append(msg.clone()).await {
        Err(StoreError::Unavailable(e)) => assert!(e.to_string().contains("rolled back"), "{e}"),
        other => panic!("a batch whose COMMIT never arrived must fail with Unavailable, got {other:?}"),
    }
    assert!(!proxy.commit_fault_pending(), "the fault struck");
    assert_eq!(store.last_seq(&ch).await.expect("last_seq"), 2, "the rolled-back batch used no seq");
    let again = store.append(msg.clone()).await.expect("the retry");
    assert!(!again.duplicate, "the rolled-back client id is free");
    assert_eq!(again.message, msg.into_message(3), "the retry gets the next seq");
    whole_log(&store, &ch).await;
}

/// The append queue is bounded: while the writer is stuck (another session holds the channel's row lock), appends
/// beyond the queue's room fail with `Unavailable` after `acquire_timeout` instead of piling up; when the lock goes,
/// the queued ones are stored without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_appends() {
    const TASKS: usize = 20;
    let Some(schema) = TestSchema::new("a_full_queue_refuses_appends") else { return };
    let config =
        PgConfig { writers: 1, queue_max_messages: 4, acquire_timeout: Duration::from_millis(300), ..schema.config() };
    let store = Arc::new(PgStore::connect(config).await.expect("connect"));
    let ch = create(&*store, "full-queue").await;

    // Another session locks the channel's row: the writer's batch waits for it.
    let mut blocker = sqlx::postgres::PgConnection::connect(&schema.url).await.expect("connect the blocker");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET search_path = {}; BEGIN", schema.name)))
        .execute(&mut blocker)
        .await
        .expect("begin");
    sqlx::query("SELECT 1 FROM channels WHERE id = $1 FOR UPDATE")
        .bind(ch.as_str())
        .execute(&mut blocker)
        .await
        .expect("lock the channel");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        let (store, msg) = (Arc::clone(&store), message(&ch, "alice", Some(&format!("q{i}")), "{}"));
        tasks.spawn(async move { (msg.id, store.append(msg).await) });
    }
    // Nothing can be stored while the lock is held: the first answer is a refusal.
    let (_, first) = tasks.join_next().await.expect("a task").expect("no panic");
    match first {
        Err(StoreError::Unavailable(e)) => assert!(e.to_string().contains("queue is full"), "{e}"),
        other => panic!("with the writer stuck, an append beyond the queue must fail with Unavailable: {other:?}"),
    }

    sqlx::raw_sql("COMMIT").execute(&mut blocker).await.expect("release the lock");
    let mut stored = Vec::new();
    let mut refused = 1;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("no panic") {
            (_, Ok(a)) => stored.push(a.message.seq),
            (_, Err(StoreError::Unavailable(_))) => refused += 1,
            (id, Err(e)) => panic!("append {id:?}: unexpected {e:?}"),
        }
    }
    stored.sort_unstable();
    assert!(!stored.is_empty() && stored.len() <= 8, "at most the batch and the queue (4 + 4) got in: {stored:?}");
    assert_eq!(stored.len() + refused, TASKS);
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>(), "the admitted appends are stored without gaps");
    assert_eq!(whole_log(&*store, &ch).await.len(), stored.len(), "refused appends are not stored");
}

/// Two stores on one database, like two nodes, append to the same channels at once with the same client ids:
/// per channel the seqs stay gap-free, each client id is stored exactly once, and both nodes get the same
/// message for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_share_channels() {
    const CHANNELS: usize = 4;
    const KEYS: usize = 150;
    const PLAIN: usize = 50;
    let Some(schema) = TestSchema::new("two_nodes_share_channels") else { return };
    let node_a: Arc<dyn Store> = Arc::new(PgStore::connect(schema.config()).await.expect("node a"));
    let node_b: Arc<dyn Store> = Arc::new(PgStore::connect(schema.config()).await.expect("node b"));
    let mut channels = Vec::new();
    for c in 0..CHANNELS {
        channels.push(create(&*node_a, &format!("shared-{c}")).await);
    }

    let mut tasks = Vec::new();
    for (n, node) in [&node_a, &node_b].into_iter().enumerate() {
        for ch in &channels {
            for lane in 0..4 {
                let (node, ch) = (Arc::clone(node), ch.clone());
                tasks.push(tokio::spawn(async move {
                    // Each node walks the keys in its own order; lanes interleave within a node.
                    let mut keys: Vec<usize> = (0..KEYS).filter(|k| k % 4 == lane).collect();
                    if n == 1 {
                        keys.reverse();
                    }
                    let mut out = Vec::new();
                    for k in keys {
                        let sender = format!("u{}", k % 3);
                        let msg = message(&ch, &sender, Some(&format!("k{k}")), &format!(r#"{{"node":{n},"k":{k}}}"#));
                        out.push((Some(k), node.append(msg).await.expect("append on a shared channel")));
                    }
                    for p in 0..PLAIN / 4 {
                        let msg = message(&ch, "plain", None, &format!(r#"{{"node":{n},"p":{p}}}"#));
                        out.push((None, node.append(msg).await.expect("append without client id")));
                    }
                    (ch, out)
                }));
            }
        }
    }
    let mut by_key: BTreeMap<(ChannelId, usize), Vec<Appended>> = BTreeMap::new();
    let mut plain: HashMap<ChannelId, usize> = HashMap::new();
    for t in tasks {
        let (ch, out) = t.await.expect("appending task");
        for (key, appended) in out {
            match key {
                Some(k) => by_key.entry((ch.clone(), k)).or_default().push(appended),
                None => {
                    assert!(!appended.duplicate, "messages without client id are never duplicates");
                    *plain.entry(ch.clone()).or_default() += 1;
                }
            }
        }
    }
    for ((ch, k), results) in &by_key {
        assert_eq!(results.len(), 2, "both nodes sent key {k}");
        let originals = results.iter().filter(|a| !a.duplicate).count();
        assert_eq!(originals, 1, "key {k} in {ch} must be stored exactly once, got {results:?}");
        assert_eq!(results[0].message, results[1].message, "both nodes must get the same message for key {k}");
    }
    for ch in &channels {
        let log = whole_log(&*node_b, ch).await;
        let expected = KEYS + plain[ch];
        assert_eq!(log.len(), expected, "channel {ch}: {KEYS} keyed + {} plain messages", plain[ch]);
        for (k, results) in by_key.iter().filter(|((c, _), _)| c == ch).map(|((_, k), r)| (k, r)) {
            let seq = results[0].message.seq;
            assert_eq!(log[(seq - 1) as usize], results[0].message, "key {k} is stored at seq {seq}");
        }
    }
}

/// Start-up errors are clear: an unreachable database, a missing URL, an invalid URL or configuration.
#[tokio::test]
async fn connect_errors_are_clear() {
    // Nothing listens on a port just freed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let config = PgConfig {
        acquire_timeout: Duration::from_millis(300),
        ..PgConfig::new(format!("postgres://u:hunter2@127.0.0.1:{port}/db"))
    };
    let started = Instant::now();
    let err = timeout(Duration::from_secs(10), PgStore::connect(config))
        .await
        .expect("connect gives up")
        .expect_err("refused");
    assert!(started.elapsed() < Duration::from_secs(5), "connect must give up after acquire_timeout");
    let text = err.to_string();
    assert!(matches!(err, ConnectError::Connect { .. }), "{err:?}");
    assert!(text.contains(&format!("127.0.0.1:{port}")) && !text.contains("hunter2"), "{text}");

    let err = PgStore::connect(PgConfig::new("postgres://host:notaport/db")).await.expect_err("not a postgres URL");
    assert!(matches!(err, ConnectError::InvalidUrl { .. }), "{err:?}");
    let err = PgStore::connect(PgConfig::new("postgres://h/db").with_schema("Not-Valid")).await.expect_err("schema");
    assert!(matches!(err, ConnectError::InvalidConfig(_)), "{err:?}");
}
