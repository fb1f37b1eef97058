//! Criterion benchmarks of the hub's hot path.
//!
//! - `fanout/<rt>/<K>`: one `send` to a group with K live subscribers, through the real hub, the memory store
//!   and the in-process transport (the same driver as the network transports): the time from the `send` frame
//!   until the sender has its reply and each of the K clients has received the `message` event. `rt` is
//!   `multi_thread` (2 workers, as on the 2-core bench machine) or `current_thread` (everything on one thread:
//!   no cross-thread wake-ups, steadier on a noisy machine). Throughput is in recipients, so criterion's
//!   `elem/s` is the per-recipient rate.
//! - `codec/*`: decoding a `send` command, encoding a `message` event.
//!
//! `cargo bench -p herald-bench --bench fanout` (figures in `docs/benchmarks.md`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald::core::auth::Credentials;
use herald::core::id::{ChannelId, ClientMsgId, MessageId, UserId};
use herald::core::model::{Message, MessageKind, now_millis};
use herald::core::protocol;
use herald::core::testkit::inproc::{self, InProcClient, ServerItem};
use herald::core::testkit::protocol::TestTokens;
use herald::memory::MemoryStore;
use herald::{Hub, HubConfig};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::runtime::Runtime;

const GROUP: &str = "group:fanout";
const BODY: &str = r#"{"text":"hello, world: a short chat message of about eighty bytes in all"}"#;

/// A hub with one sender and K subscribers of [`GROUP`].
struct Fanout {
    sender: InProcClient,
    receivers: Vec<InProcClient>,
    next_id: u64,
}

async fn next_json(c: &mut InProcClient) -> Value {
    match c.recv().await {
        Some(ServerItem::Frame(f)) => serde_json::from_slice(&f).unwrap_or_else(|e| panic!("bad frame: {e}")),
        other => panic!("expected a frame, got {other:?}"),
    }
}

impl Fanout {
    async fn new(k: usize) -> Self {
        // No rate limit: the sender sends far more than a person would.
        let config = HubConfig { rate_limit: None, ..HubConfig::default() };
        let tokens = TestTokens::default();
        let hub = Hub::builder(Arc::new(MemoryStore::new()), Arc::new(tokens.auth())).config(config).build();
        let user = |name: String| UserId::new(name).unwrap_or_else(|e| panic!("{e}"));
        let mut members: Vec<UserId> = (0..k).map(|i| user(format!("r{i}"))).collect();
        members.push(user("sender".into()));
        let group = ChannelId::new(GROUP).unwrap_or_else(|e| panic!("{e}"));
        hub.create_channel(group, user("sender".into()), &members).await.unwrap_or_else(|e| panic!("{e}"));

        let connect = |name: &str| inproc::connect(&hub, Some(Credentials::Bearer(tokens.token(name))));
        let mut sender = connect("sender");
        assert_eq!(next_json(&mut sender).await["type"], "hello");
        let mut receivers = Vec::with_capacity(k);
        for i in 0..k {
            let mut c = connect(&format!("r{i}"));
            assert_eq!(next_json(&mut c).await["type"], "hello");
            c.send(format!(r#"{{"type":"sub","id":1,"channel":"{GROUP}"}}"#)).await;
            let reply = next_json(&mut c).await;
            assert_eq!(reply["type"], "reply", "sub refused: {reply}");
            receivers.push(c);
        }
        let mut f = Self { sender, receivers, next_id: 1 };
        // Check once, outside the timing, that what the receivers get is the message.
        f.send().await;
        assert_eq!(next_json(&mut f.sender).await["type"], "reply");
        for r in &mut f.receivers {
            let m = next_json(r).await;
            assert_eq!((m["type"].as_str(), m["channel"].as_str()), (Some("message"), Some(GROUP)), "{m}");
        }
        f
    }

    async fn send(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let frame = format!(r#"{{"type":"send","id":{id},"channel":"{GROUP}","cid":"c{id}","body":{BODY}}}"#);
        assert!(self.sender.send(frame).await, "the sender's connection closed");
    }

    /// One message to everyone: send, then wait for the reply and for each receiver's copy.
    async fn round(&mut self) {
        self.send().await;
        match self.sender.recv().await {
            Some(ServerItem::Frame(_)) => {}
            other => panic!("sender: expected the reply, got {other:?}"),
        }
        for r in &mut self.receivers {
            match r.recv().await {
                Some(ServerItem::Frame(_)) => {}
                other => panic!("receiver: expected the message, got {other:?}"),
            }
        }
    }

    async fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.round().await;
        }
        start.elapsed()
    }
}

fn runtime(multi_thread: bool) -> Runtime {
    let mut b = if multi_thread {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().unwrap_or_else(|e| panic!("runtime: {e}"))
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for (name, multi_thread) in [("multi_thread", true), ("current_thread", false)] {
        let rt = runtime(multi_thread);
        for k in [1usize, 100, 1000] {
            let mut fixture = rt.block_on(Fanout::new(k));
            group.throughput(Throughput::Elements(k as u64));
            group.bench_function(BenchmarkId::new(name, k), |b| b.iter_custom(|iters| rt.block_on(fixture.run(iters))));
        }
    }
    group.finish();
}

fn message(body: &str) -> Message {
    Message {
        channel: ChannelId::new("group:general").unwrap_or_else(|e| panic!("{e}")),
        seq: 12_345,
        id: MessageId::generate(),
        sender: UserId::new("alice").unwrap_or_else(|e| panic!("{e}")),
        client_id: Some(ClientMsgId::new("c-0192").unwrap_or_else(|e| panic!("{e}"))),
        kind: MessageKind::Message,
        refers: None,
        ts: now_millis(),
        body: Arc::from(RawValue::from_string(body.to_owned()).unwrap_or_else(|e| panic!("{e}"))),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    let big_body = format!(r#"{{"text":"{}"}}"#, "x".repeat(1000));
    for (size, body) in [("small", BODY), ("1k", big_body.as_str())] {
        let frame = format!(r#"{{"type":"send","id":2,"channel":"dm:alice:bob","cid":"c-0192","body":{body}}}"#);
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(BenchmarkId::new("decode_send", size), |b| {
            b.iter(|| protocol::decode_command(std::hint::black_box(frame.as_bytes())))
        });
        let m = message(body);
        group.throughput(Throughput::Bytes(protocol::encode_message(&m).len() as u64));
        group.bench_function(BenchmarkId::new("encode_message", size), |b| {
            b.iter(|| protocol::encode_message(std::hint::black_box(&m)))
        });
    }
    group.finish();
}

criterion_group!(benches, fanout, codec);
criterion_main!(benches);
