//! E: the durable store, in-process, through `Arc<dyn Store>` (so any backend `--store` can open). Each store of
//! `--store` in turn, each measurement on a fresh scratch store (SQLite: a new data directory; PostgreSQL: a new
//! schema, dropped afterwards). Appends of 200-byte bodies (each with a client message id, as clients send them)
//! to 1 or 1,000 channels:
//! - concurrency-driven: C tasks append back to back; acknowledged appends per second and their latency; the
//!   best of the concurrency steps is the saturation throughput;
//! - fixed-rate: appends intended at a fixed rate (20,000/s by default) by a pool of `--in-flight` tasks,
//!   latency from each append's intended time (open loop: a slow append delays the ones queued behind it,
//!   and that delay is counted);
//! - history: pages of the newest 100 messages of a channel at a fixed rate, latency p50/p99.
//!
//! An append counts when the store acknowledged it: for SQLite and PostgreSQL, after its transaction is durable.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald::core::id::{ChannelId, ClientMsgId, MessageId, UserId};
use herald::core::model::{Body, Channel, MessageKind, NewMessage, now_millis};
use herald::core::store::{ReadRange, Store};
use herald_bench::hist::{self, Latency};
use herald_bench::net::Error;
use herald_bench::report::{Check, Spread, show, table};
use herald_bench::schedule::{Pacer, Schedule, unix_nanos};
use herald_bench::store::{Scratch, StoreKind};
use serde_json::json;
use serde_json::value::RawValue;

use crate::{Outcome, phases};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// The stores, measured one after the other (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "memory")]
    pub(crate) store: Vec<StoreKind>,
    /// Where SQLite's scratch data directories are made (default: the system's temporary directory). It must
    /// be a real disk: the figures include what `fsync` costs there.
    #[arg(long)]
    pub(crate) sqlite_dir: Option<PathBuf>,
    /// The PostgreSQL database for `--store postgres` (each measurement makes a schema in it and drops it).
    #[arg(long, env = "HERALD_TEST_DATABASE_URL")]
    pub(crate) postgres_url: Option<String>,
    /// Channel counts to measure (messages go round-robin over the channels).
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    pub(crate) channels: Vec<usize>,
    /// Concurrent appenders for the concurrency-driven mode; the best step is the saturation throughput.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1000,4000")]
    pub(crate) concurrency: Vec<usize>,
    /// Appends per second in the fixed-rate mode.
    #[arg(long, default_value_t = 20_000.0)]
    pub(crate) rate: f64,
    /// Appends in flight at most in the fixed-rate mode (enough that a durable store's group commit is not
    /// starved: at 20,000/s and 20 ms per append, 400 are in flight).
    #[arg(long, default_value_t = 2000)]
    pub(crate) in_flight: usize,
    /// History reads in flight at most.
    #[arg(long, default_value_t = 64)]
    pub(crate) read_in_flight: usize,
    /// Length of each append measurement, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) secs: f64,
    /// History page reads per second.
    #[arg(long, default_value_t = 1_000.0)]
    pub(crate) read_rate: f64,
    /// Length of the read measurement, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) read_secs: f64,
    /// History page size.
    #[arg(long, default_value_t = 100)]
    pub(crate) page: usize,
    /// Message body size, bytes.
    #[arg(long, default_value_t = 200)]
    pub(crate) body_bytes: usize,
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub(crate) json_out: Option<std::path::PathBuf>,
    /// Rewrite the E section of this page (`docs/benchmarks.md`) with the result and this command.
    #[arg(long)]
    pub(crate) docs: Option<PathBuf>,
}

/// The machine's load averages (`/proc/loadavg`: 1, 5 and 15 minutes), to tell how busy it was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The E section of `docs/benchmarks.md` for this run: command, machine, table, targets.
fn section(outcome: &Outcome, command: &str, secs: f64, load: (&str, &str)) -> String {
    let mut s = format!(
        "`{command}` ({secs:.0} s)\n\n**Machine:** {}. Load average (1, 5, 15 min) {} at the start, {} at the \
         end: the machine is shared, so other work competes with the store for its 2 cores and its disk. {} runs \
         per figure: median (min–max).\n\n",
        herald_bench::report::Machine::detect().line(),
        load.0,
        load.1,
        outcome.json["runs_per_figure"],
    );
    s.push_str(&outcome.table);
    s.push('\n');
    for c in &outcome.checks {
        s.push_str(&format!("- **{}** {} — target {}, measured {}\n", c.verdict(), c.name, c.target, c.measured));
    }
    s
}

/// A run's figures for one store and channel count.
#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    store: StoreKind,
    channels: usize,
    /// (concurrency, appends/s, latency).
    concurrent: Vec<(usize, f64, Latency)>,
    fixed_rate_achieved: f64,
    fixed: Latency,
    fixed_errors: u64,
    read: Latency,
    read_errors: u64,
}

/// Channels and messages of one measurement.
struct Bench {
    store: Arc<dyn Store>,
    channels: Vec<ChannelId>,
    sender: UserId,
    body: Body,
    prefix: String,
    next: AtomicU64,
}

impl Bench {
    fn message(&self, k: u64) -> Result<NewMessage, Error> {
        Ok(NewMessage {
            channel: self.channels[(k % self.channels.len() as u64) as usize].clone(),
            id: MessageId::generate(),
            sender: self.sender.clone(),
            client_id: Some(ClientMsgId::new(format!("{}-{k}", self.prefix))?),
            kind: MessageKind::Message,
            refers: None,
            ts: now_millis(),
            body: self.body.clone(),
        })
    }

    async fn append(&self) -> Result<(), Error> {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        self.store.append(self.message(k)?).await?;
        Ok(())
    }
}

/// A fresh scratch store of `kind`.
async fn open(args: &Args, kind: StoreKind) -> Result<Scratch, Error> {
    let url = match kind {
        StoreKind::Memory => None,
        StoreKind::Sqlite => args.sqlite_dir.as_ref().map(|d| d.display().to_string()),
        StoreKind::Postgres => Some(args.postgres_url.clone().ok_or(
            "--store postgres needs --postgres-url (or HERALD_TEST_DATABASE_URL), e.g. \
             postgres://postgres@127.0.0.1:5432/test",
        )?),
    };
    Ok(herald_bench::store::open_scratch(kind, url.as_deref()).await?)
}

async fn setup(args: &Args, store: Arc<dyn Store>, channels: usize, run: usize) -> Result<Bench, Error> {
    // Unique names, so that runs never share a channel.
    let prefix = format!("e{}r{run}", unix_nanos() / 1_000_000);
    let sender = UserId::new("u0")?;
    let ids: Vec<ChannelId> =
        (0..channels).map(|i| ChannelId::new(format!("group:{prefix}-{i}"))).collect::<Result<_, _>>()?;
    // Created concurrently: a durable store commits them in groups.
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in ids.chunks(channels.div_ceil(64).max(1)) {
        let (store, sender, chunk) = (store.clone(), sender.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for id in chunk {
                let meta = Channel { id, created_by: sender.clone(), created_at: now_millis() };
                store.create_channel(meta, std::slice::from_ref(&sender)).await?;
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let text = herald_bench::scan::body(0, 0, args.body_bytes);
    let body: Body = Arc::from(RawValue::from_string(text)?);
    Ok(Bench { store, channels: ids, sender, body, prefix, next: AtomicU64::new(0) })
}

/// `c` tasks appending back to back for `secs`: (appends/s, latency, errors).
async fn concurrent(b: &Arc<Bench>, c: usize, secs: f64) -> Result<(f64, Latency), Error> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..c {
        let b = b.clone();
        tasks.spawn(async move {
            let mut h = hist::new_histogram();
            while Instant::now() < until {
                let t = Instant::now();
                b.append().await?;
                hist::record_nanos(&mut h, t.elapsed().as_nanos() as u64);
            }
            Ok::<_, Error>(h)
        });
    }
    let mut all = hist::new_histogram();
    while let Some(r) = tasks.join_next().await {
        all.add(r??).map_err(|e| format!("{e:?}"))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((all.len() as f64 / elapsed, Latency::of(&all)))
}

/// Runs `op(k)` at `rate` for `secs` from a pool of `in_flight` tasks; latency from each op's intended time.
/// Returns (completed ops per second, latency, errors).
async fn fixed_rate<F, Fut>(rate: f64, secs: f64, in_flight: usize, op: F) -> (f64, Latency, u64)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send,
{
    let start_ns = unix_nanos() + 100_000_000;
    let schedule = Schedule::for_duration(start_ns, rate, Duration::from_secs_f64(secs), in_flight as u64);
    let pacer = Pacer::start(schedule);
    let op = Arc::new(op);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..in_flight {
        let (slots, op, errors) = (pacer.slots().clone(), op.clone(), errors.clone());
        tasks.spawn(async move {
            let mut h = hist::new_histogram();
            let total = schedule.count_of(s as u64);
            let mut k = 0;
            while k < total {
                let released = slots[s].wait_beyond(k).await.min(total);
                while k < released {
                    let g = schedule.global(s as u64, k);
                    if op(g).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    hist::record_nanos(&mut h, unix_nanos().saturating_sub(schedule.intended_ns(g)));
                    k += 1;
                }
            }
            h
        });
    }
    let mut all = hist::new_histogram();
    while let Some(Ok(h)) = tasks.join_next().await {
        let _ = all.add(h);
    }
    // The schedule's own length, or longer if the last operation finished after it.
    let elapsed = (unix_nanos().saturating_sub(start_ns) as f64 / 1e9).max(secs);
    (all.len() as f64 / elapsed, Latency::of(&all), errors.load(Ordering::Relaxed))
}

/// One run of one store at one channel count, on a fresh scratch store that is deleted afterwards.
async fn one(args: &Args, kind: StoreKind, channels: usize, run: usize) -> Result<Run, Error> {
    let scratch = phases::timed("scratch store open", open(args, kind)).await?;
    let result = measure(args, kind, scratch.store.clone(), channels, run).await;
    let closed = phases::timed("scratch store close", scratch.close()).await;
    let run = result?;
    closed?;
    Ok(run)
}

async fn measure(
    args: &Args,
    kind: StoreKind,
    store: Arc<dyn Store>,
    channels: usize,
    run: usize,
) -> Result<Run, Error> {
    let b = Arc::new(phases::timed("channel setup", setup(args, store, channels, run)).await?);
    let mut out = Run {
        store: kind,
        channels,
        concurrent: Vec::new(),
        fixed_rate_achieved: 0.0,
        fixed: Latency::default(),
        fixed_errors: 0,
        read: Latency::default(),
        read_errors: 0,
    };
    for &c in &args.concurrency {
        let (tp, lat) = phases::timed("appends back to back", concurrent(&b, c, args.secs)).await?;
        println!(
            "  {} {channels} channel(s), {c} appender(s): {tp:.0} appends/s, p50 {:.3} p99 {:.3} ms",
            kind.name(),
            lat.p50_ms,
            lat.p99_ms
        );
        out.concurrent.push((c, tp, lat));
    }
    let fb = b.clone();
    let appends = fixed_rate(args.rate, args.secs, args.in_flight, move |_| {
        let b = fb.clone();
        async move { b.append().await }
    });
    let (achieved, lat, errors) = phases::timed("appends at a fixed rate", appends).await;
    println!(
        "  {} {channels} channel(s), fixed {:.0}/s: achieved {achieved:.0}/s, p50 {:.3} p99 {:.3} p99.9 {:.3} ms, {errors} errors",
        kind.name(),
        args.rate,
        lat.p50_ms,
        lat.p99_ms,
        lat.p999_ms
    );
    (out.fixed_rate_achieved, out.fixed, out.fixed_errors) = (achieved, lat, errors);
    // Every channel needs a full page.
    let fill = phases::start("history fill");
    let mut last = Vec::with_capacity(channels);
    for ch in &b.channels {
        let mut seq = b.store.last_seq(ch).await?;
        while (seq as usize) < args.page {
            let k = b.next.fetch_add(1, Ordering::Relaxed);
            let mut m = b.message(k)?;
            m.channel = ch.clone();
            seq = b.store.append(m).await?.message.seq;
        }
        last.push(seq);
    }
    drop(fill);
    let (store, chans, page) = (b.store.clone(), Arc::new(b.channels.clone()), args.page);
    let last = Arc::new(last);
    let reads = fixed_rate(args.read_rate, args.read_secs, args.read_in_flight, move |g| {
        let (store, chans, last) = (store.clone(), chans.clone(), last.clone());
        async move {
            let i = (g % chans.len() as u64) as usize;
            let p = store.read(&chans[i], ReadRange::Before(last[i] + 1), page).await?;
            if p.messages.len() != page {
                return Err(format!("history page of {} messages, expected {page}", p.messages.len()).into());
            }
            Ok(())
        }
    });
    let (_, read, read_errors) = phases::timed("history reads", reads).await;
    println!(
        "  {} {channels} channel(s), history pages of {page} at {:.0}/s: p50 {:.3} p99 {:.3} ms, {read_errors} errors",
        kind.name(),
        args.read_rate,
        read.p50_ms,
        read.p99_ms
    );
    (out.read, out.read_errors) = (read, read_errors);
    Ok(out)
}

/// The targets of a durable store (issue 3): acknowledged appends/s at saturation, p99 of an append at the fixed
/// rate, p99 of a history page.
const TARGET_APPENDS: f64 = 50_000.0;
const TARGET_FIXED_P99_MS: f64 = 20.0;
const TARGET_PAGE_P99_MS: f64 = 5.0;

pub(crate) async fn run(args: &Args) -> Result<Outcome, Error> {
    let (started, load_before) = (Instant::now(), load_average());
    let outcome = measure_all(args).await?;
    if let Some(path) = &args.docs {
        let words: Vec<String> = std::env::args().skip(1).collect();
        let command = format!("target/release/herald-load {}", words.join(" "));
        let text = section(&outcome, &command, started.elapsed().as_secs_f64(), (&load_before, &load_average()));
        let doc = std::fs::read_to_string(path)?;
        let doc =
            herald_bench::report::replace_section(&doc, "E", &text).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::write(path, doc)?;
        println!("rewrote the E section of {}", path.display());
    }
    Ok(outcome)
}

async fn measure_all(args: &Args) -> Result<Outcome, Error> {
    let mut runs: Vec<Run> = Vec::new();
    // A store that cannot be measured (no database, an error mid-run) is reported as such; the others still run.
    let mut failed: Vec<(StoreKind, String)> = Vec::new();
    for &kind in &args.store {
        'runs: for r in 1..=args.runs {
            println!("E run {r} (store {}):", kind.name());
            for &ch in &args.channels {
                match one(args, kind, ch, r).await {
                    Ok(run) => runs.push(run),
                    Err(e) => {
                        println!("  {}: FAILED: {e}", kind.name());
                        failed.push((kind, e.to_string()));
                        break 'runs;
                    }
                }
            }
        }
    }
    if runs.is_empty()
        && let Some((kind, e)) = failed.first()
    {
        return Err(format!("{}: {e}", kind.name()).into());
    }
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    for &kind in &args.store {
        let name = kind.name();
        if let Some((_, e)) = failed.iter().find(|(k, _)| *k == kind) {
            rows.push(vec![
                name.to_owned(),
                "—".into(),
                format!("**not measured:** {e}"),
                "—".into(),
                "—".into(),
                "—".into(),
                "—".into(),
            ]);
            continue;
        }
        for &ch in &args.channels {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.store == kind && r.channels == ch).collect();
            let col = |f: &dyn Fn(&Run) -> f64| Spread::of(&mine.iter().map(|r| f(r)).collect::<Vec<_>>());
            for (i, &c) in args.concurrency.iter().enumerate() {
                let tp = col(&|r| r.concurrent.get(i).map_or(f64::NAN, |x| x.1));
                let p50 = col(&|r| r.concurrent.get(i).map_or(f64::NAN, |x| x.2.p50_ms));
                let p99 = col(&|r| r.concurrent.get(i).map_or(f64::NAN, |x| x.2.p99_ms));
                rows.push(vec![
                    name.to_owned(),
                    format!("{ch}"),
                    format!("{c} appenders, back to back"),
                    show(tp, 0),
                    show(p50, 3),
                    show(p99, 3),
                    "—".into(),
                ]);
            }
            // Saturation: each run's best concurrency step.
            let best = col(&|r| r.concurrent.iter().map(|x| x.1).fold(f64::NAN, f64::max));
            rows.push(vec![
                name.to_owned(),
                format!("{ch}"),
                "**saturation** (best of the steps above)".into(),
                show(best, 0),
                "—".into(),
                "—".into(),
                "—".into(),
            ]);
            let ach = col(&|r| r.fixed_rate_achieved);
            let p50 = col(&|r| r.fixed.p50_ms);
            let p99 = col(&|r| r.fixed.p99_ms);
            let err = mine.iter().map(|r| r.fixed_errors).sum::<u64>();
            rows.push(vec![
                name.to_owned(),
                format!("{ch}"),
                format!("fixed {:.0}/s ({} in flight at most)", args.rate, args.in_flight),
                show(ach, 0),
                show(p50, 3),
                show(p99, 3),
                format!("{err}"),
            ]);
            let rp50 = col(&|r| r.read.p50_ms);
            let rp99 = col(&|r| r.read.p99_ms);
            rows.push(vec![
                name.to_owned(),
                format!("{ch}"),
                format!("history page of {} at {:.0}/s", args.page, args.read_rate),
                "—".into(),
                show(rp50, 3),
                show(rp99, 3),
                format!("{}", mine.iter().map(|r| r.read_errors).sum::<u64>()),
            ]);
            let label = |what: &str| format!("E ({name}, {ch} channel(s)): {what}");
            checks.push(Check::at_least(
                &label("fixed-rate appends achieved"),
                ach.map(|s| s.median),
                args.rate * 0.99,
                "/s",
                0,
            ));
            if kind != StoreKind::Memory {
                checks.push(Check::at_least(
                    &label("acknowledged appends/s at saturation"),
                    best.map(|s| s.median),
                    TARGET_APPENDS,
                    "/s",
                    0,
                ));
                checks.push(Check::at_most(
                    &label(&format!("append p99 at {:.0}/s", args.rate)),
                    p99.map(|s| s.median),
                    TARGET_FIXED_P99_MS,
                    "ms",
                    1,
                ));
                checks.push(Check::at_most(
                    &label(&format!("{}-message history page p99", args.page)),
                    rp99.map(|s| s.median),
                    TARGET_PAGE_P99_MS,
                    "ms",
                    2,
                ));
            }
        }
    }
    let table = table(&["store", "channels", "mode", "appends/s", "p50 ms", "p99 ms", "errors"], &rows);
    let stores: Vec<&str> = args.store.iter().map(|k| k.name()).collect();
    let failed: Vec<serde_json::Value> = failed.iter().map(|(k, e)| json!({"store": k.name(), "error": e})).collect();
    let json = json!({
        "scenario": "E", "stores": stores, "channels": args.channels, "concurrency": args.concurrency,
        "rate": args.rate, "in_flight": args.in_flight, "read_in_flight": args.read_in_flight, "secs": args.secs,
        "body_bytes": args.body_bytes, "page": args.page, "read_rate": args.read_rate, "runs_per_figure": args.runs,
        "runs": runs,
        "failed": failed, "checks": checks,
    });
    Ok(Outcome { json, checks, table, figures: Vec::new() })
}
