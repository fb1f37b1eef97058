//! A throughput and latency self-check of the PostgreSQL store: N concurrent appenders with 200-byte bodies to
//! 1 or many channels, then 100-message history pages. It works in a fresh schema that it drops at the end.
//!
//! ```text
//! HERALD_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p herald-postgres --example pg_append_load -- --tasks 2000 --channels 1000 --seconds 10
//! # latency at a fixed rate (appends per second over all tasks):
//!   cargo run --release -p herald-postgres --example pg_append_load -- --tasks 500 --channels 1000 --rate 20000
//! ```
//!
//! Options (all optional): `--tasks N` (default 1000), `--channels N` (1000), `--seconds S` (10), `--rate R`
//! (appends/s over all tasks; default: as fast as possible), `--body BYTES` (200), `--writers N` (2),
//! `--batch N` (1000), `--pool N` (8), `--history-seconds S` (5), `--readers N` (history readers; default: the
//! pool size), `--warmup S` (seconds not measured at the start, 1), `--keep` (keep the schema).
//!
//! With sqlx 0.9.0, use `?sslmode=disable` (or a Unix socket) for a database on the same host: over TLS, batches
//! stall on delayed ACKs (see the crate docs).

use std::sync::Arc;
use std::time::Duration;

use herald_core::id::{ChannelId, ChannelName, ClientMsgId, MessageId, UserId};
use herald_core::model::{Channel, MessageKind, NewMessage, now_millis};
use herald_core::store::{ReadRange, Store};
use herald_postgres::{PgConfig, PgStore};
use serde_json::value::RawValue;
use tokio::time::Instant;

#[derive(Debug)]
struct Args {
    tasks: usize,
    channels: usize,
    seconds: u64,
    rate: Option<f64>,
    body: usize,
    writers: usize,
    batch: usize,
    pool: u32,
    history_seconds: u64,
    readers: usize,
    warmup: u64,
    keep: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        tasks: 1000,
        channels: 1000,
        seconds: 10,
        rate: None,
        body: 200,
        writers: 2,
        batch: 1000,
        pool: 8,
        history_seconds: 5,
        readers: 0,
        warmup: 1,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--keep" {
            args.keep = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--tasks" => args.tasks = value.parse().map_err(|e| bad(&e))?,
            "--channels" => args.channels = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => args.seconds = value.parse().map_err(|e| bad(&e))?,
            "--rate" => args.rate = Some(value.parse().map_err(|e| bad(&e))?),
            "--body" => args.body = value.parse().map_err(|e| bad(&e))?,
            "--writers" => args.writers = value.parse().map_err(|e| bad(&e))?,
            "--batch" => args.batch = value.parse().map_err(|e| bad(&e))?,
            "--pool" => args.pool = value.parse().map_err(|e| bad(&e))?,
            "--history-seconds" => args.history_seconds = value.parse().map_err(|e| bad(&e))?,
            "--readers" => args.readers = value.parse().map_err(|e| bad(&e))?,
            "--warmup" => args.warmup = value.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.tasks == 0 || args.channels == 0 || args.body < 2 {
        return Err("--tasks and --channels must be > 0 and --body >= 2".into());
    }
    Ok(args)
}

/// Latencies in microseconds, summarised.
fn summary(mut us: Vec<u32>) -> String {
    if us.is_empty() {
        return "no samples".into();
    }
    us.sort_unstable();
    let at = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len() - 1)] as f64 / 1000.0;
    format!("p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms", at(0.50), at(0.99), at(0.999), at(1.0))
}

fn elapsed_us(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // RUST_LOG=herald_postgres=trace shows every batch's size and phase timings.
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = parse_args()?;
    let url = std::env::var("HERALD_DATABASE_URL")
        .or_else(|_| std::env::var("HERALD_TEST_DATABASE_URL"))
        .map_err(|_| "set HERALD_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test)")?;
    let schema = format!("herald_load_{}", uuid::Uuid::now_v7().simple());
    let config = PgConfig {
        writers: args.writers,
        batch_max_messages: args.batch,
        pool_size: args.pool,
        queue_max_messages: (args.tasks * 2).max(10_000),
        ..PgConfig::new(&url).with_schema(&schema)
    };
    let store = Arc::new(PgStore::connect(config).await?);
    println!("{args:?}\nschema {schema}");

    let owner = UserId::new("owner")?;
    let mut channels = Vec::with_capacity(args.channels);
    for c in 0..args.channels {
        let id = ChannelId::group(&ChannelName::new(format!("load-{c}"))?);
        store
            .create_channel(Channel { id: id.clone(), created_by: owner.clone(), created_at: now_millis() }, &[])
            .await?;
        channels.push(id);
    }
    let channels = Arc::new(channels);
    let body: Arc<RawValue> = Arc::from(RawValue::from_string(format!("\"{}\"", "x".repeat(args.body - 2)))?);

    // Appends; the first `warmup` seconds (connections opening, statements being prepared) are not measured.
    let measure_from = Instant::now() + Duration::from_secs(args.warmup);
    let deadline = measure_from + Duration::from_secs(args.seconds);
    let per_task_interval = args.rate.map(|r| Duration::from_secs_f64(args.tasks as f64 / r));
    let mut handles = Vec::with_capacity(args.tasks);
    let tasks = args.tasks;
    for t in 0..tasks {
        let (store, channels, body) = (Arc::clone(&store), Arc::clone(&channels), Arc::clone(&body));
        handles.push(tokio::spawn(async move {
            let sender = UserId::new(format!("u{t}")).expect("valid user id");
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut i = 0usize;
            // Spread the tasks' first sends over one interval.
            let mut next =
                Instant::now() + per_task_interval.map_or(Duration::ZERO, |d| d.mul_f64(t as f64 / tasks as f64));
            while Instant::now() < deadline {
                if per_task_interval.is_some() {
                    tokio::time::sleep_until(next).await;
                }
                // With a rate, latency counts from the scheduled time (no coordinated omission).
                let start = if per_task_interval.is_some() { next } else { Instant::now() };
                let channel = channels[(t + i) % channels.len()].clone();
                let msg = NewMessage {
                    channel,
                    id: MessageId::generate(),
                    sender: sender.clone(),
                    client_id: Some(ClientMsgId::new(format!("c{i}")).expect("valid client id")),
                    kind: MessageKind::Message,
                    refers: None,
                    ts: now_millis(),
                    body: Arc::clone(&body),
                };
                let result = store.append(msg).await;
                if start >= measure_from {
                    match result {
                        Ok(_) => latencies.push(elapsed_us(start)),
                        Err(_) => errors += 1,
                    }
                }
                i += 1;
                if let Some(interval) = per_task_interval {
                    next += interval;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.await?;
        all.extend(l);
        errors += e;
    }
    let secs = measure_from.elapsed().as_secs_f64();
    println!(
        "appends: {} ok, {errors} failed in {secs:.1} s = {:.0} acknowledged appends/s; {}",
        all.len(),
        all.len() as f64 / secs,
        summary(all)
    );

    // History pages of 100 messages (the tables are fresh: give the planner statistics, as autovacuum would).
    sqlx::raw_sql("ANALYZE messages").execute(store.pool()).await?;
    let deadline = Instant::now() + Duration::from_secs(args.history_seconds);
    let started = Instant::now();
    let mut handles = Vec::new();
    let readers = if args.readers == 0 { args.pool as usize } else { args.readers };
    for t in 0..readers {
        let (store, channels) = (Arc::clone(&store), Arc::clone(&channels));
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = t;
            while Instant::now() < deadline {
                let channel = &channels[i % channels.len()];
                let start = Instant::now();
                let page = store.read(channel, ReadRange::Before(u64::MAX), 100).await;
                if page.is_ok() {
                    latencies.push(elapsed_us(start));
                }
                i += 7;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    println!("history (100 newest): {:.0} pages/s; {}", all.len() as f64 / secs, summary(all));

    if !args.keep {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE"))).execute(store.pool()).await?;
    }
    Ok(())
}
