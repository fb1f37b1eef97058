//! D: broadcast to every connection. `--connections` receivers (19,000 by default, spread over client worker
//! processes) subscribed to `topic:bench`; the application publishes one message at a time through the bench
//! server's admin endpoint (`POST /admin/publish`, i.e. `Hub::publish`), `--messages` times, one every
//! `--interval-ms`. Per message: intended publish time → the last of the connections got it.

use std::time::Duration;

use herald_bench::hist::Latency;
use herald_bench::net::Error;
use herald_bench::report::{Check, Spread, show, table};
use herald_bench::schedule::{Schedule, unix_nanos};
use herald_bench::{BENCH_TOPIC, scan};
use serde_json::json;

use crate::fanout::{last_deliveries, last_delivery_hist};
use crate::procs::{self, Http, ServerProc, WorkerProc};
use crate::worker::{Job, Order, Target};
use crate::{Outcome, ServerOpts, percent};

/// Target: time to the last delivery, ms (checked on the p99 over the broadcasts).
pub(crate) const LAST_TARGET_MS: f64 = 80.0;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Receiving connections.
    #[arg(long, default_value_t = 19_000)]
    pub(crate) connections: usize,
    /// Broadcasts per run.
    #[arg(long, default_value_t = 20)]
    pub(crate) messages: u64,
    /// Time between two broadcasts, ms.
    #[arg(long, default_value_t = 250)]
    pub(crate) interval_ms: u64,
    /// Message body size, bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) body_bytes: usize,
    /// Runs (fresh server and clients each); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Let the runs share one server and one set of connections (faster; runs after the first find the server
    /// warm). A run in which a broadcast missed a connection is still followed by a fresh set-up.
    #[arg(long)]
    pub(crate) shared_setup: bool,
    /// Connections being opened at once, per client process.
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
    #[command(flatten)]
    pub(crate) server: ServerOpts,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Run {
    published: u64,
    publish_errors: u64,
    delivered: u64,
    expected: u64,
    last_delivery: Latency,
    incomplete: u64,
    delivery: Latency,
    dropped: usize,
    ramp_secs: f64,
}

/// The server and the receiving connections, set up once for one or more runs.
struct Setup {
    server: ServerProc,
    workers: Vec<WorkerProc>,
    ramp_secs: f64,
}

impl Setup {
    async fn stop(self) -> Result<(), Error> {
        procs::stop_all(self.workers).await;
        self.server.stop().await
    }
}

/// Starts the server and opens the connections, each tracking `track` broadcasts.
async fn setup(args: &Args, track: usize) -> Result<Setup, Error> {
    let extra = vec![format!("--topic-members={}", args.connections)];
    let server = args.server.start_herald(&extra).await?;
    let mut workers = Vec::new();
    for (k, (first, count)) in procs::split(args.connections, args.server.per_process).into_iter().enumerate() {
        let job = Job::Connect {
            target: Target::Herald { addr: server.addr },
            first,
            count,
            concurrency: args.concurrency,
            subscribe: Some(BENCH_TOPIC.to_owned()),
            ping_bytes: 0,
            track,
        };
        match WorkerProc::spawn(format!("broadcast receivers {k}"), &job, args.server.client_threads).await {
            Ok(w) => workers.push(w),
            Err(e) => {
                procs::stop_all(workers).await;
                server.stop().await?;
                return Err(e);
            }
        }
    }
    match procs::ready_all(&mut workers, Duration::from_secs(300)).await {
        Ok(ready) => {
            let ramp_secs = ready.end_ns.saturating_sub(ready.start_ns) as f64 / 1e9;
            Ok(Setup { server, workers, ramp_secs })
        }
        Err(e) => {
            Setup { server, workers, ramp_secs: 0.0 }.stop().await?;
            Err(e)
        }
    }
}

/// One run: `--messages` broadcasts on `s`, message indices `first_n..`.
async fn one(s: &mut Setup, args: &Args, first_n: u64) -> Result<Run, Error> {
    let workers = &mut s.workers;
    let _phase = crate::phases::start("step");
    let mut http = Http::connect(s.server.addr).await?;
    let start_ns = unix_nanos() + 500_000_000;
    let rate = 1_000.0 / args.interval_ms.max(1) as f64;
    let schedule = Schedule { start_ns, rate, count: args.messages, senders: 1 };
    let deadline_ns = schedule.end_ns() + 5_000_000_000;
    let order = Order::Run { start_ns, rate, messages: args.messages, first_n, deadline_ns };
    for w in workers.iter_mut() {
        w.order(&order).await?;
    }
    let path = format!("/admin/publish?channel={BENCH_TOPIC}");
    let mut errors = 0;
    for m in 0..args.messages {
        let intended = schedule.intended_ns(m);
        let wait = intended.saturating_sub(unix_nanos());
        tokio::time::sleep(Duration::from_nanos(wait)).await;
        let body = scan::body(first_n + m, intended, args.body_bytes);
        let (status, text) = http.post(&path, &body).await?;
        if status != 200 {
            errors += 1;
            eprintln!("publish {m}: HTTP {status}: {text}");
        }
    }
    let mut reports = Vec::new();
    for w in workers.iter_mut() {
        reports.push(w.done(Duration::from_secs(60)).await?);
    }
    let per_message = last_deliveries(&reports, args.messages as usize);
    let (h, incomplete) = last_delivery_hist(&per_message, &schedule, args.connections as u64, deadline_ns);
    let delivery = herald_bench::hist::merge_encoded(reports.iter().map(|r| r.hist.as_str()))?;
    Ok(Run {
        published: args.messages - errors,
        publish_errors: errors,
        delivered: reports.iter().map(|r| r.delivered).sum(),
        expected: (args.messages - errors) * args.connections as u64,
        last_delivery: Latency::of(&h),
        incomplete,
        delivery: Latency::of(&delivery),
        dropped: reports.iter().map(|r| r.dropped).sum(),
        ramp_secs: s.ramp_secs,
    })
}

pub(crate) async fn run(args: &Args) -> Result<Outcome, Error> {
    let mut runs = Vec::new();
    let mut current: Option<Setup> = None;
    let mut first_n = 0;
    for r in 1..=args.runs {
        let s = match &mut current {
            Some(s) => s,
            None => {
                first_n = 0;
                let runs = if args.shared_setup { args.runs.max(1) } else { 1 };
                current.insert(setup(args, args.messages as usize * runs).await?)
            }
        };
        let run = match one(s, args, first_n).await {
            Ok(run) => run,
            Err(e) => {
                if let Some(s) = current.take() {
                    let _ = s.stop().await;
                }
                return Err(e);
            }
        };
        first_n += args.messages;
        let backlog = run.incomplete > 0 || run.delivered < run.expected;
        if (!args.shared_setup || backlog)
            && let Some(s) = current.take()
        {
            s.stop().await?;
        }
        println!(
            "D run {r}: {} connections ({} processes, up in {:.1} s), {} broadcasts: delivered {}/{} ({:.2} %) | last delivery p50 {:.1} p99 {:.1} max {:.1} ms ({} incomplete) | per delivery p50 {:.1} ms{}",
            args.connections,
            procs::split(args.connections, args.server.per_process).len(),
            run.ramp_secs,
            run.published,
            run.delivered,
            run.expected,
            percent(run.delivered as f64, run.expected as f64),
            run.last_delivery.p50_ms,
            run.last_delivery.p99_ms,
            run.last_delivery.max_ms,
            run.incomplete,
            run.delivery.p50_ms,
            if run.dropped > 0 { format!(" | {} dropped", run.dropped) } else { String::new() },
        );
        if args.shared_setup && backlog && r < args.runs {
            println!(
                "  (a broadcast did not reach every connection: the next run gets a fresh server and connections)"
            );
        }
        runs.push(run);
    }
    if let Some(s) = current.take() {
        s.stop().await?;
    }
    let col = |f: fn(&Run) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
    let p50 = col(|r| r.last_delivery.p50_ms);
    let p99 = col(|r| r.last_delivery.p99_ms);
    let per = col(|r| r.delivery.p50_ms);
    let pct = col(|r| percent(r.delivered as f64, r.expected as f64));
    let checks = vec![Check::at_most(
        &format!("D: time to the last of {} connections, p99 over the broadcasts", args.connections),
        p99.map(|s| s.median),
        LAST_TARGET_MS,
        "ms",
        1,
    )];
    let row = vec![
        format!("{}", args.connections),
        format!("{}", procs::split(args.connections, args.server.per_process).len()),
        format!("{} × {} ms apart", args.messages, args.interval_ms),
        show(pct, 2),
        show(p50, 1),
        show(p99, 1),
        show(per, 1),
    ];
    let table = table(
        &[
            "connections",
            "client procs",
            "broadcasts per run",
            "delivered %",
            "to last delivery p50 ms",
            "to last delivery p99 ms",
            "per-delivery p50 ms",
        ],
        &[row],
    );
    let json = json!({
        "scenario": "D", "connections": args.connections, "messages": args.messages, "interval_ms": args.interval_ms,
        "body_bytes": args.body_bytes, "runs": runs, "last_p50_ms": p50, "last_p99_ms": p99, "checks": checks,
    });
    Ok(Outcome {
        json,
        checks,
        table,
        figures: vec![("last_p50_ms", p50.map(|s| s.median)), ("last_p99_ms", p99.map(|s| s.median))],
    })
}
