//! Throughput and latency self-check of the SQLite store: concurrent appenders, then history page reads.
//!
//! ```text
//! cargo run --release -p herald-sqlite --example sqlite_append_load -- [options]
//!   --appenders N   concurrent appending tasks (closed loop: each waits for its ack)      default 256
//!   --channels C    channels the appends spread over (1 = every task on one channel)      default 1
//!   --total T       appends in all                                                         default 200000
//!   --rate R        open loop instead: R appends/s scheduled on a clock, latency measured
//!                   from the scheduled time (so queueing delay counts); --appenders is then
//!                   the most appends in flight                                             default off
//!   --body B        body size in bytes (a JSON string)                                     default 200
//!   --reads K       100-message history pages read after the appends                      default 20000
//!   --readers Q     concurrent readers                                                     default 8
//!   --batch-max M   the store's batch_max                                                  default 2048
//!   --page-size P   the page size of the new database file                                default 4096
//!   --checkpoint-ms I  the store's checkpoint_interval in milliseconds                   default 200
//!   --dir PATH      where the database goes (default: a fresh temporary directory)
//! ```
//!
//! Prints appends/s and the p50/p99/max of append and read latencies. After the appends it folds what is still only in
//! the append log into the main database (`SqliteStore::fold`), so that a disk write counter read after the run
//! includes everything the appends cost.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald_core::id::{ChannelId, ChannelName, ClientMsgId, MessageId, UserId};
use herald_core::model::{Channel, MessageKind, NewMessage, now_millis};
use herald_core::store::{ReadRange, Store};
use herald_sqlite::{SqliteConfig, SqliteStore};
use serde_json::value::RawValue;

#[derive(Debug)]
struct Options {
    appenders: usize,
    channels: usize,
    total: usize,
    rate: Option<u64>,
    body: usize,
    reads: usize,
    readers: usize,
    batch_max: usize,
    page_size: u32,
    checkpoint_ms: u64,
    dir: Option<PathBuf>,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        appenders: 256,
        channels: 1,
        total: 200_000,
        rate: None,
        body: 200,
        reads: 20_000,
        readers: 8,
        batch_max: 2048,
        page_size: 4096,
        checkpoint_ms: 200,
        dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || value.parse::<usize>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--appenders" => o.appenders = num()?.max(1),
            "--channels" => o.channels = num()?.max(1),
            "--total" => o.total = num()?,
            "--rate" => o.rate = Some(num()? as u64),
            "--body" => o.body = num()?.max(2),
            "--reads" => o.reads = num()?,
            "--readers" => o.readers = num()?.max(1),
            "--batch-max" => o.batch_max = num()?.max(1),
            "--page-size" => o.page_size = u32::try_from(num()?).map_err(|e| format!("{flag}: {e}"))?,
            "--checkpoint-ms" => o.checkpoint_ms = num()? as u64,
            "--dir" => o.dir = Some(PathBuf::from(value)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// p50, p99 and max of `samples` (sorted in place), in milliseconds.
fn percentiles(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", ms(at(0.50)), ms(at(0.99)), ms(at(1.0)))
}

fn channel(i: usize) -> ChannelId {
    ChannelId::group(&ChannelName::new(format!("load-{i}")).expect("a valid channel name"))
}

fn message(ch: ChannelId, sender: &UserId, n: usize, body: &Arc<RawValue>) -> NewMessage {
    NewMessage {
        channel: ch,
        id: MessageId::generate(),
        sender: sender.clone(),
        client_id: Some(ClientMsgId::new(format!("c-{n}")).expect("a valid client id")),
        kind: MessageKind::Message,
        refers: None,
        ts: now_millis(),
        body: body.clone(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = parse()?;
    let temp = tempfile::tempdir()?;
    let dir = o.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let config = SqliteConfig {
        batch_max: o.batch_max,
        page_size: o.page_size,
        checkpoint_interval: Duration::from_millis(o.checkpoint_ms),
        ..SqliteConfig::new(dir.join("load.db"))
    };
    let store = Arc::new(SqliteStore::open(config).await?);
    println!("database {} ({:?})", store.path().display(), o);

    let owner = UserId::new("owner")?;
    for c in 0..o.channels {
        let meta = Channel { id: channel(c), created_by: owner.clone(), created_at: now_millis() };
        store.ensure_channel(meta, std::slice::from_ref(&owner)).await?;
    }
    let body: Arc<RawValue> =
        Arc::from(RawValue::from_string(format!("\"{}\"", "x".repeat(o.body.saturating_sub(2))))?);

    // Appends.
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..o.appenders {
        let (store, next, body) = (store.clone(), next.clone(), body.clone());
        let sender = UserId::new(format!("sender-{task}"))?;
        let (total, channels, rate) = (o.total, o.channels, o.rate);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut service = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, herald_core::store::StoreError>((latencies, service));
                }
                // Open loop: append n is due at n / rate seconds; waiting for the ack of earlier appends
                // delays the start, and that delay counts in the latency.
                let due = match rate {
                    Some(rate) => {
                        let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let start = Instant::now();
                store.append(message(channel(n % channels), &sender, n, &body)).await?;
                latencies.push(due.elapsed());
                service.push(start.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(o.total);
    let mut service = Vec::with_capacity(o.total);
    for t in tasks {
        let (l, s) = t.await??;
        latencies.extend(l);
        service.extend(s);
    }
    let elapsed = started.elapsed();
    println!(
        "appends: {} in {:.2} s = {:.0} appends/s; latency {}",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentiles(&mut latencies)
    );
    if o.rate.is_some() {
        // Without the time the task waited to be scheduled after its due time (a busy machine's share).
        println!("  of which in Store::append: {}", percentiles(&mut service));
    }
    // What is still only in the append log goes into the main database, so that the disk's write counter,
    // read after this program, includes every byte the appends cost.
    let folding = Instant::now();
    store.fold().await?;
    println!("fold of the rest: {:.2} s", folding.elapsed().as_secs_f64());

    // History pages: the newest 100 messages before a random point of a random channel.
    let per_channel = (o.total / o.channels).max(1) as u64;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for reader in 0..o.readers {
        let (store, next, reads, channels) = (store.clone(), next.clone(), o.reads, o.channels);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut x = reader as u64 * 7919 + 1;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= reads {
                    return Ok::<_, herald_core::store::StoreError>(latencies);
                }
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let before = 101 + (x >> 33) % per_channel.max(1);
                let t = Instant::now();
                let page = store.read(&channel(n % channels), ReadRange::Before(before), 100).await?;
                latencies.push(t.elapsed());
                std::hint::black_box(page);
            }
        }));
    }
    let mut latencies = Vec::with_capacity(o.reads);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    if !latencies.is_empty() {
        println!(
            "history pages (100 messages): {} in {:.2} s = {:.0} pages/s; latency {}",
            latencies.len(),
            elapsed.as_secs_f64(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            percentiles(&mut latencies)
        );
    }
    store.close().await;
    Ok(())
}
